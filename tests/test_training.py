"""Delta tuning: stage presets, frozen means bit-identical, loss goes down, exact resume."""

import shutil

import pytest
import torch

from monovl import MonoInternVL
from monovl.training import TrainConfig, apply_stage, get_stage, parameter_summary
from monovl.training.trainer import Trainer
from tiny import image_prompt, random_tiles, tiny_model

IGNORE = -100


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


class ListData:
    """A fixed cycle of batches with an exact position, standing in for the data pipeline."""

    def __init__(self, batches, crash_at=None):
        self.batches, self.pos, self.crash_at = batches, 0, crash_at

    def __iter__(self):
        while True:
            if self.pos == self.crash_at:
                raise RuntimeError("simulated crash")
            batch = self.batches[self.pos % len(self.batches)]
            self.pos += 1  # counts batches handed out, so the state saved after a step is exact
            yield batch

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, s):
        self.pos = s["pos"]


def make_batches(n=3):
    out = []
    for i in range(n):
        answer = [40 + i, 41 + i, 42 + i, 7]
        ids = image_prompt([5, 6], tiles=1, suffix=[8, 9]) + answer
        labels = [IGNORE] * (len(ids) - len(answer)) + answer
        # <img>/</img> (498/499) are new tokens: their embedding rows may train in s1.x
        out.append({"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                    "pixel_values": random_tiles(1, seed=i)})
    return out


def text_logits(model):
    with torch.no_grad():
        return model(torch.tensor([[1, 20, 21, 22, 23, 24]])).logits


def test_stage_presets():
    model = tiny_model(attention_experts=True)
    s11 = apply_stage(model, get_stage("s1.1", "v1.5"))
    assert "language_model.model.layers.0.feed_forward_ve.w1.weight" in s11
    assert "language_model.model.layers.1.attention.wqkv_ve.weight" in s11
    assert "mlp1.1.weight" in s11 and "vision_model.embeddings.patch_embedding.weight" in s11
    assert "language_model.model.layers.0.attention.wqkv.weight" not in s11
    assert "language_model.model.layers.0.feed_forward.w1.weight" not in s11
    assert "language_model.output.weight" not in s11
    s13 = apply_stage(model, get_stage("s1.3", "v1.5"))
    assert set(s11) < set(s13) and "language_model.model.layers.0.attention.wo.weight" in s13
    v1 = apply_stage(tiny_model(), get_stage("s1.1", "v1"))
    assert not any("_ve.w" in n and "attention" in n for n in v1)
    assert len(apply_stage(model, get_stage("s2", "v1.5"))) == len(list(model.parameters())) - 1  # dead CLS
    custom = apply_stage(model, get_stage("s1.1", "v1.5", trainable=["mlp1.*"]))
    # a custom list keeps the stage's purpose but not the preset's claim about what trains
    assert get_stage("s1.3", trainable=["mlp1.*"]).description == "alignment learning on task data; custom trainable list"
    assert all(n.startswith("mlp1") for n in custom if "tok_embeddings" not in n)
    with pytest.raises(ValueError, match="matches no parameter"):
        apply_stage(model, get_stage("s2", trainable=["mlp2.*"]))
    with pytest.raises(ValueError, match="unknown stage"):
        get_stage("s3")
    assert "visual FFN experts" in parameter_summary(model)


def test_s11_keeps_frozen_weights_and_text_outputs_bit_identical(model_dir, tmp_path):
    before = MonoInternVL.from_pretrained(model_dir)
    cfg = TrainConfig(stage="s1.1", model=str(model_dir), data="-", out=str(tmp_path), max_steps=6, lr=5e-3,
                      batch_size=1)
    final = Trainer(cfg, data=ListData(make_batches())).train()
    after = MonoInternVL.from_pretrained(final)
    trainable = set(apply_stage(tiny_model(), get_stage("s1.1", "v1")))
    a, b = before.state_dict(), after.state_dict()
    for name in a:
        if name == "language_model.model.tok_embeddings.weight":
            assert torch.equal(a[name][:498], b[name][:498]) and torch.equal(a[name][507:], b[name][507:])
            assert not torch.equal(a[name][498:500], b[name][498:500])  # <img>, </img> rows trained
        elif name == "vision_model.embeddings.class_embedding":
            assert torch.equal(a[name], b[name])  # dead weight: the CLS output is dropped, no gradient
        elif name in trainable:
            assert not torch.equal(a[name], b[name]), f"{name} did not train"
        else:
            assert torch.equal(a[name], b[name]), f"frozen {name} changed"
    assert torch.equal(text_logits(before), text_logits(after))
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "loss.png").exists()
    assert (final / "train_config.yaml").exists() and (final / "tokenizer.model").exists()


def test_loss_goes_down_on_an_overfit_set(model_dir, tmp_path):
    import json
    cfg = TrainConfig(stage="s2", model=str(model_dir), data="-", out=str(tmp_path), max_steps=30, lr=3e-3)
    Trainer(cfg, data=ListData(make_batches(2))).train()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 30 and sum(losses[-3:]) / 3 < 0.3 * sum(losses[:3]) / 3


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(model_dir, tmp_path):
    def cfg(out, steps):
        return TrainConfig(stage="s1.3", model=str(model_dir), data="-", out=str(out), max_steps=steps,
                           save_every=2, lr=2e-3, warmup_steps=1)
    straight = Trainer(cfg(tmp_path / "a", 4), data=ListData(make_batches())).train()
    # Die while computing step 3, after the step-2 checkpoint, then resume to step 4.
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(cfg(tmp_path / "b", 4), data=ListData(make_batches(), crash_at=2)).train()
    assert not (tmp_path / "b" / "final").exists()
    resumed = Trainer(cfg(tmp_path / "b", 4), resume=True, data=ListData(make_batches()))
    assert resumed.step == 2 and resumed.data.pos == 2
    final = resumed.train()
    a = MonoInternVL.from_pretrained(straight).state_dict()
    b = MonoInternVL.from_pretrained(final).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_s11_with_tied_embeddings_keeps_text_logits_bit_identical(tmp_path, tiny_tokenizer_dir):
    # Tied embeddings (SmolLM2): the new token rows are output rows too, so they stay frozen in s1.x.
    d = tmp_path / "tied"
    tiny_model(seed=12, tie_word_embeddings=True).save_pretrained(d)
    for item in tiny_tokenizer_dir.iterdir():
        shutil.copy(item, d / item.name)
    before = MonoInternVL.from_pretrained(d)
    cfg = TrainConfig(stage="s1.1", model=str(d), data="-", out=str(tmp_path / "out"), max_steps=3, lr=5e-3)
    after = MonoInternVL.from_pretrained(Trainer(cfg, data=ListData(make_batches())).train())
    assert torch.equal(text_logits(before), text_logits(after))
    emb = "language_model.model.tok_embeddings.weight"
    assert torch.equal(before.state_dict()[emb], after.state_dict()[emb])
    assert not torch.equal(before.state_dict()["mlp1.1.weight"], after.state_dict()["mlp1.1.weight"])


def test_lr_scale_gives_matching_parameters_their_own_lr():
    from monovl.training.trainer import build_optimizer

    model = tiny_model()
    apply_stage(model, get_stage("s1.3", "v1"))
    cfg = TrainConfig(lr=1e-4, lr_scale={"mlp1.*": 10, "vision_model.*": 3})
    opt = build_optimizer(model, cfg)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for n, p in model.named_parameters():
        if p.requires_grad:
            want = 1e-3 if n.startswith("mlp1.") else 3e-4 if n.startswith("vision_model.") else 1e-4
            assert lr_of[id(p)] == pytest.approx(want), n
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="lr_scale"):
        TrainConfig(lr_scale={"mlp1.*": 0})
    with pytest.raises(ValueError, match="dtype"):
        TrainConfig(dtype="fp16")
