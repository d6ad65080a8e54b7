"""Decode products at batch B: the native row-streaming kernel, PyTorch's GEMM (MKL) and oneDNN's GEMM on a packed weight.

    .venv/bin/python benchmarks/bench_decode_rows.py [--preset cpu-420m | --model DIR] [--rows 1,4,8,16,32] [--int8]

For each weight shape of the decode step (wqkv, wo, w1 = w3, w2, the head) of the preset, or of the
checkpoint in DIR, and each row count: the median time of `torch.ops.monovl_decode.linear`
(monovl/engine/csrc/decode_kernels.cpp), of `F.linear`, and of `torch.ops.mkldnn._linear_pointwise`
on the weight packed once (`monovl.engine.packed_linear`, what prefill uses). Each product gets its
own weights, 16 copies taken in turn, so that no weight is still in the cache from the call before,
as in a decode step that streams every layer's weights once. In `monovl.engine.decode_kernels`,
`PACKED_MIN_ROWS` is the row count from which the decode step takes the packed products (the
smallest where they win on the measured machine, README "Performance"), and `NATIVE_MAX_ROWS` the
count up to which the native ones beat `F.linear` where packing is unavailable. `--int8` adds the
weight-only int8 product (`linear_int8`, the same weight rounded per output channel).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from monovl.engine.decode_kernels import native_kernels
from monovl.model.config import MonoConfig, preset
from monovl.model.quantize import quantize_rows


def median_ms(fn, reps: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def llm_config(preset_name: str, model: str | None):
    """The LLM shape of a checkpoint directory, else of a preset (weights are not needed)."""
    return MonoConfig.from_json(f"{model}/config.json").llm if model else preset(preset_name).llm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-420m")
    ap.add_argument("--model", help="a checkpoint directory: its shapes instead of the preset's")
    ap.add_argument("--rows", default="1,4,8,16,32")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--int8", action="store_true", help="also time the int8 product (linear_int8)")
    args = ap.parse_args()
    kernels = native_kernels()
    if kernels is None:
        raise SystemExit("the native decode kernels could not be built here; nothing to compare")
    llm = llm_config(args.preset, args.model)
    qkv = (llm.num_attention_heads + 2 * llm.num_key_value_heads) * llm.head_dim
    shapes = {"wqkv": (qkv, llm.hidden_size), "wo": (llm.hidden_size, llm.num_attention_heads * llm.head_dim),
              "w1, w3": (llm.intermediate_size, llm.hidden_size), "w2": (llm.hidden_size, llm.intermediate_size),
              "head": (llm.vocab_size, llm.hidden_size)}
    rows = [int(r) for r in args.rows.split(",")]
    print(f"{args.model or 'preset ' + args.preset}, threads {torch.get_num_threads()}; ms per product, native / "
          + ("native int8 / " if args.int8 else "") + "F.linear / packed (native's time over F.linear's, over packed's)")
    print("| weight | " + " | ".join(f"{r} rows" for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for name, (out, inn) in shapes.items():
            copies = 2 if out * inn >= 2**26 else 16  # the head alone is larger than any cache
            ws = [torch.randn(out, inn, generator=g) for _ in range(copies)]
            packed = [torch.ops.mkldnn._reorder_linear_weight(w, 512) for w in ws]
            qs = [quantize_rows(w) for w in ws] if args.int8 else []
            cells = []
            for r in rows:
                x = torch.randn(r, inn, generator=g)
                reps = max(3, args.reps if out * inn < 2**24 else args.reps // 3)
                per = len(ws)

                def each(fn):
                    return median_ms(lambda: [fn(i) for i in range(per)], reps) / per

                native = each(lambda i: kernels.ops.linear(x, ws[i], None))
                mkl = each(lambda i: F.linear(x, ws[i]))
                onednn = each(lambda i: torch.ops.mkldnn._linear_pointwise(x, packed[i], None, "none", [], ""))
                int8 = f"{each(lambda i: kernels.ops.linear_int8(x, *qs[i], None)):.2f} / " if args.int8 else ""
                cells.append(f"{native:.2f} / {int8}{mkl:.2f} / {onednn:.2f} ({native / mkl:.2f}x, {native / onednn:.2f}x)")
            print(f"| {name} [{out}x{inn}] | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
