"""Each kernel of the CPU decode step, native C++ against its PyTorch counterpart, on a model's shapes.

    .venv/bin/python benchmarks/bench_decode_kernels.py [--preset cpu-420m | --model DIR] [--context 1028]

For one decode row (B = 1) on the decoder's own shapes: every call the step makes per layer (RMSNorm,
the wqkv product, rotary + cache write, attention over `--context` cached tokens, the wo product
added into the residual, SwiGLU, the w2 product) and the head, timed as `NativeKernels` and as
`TorchKernels` (monovl/engine/decode_kernels.py), median over repeats. A kernel's gain is the
PyTorch time over the native time; the issue's rule is that an fp32 kernel gaining under 10% is
removed. The "native, per step" column sums a call over the layers, so it says where a step's time
goes. Weights are random (speed does not depend on them); the head of a tied model is counted
as its own product. `--int8` adds the int8 products of the same weights.
"""

from __future__ import annotations

import argparse

import torch
from bench_decode_rows import llm_config, median_ms  # the same timing and shapes as the per-row benchmark

from monovl.engine.decode_kernels import Int8Weight, TorchKernels, native_kernels
from monovl.model.quantize import quantize_rows


def median_us(fn, reps: int) -> float:
    return 1e3 * median_ms(fn, reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-420m")
    ap.add_argument("--model", help="a checkpoint directory: its shapes instead of the preset's")
    ap.add_argument("--context", type=int, default=1028, help="cached tokens attention reads")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--int8", action="store_true", help="also time the int8 products")
    args = ap.parse_args()
    native = native_kernels()
    if native is None:
        raise SystemExit("the native decode kernels could not be built here; nothing to compare")
    ref = TorchKernels()
    llm = llm_config(args.preset, args.model)
    h, ffn, n_kv, d = llm.hidden_size, llm.intermediate_size, llm.num_key_value_heads, llm.head_dim
    groups = llm.num_attention_heads // n_kv
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    x, norm = randn(1, h), randn(h)
    wqkv, wo = randn((groups + 2) * n_kv * d, h), randn(h, llm.num_attention_heads * d)
    w1, w3, w2, head = randn(ffn, h), randn(ffn, h), randn(h, ffn), randn(llm.vocab_size, h)
    qkv = randn(1, n_kv, groups + 2, d)
    k_cache, v_cache = randn(1, n_kv, args.context + 1, d), randn(1, n_kv, args.context + 1, d)
    angle = randn(1, d // 2)
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
    o, hidden, acc = randn(1, llm.num_attention_heads * d), randn(1, ffn), randn(1, h)
    layers = llm.num_hidden_layers
    calls = {  # name: (times per step, fn(kernels, weights))
        "rms_norm": (2 * layers + 1, lambda k, q: k.rms_norm(x, norm, 1e-6)),
        "linear wqkv": (layers, lambda k, q: k.linear(x, q(wqkv))),
        "rope_store": (layers, lambda k, q: k.rope_store(qkv, cos, sin, k_cache, v_cache, args.context)),
        f"attend ({args.context} tokens)": (layers, lambda k, q: k.attend(qkv, k_cache, v_cache, args.context + 1,
                                                                          None, d**-0.5)),
        "linear wo (+= residual)": (layers, lambda k, q: k.linear(o, q(wo), accumulate=acc)),
        "swiglu w1, w3": (layers, lambda k, q: k.swiglu(x, q(w1), q(w3))),
        "linear w2 (+= residual)": (layers, lambda k, q: k.linear(hidden, q(w2), accumulate=acc)),
        "linear head": (1, lambda k, q: k.linear(x, q(head))),
    }
    cache: dict[int, Int8Weight] = {}

    def int8(w):
        if id(w) not in cache:
            cache[id(w)] = Int8Weight(*quantize_rows(w), w)
        return cache[id(w)]

    def fp32(w):
        return w

    name = args.model or f"preset {args.preset}"
    print(f"{name}, threads {torch.get_num_threads()}, one row; us per call (PyTorch / native = gain)")
    head_row = "| call | per step | PyTorch (us) | native (us) | gain | native, per step (ms) |"
    if args.int8:
        head_row += " native int8 (us) | int8 gain over native fp32 |"
    print(head_row)
    print("|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.int8 else ""))
    total = {"torch": 0.0, "native": 0.0, "int8": 0.0}
    with torch.inference_mode():
        for call, (count, fn) in calls.items():
            t_ref = median_us(lambda: fn(ref, fp32), args.reps)
            t_nat = median_us(lambda: fn(native, fp32), args.reps)
            total["torch"] += count * t_ref
            total["native"] += count * t_nat
            line = f"| {call} | {count} | {t_ref:.0f} | {t_nat:.0f} | {t_ref / t_nat:.2f}x | {count * t_nat / 1e3:.2f} |"
            if args.int8:
                if call.startswith(("linear", "swiglu")):
                    t_q = median_us(lambda: fn(native, int8), args.reps)
                    line += f" {t_q:.0f} | {t_nat / t_q:.2f}x |"
                else:
                    t_q = t_nat
                    line += " - | - |"
                total["int8"] += count * t_q
            print(line)
    print(f"\nsum per step: PyTorch {total['torch'] / 1e3:.1f} ms, native {total['native'] / 1e3:.1f} ms"
          + (f", native int8 {total['int8'] / 1e3:.1f} ms" if args.int8 else ""))


if __name__ == "__main__":
    main()
