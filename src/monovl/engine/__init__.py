"""Inference engine: KV-cached prefill/decode, sampling, streaming, batching. Knows token ids only."""

from .generate import Engine, Prompt, SamplingParams

__all__ = ["Engine", "Prompt", "SamplingParams"]
