"""Inputs from the field (issue 14 part B): tile budgets, 16-bit/EXIF/transparent images, placeholders
in text, grounding markup, unsupported media, LLaVA annotations, empty predictions, Chinese choices."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from monovl.data.records import RecordError, Skipped, ShardStreamSource, open_source, parse_record
from monovl.data.records import _json_array_spans
from monovl.data.samples import decode_image
from monovl.eval.choice import extract_choice
from monovl.eval.metrics import anls_score, exact_match, ocrbench_hit, relaxed_accuracy, vqa_accuracy
from monovl.eval.runner import ERRORS_FILE, ModelPredictor, run_benchmark
from monovl.eval.tsv import ImageResolver, read_predictions
from monovl.processing import MonoProcessor
from monovl.processing.grounding import GroundedBox, draw_boxes, parse_boxes
from monovl.processing.image import (
    MAX_TILES,
    ImageLoadError,
    candidate_grids,
    load_image,
    preprocess_images,
    tile_image,
)

OPTIONS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


def encoded(image: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save_args)
    return buf.getvalue()


def conv(question: str, answer: str = "a") -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.fixture
def processor(tiny_tokenizer) -> MonoProcessor:
    return MonoProcessor(tiny_tokenizer, image_size=28, num_image_token=4, max_num=6)


# ------------------------------------------------------------------ B1 tile budgets
def test_grid_enumeration_matches_the_official_expression():
    def official(min_num: int, max_num: int) -> list[tuple[int, int]]:
        grids = set((i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                    if min_num <= i * j <= max_num)
        return sorted(grids, key=lambda g: g[0] * g[1])

    for max_num in range(1, 25):
        for min_num in range(1, max_num + 1):
            assert candidate_grids(min_num, max_num) == official(min_num, max_num), (min_num, max_num)
    assert candidate_grids(1, MAX_TILES) == official(1, MAX_TILES)


def test_tile_budget_over_the_maximum_is_refused_at_once(tiny_processor_dir, processor, tmp_path):
    tall = Image.new("RGB", (1, 4000))
    for call in (lambda: preprocess_images(tall, max_num=1000), lambda: candidate_grids(1, 1000),
                 lambda: processor("hi", images=[tall], max_tiles=1000),
                 lambda: ModelPredictor(model=None, processor=None, max_new_tokens=4, max_tiles=1000)):
        with pytest.raises(ValueError, match=f"from 1 to {MAX_TILES}"):
            call()
    # A checkpoint config asking for 1000 tiles is refused when the processor is built.
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_processor_dir, checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "max_dynamic_patch": 1000}))
    with pytest.raises(ValueError, match=f"max_dynamic_patch.*from 1 to {MAX_TILES}.*got 1000"):
        MonoProcessor.from_pretrained(checkpoint)


def test_training_config_refuses_a_tile_budget_over_the_maximum(tmp_path, capsys):
    from monovl.cli.main import main
    from monovl.training import TrainConfig

    assert TrainConfig(max_tiles=MAX_TILES).max_tiles == MAX_TILES
    with pytest.raises(ValueError, match=f"max_tiles must be an int from 1 to {MAX_TILES} .*got 1000"):
        TrainConfig(max_tiles=1000)
    config = tmp_path / "run.yaml"
    config.write_text(f"max_tiles: {MAX_TILES + 1}\n")
    with pytest.raises(ValueError, match=f"got {MAX_TILES + 1}"):
        TrainConfig.from_file(config)
    # `monovl train` refuses it before it looks for the model or the data (neither exists here).
    assert main(["train", "--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "no-data.jsonl"),
                 "--out", str(tmp_path / "out"), "--max-tiles", "1000"]) == 2
    assert capsys.readouterr().err == f"monovl train: error: max_tiles must be an int from 1 to {MAX_TILES} " \
                                      "(MAX_TILES), got 1000\n"


def test_largest_budget_on_a_one_pixel_wide_image():
    result = tile_image(Image.new("RGB", (1, 4000), (9, 9, 9)), image_size=14, max_num=MAX_TILES)
    assert result.grid == (1, MAX_TILES) and result.num_tiles == MAX_TILES + 1  # + thumbnail


# ------------------------------------------------------------------ B2 high bit depth
def grey16(value: int = 30000) -> Image.Image:
    return Image.fromarray(np.full((6, 8), value, dtype=np.uint16))


def test_16_bit_png_maps_to_8_bits_everywhere(tmp_path):
    png = encoded(grey16())
    assert Image.open(io.BytesIO(png)).mode == "I;16"
    path = tmp_path / "grey16.png"
    path.write_bytes(png)
    expected = (117, 117, 117)  # round(30000 / 65535 * 255)
    assert load_image(path).getpixel((0, 0)) == expected  # chat: a path
    assert load_image(png).getpixel((0, 0)) == expected  # bytes
    assert decode_image(str(path)).getpixel((0, 0)) == expected  # training records
    assert decode_image(png).getpixel((0, 0)) == expected  # tar-shard members are bytes
    tsv_image = ImageResolver([]).images({"image": base64.b64encode(png).decode()})[0]  # TSV base64
    assert load_image(tsv_image).getpixel((0, 0)) == expected
    pixels, _ = preprocess_images(tsv_image, image_size=14, max_num=1)
    assert pixels[0, 0, 0, 0].item() == pytest.approx((117 / 255 - 0.485) / 0.229, abs=1e-6)
    assert load_image(grey16(65535)).getpixel((0, 0)) == (255, 255, 255)


def test_32_bit_integer_and_float_images():
    assert load_image(Image.fromarray(np.full((3, 3), 30000, np.int32))).getpixel((0, 0)) == (117, 117, 117)
    assert load_image(Image.fromarray(np.full((3, 3), 30000.0, np.float32))).getpixel((0, 0)) == (117, 117, 117)
    assert load_image(Image.fromarray(np.full((3, 3), 0.5, np.float32))).getpixel((0, 0)) == (128, 128, 128)
    tiff = encoded(Image.fromarray(np.full((3, 3), 30000, np.int32)), "TIFF")
    assert load_image(tiff).getpixel((0, 0)) == (117, 117, 117)
    for bad in (np.full((3, 3), -5, np.int32), np.full((3, 3), 70000, np.int32), np.full((3, 3), np.nan, np.float32)):
        with pytest.raises(ImageLoadError, match="cannot be mapped to 8 bits"):
            load_image(Image.fromarray(bad))


# ------------------------------------------------------------------ B15 EXIF and transparency
def phone_jpeg() -> bytes:
    """Stored 60x40 with a blue left edge; EXIF orientation 6 shows it as 40x60 with the blue edge on top."""
    image = Image.new("RGB", (60, 40), (255, 255, 255))
    image.paste((0, 0, 255), (0, 0, 12, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(image, "JPEG", exif=exif.tobytes(), quality=95)


def is_blue(pixel) -> bool:
    return pixel[2] > 200 and pixel[0] < 60


def logo() -> Image.Image:
    """A black logo (left half) on a fully transparent background."""
    image = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    image.paste((0, 0, 0, 255), (0, 0, 10, 10))
    return image


def test_exif_orientation_is_applied_unless_official():
    upright = load_image(phone_jpeg())
    assert upright.size == (40, 60) and is_blue(upright.getpixel((20, 3))) and not is_blue(upright.getpixel((3, 30)))
    stored = load_image(phone_jpeg(), official_convert=True)
    assert stored.size == (60, 40) and is_blue(stored.getpixel((3, 20)))
    assert decode_image(phone_jpeg()).size == (40, 60)  # training data from tar shards too


def test_transparency_is_composited_onto_white_unless_official():
    for source in (logo(), encoded(logo()), encoded(logo().convert("LA"))):
        default = load_image(source)
        assert default.getpixel((15, 5)) == (255, 255, 255) and default.getpixel((5, 5)) == (0, 0, 0)
        assert load_image(source, official_convert=True).getpixel((15, 5)) == (0, 0, 0)  # black on black
    assert decode_image(encoded(logo())).getpixel((15, 5)) == (255, 255, 255)  # a tar-shard member
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert load_image(encoded(palette)).getpixel((0, 0)) == (255, 255, 255)


def test_processor_option_selects_the_preprocessing(tiny_tokenizer):
    from_tsv = ImageResolver([]).images({"image": base64.b64encode(encoded(logo())).decode()})[0]
    default = MonoProcessor(tiny_tokenizer, image_size=28, num_image_token=4, max_num=1)
    official = MonoProcessor(tiny_tokenizer, image_size=28, num_image_token=4, max_num=1, official_convert=True)
    white, black = (1 - 0.485) / 0.229, (0 - 0.485) / 0.229
    assert default("?", images=[from_tsv])["pixel_values"][0, 0, 14, 27].item() == pytest.approx(white, abs=1e-5)
    assert official("?", images=[from_tsv])["pixel_values"][0, 0, 14, 27].item() == pytest.approx(black, abs=1e-5)
    upright = default("?", images=[phone_jpeg()])["pixel_values"][0]  # bytes are accepted like paths
    assert upright[0, 1, 14].item() < -1.5 < 1.5 < upright[0, 26, 14].item()  # blue on top: no red there


def record_processors(monkeypatch) -> list[MonoProcessor]:
    """Every processor `MonoProcessor.from_pretrained` builds from now on, in order."""
    made: list[MonoProcessor] = []
    original = MonoProcessor.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        made.append(original(cls, *args, **kwargs))
        return made[-1]

    monkeypatch.setattr(MonoProcessor, "from_pretrained", classmethod(spy))
    return made


def test_official_preprocessing_flag_reaches_the_processor(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from monovl.cli.main import main

    made = record_processors(monkeypatch)
    chat = ["chat", "--model", str(tiny_model_dir), "hi", "--max-new-tokens", "1"]
    assert main(chat) == 0 and main([*chat, "--official-preprocessing"]) == 0
    data = tmp_path / "vqa.tsv"
    red = base64.b64encode(encoded(Image.new("RGB", (8, 8), (200, 0, 0)))).decode()
    write_tsv(data, [{"index": 0, "image": red, "question": "What?", "answer": "['red']"}])
    run = ["eval", "run", "--model", str(tiny_model_dir), "--data", str(data), "--task", "textvqa",
           "--max-new-tokens", "1", "--max-tiles", "1", "--no-progress"]
    assert main([*run, "--out", str(tmp_path / "a")]) == 0
    assert main([*run, "--out", str(tmp_path / "b"), "--official-preprocessing"]) == 0
    assert [p.official_convert for p in made] == [False, True, False, True]


# ------------------------------------------------------------------ B4 placeholders in text
def test_image_placeholder_without_images_is_ordinary_text(processor, tiny_tokenizer):
    question = "How is the <image> tag used in SVG?"
    out = processor(question)
    assert question in out["prompt"] and out["pixel_values"] is None
    assert tiny_tokenizer.decode(out["input_ids"][0].tolist()).count("<image>") == 1
    with_image = processor(question, images=[Image.new("RGB", (28, 28))])
    assert "<image>" not in with_image["prompt"] and "the <img>" in with_image["prompt"]  # a placeholder again


def write_tsv(path, rows) -> None:
    columns = ["index", "image", "question", "answer"]
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[row[c] for c in columns] for row in rows])


def test_a_failing_row_is_recorded_and_the_run_goes_on(tmp_path):
    red = base64.b64encode(encoded(Image.new("RGB", (8, 8), (200, 0, 0)))).decode()
    questions = ["What?", "What is <img> for?", "And this?", "Last?"]
    path = tmp_path / "vqa.tsv"
    write_tsv(path, [{"index": i, "image": red, "question": q, "answer": str(["red"] * 10)}
                     for i, q in enumerate(questions)])
    seen: list[str] = []

    def predictor(requests):  # refuses a reserved token as the processor does
        for r in requests:
            if "<img>" in r.prompt:
                raise ValueError("the text contains the reserved image token '<img>'")
        seen.extend(r.prompt for r in requests)
        return ["red"] * len(requests)

    out = tmp_path / "run"
    result = run_benchmark(predictor, path, "textvqa", out, batch_size=2, progress=False)
    rows = read_predictions(result.predictions_path)
    assert [r["prediction"] for r in rows] == ["red", "", "red", "red"]
    assert [e["index"] for e in result.scores["errors"]] == ["1"] and result.scores["n_image_errors"] == 0
    assert result.scores["errors"][0]["stage"] == "predict" and "<img>" in result.scores["errors"][0]["error"]
    assert result.scores["overall"] == pytest.approx(75.0)  # the failed row scores 0
    assert json.loads((out / ERRORS_FILE).read_text())["index"] == "1"
    # A resume finds every row done: the failing row is not retried.
    seen.clear()
    again = run_benchmark(predictor, path, "textvqa", out, batch_size=2, progress=False)
    assert seen == [] and again.scores["n_errors"] == 1


def test_eval_cli_summary_counts_every_failed_row(tiny_model_dir, tmp_path, capsys):
    from monovl.cli.main import main

    red = base64.b64encode(encoded(Image.new("RGB", (8, 8), (200, 0, 0)))).decode()
    broken = base64.b64encode(b"not an image, only text that is long enough to be base64").decode()
    data = tmp_path / "vqa.tsv"
    write_tsv(data, [{"index": i, "image": image, "question": q, "answer": "['red']"}
                     for i, (image, q) in enumerate([(red, "What?"), (red, "What is <img> for?"), (broken, "And?")])])
    out = tmp_path / "run"
    assert main(["eval", "run", "--model", str(tiny_model_dir), "--data", str(data), "--task", "textvqa",
                 "--out", str(out), "--max-new-tokens", "1", "--max-tiles", "1", "--no-progress"]) == 0
    assert (f"2 row(s) failed (1 with an undecodable image): empty prediction, scored as wrong "
            f"(see {out / ERRORS_FILE})\n") in capsys.readouterr().err
    assert sorted(e["stage"] for e in map(json.loads, (out / ERRORS_FILE).read_text().splitlines())) == \
        ["image", "predict"]


def test_model_fault_is_not_a_row_error(tmp_path):
    path = tmp_path / "vqa.tsv"
    red = base64.b64encode(encoded(Image.new("RGB", (8, 8)))).decode()
    write_tsv(path, [{"index": 0, "image": red, "question": "q", "answer": "['a']"}])

    def broken(requests):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        run_benchmark(broken, path, "textvqa", tmp_path / "run", progress=False)


# ------------------------------------------------------------------ B5 grounding markup
MARKUP = "<ref>cat</ref><box>[[1, 2, 3, 4]]</box>"


def test_decode_keeps_grounding_markup_and_drops_other_specials(processor, tiny_tokenizer):
    ids = tiny_tokenizer.encode(MARKUP, add_bos=True) + [tiny_tokenizer.eos_token_id]
    assert processor.decode(ids) == MARKUP
    assert processor.decode(ids, skip_special_tokens=False) == "<s>" + MARKUP + "</s>"
    decoder = processor.incremental_decoder()
    assert "".join(decoder.add(t) for t in ids) + decoder.flush() == MARKUP


def test_decode_keeps_grounding_markup_with_the_hf_backend(tmp_path):
    from test_hf_tokenizer import make_bpe_tokenizer

    from monovl.processing import IMAGE_SPECIAL_TOKENS
    from monovl.processing.hf_tokenizer import HFTokenizer

    tok = HFTokenizer.from_pretrained(make_bpe_tokenizer(tmp_path / "tok"))
    tok.add_tokens(list(IMAGE_SPECIAL_TOKENS))
    processor = MonoProcessor(tok, template="chatml", image_size=28, num_image_token=4)
    ids = tok.encode(MARKUP, add_bos=False) + [tok.token_to_id("<|im_end|>")]
    assert tok.decode(ids, skip_special_tokens=True) == "cat[[1, 2, 3, 4]]"  # what the fault looked like
    assert processor.decode(ids) == MARKUP
    decoder = processor.incremental_decoder()
    assert "".join(decoder.add(t) for t in ids) + decoder.flush() == MARKUP


def test_parse_boxes_scales_0_1000_coordinates_to_pixels():
    text = ("Here: <ref>cat</ref><box>[[100, 200, 300, 400], [500, 500, 1000, 1000]]</box> and "
            "<ref>a dog</ref> <box>[[0,0,500,250]]</box>, plus <box>[[10, 10, 20, 20]]</box><box>[[1, 2]]</box>")
    assert parse_boxes(text, 640, 480) == [
        GroundedBox("cat", (64.0, 96.0, 192.0, 192.0)),
        GroundedBox("cat", (320.0, 240.0, 640.0, 480.0)),
        GroundedBox("a dog", (0.0, 0.0, 320.0, 120.0)),
        GroundedBox(None, (6.4, 4.8, 12.8, 9.6)),
    ]
    assert parse_boxes("no markup", 10, 10) == []


def test_draw_boxes_outlines_in_red_and_leaves_the_input_alone():
    image = Image.new("RGB", (200, 100), (0, 128, 0))
    drawn = draw_boxes(image, parse_boxes("<ref>x</ref><box>[[500, 200, 900, 800]]</box>", 200, 100))
    assert drawn.getpixel((150, 50)) == (0, 128, 0)  # inside
    assert drawn.getpixel((100, 50)) == (255, 0, 0)  # left edge at x = 0.5 * 200
    assert drawn.getpixel((179, 50)) == (255, 0, 0)  # right edge at x = 0.9 * 200
    assert image.getpixel((100, 50)) == (0, 128, 0)


def test_chat_draw_boxes_writes_the_picture(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from monovl.cli.chat import ChatSession
    from monovl.cli.main import main

    picture = tmp_path / "photo.png"
    Image.new("RGB", (200, 100), (0, 128, 0)).save(picture)
    answer = "<ref>cat</ref><box>[[500, 200, 900, 800]]</box>"
    monkeypatch.setattr(ChatSession, "ask", lambda self, question, on_text=None: answer)  # the tiny model says noise
    out = tmp_path / "boxes.png"
    assert main(["chat", "--model", str(tiny_model_dir), "--image", str(picture), "Where?",
                 "--draw-boxes", str(out)]) == 0
    assert Image.open(out).getpixel((100, 50)) == (255, 0, 0)
    assert "box cat: 100.0, 20.0, 180.0, 80.0" in capsys.readouterr().err
    assert main(["chat", "--model", str(tiny_model_dir), "Where?", "--draw-boxes", str(out)]) == 2
    assert "--draw-boxes needs exactly one --image" in capsys.readouterr().err


# ------------------------------------------------------------------ B11 unsupported media
@pytest.mark.parametrize("record", [
    {"video": "clip.mp4", "conversations": conv("<video>\nWhat happens?")},
    {"videos": ["a.mkv", "b.mkv"], "conversations": conv("q")},
    {"audio_path": "speech.flac", "conversations": conv("q")},
    {"clip": "x/y/recording.WAV", "conversations": conv("q")},
    {"image": "a.jpg", "video": "b.mp4", "conversations": conv("<image>\nq")},
])  # fmt: skip
def test_records_with_other_media_are_unsupported(record):
    with pytest.raises(RecordError) as info:
        parse_record(record, root="/data")
    assert info.value.reason == "unsupported_media"


def test_ordinary_metadata_is_not_media():
    record = {"id": "000123", "url": "http://x/cat.jpg", "video_count": 0, "clip_score": 0.3,
              "conversations": conv("q")}
    assert parse_record(record).turns == [("q", "a")]


def test_video_records_are_skipped_with_file_and_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [{"conversations": conv("text only")}, {"video": "clip.mp4", "conversations": conv("<video>\nq")}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    items = [item for item, _ in open_source(str(path), shuffle=False, epochs=1).iterate()]
    assert items[0].turns == [("text only", "a")]
    assert items[1] == Skipped("unsupported_media", f"{path}:2", "'video' field: only images are supported")
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("k.mp4", b"\x00" * 8), ("k.txt", b"a caption")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    [(item, _)] = list(ShardStreamSource(str(shard), shuffle=False, epochs=1).iterate())
    assert item.reason == "unsupported_media" and item.source == f"{shard}:k"


# ------------------------------------------------------------------ B12 LLaVA annotations
LLAVA = [
    {"id": "1", "image": "coco/1.jpg", "conversations": conv("<image>\nWhat is it? «ü»", "A cat.")},
    {"id": "2", "conversations": conv("Text only.", "Yes.")},
    {"id": "3", "video": "v.mp4", "conversations": conv("<video>\nq")},
    {"id": "4", "image": "2.jpg", "conversations": "broken"},
]


def test_llava_json_array_is_a_dataset_rooted_at_its_folder(tmp_path):
    path = tmp_path / "llava_mix.json"
    path.write_text(json.dumps(LLAVA, indent=1, ensure_ascii=False), encoding="utf-8")
    items = [item for item, _ in open_source(str(path), shuffle=False, epochs=1).iterate()]
    assert items[0].images == [str(tmp_path / "coco" / "1.jpg")] and items[0].turns[0][0].endswith("«ü»")
    assert items[0].source == f"{path}[0]" and items[1].turns == [("Text only.", "Yes.")]
    assert (items[2].reason, items[2].source) == ("unsupported_media", f"{path}[2]")
    assert (items[3].reason, items[3].source) == ("bad_conversation", f"{path}[3]")
    # In a meta file too.
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"llava": {"annotation": "llava_mix.json", "repeat_time": 2}}))
    assert len(open_source(str(meta), shuffle=False, epochs=1)) == 8


def test_json_array_spans_are_exact_across_chunks(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(LLAVA * 5, ensure_ascii=False).encode())
    raw = path.read_bytes()
    for chunk in (5, 97, 1 << 20):
        starts, ends = _json_array_spans(str(path), chunk)
        assert [json.loads(raw[s:e]) for s, e in zip(starts, ends)] == LLAVA * 5
    for bad, where in (("[1,]", "at byte 3"), ("[{}] x", "data after the closing ']'"), ("[{}", "expected ','")):
        path.write_text(bad)
        with pytest.raises(ValueError, match=where):
            _json_array_spans(str(path))


# ------------------------------------------------------------------ B13 empty predictions
def test_empty_predictions_score_zero():
    assert vqa_accuracy("", ["A"] * 10) == 0.0
    assert vqa_accuracy("", ["the"] * 10) == 0.0
    assert vqa_accuracy(" \n\t", ["A"] * 10) == 0.0
    assert vqa_accuracy("A", ["A"] * 10) == 1.0
    assert vqa_accuracy("the", ["A"] * 10) == 1.0  # both normalise to "": the official rule for real text
    for metric in (anls_score, relaxed_accuracy, exact_match):
        assert metric("", [""]) == 0.0 and metric(" ", [" "]) == 0.0
        assert metric("x", ["x"]) == 1.0
    assert not ocrbench_hit("", [""], "Regular Text Recognition")
    assert ocrbench_hit("ab", [""], "Regular Text Recognition")


# ------------------------------------------------------------------ B14 Chinese multiple choice
@pytest.mark.parametrize("answer,letter", [
    ("选项B", "B"), ("答案：B", "B"), ("答案：Ｂ。", "B"), ("正确答案是（C）", "C"), ("“D”", "D"),
    ("B", "B"), ("The answer is A", "A"),
    ("我认为A和B都不对", "Z"),  # two letters: no answer, as in English
])  # fmt: skip
def test_chinese_choice_answers(answer, letter):
    assert extract_choice(answer, OPTIONS) == letter
