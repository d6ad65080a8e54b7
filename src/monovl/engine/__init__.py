"""Inference engine: KV-cached prefill/decode, sampling, streaming, batching. Knows token ids only."""

from .generate import ContextLengthError, Engine, Prompt, SamplingParams

__all__ = ["ContextLengthError", "Engine", "Prompt", "SamplingParams"]
