"""A modular baseline for the speed table: an InternViT-300M-shaped encoder in front of the same LLM.

The Mono-InternVL paper (Table 6) compares its first-token latency with InternVL-1.5-2B, a modular
model: a vision transformer encodes every 448 px tile before the LLM sees it. This module builds
that shape around any monovl model, so `monovl bench speed --modular-baseline` times both on one
machine, in one run, with the same LLM, prompt and tiles:

    tiles [T, 3, 448, 448] -> 14 px patches (1024 + CLS) + positions
      -> 24 pre-norm transformer layers (width 1024, 16 heads, MLP 4096, GELU)   InternViT-300M-448px
      -> drop CLS -> pixel shuffle 0.5 -> [T, 256, 4096]
      -> MLP projector (LayerNorm, Linear, GELU, Linear) -> the LLM's embeddings at <IMG_CONTEXT>
      -> the LLM, every token through the text path (a modular model has no visual experts)

The encoder layers are `torch.nn.TransformerEncoderLayer` with random weights: only time is
measured, and it has InternViT's matmul shapes (InternViT's layer scale and QK-norm-free attention
add no GEMMs). The official encoder is `InternVisionModel` in OpenGVLab/InternVL
(`internvl_chat/internvl/model/internvit/modeling_intern_vit.py`); the projector is InternVL's
`mlp1`, the same module the monolithic model keeps (monovl.model.vision.Projector).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..model.mono_internvl import ModelOutput, MonoInternVL, positions_from_mask
from ..model.vision import Projector, image_features

__all__ = ["EncoderConfig", "INTERNVIT_300M", "VisionEncoder", "ModularBaseline"]


@dataclass(frozen=True)
class EncoderConfig:
    """A ViT's shape. `image_size` and `patch_size` must match the monolithic model's tiles, so
    both models get the same tiles and the same number of image tokens."""

    image_size: int = 448
    patch_size: int = 14
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    mlp_size: int = 4096

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


# InternViT-300M-448px: the encoder of InternVL-1.5-2B (Mini-InternVL-Chat-2B-V1-5), the paper's modular row.
INTERNVIT_300M = EncoderConfig()


class VisionEncoder(nn.Module):
    """Tiles [T, 3, S, S] -> patch features [T, (S/patch)^2, D], CLS dropped as InternVL does."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.patch_embedding = nn.Conv2d(3, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.class_embedding = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.position_embedding = nn.Parameter(torch.randn(1, 1 + cfg.grid**2, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, cfg.num_heads, cfg.mlp_size, dropout=0.0, activation="gelu",
                                           layer_norm_eps=1e-6, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # [T, N, D]
        cls = self.class_embedding.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.position_embedding
        return self.layers(x)[:, 1:]


class ModularBaseline(nn.Module):
    """The LLM of `mono` behind a ViT encoder: `forward` has `MonoInternVL.forward`'s signature, so
    `monovl.engine.Engine` runs it unchanged. The LLM's weights are shared, not copied.

    Raises ValueError when the encoder's tiles do not give `mono.num_image_token` tokens per tile.
    """

    def __init__(self, mono: MonoInternVL, cfg: EncoderConfig | None = None):
        super().__init__()
        vision = mono.config.vision
        cfg = cfg or EncoderConfig(image_size=vision.image_size, patch_size=vision.patch_size)
        tokens = int(cfg.grid * mono.config.downsample_ratio) ** 2
        if tokens != mono.num_image_token:
            raise ValueError(f"the encoder gives {tokens} tokens per {cfg.image_size} px tile, the model expects "
                             f"{mono.num_image_token}: use the model's image_size and patch_size")
        self.mono = mono
        self.encoder = VisionEncoder(cfg).to(mono.device, mono.dtype)
        self.projector = Projector.after_pixel_shuffle(cfg.hidden_size, mono.config.downsample_ratio,
                                                       mono.config.llm.hidden_size).to(mono.device, mono.dtype)

    # What the engine reads from a model.
    config = property(lambda self: self.mono.config)
    language_model = property(lambda self: self.mono.language_model)
    device = property(lambda self: self.mono.device)
    dtype = property(lambda self: self.mono.dtype)
    num_image_token = property(lambda self: self.mono.num_image_token)
    image_token_id = property(lambda self: self.mono.image_token_id)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
              image_token_id: int | None) -> torch.Tensor:
        """Token embeddings [B, T, H] with the encoded tiles at the `<IMG_CONTEXT>` slots."""
        embeds = self.language_model.model.tok_embeddings(input_ids)
        if pixel_values is None:
            return embeds
        # The monolithic model's own path (patches -> pixel shuffle -> projector), with the ViT in
        # place of its patch embedding.
        feats = image_features(self.encoder, self.projector, pixel_values.to(self.device, self.dtype), self.config)
        slot = self.image_token_id if image_token_id is None else image_token_id
        mask = input_ids == slot
        if int(mask.sum()) != feats.shape[0]:
            raise ValueError(f"image token count mismatch: {int(mask.sum())} <IMG_CONTEXT> tokens, "
                             f"{feats.shape[0]} image features")
        return embeds.masked_scatter(mask[..., None], feats.to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                image_token_id: int | None = None, attention_mask: torch.Tensor | None = None,
                cache=None, logits_to_keep: int | None = None) -> ModelOutput:
        embeds = self.embed(input_ids, pixel_values, image_token_id)
        past = cache.length if cache is not None else 0
        positions = positions_from_mask(attention_mask, past, input_ids.shape[1], input_ids.device, input_ids.shape[0])
        # No visual mask: every token, image or text, runs the text path, as in a modular model.
        return ModelOutput(logits=self.language_model(embeds, positions, None, attention_mask, cache, logits_to_keep))
