"""Decode attention on CPU: the native kernel against SDPA with `enable_gqa` (the PyTorch kernels).

    .venv/bin/python benchmarks/bench_decode_attention.py [--keys 1028] [--layers 8]

One new query per step against a KV cache, shaped like `cpu-420m` (8 query heads, 4 KV heads,
head_dim 128), laid out as in decode: packed qkv rows [1, n_kv, groups + 2, head_dim] and a
preallocated cache [1, n_kv, capacity, head_dim] filled to `--keys`. Each repeat first streams a
64 MiB buffer, so the caches come from memory as they do in a real decode step (the weights evict
them between layers).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from monovl.engine.decode_kernels import TorchKernels, native_kernels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1028, help="cached tokens")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()

    torch.manual_seed(0)
    h, kv, d, n = args.heads, args.kv_heads, args.head_dim, args.keys
    ks = [torch.randn(1, kv, n + 256, d) for _ in range(args.layers)]
    vs = [torch.randn(1, kv, n + 256, d) for _ in range(args.layers)]
    qkv = torch.randn(1, kv, h // kv + 2, d)
    scale = 1 / math.sqrt(d)
    evict = torch.randn(64 * 1024 * 1024 // 4)
    kernels = {"SDPA enable_gqa (PyTorch kernels)": TorchKernels()}
    native = native_kernels()
    if native is not None:
        kernels["native attend"] = native
    reference = TorchKernels().attend(qkv, ks[0], vs[0], n, None, scale)
    for k in kernels.values():
        torch.testing.assert_close(k.attend(qkv, ks[0], vs[0], n, None, scale), reference, rtol=1e-5, atol=1e-5)

    kv_bytes = 2 * kv * n * d * 4
    print(f"{args.layers} layers, {n} cached tokens, {kv_bytes / 1e6:.1f} MB of K/V per layer, "
          f"{torch.get_num_threads()} threads")
    with torch.inference_mode():
        for name, k in list(kernels.items()) * 2:
            total = 0.0
            for _ in range(args.reps):
                evict.sum()
                t = time.perf_counter()
                for kc, vc in zip(ks, vs):
                    k.attend(qkv, kc, vc, n, None, scale)
                total += time.perf_counter() - t
            per_layer = total / args.reps / args.layers
            print(f"{name:34s} {per_layer * 1e6:6.0f} us/layer  {kv_bytes / per_layer / 1e9:5.1f} GB/s")


if __name__ == "__main__":
    main()
