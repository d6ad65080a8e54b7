"""How fine a detail does a demo model see? Scores the demo's evaluation items as drawn, and again with
every B x B block of the tile replaced by its mean colour: B = one patch (14 px) and B = one image
token (28 px: pixel shuffle folds 2 x 2 patches into a token). A skill whose score holds at B = 14
is answered from the patches' mean colours alone; reading needs the strokes inside a patch.

It also prints where the patch embedding's training went: the share of the change in its weights
[Dv, 3, P, P] (checkpoint minus `--base`) that lies in the 3 directions that respond only to a
patch's mean colour per channel (constant over the P x P pixels). At random that share is 3 in
3*P*P (0.5% at P = 14).

    .venv/bin/python benchmarks/bench_detail.py runs/demo/final --base runs/demo/base-224 \
        [--per-task 48] [--out runs/bench/detail]

Images are first resized to one square tile, as the demo's processor does with one tile per image,
so the unblurred scores equal the demo's. Writes OUT/detail.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open

from monovl.checkpoint.safetensors_io import CheckpointError, weight_files
from monovl.demo.evaluate import EvalItem, load_eval_items, score_visual
from monovl.demo.pipeline import DemoPlan
from monovl.model.mono_internvl import MonoInternVL
from monovl.processing import MonoProcessor

PATCH_WEIGHT = "vision_model.embeddings.patch_embedding.weight"


def block_mean(image: Image.Image, tile: int, block: int | None) -> Image.Image:
    """`image` resized to tile x tile, then (block given) every block x block square set to its mean."""
    image = image.convert("RGB").resize((tile, tile), Image.BICUBIC)
    if block is None:
        return image
    return image.resize((tile // block, tile // block), Image.BOX).resize((tile, tile), Image.NEAREST)


def mean_colour_share(delta: torch.Tensor) -> float:
    """Share of ||delta||^2 ([Dv, C, P, P]) in the directions constant over each channel's P x P pixels."""
    d = delta.float().flatten(2)  # [Dv, C, P*P]
    return float(d.mean(-1).pow(2).sum() * d.shape[-1] / d.pow(2).sum())


def read_patch_weight(model_dir: Path) -> torch.Tensor:
    """The patch embedding's weight from a checkpoint directory (one file or shards), alone."""
    for path in weight_files(model_dir):
        with safe_open(str(path), "pt") as f:
            if PATCH_WEIGHT in f.keys():
                return f.get_tensor(PATCH_WEIGHT)
    raise CheckpointError(f"{model_dir} has no {PATCH_WEIGHT}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="a monovl checkpoint directory (runs/demo/final)")
    ap.add_argument("--base", type=Path, help="the checkpoint it was trained from, for the weight share "
                                              "(runs/demo/base-224); without it, only the scores")
    ap.add_argument("--per-task", type=int, default=48, help="items per task (the demo's evaluation: 48)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/detail"))
    args = ap.parse_args()

    plan = DemoPlan.full()  # its evaluation: the default's tasks, counting, and reading FULL_WORDS
    base_weight = read_patch_weight(args.base) if args.base else None  # a bad --base fails before the scoring
    model = MonoInternVL.from_pretrained(args.model).eval()
    processor = MonoProcessor.from_pretrained(args.model)
    tile, patch = model.config.vision.image_size, model.config.vision.patch_size
    jsonl = plan.write_eval_set(args.out / "eval-set", args.per_task)
    items = load_eval_items(jsonl, per_task=args.per_task)
    result: dict = {"model": str(args.model), "tile": tile, "patch": patch, "scores": {}}
    for block in (None, patch, 2 * patch):
        folder = args.out / f"block-{block or 1}"
        folder.mkdir(parents=True, exist_ok=True)
        blurred = []
        for i, item in enumerate(items):
            path = folder / f"{i:05d}.png"
            block_mean(Image.open(item.image), tile, block).save(path)
            blurred.append(EvalItem(item.task, item.question, str(path), item.answers))
        scores, _ = score_visual(model, processor, blurred)
        name = "as drawn" if block is None else f"{block} px blocks"
        result["scores"][name] = scores
        print(f"{name:>14}: " + ", ".join(f"{t} {s:.1f}" for t, s in scores.items()), flush=True)
    if base_weight is not None:
        trained = model.get_parameter(PATCH_WEIGHT).detach()  # already loaded: not read twice
        share = mean_colour_share(trained.float() - base_weight.float())
        result["mean_colour_share_of_patch_embedding_change"] = share
        print(f"patch embedding: {100 * share:.1f}% of its change responds only to a patch's mean colour "
              f"(at random {100 * 3 / (3 * patch * patch):.1f}%)")
    (args.out / "detail.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out / 'detail.json'}")


if __name__ == "__main__":
    main()
