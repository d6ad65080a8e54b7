"""`monovl demo`: teach SmolLM2-135M-Instruct to see with the EViP recipe, end to end on a CPU."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ..demo.pipeline import run_demo

    run_demo(args.out, quick=args.quick, ablation=args.ablation, full=args.full)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..demo import pipeline

    p = sub.add_parser("demo", help="teach a real pretrained LLM to see (upcycle, EViP s1.1-s2, evaluate)",
                       description=pipeline.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a smoke run of the same path (a few minutes)")
    p.add_argument("--full", action="store_true",
                   help="also teach reading one word (a ladder of word-scene phases), counting (1-4 objects) "
                        "and position (a third s1.3 phase, s1.3c), and score them")
    p.add_argument("--ablation", action="store_true",
                   help="also train with full tuning and with a single stage, same budget, for comparison")
    p.set_defaults(func=run)
