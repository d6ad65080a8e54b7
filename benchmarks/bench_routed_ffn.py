"""The block-routed FFN kernel (Triton) against the gather/scatter routing, prefill on a GPU.

    python benchmarks/bench_routed_ffn.py [--tokens 1024,2048,4096] [--hidden 2048] [--ffn 8192]

One decoder FFN of the 2B shape (hidden 2048, FFN 8192), bf16, for a prompt whose image tokens
come in runs of 256 (one 448 px tile each) between text: 3 tiles at 1024 tokens, 7 at 2048, 15 at
4096, with the text split around them. Times `decoder.Route.apply` (index_select, one expert per
side, index_copy) and `triton_routed.routed_swiglu` (blocks of rows, no gather or scatter), median
of CUDA-event timings, and checks they agree. Needs CUDA and Triton (issue 17, item 5).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from monovl.model import triton_routed
from monovl.model.decoder import FeedForward, Route


def median_ms(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="1024,2048,4096")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=8192)
    args = ap.parse_args()
    if not torch.cuda.is_available() or not triton_routed.available():
        raise SystemExit("needs a CUDA GPU and Triton")
    torch.manual_seed(0)
    text_ffn = FeedForward(args.hidden, args.ffn).cuda().bfloat16()
    visual_ffn = FeedForward(args.hidden, args.ffn).cuda().bfloat16()
    print(f"FFN {args.hidden} -> {args.ffn}, bf16, {torch.cuda.get_device_name()}")
    print("| tokens | image tokens | gather/scatter (ms) | block-routed (ms) | speed-up | max abs diff |")
    print("|---:|---:|---:|---:|---:|---:|")
    with torch.no_grad():
        for t in (int(v) for v in args.tokens.split(",")):
            tiles = max(1, (t - 256) // 256)
            vis = torch.zeros(1, t, dtype=torch.bool, device="cuda")
            start = (t - 256 * tiles) // 2
            vis[0, start:start + 256 * tiles] = True
            x = torch.randn(1, t, args.hidden, device="cuda", dtype=torch.bfloat16)
            route = Route.from_mask(vis)
            ref = route.apply(x, text_ffn, visual_ffn)
            got = triton_routed.routed_swiglu(x, vis, text_ffn, visual_ffn)
            diff = (got.float() - ref.float()).abs().max().item()
            a = median_ms(lambda: Route.from_mask(vis).apply(x, text_ffn, visual_ffn))
            b = median_ms(lambda: triton_routed.routed_swiglu(x, vis, text_ffn, visual_ffn))
            print(f"| {t} | {256 * tiles} | {a:.3f} | {b:.3f} | {a / b:.2f}x | {diff:.3g} |")


if __name__ == "__main__":
    main()
