"""Tiny random models and inputs shared by the tests (56 px tiles -> 4 image tokens per tile)."""

from __future__ import annotations

import torch

from monovl import MonoInternVL
from monovl.model.config import preset

IMG_START, IMG_END, IMG_CONTEXT = 498, 499, 500  # the fixture's ids, reused for the tiny vocab of 512


def tiny_model(seed: int = 0, attention_experts: bool = False, **llm) -> MonoInternVL:
    torch.manual_seed(seed)
    model = MonoInternVL(preset("tiny", attention_experts=attention_experts, **llm))
    model.init_weights(std=0.1, generator=torch.Generator().manual_seed(seed))
    model.image_token_id = IMG_CONTEXT
    return model.eval()


def image_prompt(prefix: list[int], tiles: int, suffix: list[int], per_tile: int = 4) -> list[int]:
    return [1, *prefix, IMG_START, *([IMG_CONTEXT] * (per_tile * tiles)), IMG_END, *suffix]


def random_tiles(n: int, size: int = 56, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
