"""MonoProcessor: config reading, image-token counts, tensor shapes, input errors."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from monovl.processing import IMG_CONTEXT, MonoProcessor, Tokenizer, vision_settings_from_config

S = 448


@pytest.fixture(scope="module")
def processor(tiny_processor_dir):
    return MonoProcessor.from_pretrained(tiny_processor_dir)


def test_settings_from_official_tiny_config(processor, official_tiny_dir):
    reference = json.loads((official_tiny_dir / "reference.json").read_text())
    assert processor.image_size == 448
    assert processor.num_image_token == reference["num_image_token"] == 256  # (448/14)^2 * 0.5^2
    assert processor.max_num == 6 and processor.min_num == 1 and processor.use_thumbnail
    assert processor.template.name == "internlm2-chat"
    # The tiny tokenizer puts the image tokens exactly where the tiny checkpoint expects them.
    assert processor.image_token_id == reference["img_context_token_id"] == 500
    assert processor.img_start_token_id == reference["img_start_token_id"]
    assert processor.img_end_token_id == reference["img_end_token_id"]
    assert processor.stop_token_ids == [2, 8, 7]


def test_vision_settings_formula():
    config = {"force_image_size": 224, "downsample_ratio": 0.5, "vision_config": {"patch_size": 14}}
    assert vision_settings_from_config(config)["num_image_token"] == 64  # (224/14)^2 / 4
    assert vision_settings_from_config({"dynamic_image_size": False})["max_num"] == 1
    with pytest.raises(ValueError):
        vision_settings_from_config({"force_image_size": 450})


def test_single_image(processor):
    out = processor("Describe the image.", images=Image.new("RGB", (800, 400), (9, 9, 9)))
    assert out["tiles_per_image"] == [3]  # (2,1) grid + thumbnail
    assert out["pixel_values"].shape == (3, 3, S, S) and out["pixel_values"].dtype == torch.float32
    ids = out["input_ids"]
    assert ids.dtype == torch.long and ids.dim() == 2 and ids.shape[0] == 1
    assert ids[0, 0].item() == 1
    assert int((ids == out["image_token_id"]).sum()) == 256 * 3
    assert int((ids == processor.img_start_token_id).sum()) == 1
    assert int((ids == processor.img_end_token_id).sum()) == 1
    assert out["prompt"].startswith("<|im_start|>system\n")
    assert processor.tokenizer.decode(ids[0].tolist()) == "<s>" + out["prompt"]


def test_text_only(processor):
    out = processor("Hello!", system_message="Be brief.")
    assert out["pixel_values"] is None and out["tiles_per_image"] == []
    assert int((out["input_ids"] == processor.image_token_id).sum()) == 0
    assert out["prompt"] == (
        "<|im_start|>system\nBe brief.<|im_end|><|im_start|>user\nHello!<|im_end|><|im_start|>assistant\n"
    )


def test_several_images_share_max_tiles(processor, tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (1000, 300)).save(path)
    out = processor("Compare.", images=[path, Image.new("RGB", (800, 400))], max_tiles=6)
    # 6 tiles shared by 2 images -> at most 3 each: (3,1)+thumb and (2,1)+thumb.
    assert out["tiles_per_image"] == [4, 3]
    assert out["pixel_values"].shape[0] == 7
    assert int((out["input_ids"] == processor.image_token_id).sum()) == 256 * 7
    assert "<image 1> (图1):<img>" in out["prompt"] and "<image 2> (图2):<img>" in out["prompt"]


def test_history_and_batch(processor):
    image = Image.new("RGB", (448, 448))
    results = processor.batch(
        [
            {"question": "And now?", "images": [image], "history": [("What is it?", "A square.")]},
            {"question": "Text only."},
        ]
    )
    assert len(results) == 2
    first = results[0]
    assert first["tiles_per_image"] == [1]
    assert first["prompt"].count("<img>") == 1
    assert first["prompt"].index("<img>") < first["prompt"].index("What is it?")
    assert results[1]["pixel_values"] is None


def test_streaming_helpers(processor):
    ids = processor.tokenizer.encode("A red car.<|im_end|>", add_bos=False)
    decoder = processor.incremental_decoder()
    text = "".join(decoder.add(i) for i in ids) + decoder.flush()
    assert text == "A red car."
    assert processor.extract_response(processor.decode(ids, skip_special_tokens=False)) == "A red car."


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"question": 5}, "question"),
        ({"question": "   "}, "empty"),
        ({"question": "q", "images": 42}, "images"),
        ({"question": "q", "images": [Image.new("RGB", (8, 8)), 3.0]}, r"images\[1\]"),
        ({"question": "q", "images": Image.new("RGB", (8, 8)), "max_tiles": 0}, "max_tiles"),
        ({"question": "sneaky " + IMG_CONTEXT}, "reserved"),
        ({"question": "<image> twice <image>", "images": Image.new("RGB", (8, 8))}, "placeholder"),
        ({"question": "q", "images": "/no/such/file.png"}, "not a readable image"),
        ({"question": "q", "history": [5]}, r"history\[0\]"),
        ({"question": "q", "history": "not a list"}, "history"),
    ],
)
def test_bad_inputs(processor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        processor(**kwargs)


def test_batch_errors(processor):
    with pytest.raises(ValueError, match="unknown keys"):
        processor.batch([{"question": "q", "image": "x.png"}])
    with pytest.raises(ValueError, match=r"conversations\[1\]"):
        processor.batch([{"question": "ok"}, {"question": ""}])


def test_from_pretrained_errors(tmp_path, tiny_tokenizer, tiny_tokenizer_dir):
    with pytest.raises(ValueError, match="config.json"):
        MonoProcessor.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"llm_config": {"vocab_size": 100}}))
    with pytest.raises(ValueError, match="vocab_size"):
        MonoProcessor.from_pretrained(tmp_path, tokenizer=tiny_tokenizer)
    bare = Tokenizer(tiny_tokenizer.sp_model.serialized_model_proto())  # no image tokens
    with pytest.raises(ValueError, match="IMG_CONTEXT"):
        MonoProcessor(bare)
