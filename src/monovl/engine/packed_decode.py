"""Faster CPU decode: oneDNN-packed copies of the weights a decode step reads.

A decode step is a chain of matrix-vector products, bound by how fast the weights stream from
memory. PyTorch's default fp32 path (MKL GEMM with M=1) reaches about 60% of this machine's read
bandwidth; oneDNN's linear on a weight reordered into its blocked layout reaches about 95%
(`benchmarks/bench_inference.py`). The packed copies cost extra memory equal to the text-path
weights (attention, text FFN, head), so this is opt-in: `Engine(model, packed_decode=True)`.

Only decode steps use them (generated tokens are text, so only text-path modules are packed);
prefill keeps the exact path. Results differ from the plain path by float rounding only (a
different summation order), not by any approximation.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from torch import nn

from ..model.mono_internvl import MonoInternVL


def available(model: MonoInternVL) -> bool:
    return (model.device.type == "cpu" and model.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _text_path_linears(model: MonoInternVL) -> list[nn.Linear]:
    lm = model.language_model
    mods: list[nn.Linear] = []
    for layer in lm.model.layers:
        mods += [layer.attention.wqkv, layer.attention.wo,
                 layer.feed_forward.w1, layer.feed_forward.w3, layer.feed_forward.w2]
    mods.append(lm.output)
    return mods


class PackedWeights:
    """Packed copies, rebuilt when a weight changes (tracked by its version counter)."""

    def __init__(self, model: MonoInternVL):
        self.model = model
        self._packed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _get(self, m: nn.Linear) -> torch.Tensor:
        key = (m.weight.data_ptr(), m.weight._version)
        hit = self._packed.get(m)
        if hit is None or hit[0] != key:
            with torch.no_grad():
                packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), 1)
            hit = (key, packed)
            self._packed[m] = hit
        return hit[1]

    @contextmanager
    def active(self):
        """Route the text-path linears through their packed weights for the duration of one step."""
        mods = _text_path_linears(self.model)
        for m in mods:
            m.forward = _packed_forward(self._get(m), m.bias, m.out_features)
        try:
            yield
        finally:
            for m in mods:
                del m.forward  # back to nn.Linear.forward


def _packed_forward(weight: torch.Tensor, bias: torch.Tensor | None, out_features: int):
    def forward(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        y = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, "none", [], "")
        return y.reshape(*x.shape[:-1], out_features)
    return forward
