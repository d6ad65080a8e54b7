"""Does a demo model's colour and shape carry over to pictures the demo's generator did not draw?

The demo evaluates on new images from its own renderer (monovl/demo/render.py): same drawing code,
same six phrasings per question. This script draws its own: plain Pillow primitives (no outline, no
supersampling), other RGB values for the six colour words, a 5-point star with another inner
radius, a square of 0.85 r, canvases of 180-400 px in five shapes, four pale backgrounds, a Gaussian
blur on every third image, and questions worded in ways training never used ("What shape do you
see?", "Which colour is the object in the picture?"), each followed by the demo's answer suffix.
Objects are drawn in all 24 colour-shape pairs, so the held-out pairs are in it too.

    .venv/bin/python benchmarks/bench_own_images.py runs/demo/final [--n 96] [--out runs/bench/own-images]

For comparison it also scores `--generator-items` new items per task from the demo's own generator
with `--generator-seed` (neither the training seed 0 nor the demo's evaluation seed 1; all 24 pairs,
position asked about an object in any cell): a larger sample than the demo's table, from the same
distribution. Prints and writes
OUT/own_images.json: accuracy per task, and per object colour and per shape. Exact match after VQA
normalisation, as the demo scores.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from monovl.demo.evaluate import EvalItem, answer_hit, generate_answers, load_eval_items, score_visual
from monovl.demo.pipeline import DemoPlan
from monovl.demo.single import SINGLE_TASKS, write_eval_set
from monovl.demo.world import ANSWER_SUFFIX
from monovl.model.mono_internvl import MonoInternVL
from monovl.processing import IMAGE_PLACEHOLDER, MonoProcessor

# Not the renderer's RGB values (monovl.demo.render.COLORS): the same words, other shades.
COLORS = {"red": (214, 39, 40), "blue": (31, 90, 220), "green": (40, 160, 60), "yellow": (245, 205, 20),
          "orange": (250, 130, 20), "purple": (130, 50, 170)}
SHAPES = ("circle", "square", "triangle", "star")
QUESTIONS = {"color": ("What colour is this thing?", "Which color is the object in the picture?"),
             "shape": ("What shape do you see?", "Which geometric shape is this?")}
CANVASES = ((256, 256), (320, 240), (200, 300), (400, 260), (180, 180))
BACKGROUNDS = ((255, 255, 255), (235, 235, 235), (250, 245, 230), (220, 235, 245))


def draw(color: str, shape: str, rng: random.Random, blur: bool) -> Image.Image:
    """One object of radius 0.22-0.4 of the shorter side, anywhere inside a random canvas."""
    w, h = rng.choice(CANVASES)
    img = Image.new("RGB", (w, h), rng.choice(BACKGROUNDS))
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.4) * min(w, h)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    fill = COLORS[color]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = 0.85 * r
        d.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - 0.87 * r, cy + 0.5 * r), (cx + 0.87 * r, cy + 0.5 * r)], fill=fill)
    else:
        d.polygon([(cx + (r if i % 2 == 0 else 0.42 * r) * math.cos(-math.pi / 2 + i * math.pi / 5),
                    cy + (r if i % 2 == 0 else 0.42 * r) * math.sin(-math.pi / 2 + i * math.pi / 5))
                   for i in range(10)], fill=fill)
    return img.filter(ImageFilter.GaussianBlur(1)) if blur else img


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a monovl checkpoint directory (runs/demo/final)")
    ap.add_argument("--n", type=int, default=96, help="images; each is asked its colour and its shape")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--generator-items", type=int, default=96, help="items per task from the demo's generator (0: none)")
    ap.add_argument("--generator-seed", type=int, default=2)
    ap.add_argument("--out", default="runs/bench/own-images")
    args = ap.parse_args()
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    items: list[tuple[EvalItem, str, str]] = []
    for k in range(args.n):
        color, shape = list(COLORS)[k % 6], SHAPES[(k // 6) % 4]  # all 24 pairs in turn
        path = out / "images" / f"{k:03d}-{color}-{shape}.png"
        draw(color, shape, rng, blur=k % 3 == 0).save(path)
        for task, answer in (("color", color), ("shape", shape)):
            question = f"{IMAGE_PLACEHOLDER}\n{rng.choice(QUESTIONS[task])}\n{ANSWER_SUFFIX}"
            items.append((EvalItem(task, question, str(path), [answer]), color, shape))

    model, processor = MonoInternVL.from_pretrained(args.model), MonoProcessor.from_pretrained(args.model)
    result: dict = {"model": args.model, "images": args.n, "seed": args.seed}
    for task in QUESTIONS:
        chosen = [x for x in items if x[0].task == task]
        preds = generate_answers(model, processor, [(i.question, i.image) for i, _, _ in chosen], max_new_tokens=8,
                                 batch_size=16, desc=f"own images: {task}")
        hits = [answer_hit(p, i.answers) for p, (i, _, _) in zip(preds, chosen)]
        result[task] = 100 * sum(hits) / len(hits)
        for key, pick in (("by_color", 1), ("by_shape", 2)):
            right, total = Counter(), Counter()
            for h, x in zip(hits, chosen):
                right[x[pick]] += h
                total[x[pick]] += 1
            result[f"{task}_{key}"] = {k: f"{right[k]}/{total[k]}" for k in total}
        result[f"{task}_wrong"] = [{"image": i.image, "prediction": p} for p, h, (i, _, _) in zip(preds, hits, chosen)
                                   if not h]
    if args.generator_items:
        plan = DemoPlan()
        jsonl = write_eval_set(out / f"generator-seed{args.generator_seed}", SINGLE_TASKS, args.generator_items,
                               seed=args.generator_seed, radius=plan.radius, image_size=plan.image_size)
        scores, _ = score_visual(model, processor, load_eval_items(jsonl))  # the demo's own scoring
        n = args.generator_items
        for task, pct in scores.items():
            result[f"generator_{task}"] = f"{round(pct * n / 100)}/{n} = {pct:.1f}%"
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_wrong")}, indent=1))
    (out / "own_images.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
