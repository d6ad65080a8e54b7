"""Mono-InternVL as a vLLM model: monovl's image side, and the InternLM2 decoder with visual experts
built from vLLM's tensor-parallel layers.

Routing, as in monovl's own engine (`monovl.model.decoder`, reference 9.3): every token runs through
exactly one expert, chosen by the image-token mask. vLLM's model runner computes that mask for the
tokens of each step (`is_multimodal`: the `<IMG_CONTEXT>` positions that receive image features) and
hands it only to `embed_input_ids`; the model keeps it in a buffer that `forward` reads, sliced to
the step's token count (the pattern vLLM's Gemma 4 uses for its per-layer inputs). So:

- in prefill, chunked or not, the image tokens of the chunk go to `feed_forward_ve` (and in v1.5 to
  `attention.wqkv_ve`/`wo_ve`), everything else to the text weights;
- decode steps have no image tokens, so they run the text weights only, with no gather at all.

Weights are the official checkpoint's keys (`language_model.model.layers.N.feed_forward.w1`, ...):
`w1`/`w3` load into one merged gate/up projection; `wqkv` keeps InternLM2's packed per-KV-group
layout, unpacked after an all-gather under tensor parallelism as in vLLM's InternLM2.

Not supported: pipeline parallelism, LoRA, quantized checkpoints, and more tensor-parallel ranks
than KV heads.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from vllm.config import VllmConfig
from vllm.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    split_tensor_along_last_dim,
    tensor_model_parallel_all_gather,
)
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import SupportsMultiModal
from vllm.model_executor.models.utils import maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY

from monovl.model.decoder import Route
from monovl.model.vision import Projector, VisionModel, image_features

from .processing import MonoDummyInputsBuilder, MonoMultiModalProcessor, MonoProcessingInfo


def _out(layer: nn.Module):
    """vLLM linear layers return (output, bias); Route wants a plain function of x."""
    return None if layer is None else (lambda x: layer(x)[0])


class MonoMLP(nn.Module):
    """SwiGLU, w2(silu(w1 x) * w3 x), with w1 and w3 merged into one column-parallel GEMM."""

    def __init__(self, hidden: int, intermediate: int, quant_config, prefix: str):
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden, [intermediate] * 2, bias=False,
                                                       quant_config=quant_config, prefix=f"{prefix}.gate_up_proj")
        self.w2 = RowParallelLinear(intermediate, hidden, bias=False, quant_config=quant_config,
                                    prefix=f"{prefix}.w2")
        self.act = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up, _ = self.gate_up_proj(x)
        return self.w2(self.act(gate_up))[0]


class MonoAttention(nn.Module):
    def __init__(self, text, cache_config, quant_config, prefix: str):
        super().__init__()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.tp_rank = get_tensor_model_parallel_rank()
        self.total_heads, self.total_kv = text.num_attention_heads, text.num_key_value_heads
        if self.total_heads % self.tp_size or self.total_kv % self.tp_size:
            raise ValueError(f"--tensor-parallel-size {self.tp_size} must divide the {self.total_heads} attention "
                             f"heads and the {self.total_kv} KV heads")
        self.heads, self.kv_heads = self.total_heads // self.tp_size, self.total_kv // self.tp_size
        self.head_dim = text.real_head_dim
        self.attn_dim = text.head_dim  # >= head_dim: the size the attention kernel supports
        self.groups = self.total_heads // self.total_kv
        self.q_size, self.kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        hidden, qkv_bias = text.hidden_size, text.bias or text.qkv_bias

        def qkv(name):
            return QKVParallelLinear(hidden, self.head_dim, self.total_heads, self.total_kv, bias=qkv_bias,
                                     quant_config=quant_config, prefix=f"{prefix}.{name}")

        def wo(name):
            return RowParallelLinear(self.total_heads * self.head_dim, hidden, bias=text.bias,
                                     quant_config=quant_config, prefix=f"{prefix}.{name}")

        self.wqkv, self.wo = qkv("wqkv"), wo("wo")
        # v1.5: separate projections for image tokens (reference 9.2).
        self.wqkv_ve = qkv("wqkv_ve") if text.attention_experts else None
        self.wo_ve = wo("wo_ve") if text.attention_experts else None
        self.rotary_emb = get_rope(self.head_dim, max_position=text.max_position_embeddings,
                                   rope_parameters=text.rope_parameters)
        # The scale is the true head size's: zero-padding q and k leaves every q.k unchanged.
        self.attn = Attention(self.heads, self.attn_dim, self.head_dim**-0.5, num_kv_heads=self.kv_heads,
                              cache_config=cache_config, quant_config=quant_config, prefix=f"{prefix}.attn")

    def split_qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Packed rows [kv group][groups q heads, 1 k head, 1 v head][head_dim] (reference 1.6) -> q, k, v."""
        n = qkv.shape[0]
        if self.tp_size > 1:
            # The loader split the packed weight into equal q/k/v-sized row blocks per rank; gathering
            # and re-interleaving the ranks' blocks gives back the packed order.
            parts = torch.split(tensor_model_parallel_all_gather(qkv),
                                [self.q_size, self.kv_size, self.kv_size] * self.tp_size, dim=-1)
            qkv = torch.cat(parts[::3] + parts[1::3] + parts[2::3], dim=-1)
        qkv = qkv.view(n, self.total_kv, self.groups + 2, self.head_dim)
        q, k, v = torch.split(qkv, [self.groups, 1, 1], dim=-2)
        q, k, v = (t.reshape(n, -1) for t in (q, k, v))
        if self.tp_size > 1:
            split = partial(split_tensor_along_last_dim, num_partitions=self.tp_size)
            q, k, v = (split(t)[self.tp_rank] for t in (q, k, v))
        return q, k, v

    def _pad(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        if self.attn_dim == self.head_dim:
            return x
        return F.pad(x.view(-1, heads, self.head_dim), (0, self.attn_dim - self.head_dim)).reshape(x.shape[0], -1)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, route: Route) -> torch.Tensor:
        qkv = route.apply(x[None], _out(self.wqkv), _out(self.wqkv_ve))[0]
        q, k, v = self.split_qkv(qkv)
        q, k = self.rotary_emb(positions, q, k)
        o = self.attn(self._pad(q, self.heads), self._pad(k, self.kv_heads), self._pad(v, self.kv_heads))
        if self.attn_dim != self.head_dim:
            o = o.view(-1, self.heads, self.attn_dim)[..., : self.head_dim].reshape(o.shape[0], -1)
        return route.apply(o[None], _out(self.wo), _out(self.wo_ve))[0]


class MonoDecoderLayer(nn.Module):
    def __init__(self, text, cache_config, quant_config, prefix: str):
        super().__init__()
        self.attention = MonoAttention(text, cache_config, quant_config, f"{prefix}.attention")
        self.feed_forward = MonoMLP(text.hidden_size, text.intermediate_size, quant_config, f"{prefix}.feed_forward")
        self.feed_forward_ve = MonoMLP(text.hidden_size, text.intermediate_size, quant_config,
                                       f"{prefix}.feed_forward_ve")
        self.attention_norm = RMSNorm(text.hidden_size, eps=text.rms_norm_eps)
        self.ffn_norm = RMSNorm(text.hidden_size, eps=text.rms_norm_eps)

    def forward(self, positions, h, residual, route: Route):
        if residual is None:
            residual, h = h, self.attention_norm(h)
        else:
            h, residual = self.attention_norm(h, residual)
        h = self.attention(positions, h, route)
        h, residual = self.ffn_norm(h, residual)
        return route.apply(h[None], self.feed_forward, self.feed_forward_ve)[0], residual


class MonoDecoder(nn.Module):
    """`language_model.model`: embeddings, layers, final norm."""

    def __init__(self, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        text = vllm_config.model_config.hf_config.text_config
        self.tok_embeddings = VocabParallelEmbedding(text.vocab_size, text.hidden_size)
        self.layers = nn.ModuleList(
            MonoDecoderLayer(text, vllm_config.cache_config, vllm_config.quant_config, f"{prefix}.layers.{i}")
            for i in range(text.num_hidden_layers))
        self.norm = RMSNorm(text.hidden_size, eps=text.rms_norm_eps)


class MonoLanguageModel(nn.Module):
    """`language_model`: the decoder and the `output` head."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        text = vllm_config.model_config.hf_config.text_config
        self.model = MonoDecoder(vllm_config, maybe_prefix(prefix, "model"))
        self.output = ParallelLMHead(text.vocab_size, text.hidden_size, quant_config=vllm_config.quant_config,
                                     prefix=maybe_prefix(prefix, "output"))
        if text.tie_word_embeddings:
            self.output = self.output.tie_weights(self.model.tok_embeddings)
        self.logits_processor = LogitsProcessor(text.vocab_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.tok_embeddings(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds: torch.Tensor | None = None, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[N] token ids or [N, H] embeddings -> [N, H] final hidden states. `image_mask` [N] bool or None."""
        h = self.embed_input_ids(input_ids) if inputs_embeds is None else inputs_embeds
        route = Route.from_mask(None if image_mask is None else image_mask[None])
        residual = None
        for layer in self.model.layers:
            h, residual = layer(positions, h, residual, route)
        h, _ = self.model.norm(h, residual)
        return h

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.output, hidden_states)


@MULTIMODAL_REGISTRY.register_processor(MonoMultiModalProcessor, info=MonoProcessingInfo,
                                        dummy_inputs=MonoDummyInputsBuilder)
class MonoInternVLForVLLM(nn.Module, SupportsMultiModal):
    """A Mono-InternVL checkpoint (v1, v1.5 or upcycled) for vLLM's v1 engine."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return "<image>"
        raise ValueError(f"Mono-InternVL takes images only, not {modality!r}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.mono = config.mono
        with self._mark_tower_model(vllm_config, "image"):
            self.vision_model = VisionModel(self.mono.vision)
            self.mlp1 = Projector.after_pixel_shuffle(self.mono.vision.hidden_size, self.mono.downsample_ratio,
                                                      self.mono.llm.hidden_size)
        with self._mark_language_model(vllm_config):
            self.language_model = MonoLanguageModel(vllm_config=vllm_config,
                                                    prefix=maybe_prefix(prefix, "language_model"))
        # Which of the step's tokens are image tokens; written by embed_input_ids, read by forward.
        tokens = vllm_config.scheduler_config.max_num_batched_tokens
        self.register_buffer("image_mask", torch.zeros(tokens, dtype=torch.bool), persistent=False)
        self.has_image_tokens = False

    def get_language_model(self) -> nn.Module:
        return self.language_model

    def embed_multimodal(self, **kwargs: object) -> list[torch.Tensor]:
        """pixel_values_flat [tiles, 3, S, S] -> one [tiles_i * num_image_token, H] tensor per image."""
        pixels, tiles = kwargs.get("pixel_values_flat"), kwargs.get("image_num_patches")
        embeds = kwargs.get("image_embeds")
        dtype = self.mlp1[1].weight.dtype
        if embeds is not None:  # precomputed features (--enable-mm-embeds), one [tokens, H] per image
            items = embeds if isinstance(embeds, (list, tuple)) else embeds.unbind(0)
            return [e.to(dtype) for e in items]
        if pixels is None:
            return []
        if isinstance(pixels, (list, tuple)):
            pixels = torch.cat(list(pixels))
        features = image_features(self.vision_model, self.mlp1, pixels.to(dtype), self.mono)
        # `tiles`: a [images] tensor or a list of one-element tensors, as vLLM batched the field.
        return list(features.split([int(t) * self.mono.num_image_token for t in tiles]))

    def embed_input_ids(self, input_ids: torch.Tensor, multimodal_embeddings=None, *,
                        is_multimodal: torch.Tensor | None = None) -> torch.Tensor:
        n = input_ids.shape[0]
        self.has_image_tokens = False
        if multimodal_embeddings is not None and len(multimodal_embeddings) and is_multimodal is not None:
            mask = is_multimodal.to(self.image_mask.device, non_blocking=True)
            # Zeroed past n too: forward may see more tokens than were scheduled (padding).
            self.image_mask.zero_()
            self.image_mask[:n].copy_(mask)
            # On the host, outside any captured graph: a step with no image tokens (every decode step)
            # then runs the text path with no gather, the one a CUDA graph captures.
            self.has_image_tokens = bool(mask.any())
        return super().embed_input_ids(input_ids, multimodal_embeddings, is_multimodal=is_multimodal)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: object) -> torch.Tensor:
        n = (inputs_embeds if inputs_embeds is not None else input_ids).shape[0]
        mask = self.image_mask[:n] if self.has_image_tokens else None
        return self.language_model(input_ids, positions, inputs_embeds=inputs_embeds, image_mask=mask)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Official keys; `w1`/`w3` go to shards 0/1 of the merged gate/up projection."""
        params = dict(self.named_parameters())
        tied = self.mono.llm.tie_word_embeddings
        loaded: set[str] = set()
        for name, weight in weights:
            if tied and name == "language_model.output.weight":
                continue  # the head is the embedding matrix
            shard = None
            for src, dst, idx in ((".w1.", ".gate_up_proj.", 0), (".w3.", ".gate_up_proj.", 1)):
                if src in name:
                    name, shard = name.replace(src, dst), idx
            if name not in params:
                raise ValueError(f"unexpected weight {name!r} in the checkpoint: not a Mono-InternVL layout")
            param = params[name]
            loader = getattr(param, "weight_loader", default_weight_loader)
            loader(param, weight) if shard is None else loader(param, weight, shard)
            loaded.add(name)
        return loaded
