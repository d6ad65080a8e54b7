"""`monovl bench speed`: TTFT and decode throughput in the shape of the paper's Table 6.

    monovl bench speed --preset cpu-420m                      # CPU: the quick grid
    monovl bench speed --model DIR --device cuda              # GPU: the paper's grid, bf16
    monovl bench speed --preset cpu-420m --modular-baseline   # against a ViT + LLM modular model
    monovl bench speed --preset tiny --image-tokens 8,16 --text-tokens 8 --new-tokens 4 --concurrency 1,2

Grids: ``paper`` = image tokens 768,1792,3840 x concurrency 1,16, 256 text
tokens, 120 new tokens (the default on CUDA); ``quick`` = image tokens
768,1792 x concurrency 1,4, 256 text tokens, 32 new tokens (the default on
CPU, where the paper grid on cpu-420m takes far too long). Explicit flags
override the grid's values.
"""

from __future__ import annotations

import argparse
import platform
from dataclasses import replace

import torch

from .chat import add_quantize_arg


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def run_speed_cli(args: argparse.Namespace) -> int:
    from ..eval.speed import PAPER_GRID, QUICK_GRID, build_random_model, run_speed, save_speed, speed_markdown
    from ..model.mono_internvl import MonoInternVL, resolve_dtype

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        # On a shared CPU, 1 thread avoids every GEMM waiting for a descheduled sibling thread.
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    grid_name = args.grid or ("paper" if device.type == "cuda" else "quick")
    grid = PAPER_GRID if grid_name == "paper" else QUICK_GRID
    overrides = {k: v for k, v in (("image_tokens", args.image_tokens), ("text_tokens", args.text_tokens),
                                   ("new_tokens", args.new_tokens), ("concurrency", args.concurrency),
                                   ("repeats", args.repeats)) if v is not None}
    grid = replace(grid, naive_baseline=not args.no_baseline, modular_baseline=args.modular_baseline, **overrides)

    dtype = resolve_dtype(args.dtype, device)
    if args.preset:
        model = build_random_model(args.preset, device, dtype)
        name = f"preset {args.preset} (random weights)"
        if args.quantize:
            from ..model.quantize import quantize_int8_

            quantize_int8_(model)
            name += f", {args.quantize}"
    else:
        model = MonoInternVL.from_pretrained(args.model, dtype=dtype, device=device, quantize=args.quantize)
        if model.image_token_id is None:
            model.image_token_id = model.config.llm.vocab_size - 7  # only a slot id is needed for timing
        name = str(args.model) + (f", {args.quantize}" if args.quantize else "")
    params = sum(p.numel() for p in model.parameters())
    meta = {
        "model": name, "params": params, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "grid": grid_name, "image_tokens": grid.image_tokens, "text_tokens": grid.text_tokens,
        "new_tokens": grid.new_tokens, "concurrency": grid.concurrency, "repeats": grid.repeats,
        "quantize": args.quantize,
        "modular_baseline": "InternViT-300M-shaped encoder + the same LLM" if grid.modular_baseline else None,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    print(f"{name}: {params / 1e6:.1f}M params on {device} ({meta['dtype']}), grid {grid_name}: "
          f"image tokens {grid.image_tokens}, text {grid.text_tokens}, new {grid.new_tokens}, "
          f"concurrency {grid.concurrency}")
    rows = run_speed(model, grid, log=print if not args.quiet else None)
    print()
    print(speed_markdown(rows))
    paths = save_speed(rows, args.out, meta)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks of this implementation",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bsub = p.add_subparsers(dest="bench_command", required=True)
    s = bsub.add_parser("speed", help="TTFT and decode throughput, routed vs naive experts (paper Table 6)",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint directory")
    src.add_argument("--preset", help="random-weight model of a preset: tiny, cpu-420m, 2b")
    s.add_argument("--grid", choices=("paper", "quick"), default=None,
                   help="default: paper on CUDA, quick on CPU")
    s.add_argument("--quick", action="store_const", dest="grid", const="quick", help="same as --grid quick")
    s.add_argument("--image-tokens", type=_int_list, default=None, help="e.g. 768,1792,3840")
    s.add_argument("--text-tokens", type=int, default=None, help="text tokens per prompt (paper: 256)")
    s.add_argument("--new-tokens", type=int, default=None, help="generated tokens (paper: 120)")
    s.add_argument("--concurrency", type=_int_list, default=None, help="batch sizes, e.g. 1,16")
    s.add_argument("--repeats", type=int, default=None, help="timed runs per cell (median; default 1)")
    s.add_argument("--no-baseline", action="store_true", help="skip the naive-routing baseline")
    s.add_argument("--modular-baseline", action="store_true",
                   help="also time a modular model: an InternViT-300M-shaped encoder (random weights) in front of "
                        "the same LLM, the paper's monolithic-vs-modular TTFT comparison")
    s.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    s.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    add_quantize_arg(s)
    s.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    s.add_argument("--out", default="bench-speed", help="output directory (speed.json, speed.md, speed.png)")
    s.add_argument("--quiet", action="store_true", help="only the final table")
    s.set_defaults(func=run_speed_cli)
