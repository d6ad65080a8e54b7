"""fp32 prefill GEMMs on the CPU: `F.linear` against PyTorch's oneDNN linear on weights packed once.

    .venv/bin/python benchmarks/bench_prefill_gemm.py [--threads N]

vLLM's CPU backend packs every linear weight for oneDNN at load and calls it per step; stock PyTorch
has the same kernels (`torch.ops.mkldnn._reorder_linear_weight` and `_linear_pointwise`, what
`torch.compile` with freezing uses). This times both on the cpu-420m and 2B shapes of a prefill
(M tokens x K -> N), checks that they agree to fp32 rounding, and prints GFLOP/s: the evidence for the
engine's packed prefill (`monovl/engine/packed_linear.py`).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from bench_decode_rows import median_ms  # the benchmarks' one timer (run from the repo root as a script)

SHAPES = [  # (tokens, in, out): cpu-420m wqkv / w1 / w2 at a 360-token prompt, 2B w1 at 768 tokens
    (360, 1024, 3072), (360, 1024, 4096), (360, 4096, 1024), (768, 2048, 8192)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| M x K -> N | F.linear ms | GFLOP/s | oneDNN packed ms | GFLOP/s | speed-up | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for m, k, n in SHAPES:
        x, w = torch.randn(m, k), torch.randn(n, k) * 0.02
        packed = torch.ops.mkldnn._reorder_linear_weight(w, m)
        ref = F.linear(x, w)
        out = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        diff = (out - ref).abs().max().item()
        a = median_ms(lambda: F.linear(x, w), 15)
        b = median_ms(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""), 15)
        gflop = 2 * m * k * n / 1e9
        print(f"| {m} x {k} -> {n} | {a:.1f} | {gflop / a * 1e3:.0f} | {b:.1f} | {gflop / b * 1e3:.0f} | "
              f"{a / b:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
