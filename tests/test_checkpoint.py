"""Official-layout checkpoints: exact round trips, sharding, dtypes, and errors that name the problem."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from monovl import MonoInternVL
from monovl.checkpoint.safetensors_io import INDEX, CheckpointError
from tiny import tiny_model

FIXTURE = Path(__file__).parent / "data" / "official-v1-tiny"


def copy_fixture(tmp_path: Path) -> Path:
    d = tmp_path / "ckpt"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(FIXTURE / name, d / name)
        (d / name).chmod(0o644)
    return d


def test_round_trip_reproduces_keys_and_tensors_exactly(tmp_path):
    model = MonoInternVL.from_pretrained(FIXTURE)
    model.save_pretrained(tmp_path / "out")
    original = load_file(FIXTURE / "model.safetensors")
    written = load_file(tmp_path / "out" / "model.safetensors")
    assert sorted(written) == sorted(original)
    for k, t in original.items():
        assert written[k].dtype == t.dtype and torch.equal(written[k], t), k
    # The dead CLS weights are kept too (reference 9.1).
    assert "vision_model.embeddings.class_embedding" in written


def test_saved_config_keeps_every_official_field(tmp_path):
    MonoInternVL.from_pretrained(FIXTURE).save_pretrained(tmp_path)
    original = json.loads((FIXTURE / "config.json").read_text())
    saved = json.loads((tmp_path / "config.json").read_text())
    for key, value in original.items():
        if key in ("vision_config", "llm_config"):
            for sub, v in value.items():
                assert saved[key][sub] == v, f"{key}.{sub}"
        elif key != "torch_dtype":
            assert saved[key] == value, key
    assert saved["llm_config"]["architectures"] == ["InternLM2VEForCausalLM"]
    assert "attention_experts" not in saved["llm_config"]  # v1 files stay in the official vocabulary


def test_sharded_and_bf16_checkpoints_load(tmp_path):
    model = MonoInternVL.from_pretrained(FIXTURE)
    model.save_pretrained(tmp_path / "sharded", max_shard_bytes=200_000)
    index = json.loads((tmp_path / "sharded" / INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 2
    reloaded = MonoInternVL.from_pretrained(tmp_path / "sharded")
    for (k, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), k
    # Saving again as a single file removes the old shards and index.
    reloaded.save_pretrained(tmp_path / "sharded")
    assert not (tmp_path / "sharded" / INDEX).exists()
    assert not list((tmp_path / "sharded").glob("model-*-of-*.safetensors"))

    bf16 = MonoInternVL.from_pretrained(FIXTURE, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    bf16.save_pretrained(tmp_path / "bf16")
    assert all(t.dtype == torch.bfloat16 for t in load_file(tmp_path / "bf16" / "model.safetensors").values())
    as_fp32 = MonoInternVL.from_pretrained(tmp_path / "bf16")  # CPU default is fp32
    assert as_fp32.dtype == torch.float32


def test_v15_round_trip(tmp_path):
    model = tiny_model(attention_experts=True)
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "model.safetensors").keys()
    assert "language_model.model.layers.0.attention.wqkv_ve.weight" in keys
    assert "language_model.model.layers.1.attention.wo_ve.weight" in keys
    assert json.loads((tmp_path / "config.json").read_text())["llm_config"]["attention_experts"] is True
    again = MonoInternVL.from_pretrained(tmp_path)
    assert again.config.llm.attention_experts and again.image_token_id == model.image_token_id
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_truncated_checkpoint_names_the_file(tmp_path):
    d = copy_fixture(tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated or corrupt"):
        MonoInternVL.from_pretrained(d)


def test_missing_unexpected_and_misshaped_tensors_are_named(tmp_path):
    d = copy_fixture(tmp_path)
    state = load_file(d / "model.safetensors")
    del state["language_model.model.layers.1.feed_forward_ve.w2.weight"]
    state["language_model.model.layers.0.extra.weight"] = torch.zeros(2)
    state["mlp1.1.bias"] = torch.zeros(7)
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        MonoInternVL.from_pretrained(d)
    msg = str(err.value)
    assert "missing (1): language_model.model.layers.1.feed_forward_ve.w2.weight" in msg
    assert "unexpected (1): language_model.model.layers.0.extra.weight" in msg
    assert "mlp1.1.bias: checkpoint [7] vs model [64]" in msg


def test_missing_directory_and_shard_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        MonoInternVL.from_pretrained(tmp_path / "nope")
    d = copy_fixture(tmp_path)
    (d / INDEX).write_text(json.dumps({"weight_map": {"mlp1.1.bias": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="model-00001-of-00002.safetensors"):
        MonoInternVL.from_pretrained(d)


def test_modular_internvl_config_is_refused(tmp_path):
    d = copy_fixture(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["vision_config"]["model_type"] = "intern_vit_6b"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="modular InternVL"):
        MonoInternVL.from_pretrained(d)
