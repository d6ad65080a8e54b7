"""The kernels of the CPU decode step: compiled C++ when a compiler is at hand, PyTorch ops otherwise.

A decode step streams every text-path weight once and reads the KV cache once, so its speed is set
by memory bandwidth. PyTorch's ops leave a gap there on a small CPU:
- fp32 `linear` on one row is an MKL GEMV that keeps about one core busy; splitting the rows into
  one batched matmul per core (`split_linear`) gets close to the bandwidth but pays ~10 us of
  thread fork per product;
- attention (`scaled_dot_product_attention`, or any matmul formulation) reads the cache at
  6-9 GB/s, about 0.5 ms per layer at 1k cached tokens for a 420M model on the dev machine;
- each small op (RMSNorm, rotary, cache write) costs 5-45 us of dispatch for a few KB of work.

`csrc/decode_kernels.cpp` fuses these: products read four weight rows at a time across the cores
(and, for several decode rows, multiply them into up to 4 rows of x per pass: 16 lanes with AVX-512),
SwiGLU does both of its products in one pass, attention reads each key and value once for all
the query heads of its group as four streams, and norm, rotary and cache write are single calls.
It is compiled on first use with `torch.utils.cpp_extension` into `~/.cache/monovl/kernels`
(about 20 s on 2 cores, once per source version and PyTorch installation). Where it cannot be built
(no C++ compiler, `MONOVL_NATIVE_KERNELS=0`), `TorchKernels` runs the same step with PyTorch ops.
`benchmarks/bench_inference.py` measures both.

Both kernel sets take the same arguments: x [B, in] rows, weights [out, in], packed
qkv [B, n_kv, groups + 2, head_dim], and one layer's cache [B, n_kv, capacity, head_dim]. A weight
may also be an `Int8Weight` (a model quantized by monovl.model.quantize): the native products then
read its int8 values, a quarter of the bytes; the PyTorch kernels use its fp32 copy, which holds the
same values.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sys
import sysconfig
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..model.decoder import apply_rotary

SOURCE = Path(__file__).parent / "csrc" / "decode_kernels.cpp"

# Up to this many rows the row-split batched matmul (`split_linear`) beats MKL's GEMM; above, MKL's
# GEMM wins (at 16 rows the split took 1.05-1.2x MKL's time on the cpu-420m shapes, 2-core AMD EPYC
# with AVX-512).
BANDWIDTH_BOUND_ROWS = 8
# Up to this many rows the native row-streaming products beat MKL's GEMM: at 16 rows MKL takes
# 1.1-2.2x their time on every cpu-420m shape, at 32 rows 0.86-1.6x (benchmarks/bench_decode_rows.py,
# 2026-12-04, 2-core AMD EPYC with AVX-512), so a batch of 16 decodes on them.
NATIVE_MAX_ROWS = 16
# From this many rows a decode step runs its products on the model's weights packed for oneDNN
# (`PackedProducts`) where it has them. On a 2-core Intel Xeon with AVX-512 (2026-12-05, cpu-420m):
# a whole decode step took 0.91-0.98x the native step's time at 4, 8 and 16 rows, alternating runs
# (64.0-65.2 against 68.6-68.8 ms at 16 rows); per product (benchmarks/bench_decode_rows.py) the
# native ones took 0.83-1.32x the packed ones' time at 4-16 rows (head 1.10-1.15x) and 0.73-1.04x at
# 1-2 rows, where the native products stay. Before the native products took several x rows per pass
# (csrc/decode_kernels.cpp, `dot4_fp32`) they took 1.57-1.84x at 16 rows.
PACKED_MIN_ROWS = 4


class Int8Weight(NamedTuple):
    """A weight-only int8 linear weight: int8 [out, in], fp32 scale [out], and the fp32 weight that
    equals int8 * scale (the module's own, used where a product runs on PyTorch ops)."""

    q: torch.Tensor
    scale: torch.Tensor
    dense: torch.Tensor


def dense(weight: torch.Tensor | Int8Weight) -> torch.Tensor:
    return weight.dense if isinstance(weight, Int8Weight) else weight


def split_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, blocks: int) -> torch.Tensor:
    """x [m, in] @ weight.T + bias, with the rows of `weight` split into `blocks` products that MKL
    runs on different cores (one batched matmul over views of the weight, no copy). Rows left over
    by an uneven split take one small extra product. More than BANDWIDTH_BOUND_ROWS rows: plain `linear`."""
    m, in_features = x.shape
    out_features = weight.shape[0]
    rows = out_features // blocks
    if blocks == 1 or rows == 0 or m > BANDWIDTH_BOUND_ROWS:
        return F.linear(x, weight, bias)
    body = weight[: rows * blocks].view(blocks, rows, in_features).transpose(1, 2)  # [blocks, in, rows]
    y = torch.bmm(x.expand(blocks, m, in_features), body)  # [blocks, m, rows]
    # One row (the usual decode) needs no transpose: [blocks, 1, rows] is already row-major.
    y = y.view(1, rows * blocks) if m == 1 else y.transpose(0, 1).reshape(m, rows * blocks)
    if rows * blocks < out_features:
        y = torch.cat([y, x @ weight[rows * blocks:].t()], dim=1)
    return y if bias is None else y + bias


class TorchKernels:
    """The step's kernels as PyTorch ops: the fallback, and the reference the native ones are tested
    against. `blocks`: how many products a weight is split into (default: one per thread)."""

    name = "torch"

    def __init__(self, blocks: int | None = None):
        self.blocks = blocks

    def linear(self, x, weight, bias=None, accumulate=None):
        y = split_linear(x, dense(weight), bias, self.blocks or torch.get_num_threads())
        return y if accumulate is None else accumulate.add_(y)

    def swiglu(self, x, w1, w3):
        return F.silu(self.linear(x, w1)).mul_(self.linear(x, w3))

    def rms_norm(self, x, weight, eps):
        return F.rms_norm(x, (x.shape[-1],), weight, eps)

    def rope_store(self, qkv, cos, sin, k_cache, v_cache, pos):
        groups = qkv.shape[2] - 2
        qkv[:, :, : groups + 1] = apply_rotary(qkv[:, :, : groups + 1], cos[:, None, None], sin[:, None, None])
        k_cache[:, :, pos] = qkv[:, :, groups]
        v_cache[:, :, pos] = qkv[:, :, groups + 1]

    def attend(self, qkv, k_cache, v_cache, length, mask, scale):
        b, n_kv, slots, head_dim = qkv.shape
        groups = slots - 2
        q = qkv[:, :, :groups].reshape(b, n_kv * groups, 1, head_dim)
        o = F.scaled_dot_product_attention(q, k_cache[:, :, :length], v_cache[:, :, :length],
                                           attn_mask=None if mask is None else mask[:, None, None],
                                           scale=scale, enable_gqa=groups > 1)
        return o.reshape(b, -1)


class NativeKernels:
    """The compiled kernels (`torch.ops.monovl_decode`); batches above NATIVE_MAX_ROWS rows use
    PyTorch's products."""

    name = "native"

    def __init__(self):
        self.ops = torch.ops.monovl_decode
        self.torch = TorchKernels()

    def linear(self, x, weight, bias=None, accumulate=None):
        if x.shape[0] > NATIVE_MAX_ROWS:
            return self.torch.linear(x, weight, bias, accumulate)
        if isinstance(weight, Int8Weight):
            if accumulate is None:
                return self.ops.linear_int8(x, weight.q, weight.scale, bias)
            self.ops.linear_int8_add_(accumulate, x, weight.q, weight.scale, bias)
            return accumulate
        if accumulate is None:
            return self.ops.linear(x, weight, bias)
        self.ops.linear_add_(accumulate, x, weight, bias)
        return accumulate

    def swiglu(self, x, w1, w3):
        if x.shape[0] > NATIVE_MAX_ROWS:
            return self.torch.swiglu(x, w1, w3)
        if isinstance(w1, Int8Weight) and isinstance(w3, Int8Weight):
            return self.ops.swiglu_int8(x, w1.q, w1.scale, w3.q, w3.scale)
        return self.ops.swiglu(x, dense(w1), dense(w3))

    def rms_norm(self, x, weight, eps):
        return self.ops.rms_norm(x, weight, eps)

    def rope_store(self, qkv, cos, sin, k_cache, v_cache, pos):
        self.ops.rope_store(qkv, cos, sin, k_cache, v_cache, pos)

    def attend(self, qkv, k_cache, v_cache, length, mask, scale):
        return self.ops.attend(qkv, k_cache, v_cache, length, mask, scale)


class PackedProducts:
    """A decode step's kernels with the products on weights packed once for oneDNN: `packer` is the
    model's `packed_linear.PackedLinears` (the copies prefill uses), the other ops are `base`'s.

    A weight is looked up by the module's fp32 tensor (an `Int8Weight`'s `dense`, which holds the
    same values as its int8 copy), and packed again if it changed in place since."""

    name = "packed"

    def __init__(self, base: "NativeKernels | TorchKernels", packer):
        self.base, self.packer = base, packer

    def linear(self, x, weight, bias=None, accumulate=None):
        y = self.packer.linear(x, dense(weight), bias)
        return y if accumulate is None else accumulate.add_(y)

    def swiglu(self, x, w1, w3):
        return F.silu(self.linear(x, w1)).mul_(self.linear(x, w3))

    def rms_norm(self, x, weight, eps):
        return self.base.rms_norm(x, weight, eps)

    def rope_store(self, qkv, cos, sin, k_cache, v_cache, pos):
        self.base.rope_store(qkv, cos, sin, k_cache, v_cache, pos)

    def attend(self, qkv, k_cache, v_cache, length, mask, scale):
        return self.base.attend(qkv, k_cache, v_cache, length, mask, scale)


def _compiler_flags() -> list[str]:
    flags = ["-O3", "-fopenmp"]  # OpenMP: at::parallel_for runs on PyTorch's own thread pool
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    if capability == "AVX512":  # the fp32 products' 16-lane path (the build folder is per flag set)
        flags += ["-mavx512f"]
    return flags


def build_directory() -> Path:
    """One folder per source text, compiler flags, PyTorch version and PyTorch installation, so a stale
    build is never loaded. The installation matters: the build files name its include paths, so two
    virtual environments sharing one folder rebuilt it in turn on every first use (7 s each here),
    and one could load a library while the other rewrote it."""
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(_compiler_flags()).encode() + torch.__version__.encode()
                         + str(Path(torch.__file__).resolve().parent).encode())
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "monovl" / "kernels"
    return root / key.hexdigest()[:16]


@functools.cache
def native_kernels() -> NativeKernels | None:
    """Builds (first time) and loads the C++ kernels; None, with a warning saying why, if they
    cannot be built. `MONOVL_NATIVE_KERNELS=0` turns them off."""
    if os.environ.get("MONOVL_NATIVE_KERNELS", "1") == "0":
        return None
    from torch.utils import cpp_extension

    directory = build_directory()
    name = "monovl_decode_kernels"
    if shutil.which("ninja") is None:  # the `ninja` wheel puts it beside this Python, maybe not on PATH
        os.environ["PATH"] = sysconfig.get_path("scripts") + os.pathsep + os.environ.get("PATH", "")
    try:
        if not (directory / f"{name}.so").exists():
            print("monovl: compiling the CPU decode kernels (once; about 20 s)", file=sys.stderr, flush=True)
        directory.mkdir(parents=True, exist_ok=True)
        cpp_extension.load(name, [str(SOURCE)], extra_cflags=_compiler_flags(), extra_ldflags=["-fopenmp"],
                           build_directory=str(directory), is_python_module=False, verbose=False)
    except Exception as e:  # no compiler, no ninja, a failed build: the PyTorch kernels still work
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        warnings.warn(f"monovl: the native CPU decode kernels could not be built ({reason}); "
                      "decoding uses the slower PyTorch kernels", RuntimeWarning, stacklevel=2)
        return None
    return NativeKernels()


def default_kernels() -> NativeKernels | TorchKernels:
    return native_kernels() or TorchKernels()
