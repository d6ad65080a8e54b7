"""Training diagnostics: the numbers that tell whether the visual path learns (issue 13)."""

import json

import torch

from monovl.model.vision import image_features
from monovl.training.diagnostics import gradient_norms, vision_probe
from test_training import ListData
from tiny import IMG_CONTEXT, image_prompt, random_tiles, tiny_model

IGNORE = -100


def batch_of(n=3, answer=(40, 41, 7)):
    ids, labels = [], []
    for i in range(n):
        row = image_prompt([5, 6 + i], tiles=1, suffix=[8, 9]) + list(answer)
        ids.append(row)
        labels.append([IGNORE] * (len(row) - len(answer)) + list(answer))
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
            "pixel_values": torch.cat([random_tiles(1, seed=10 + i) for i in range(n)])}


def test_embedding_scales_match_a_manual_computation():
    model = tiny_model()
    batch = batch_of()
    stats = vision_probe(model, batch, torch.device("cpu"), IMG_CONTEXT)
    with torch.no_grad():
        feats = image_features(model.vision_model, model.mlp1, batch["pixel_values"], model.config)
        text = model.language_model.model.tok_embeddings(batch["input_ids"][batch["input_ids"] != IMG_CONTEXT])
    assert abs(stats["img_norm"] - float(feats.norm(dim=-1).mean())) < 1e-5
    assert abs(stats["text_norm"] - float(text.norm(dim=-1).mean())) < 1e-5
    spread = float((feats - feats.mean(0)).pow(2).sum(-1).mean().sqrt()) / stats["img_norm"]
    assert abs(stats["img_token_spread"] - spread) < 1e-5


def test_swap_is_zero_when_the_image_path_carries_nothing():
    model = tiny_model()
    batch = batch_of()
    assert vision_probe(model, batch, torch.device("cpu"), IMG_CONTEXT)["swap_tv"] > 1e-4
    with torch.no_grad():  # mlp1's last layer outputs a constant: every image looks the same
        model.mlp1[3].weight.zero_()
        model.mlp1[3].bias.fill_(0.3)
    stats = vision_probe(model, batch, torch.device("cpu"), IMG_CONTEXT)
    assert stats["swap_tv"] < 1e-6 and abs(stats["swap_target_dlogp"]) < 1e-5
    assert stats["img_token_spread"] < 1e-6 and stats["img_image_spread"] < 1e-6


def test_attention_mass_is_the_share_of_image_keys_under_uniform_attention():
    model = tiny_model()
    with torch.no_grad():  # zero keys: every visible key gets the same weight
        for layer in model.language_model.model.layers:
            att = layer.attention
            w = att.wqkv.weight.view(att.n_kv, att.groups + 2, att.head_dim, -1)
            w[:, att.groups].zero_()
    batch = batch_of(n=2)
    ids = batch["input_ids"][0]
    stats = vision_probe(model, batch, torch.device("cpu"), IMG_CONTEXT)
    answer_positions = [t for t in range(len(ids) - 1) if batch["labels"][0, t + 1] != IGNORE]
    n_img = int((ids == IMG_CONTEXT).sum())
    expected = sum(n_img / (t + 1) for t in answer_positions) / len(answer_positions)
    assert abs(stats["attn_to_image"] - expected) < 1e-5
    assert abs(stats["attn_to_image_max"] - expected) < 1e-5


def test_attention_mass_respects_padding():
    model = tiny_model()
    batch = batch_of(n=2)
    padded = {k: v.clone() for k, v in batch.items()}
    # left-pad both rows by two tokens: the statistics must not change
    pad = torch.zeros(2, 2, dtype=torch.long)
    padded["input_ids"] = torch.cat([pad, batch["input_ids"]], 1)
    padded["labels"] = torch.cat([pad - 100, batch["labels"]], 1)
    padded["attention_mask"] = torch.cat([torch.zeros(2, 2, dtype=torch.long), torch.ones_like(batch["input_ids"])], 1)
    a = vision_probe(model, batch, torch.device("cpu"), IMG_CONTEXT)
    b = vision_probe(model, padded, torch.device("cpu"), IMG_CONTEXT)
    for key in ("attn_to_image", "swap_tv", "img_norm", "text_norm"):
        assert abs(a[key] - b[key]) < 1e-4, key


def test_probe_leaves_the_model_as_it_was():
    model = tiny_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vision_probe(model, batch_of(), torch.device("cpu"), IMG_CONTEXT)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(layer.attention.attention_probe is None for layer in model.language_model.model.layers)


def test_gradient_norms_per_group():
    model = tiny_model()
    model.zero_grad()
    for n, p in model.named_parameters():
        p.grad = torch.full_like(p, 2.0) if n.startswith("mlp1.") else None
    norms = gradient_norms(model)
    expected = 2.0 * sum(p.numel() for n, p in model.named_parameters() if n.startswith("mlp1.")) ** 0.5
    assert set(norms) == {"grad_norm/mlp1 projector"}
    assert abs(norms["grad_norm/mlp1 projector"] - expected) < 1e-3


def test_trainer_logs_diagnostics(tiny_model_dir, tmp_path):
    from monovl.training import TrainConfig
    from monovl.training.trainer import Trainer

    batch = batch_of(n=2)
    cfg = TrainConfig(stage="s1.1", model=str(tiny_model_dir), out=str(tmp_path), max_steps=4, lr=1e-3,
                      diag_every=2)
    Trainer(cfg, data=ListData([batch])).train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    diag = [r["step"] for r in rows if "swap_tv" in r]
    assert diag == [1, 2, 4]
    assert all("grad_norm/mlp1 projector" in r and "attn_to_image" in r for r in rows if r["step"] in diag)
    assert (tmp_path / "vision.png").exists() and (tmp_path / "loss.png").exists()
