"""CPU decode step: the decoder's text path for one new token per row, on fused kernels.

Going through the generic `LanguageModel.forward` for one token costs module calls, routing and
mask building on top of the arithmetic: a model shaped like `cpu-420m` but with hidden size 64
(so the products cost almost nothing) takes about 6 ms per step that way on the 2-core dev
machine. This step runs the same arithmetic on the model's own weights (no copies) with the
generic parts removed: generated tokens are text, so there is no routing, and one query needs no
causal mask. Its kernels (`decode_kernels.py`) are compiled C++ where possible, PyTorch ops
otherwise. `tests/test_engine.py` checks the step's logits against `LanguageModel.forward` on the
same cache with both kernel sets.
"""

from __future__ import annotations

import math

import torch

from ..model.kv_cache import KVCache
from ..model.mono_internvl import MonoInternVL
from ..model.quantize import int8_weight
from .decode_kernels import PACKED_MIN_ROWS, Int8Weight, NativeKernels, PackedProducts, TorchKernels, default_kernels
from .packed_linear import PackedLinears, model_packer


def available(model: MonoInternVL) -> bool:
    """fp32 on CPU. (In bf16 the decoder normalises in fp32 and scales after the cast, an order this
    step does not reproduce; on GPU the module path is launch-bound differently and stays.)"""
    return model.device.type == "cpu" and model.dtype == torch.float32


class CPUDecoder:
    """One decode step for the text path of `model.language_model`, built on views of its weights.

    Build it after the weights are final (the engine builds one per `stream` call): it holds views,
    so in-place weight updates are seen, but a replaced parameter is not.

    `packed` (default: where oneDNN is available): a step of `PACKED_MIN_ROWS` rows or more runs its
    products on the model's packed weights (`packed_linear.model_packer`, the copies prefill uses;
    built on first use if prefill has not), where they are compute-bound and oneDNN's GEMM is faster
    than `kernels`; fewer rows stream the plain weights through `kernels`. True raises ValueError
    where packing is unavailable."""

    def __init__(self, model: MonoInternVL, kernels: NativeKernels | TorchKernels | None = None,
                 packed: bool | None = None):
        lm = model.language_model
        cfg = lm.cfg
        self.kernels = kernels or default_kernels()
        if packed:
            PackedLinears.require(model)
        self.model = model
        self.packed = packed is not False and PackedLinears.supported(model)
        self.lm = lm
        self.eps = cfg.rms_norm_eps
        self.n_kv, self.head_dim = cfg.num_key_value_heads, cfg.head_dim
        self.groups = cfg.num_attention_heads // cfg.num_key_value_heads
        self.scale = 1.0 / math.sqrt(cfg.head_dim)

        def weight(linear: torch.nn.Linear) -> torch.Tensor | Int8Weight:
            # The parameter itself, not a detached view: the packed products find their copy by it.
            # A quantized model (monovl.model.quantize) decodes on its int8 copies.
            q = int8_weight(linear)
            return linear.weight if q is None else Int8Weight(*q, linear.weight)

        def weights(linear: torch.nn.Linear) -> tuple[torch.Tensor | Int8Weight, torch.Tensor | None]:
            return weight(linear), None if linear.bias is None else linear.bias.detach()

        # Per layer: attention norm, wqkv (+ bias), wo (+ bias), FFN norm, w1, w3, w2.
        self.layers = [
            (layer.attention_norm.weight.detach(), *weights(layer.attention.wqkv), *weights(layer.attention.wo),
             layer.ffn_norm.weight.detach(), weight(layer.feed_forward.w1), weight(layer.feed_forward.w3),
             weight(layer.feed_forward.w2))
            for layer in lm.model.layers
        ]
        self.final_norm = lm.model.norm.weight.detach()
        self.head = weight(lm.output)
        self.embedding = lm.model.tok_embeddings.weight.detach()

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B], positions [B, 1], `attention_mask` [B, past+1] or None -> fp32 logits [B, V].

        Same contract as `LanguageModel.forward` for one text token per row: writes the new keys and
        values into `cache` and advances it."""
        b, past = tokens.shape[0], cache.length
        # The packer is looked up per step (a dict lookup) so that it is only built once a batch needs it.
        k = PackedProducts(self.kernels, model_packer(self.model)) if self.packed and b >= PACKED_MIN_ROWS \
            else self.kernels
        cache.end_after(1)  # the kernels write slot `past` directly: check it exists first
        x = self.embedding[tokens]  # [B, H]: a new tensor, the residual stream updated in place
        mask = None if attention_mask is None else attention_mask.bool().contiguous()
        # The mask lets dynamic NTK scaling take each row's own length, as the module path does.
        cos, sin = self.lm.rotary(positions, past + 1, x.dtype, mask)
        cos, sin = cos.reshape(b, -1), sin.reshape(b, -1)  # [B, head_dim]
        for i, (norm1, wqkv, bqkv, wo, bo, norm2, w1, w3, w2) in enumerate(self.layers):
            # Packed rows [n_kv][groups + 2][head_dim], as in `Attention.forward`.
            qkv = k.linear(k.rms_norm(x, norm1, self.eps), wqkv, bqkv).view(b, self.n_kv, self.groups + 2, -1)
            k.rope_store(qkv, cos, sin, cache.k[i], cache.v[i], past)
            k.linear(k.attend(qkv, cache.k[i], cache.v[i], past + 1, mask, self.scale), wo, bo, accumulate=x)
            k.linear(k.swiglu(k.rms_norm(x, norm2, self.eps), w1, w3), w2, accumulate=x)
        cache.length += 1
        return k.linear(k.rms_norm(x, self.final_norm, self.eps), self.head)
