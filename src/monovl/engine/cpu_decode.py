"""CPU decode: matrix-vector products that use every core, on the model's own weights (no copy).

A decode step is a chain of matrix-vector products (one new token per row), bound by how fast the
weights stream from memory. PyTorch's fp32 `linear` with one row goes to an MKL GEMV that keeps
about one core busy: on the 2-core dev machine it reads 11-13 GB/s, while both cores together
stream 18-22 GB/s. So each text-path weight [out, in] is viewed, without copying, as `threads`
blocks of rows, and one batched matmul multiplies every block with the same input: MKL runs the
blocks of a batched matmul on different cores. Rows left over by an uneven split (92553-row heads)
take one small extra product.

Only decode steps use it (generated tokens are text, so only text-path modules are swapped in);
prefill keeps the plain path. Each output is the same dot product as before by a different kernel:
results differ from `nn.Linear` by float rounding only (summation order), not by approximation.
`benchmarks/bench_inference.py` measures it against the plain path.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..model.mono_internvl import MonoInternVL


def available(model: MonoInternVL) -> bool:
    """Worth it on CPU with more than one thread (the batched matmul's batch is split over threads)."""
    return model.device.type == "cpu" and torch.get_num_threads() > 1


def _text_path_linears(model: MonoInternVL) -> list[nn.Linear]:
    lm = model.language_model
    mods: list[nn.Linear] = []
    for layer in lm.model.layers:
        mods += [layer.attention.wqkv, layer.attention.wo,
                 layer.feed_forward.w1, layer.feed_forward.w3, layer.feed_forward.w2]
    mods.append(lm.output)
    return mods


def _split_forward(weight: torch.Tensor, bias: torch.Tensor | None, blocks: int):
    out_features, in_features = weight.shape
    rows = out_features // blocks
    body = weight[: rows * blocks].view(blocks, rows, in_features).transpose(1, 2)  # [blocks, in, rows]
    rest = weight[rows * blocks:]

    def forward(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, in_features)
        if rows == 0 or flat.shape[0] > 8:  # only small batches are bandwidth-bound
            return F.linear(x, weight, bias)
        m = flat.shape[0]
        y = torch.bmm(flat.expand(blocks, m, in_features), body)  # [blocks, m, rows]
        y = y.transpose(0, 1).reshape(m, rows * blocks)
        if rest.shape[0]:
            y = torch.cat([y, flat @ rest.t()], dim=1)
        if bias is not None:
            y = y + bias
        return y.reshape(*x.shape[:-1], out_features)
    return forward


class SplitDecode:
    """Swaps the text-path linears' forwards for row-split ones during a decode step. The forwards
    hold views of the weights; they are rebuilt when a weight changes (its version counter)."""

    def __init__(self, model: MonoInternVL):
        self.linears = _text_path_linears(model)  # the module structure is fixed: listed once
        self._forwards: list[tuple | None] = [None] * len(self.linears)

    def _get(self, i: int, blocks: int):
        m = self.linears[i]
        key = (m.weight.data_ptr(), m.weight._version, blocks)
        hit = self._forwards[i]
        if hit is None or hit[0] != key:
            hit = self._forwards[i] = (key, _split_forward(m.weight.detach(), m.bias, blocks))
        return hit[1]

    @contextmanager
    def active(self):
        blocks = torch.get_num_threads()
        for i, m in enumerate(self.linears):
            m.forward = self._get(i, blocks)
        try:
            yield
        finally:
            for m in self.linears:
                del m.forward  # back to nn.Linear.forward
