"""Does a checkpoint's image embedding carry a property, before the LLM reads it? A linear probe.

For every record of one task in an evaluation-style JSONL (`task`, `answer`, `image`; what
`monovl.demo.single.write_single_object_set` writes), the image is tiled as training tiles it (one
tile of the checkpoint's size), embedded by the patch embedding and `mlp1` only (the tokens that
enter the decoder, [64, H] at 224 px), and pooled over tokens. A multinomial logistic regression
(L-BFGS, L2 1e-3) is fitted on the first 75% and scored on the rest.

Two poolings are reported, because the LLM's attention is a weighted mean: `mean` (what uniform
attention would read) and `mean+absmean+max` (what a per-token non-linearity followed by pooling
can read). If the second is high and the trained model still answers at chance, the information
is in the image tokens and the LLM side does not read it yet.

    .venv/bin/python benchmarks/probe_image_features.py runs/bench/base-224-t1 \
        runs/bench/single-224-r0.2-0.4/train-factorized --task shape
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from monovl.model.mono_internvl import MonoInternVL
from monovl.model.vision import image_features
from monovl.processing.image import preprocess_images


def fit_and_score(x: torch.Tensor, y: torch.Tensor, n_train: int, classes: int) -> float:
    """Held-out accuracy of an L2-regularised logistic regression on standardised features."""
    mu, sd = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
    x = (x - mu) / sd
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[:n_train] @ w + b, y[:n_train]) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return ((x[n_train:] @ w + b).argmax(1) == y[n_train:]).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("data", help="folder holding data.jsonl with task, answer and image on every record")
    ap.add_argument("--task", default="shape")
    args = ap.parse_args()

    model = MonoInternVL.from_pretrained(args.checkpoint).eval()
    size = model.config.vision.image_size
    data = Path(args.data)
    records = [r for r in map(json.loads, (data / "data.jsonl").read_text().splitlines()) if r["task"] == args.task]
    if len(records) < 8:
        raise SystemExit(f"{data / 'data.jsonl'} has {len(records)} records of task {args.task!r}; need at least 8")
    pooled: dict[str, list[torch.Tensor]] = {"mean": [], "mean+absmean+max": []}
    with torch.no_grad():
        for r in records:
            tiles, _ = preprocess_images(data / r["image"], size, max_num=1)
            f = image_features(model.vision_model, model.mlp1, tiles, model.config)  # [tokens, H]
            pooled["mean"].append(f.mean(0))
            pooled["mean+absmean+max"].append(torch.cat([f.mean(0), f.abs().mean(0), f.amax(0)]))
    classes = sorted({r["answer"] for r in records})
    y = torch.tensor([classes.index(r["answer"]) for r in records])
    n_train = int(len(records) * 0.75)
    for name, feats in pooled.items():
        acc = fit_and_score(torch.stack(feats), y, n_train, len(classes))
        print(f"{args.task} ({len(classes)} classes, {n_train} train / {len(records) - n_train} test), "
              f"pooling {name}: held-out accuracy {100 * acc:.1f}%")


if __name__ == "__main__":
    main()
