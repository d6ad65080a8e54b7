"""`monovl` entry point: one verb per job (litgpt style)."""

from __future__ import annotations

import argparse
import sys

from . import bench, chat, demo, serve, train, upcycle
from . import eval as eval_cmd  # `eval` would shadow the builtin


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monovl", description="Monolithic multimodal LLMs in plain PyTorch.")
    sub = parser.add_subparsers(dest="verb", required=True)
    chat.add_parser(sub)
    demo.add_parser(sub)
    train.add_parser(sub)
    upcycle.add_parser(sub)
    eval_cmd.add_parser(sub)
    bench.add_parser(sub)
    serve.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as e:
        # Bad input (a corrupt image, a wrong checkpoint, a mismatched count) is the user's to fix:
        # say what is wrong in one message instead of a traceback.
        print(f"monovl {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
