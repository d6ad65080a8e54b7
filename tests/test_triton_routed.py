"""The block-routed modality FFN (Triton) against the decoder's PyTorch routing, in Triton's CPU interpreter."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel is decorated: run it on CPU tensors

import pytest
import torch

from monovl.model import triton_routed
from monovl.model.decoder import FeedForward, Route

pytestmark = pytest.mark.skipif(not triton_routed.available(), reason="Triton is not installed")
SMALL = (16, 16, 16)  # blocks of 16 rows: several pure and mixed blocks in a short sequence


def layout(kind: str, m: int = 70) -> torch.Tensor:
    vis = torch.zeros(m, dtype=torch.bool)
    if kind == "runs":  # text, a 32-token image run, text, a 20-token run straddling blocks, text
        vis[5:37] = True
        vis[43:63] = True
    elif kind == "all image":
        vis[:] = True
    elif kind == "alternating":  # every block mixed
        vis[::2] = True
    return vis


def reference_linear(x, vis, wt, wv):
    y = x @ wt.t()
    y[vis] = x[vis] @ wv.t()
    return y


@pytest.mark.parametrize("kind", ["runs", "all image", "all text", "alternating"])
def test_routed_linear_equals_per_token_experts(kind):
    g = torch.Generator().manual_seed(0)
    vis = layout(kind)
    x = torch.randn(len(vis), 40, generator=g)  # K = 40: a partial last K block
    wt, wv = torch.randn(24, 40, generator=g), torch.randn(24, 40, generator=g)  # N = 24: a partial column block
    got = triton_routed.routed_linear(x, vis, wt, wv, SMALL)
    torch.testing.assert_close(got, reference_linear(x, vis, wt, wv), rtol=1e-4, atol=1e-4)


def test_pure_blocks_run_one_expert():
    g = torch.Generator().manual_seed(0)
    x, wt, wv = torch.randn(70, 16, generator=g), torch.randn(16, 16, generator=g), torch.randn(16, 16, generator=g)
    counts = {}
    for kind in ("runs", "all text", "all image", "alternating"):
        experts = torch.zeros(5, dtype=torch.int32)  # 70 rows in blocks of 16
        triton_routed.routed_linear(x, layout(kind), wt, wv, SMALL, experts=experts)
        counts[kind] = experts.tolist()
    # runs: rows 0-15 mixed (image from 5), 16-31 image, 32-47 mixed, 48-63 mixed (text at 63), 64-69 text
    assert counts == {"runs": [2, 1, 2, 2, 1], "all text": [1] * 5, "all image": [1] * 5, "alternating": [2] * 5}


def test_routed_swiglu_equals_the_decoder_routing():
    torch.manual_seed(0)
    text_ffn, visual_ffn = FeedForward(32, 48), FeedForward(32, 48)
    vis = layout("runs").reshape(2, 35)
    x = torch.randn(2, 35, 32)
    with torch.no_grad():
        expected = Route.from_mask(vis).apply(x, text_ffn, visual_ffn)
        got = triton_routed.routed_swiglu(x, vis, text_ffn, visual_ffn, SMALL)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_shape_errors_are_clear():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="do not fit"):
        triton_routed.routed_linear(x, torch.zeros(5, dtype=torch.bool), torch.randn(3, 8), torch.randn(3, 8))
