"""CPU decode step: the decoder's text path for one new token per row, as plain tensor ops.

A decode step is a chain of matrix-vector products bound by how fast the weights stream from
memory, plus a few hundred small ops. Going through the generic `LanguageModel.forward` also costs
module calls, routing and mask building: a model shaped like `cpu-420m` but with hidden size 64
(so the products cost almost nothing) takes about 6 ms per step that way on the 2-core dev
machine, and about 4 ms through this step. It runs the same arithmetic on the model's own weights
(no copies) with the generic parts removed: generated tokens are text, so there is no routing, and
one query needs no causal mask. `tests/test_engine.py` checks its logits against
`LanguageModel.forward` on the same cache.

Matrix-vector products are split over the cores. PyTorch's fp32 `linear` with one row goes to an
MKL GEMV that keeps about one core busy: on the dev machine it reads 11-13 GB/s, while both cores
together stream 18-22 GB/s. So each weight [out, in] is viewed, without copying, as `threads`
blocks of rows, and one batched matmul multiplies every block with the same input: MKL runs the
blocks of a batched matmul on different cores. Rows left over by an uneven split (92553-row
heads) take one small extra product. Outputs differ from `nn.Linear` by float rounding only
(summation order). `benchmarks/bench_inference.py` measures this step against the module path.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..model.decoder import apply_rotary, attention_mask_for
from ..model.kv_cache import KVCache
from ..model.mono_internvl import MonoInternVL

Product = Callable[[torch.Tensor], torch.Tensor]


def available(model: MonoInternVL) -> bool:
    """fp32 on CPU. (In bf16 the decoder normalises in fp32 and scales after the cast, an order this
    step does not reproduce; on GPU the module path is launch-bound differently and stays.)"""
    return model.device.type == "cpu" and model.dtype == torch.float32


def split_product(weight: torch.Tensor, bias: torch.Tensor | None, blocks: int) -> Product:
    """x [..., in] -> x @ weight.T + bias, with the rows of `weight` split into `blocks` products that
    MKL runs on different cores. Batches of more than 8 rows are compute-bound: plain `linear`."""
    out_features, in_features = weight.shape
    rows = out_features // blocks
    body = weight[: rows * blocks].view(blocks, rows, in_features).transpose(1, 2)  # [blocks, in, rows]
    rest = weight[rows * blocks:]

    def forward(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, in_features)
        m = flat.shape[0]
        if blocks == 1 or rows == 0 or m > 8:
            return F.linear(x, weight, bias)
        y = torch.bmm(flat.expand(blocks, m, in_features), body)  # [blocks, m, rows]
        # One row (the usual decode) needs no transpose: [blocks, 1, rows] is already row-major.
        y = y.view(1, rows * blocks) if m == 1 else y.transpose(0, 1).reshape(m, rows * blocks)
        if rest.shape[0]:
            y = torch.cat([y, flat @ rest.t()], dim=1)
        if bias is not None:
            y = y + bias
        return y.reshape(*x.shape[:-1], out_features)
    return forward


class CPUDecoder:
    """One decode step for the text path of `model.language_model`, built on views of its weights.

    Build it after the weights are final (the engine builds one per `stream` call): it holds views,
    so in-place weight updates are seen, but a replaced parameter is not."""

    def __init__(self, model: MonoInternVL, blocks: int | None = None):
        lm = model.language_model
        cfg = lm.cfg
        blocks = blocks or torch.get_num_threads()
        self.lm = lm
        self.eps = cfg.rms_norm_eps
        self.hidden = cfg.hidden_size
        self.n_kv, self.head_dim = cfg.num_key_value_heads, cfg.head_dim
        self.groups = cfg.num_attention_heads // cfg.num_key_value_heads
        self.scale = 1.0 / math.sqrt(cfg.head_dim)

        # Every product of a step in the order it runs, with its input width (what the benchmark
        # times on its own).
        self.products: list[tuple[int, Product]] = []

        def product(linear: torch.nn.Linear) -> Product:
            bias = linear.bias.detach() if linear.bias is not None else None
            forward = split_product(linear.weight.detach(), bias, blocks)
            self.products.append((linear.in_features, forward))
            return forward

        self.layers = [
            (layer.attention_norm.weight.detach(), product(layer.attention.wqkv), product(layer.attention.wo),
             layer.ffn_norm.weight.detach(), product(layer.feed_forward.w1), product(layer.feed_forward.w3),
             product(layer.feed_forward.w2))
            for layer in lm.model.layers
        ]
        self.head = product(lm.output)
        self.final_norm = lm.model.norm.weight.detach()
        self.embedding = lm.model.tok_embeddings.weight.detach()

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B], positions [B, 1], `attention_mask` [B, past+1] or None -> fp32 logits [B, V].

        Same contract as `LanguageModel.forward` for one text token per row: writes the new keys and
        values into `cache` and advances it."""
        b, hidden, n_kv, groups, head_dim = tokens.shape[0], self.hidden, self.n_kv, self.groups, self.head_dim
        past = cache.length
        x = self.embedding[tokens]  # [B, H]
        cos, sin = self.lm.rotary(positions, past + 1, x.dtype)
        cos, sin = cos[:, 0], sin[:, 0]  # [B, 1, 1, head_dim]
        mask, _ = attention_mask_for(attention_mask, past, 1, x.device)
        for i, (norm1, wqkv, wo, norm2, w1, w3, w2) in enumerate(self.layers):
            h = F.rms_norm(x, (hidden,), norm1, self.eps)
            # Packed rows [n_kv][groups + 2][head_dim], as in `Attention.forward`.
            qkv = wqkv(h).view(b, n_kv, groups + 2, head_dim)
            qk = apply_rotary(qkv[:, :, : groups + 1], cos, sin)
            k, v = cache.update(i, qk[:, :, groups, None], qkv[:, :, groups + 1, None])
            q = qk[:, :, :groups].reshape(b, n_kv * groups, 1, head_dim)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=groups > 1)
            x = x + wo(o.view(b, -1))
            h = F.rms_norm(x, (hidden,), norm2, self.eps)
            x = x + w2(F.silu(w1(h)).mul_(w3(h)))
        cache.length += 1
        return self.head(F.rms_norm(x, (hidden,), self.final_norm, self.eps))
