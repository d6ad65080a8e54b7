"""The InternLM2 decoder with modality experts, routed by the token mask.

Every layer has a text FFN (`feed_forward`) and a visual FFN (`feed_forward_ve`); v1.5 also has
visual attention projections (`attention.wqkv_ve`, `attention.wo_ve`, reference 9.2). Each token
runs through exactly one expert: image tokens (`<IMG_CONTEXT>` positions) the visual one, all other
tokens the text one. The published code computes both FFNs for every token and mixes them with the
mask (reference 8.1), which doubles the FFN cost; the result here is the same per token.

Parameter names mirror the official checkpoint under `language_model.` so no key mapping is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import LLMConfig
from .kv_cache import KVCache


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32:
            # One call instead of seven small ops (about 30% faster for one row on the 2-core dev CPU;
            # a decode step runs 17 norms). In fp32 the official order below is the same arithmetic.
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # Normalise in fp32, cast back, *then* scale: the official order, which matters in bf16.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


@dataclass
class Route:
    """Which flattened [B*T] positions are image tokens, computed once per forward and shared by all layers.

    `vis`/`txt` are index tensors, or None when that modality is absent (then the other expert
    runs on the whole tensor with no gather at all, the common case for decode and text-only input).
    """

    vis: torch.Tensor | None
    txt: torch.Tensor | None
    # The published rule, for speed comparisons only: both experts on every token, mixed by the mask.
    naive_mask: torch.Tensor | None = None

    @classmethod
    def from_mask(cls, visual_mask: torch.Tensor | None, naive: bool = False, touch_all: bool = False) -> "Route":
        """`touch_all` (training) keeps empty index sets instead of skipping an expert, so every
        expert joins the autograd graph with a zero gradient even when its modality is absent:
        FSDP2's reduce-scatter then sees the same gradients on every rank."""
        if visual_mask is None:
            return cls(None, None)
        flat = visual_mask.reshape(-1)
        vis = flat.nonzero().squeeze(1)
        if touch_all:
            return cls(vis, (~flat).nonzero().squeeze(1))
        if vis.numel() == 0:
            return cls(None, None)
        if naive:
            return cls(vis, None, visual_mask[..., None])
        if vis.numel() == flat.numel():
            return cls(vis, None)
        return cls(vis, (~flat).nonzero().squeeze(1))

    def apply(self, x: torch.Tensor, text_fn: nn.Module, visual_fn: nn.Module | None) -> torch.Tensor:
        if self.vis is None or visual_fn is None:
            return text_fn(x)
        if self.naive_mask is not None:
            m = self.naive_mask.to(x.dtype)
            return text_fn(x) * (1 - m) + visual_fn(x) * m
        if self.txt is None:
            return visual_fn(x)
        b, t, _ = x.shape
        flat = x.reshape(b * t, -1)
        y_txt = text_fn(flat.index_select(0, self.txt))
        y_vis = visual_fn(flat.index_select(0, self.vis))
        out = y_txt.new_empty(b * t, y_txt.shape[-1])
        out.index_copy_(0, self.txt, y_txt)
        out.index_copy_(0, self.vis, y_vis)
        return out.reshape(b, t, -1)


class Rotary(nn.Module):
    """RoPE, rotate-half layout, with InternLM2's `dynamic` (NTK) and `linear` scaling rules."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.dim = cfg.head_dim
        self.base = cfg.rope_theta
        self.max_pos = cfg.max_position_embeddings
        rs = cfg.rope_scaling or {}
        self.kind = rs.get("type", rs.get("rope_type"))
        self.factor = float(rs.get("factor", 1.0))

    def inv_freq(self, seq_len: int, device: torch.device) -> torch.Tensor:
        base = self.base
        if self.kind == "dynamic" and seq_len > self.max_pos:
            # NTK-aware base, recomputed from the current length only; the published code
            # keeps the enlarged base forever after one long sequence (reference 8.9).
            base = base * ((self.factor * seq_len / self.max_pos) - (self.factor - 1)) ** (self.dim / (self.dim - 2))
        exponent = torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float() / self.dim
        return 1.0 / (base**exponent)

    def forward(self, positions: torch.Tensor, seq_len: int, dtype: torch.dtype,
                segments: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] -> cos, sin [B, T, 1, 1, head_dim], broadcast over the packed
        [B, T, n_kv, heads per group, head_dim] projections (fp32 math, cast to the activation dtype).

        `seq_len` (past + T) bounds every sample's length; `segments` [B, past+T] is the decoder's
        (0 = padding, equal positive ids = one sample) or None for one sample per row. Dynamic NTK
        takes each sample's own length, so a left-padded or packed sample gets the rotation it gets
        alone (the official code uses the padded length for the whole batch).
        """
        t = positions.float()
        if self.kind == "linear":
            t = t / self.factor
        if self.kind == "dynamic" and seq_len > self.max_pos:
            # Below the bound every sample uses the plain base: no per-sample work, no host sync.
            lengths, idx = sample_lengths(positions, segments).unique(return_inverse=True)
            table = torch.stack([self.inv_freq(n, positions.device) for n in lengths.tolist()])
            freqs = t[..., None] * table[idx]  # [B, T, dim/2]: the same products as the shared vector
        else:
            freqs = t[..., None] * self.inv_freq(seq_len, positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, None]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def sample_lengths(positions: torch.Tensor, segments: torch.Tensor | None) -> torch.Tensor:
    """[B, T]: the length so far of the sample each new token belongs to, 1 + its largest position.

    That is a row's real-token count for left-padded rows (positions are cumsum(mask) - 1) and the
    sample's own length for packed rows (positions restart per sample). Positions grow along a
    sample and cached tokens precede the chunk, so the chunk's largest position is the largest so far.
    Padding (segment 0) gets a length too; its outputs are never read.
    """
    b, t = positions.shape
    seg = torch.zeros_like(positions) if segments is None else segments[:, -t:].long()
    top = torch.zeros(b, int(seg.max()) + 1, dtype=torch.long, device=positions.device)
    top = top.scatter_reduce(1, seg, positions.long() + 1, reduce="amax")
    return top.gather(1, seg)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); w1 is the gate, w3 the up projection."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Attention(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.groups = self.n_heads // self.n_kv
        qkv_out = (self.n_heads + 2 * self.n_kv) * self.head_dim
        qkv_bias = cfg.bias or cfg.qkv_bias
        self.wqkv = nn.Linear(cfg.hidden_size, qkv_out, bias=qkv_bias)
        self.wo = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=cfg.bias)
        if cfg.attention_experts:
            self.wqkv_ve = nn.Linear(cfg.hidden_size, qkv_out, bias=qkv_bias)
            self.wo_ve = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=cfg.bias)
        else:
            self.wqkv_ve = self.wo_ve = None
        # Training diagnostics (monovl.training.diagnostics) set this to read the rotated queries and
        # keys, q [B, heads, T, d] and k [B, kv heads, S, d], with the mask; None costs nothing.
        self.attention_probe = None

    def forward(self, x: torch.Tensor, route: Route, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None, causal: bool, cache: KVCache | None, layer: int) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = route.apply(x, self.wqkv, self.wqkv_ve)
        # Packed rows are [n_kv][groups + 2][head_dim]: in kv group j, the first `groups` rows are
        # query heads j*groups+i, then key head j, then value head j (reference 1.6).
        qkv = qkv.view(b, t, self.n_kv, self.groups + 2, self.head_dim)
        # The query heads and the key head of a group are adjacent: rotate them in one pass.
        qk = apply_rotary(qkv[:, :, :, : self.groups + 1], cos, sin)
        q = qk[:, :, :, : self.groups].reshape(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = qk[:, :, :, self.groups].transpose(1, 2)
        v = qkv[:, :, :, self.groups + 1].transpose(1, 2)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        if self.attention_probe is not None:
            self.attention_probe(q, k, mask, causal and mask is None)
        # enable_gqa maps query head i to kv head i // groups, the same pairing as repeat_kv, without
        # copying K/V.
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                           scale=1.0 / math.sqrt(self.head_dim), enable_gqa=self.groups > 1)
        o = o.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
        return route.apply(o, self.wo, self.wo_ve)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg.hidden_size, cfg.intermediate_size)
        self.feed_forward_ve = FeedForward(cfg.hidden_size, cfg.intermediate_size)
        self.attention_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, route, cos, sin, mask, causal, cache, layer):
        x = x + self.attention(self.attention_norm(x), route, cos, sin, mask, causal, cache, layer)
        return x + route.apply(self.ffn_norm(x), self.feed_forward, self.feed_forward_ve)


class InternLM2Model(nn.Module):
    """`language_model.model`: embeddings, layers, final norm."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        # No padding_idx: it only freezes that row's gradient, and upcycled models use a real token as
        # pad (SmolLM2: <|im_end|>), whose embedding must train in s2. Forward results are unchanged.
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


def attention_mask_for(segments: torch.Tensor | None, past: int, t: int,
                       device: torch.device) -> tuple[torch.Tensor | None, bool]:
    """Build the SDPA mask for `t` new queries after `past` cached keys.

    `segments` [B, past+t] labels every key: 0 is padding, equal positive values are one sample
    (a padded batch has 0/1; a packed row 1..k). A query sees earlier keys of its own sample only.
    Returns (mask, causal). With no segments and no cache the fused causal path is used (no mask
    tensor); a single decode query needs no mask at all. A padded query also sees itself so its
    softmax row is never empty.
    """
    if segments is None and (t == 1 or past == 0):
        return None, t > 1
    q_pos = torch.arange(past, past + t, device=device)
    k_pos = torch.arange(past + t, device=device)
    # SDPA's is_causal aligns the diagonal top-left, which is wrong for a chunk after cached keys.
    causal = k_pos[None, :] <= q_pos[:, None]
    if segments is None:
        return causal[None, None], False
    seg_k = segments[:, None, :]
    seg_q = segments[:, past:, None]
    mask = causal[None] & (seg_k == seg_q) & (seg_k > 0)
    mask = mask | (k_pos[None, :] == q_pos[:, None])[None]
    return mask[:, None], False


class LanguageModel(nn.Module):
    """`language_model`: the decoder plus the `output` head."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.cfg = cfg
        self.model = InternLM2Model(cfg)
        self.output = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.output.weight = self.model.tok_embeddings.weight
        self.rotary = Rotary(cfg)
        # Baseline switch for `monovl bench speed`: route like the published code (both experts on
        # every token, then masked). Never used for real work.
        self.naive_routing = False
        self.activation_checkpointing = False

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, visual_mask: torch.Tensor | None = None,
                segments: torch.Tensor | None = None, cache: KVCache | None = None,
                logits_to_keep: int | torch.Tensor | None = None) -> torch.Tensor:
        """embeds [B, T, H] -> fp32 logits [B, T or logits_to_keep, V] (or [N, V] for a bool mask).

        `visual_mask` [B, T] routes tokens to experts in every call, cached or not (reference 9.3).
        `segments` [B, past+T]: 0 for padding, equal positive ids for one sample (see
        `attention_mask_for`); None means one unpadded sample per row.
        """
        b, t, _ = embeds.shape
        past = cache.length if cache is not None else 0
        training = self.training and torch.is_grad_enabled()
        if training and visual_mask is None:
            visual_mask = torch.zeros(b, t, dtype=torch.bool, device=embeds.device)
        route = Route.from_mask(visual_mask, self.naive_routing, touch_all=training)
        cos, sin = self.rotary(positions, past + t, embeds.dtype, segments)
        mask, causal = attention_mask_for(segments, past, t, embeds.device)
        x = embeds
        for i, layer in enumerate(self.model.layers):
            if self.activation_checkpointing and torch.is_grad_enabled():
                # Recompute each layer's activations in backward: memory O(layers * T * H) instead of
                # keeping every intermediate, for about one extra forward of compute.
                x = checkpoint(layer, x, route, cos, sin, mask, causal, cache, i, use_reentrant=False)
            else:
                x = layer(x, route, cos, sin, mask, causal, cache, i)
        if cache is not None:
            cache.length += t
        if isinstance(logits_to_keep, torch.Tensor):
            # Training: logits only where a label is supervised, [N, V] for a bool mask [B, T].
            x = x[logits_to_keep]
        elif logits_to_keep is not None:
            # Prefill needs the next-token distribution only: skipping the [T, vocab] head
            # saves 2*T*H*V FLOPs, often the largest single GEMM of the prompt.
            x = x[:, -logits_to_keep:]
        return self.output(self.model.norm(x)).float()
