"""A block-routed modality FFN in Triton: the shape of the paper's fused MoE kernel (Mono-InternVL-1.5).

The decoder's PyTorch routing (`decoder.Route`) gathers the image tokens and the text tokens into
two tensors, runs each expert on its own tensor, and scatters the results back. The published
kernel avoids the gather and scatter: image tokens come in long contiguous runs (one run of 256 per
448 px tile), so it cuts the tokens into fixed blocks and lets each block run only the expert its
tokens need. Here that is `routed_linear`, one launch per product:

    program (i, j): rows i*BM .. i*BM+BM of x [M, K], columns j*BN .. of the output [M, N]
      all rows text   -> x_block @ W_text[cols]^T                      (one expert, no gather)
      all rows image  -> x_block @ W_visual[cols]^T                    (one expert, no gather)
      mixed block     -> both products, each row keeps its own expert's (only blocks that straddle
                         a run boundary: two per image run, whatever the run's length)

`routed_swiglu` builds the FFN from it: w1 and w3 routed, SiLU(gate) * up, w2 routed. No token of
a pure block is computed by the other expert; in a mixed block the other expert's rows are computed
and discarded, which is what the paper's kernel does for mixed blocks.

Status: correct against the PyTorch routing in Triton's interpreter (`TRITON_INTERPRET=1`, on CPU,
tests/test_triton_routed.py). Not yet measured on a GPU, so the model does not use it: issue 17,
item 5, asks for a timing against the gather/scatter path at 1024-4096 tokens in bf16 first.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional: the model never needs it
    triton = None

__all__ = ["available", "routed_linear", "routed_swiglu"]


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _routed_linear_kernel(x_ptr, vis_ptr, wt_ptr, wv_ptr, y_ptr, experts_ptr, M, N, K,
                              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rows = pid_m * BM + tl.arange(0, BM)
        cols = pid_n * BN + tl.arange(0, BN)
        row_ok = rows < M
        col_ok = cols < N
        is_vis = tl.load(vis_ptr + rows, mask=row_ok, other=0) != 0
        n_vis = tl.sum(is_vis.to(tl.int32), axis=0)
        n_rows = tl.sum(row_ok.to(tl.int32), axis=0)
        ks = tl.arange(0, BK)
        acc_t = tl.zeros((BM, BN), dtype=tl.float32)
        acc_v = tl.zeros((BM, BN), dtype=tl.float32)
        ran_t = tl.zeros((), dtype=tl.int32)  # products each expert ran, for the `experts` output
        ran_v = tl.zeros((), dtype=tl.int32)
        for k0 in range(0, K, BK):
            k_ok = (k0 + ks) < K
            a = tl.load(x_ptr + rows[:, None] * K + (k0 + ks)[None, :], mask=row_ok[:, None] & k_ok[None, :],
                        other=0.0)
            w_off = cols[None, :] * K + (k0 + ks)[:, None]  # [BK, BN]: W[cols, k]^T
            w_mask = k_ok[:, None] & col_ok[None, :]
            if n_vis < n_rows:  # some text rows: the text expert
                acc_t += tl.dot(a, tl.load(wt_ptr + w_off, mask=w_mask, other=0.0))
                ran_t += 1
            if n_vis > 0:  # some image rows: the visual expert
                acc_v += tl.dot(a, tl.load(wv_ptr + w_off, mask=w_mask, other=0.0))
                ran_v += 1
        if pid_n == 0:  # how many experts this row block ran (1 for a pure block): what the tests check
            tl.store(experts_ptr + pid_m, (ran_t > 0).to(tl.int32) + (ran_v > 0).to(tl.int32))
        acc = tl.where(is_vis[:, None], acc_v, acc_t)
        tl.store(y_ptr + rows[:, None] * N + cols[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])


def routed_linear(x: torch.Tensor, visual: torch.Tensor, w_text: torch.Tensor, w_visual: torch.Tensor,
                  block: tuple[int, int, int] = (64, 64, 32), experts: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] (contiguous), visual [M] bool (True = image token), weights [N, K] -> [M, N], each
    row through its own expert's weight; fp32 accumulation. `block` = (BM, BN, BK), each >= 16.
    `experts`, an int32 tensor of ceil(M / BM) elements, receives how many experts each block of
    rows ran (1 or 2).

    Raises RuntimeError when Triton is not installed, ValueError on mismatched shapes."""
    if triton is None:
        raise RuntimeError("routed_linear needs Triton (pip install triton)")
    m, k = x.shape
    if visual.shape != (m,) or w_text.shape != w_visual.shape or w_text.shape[1] != k:
        raise ValueError(f"routed_linear: x {list(x.shape)}, visual {list(visual.shape)}, weights "
                         f"{list(w_text.shape)} and {list(w_visual.shape)} do not fit [M, K], [M], [N, K]")
    n = w_text.shape[0]
    bm, bn, bk = block
    x, w_text, w_visual = x.contiguous(), w_text.contiguous(), w_visual.contiguous()
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    if experts is None:
        experts = torch.empty(grid[0], dtype=torch.int32, device=x.device)
    elif experts.shape != (grid[0],) or experts.dtype != torch.int32:
        raise ValueError(f"experts must be an int32 tensor of {grid[0]} elements (one per block of {bm} rows)")
    _routed_linear_kernel[grid](x, visual.to(torch.int8).contiguous(), w_text, w_visual, y, experts, m, n, k,
                                BM=bm, BN=bn, BK=bk)
    return y


def routed_swiglu(x: torch.Tensor, visual: torch.Tensor, text_ffn: torch.nn.Module, visual_ffn: torch.nn.Module,
                  block: tuple[int, int, int] = (64, 64, 32)) -> torch.Tensor:
    """The decoder's FFN (`FeedForward`: w2(silu(w1 x) * w3 x)) for x [..., H], image rows (visual
    [...] bool) through `visual_ffn` and the rest through `text_ffn`, block-routed."""
    shape = x.shape
    flat, vis = x.reshape(-1, shape[-1]), visual.reshape(-1)
    gate = routed_linear(flat, vis, text_ffn.w1.weight, visual_ffn.w1.weight, block)
    up = routed_linear(flat, vis, text_ffn.w3.weight, visual_ffn.w3.weight, block)
    h = torch.nn.functional.silu(gate) * up
    return routed_linear(h, vis, text_ffn.w2.weight, visual_ffn.w2.weight, block).reshape(*shape[:-1], -1)
