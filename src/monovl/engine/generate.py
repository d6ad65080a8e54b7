"""Generation engine: prefill once, then decode token by token against a preallocated KV cache.

The engine knows token ids and pixel values only; prompts, templates and text are the processor's
business. Batches of prompts with different lengths and image counts are left-padded: positions
restart at each row's first real token (cumsum of the mask, the official rule) and padded keys are
masked, so each row gets the same tokens as when run alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..model.config import LLMConfig
from ..model.kv_cache import KVCache
from ..model.mono_internvl import MonoInternVL, positions_from_mask
from .cpu_decode import CPUDecoder, available as cpu_decode_available
from .decode_kernels import NativeKernels, TorchKernels
from .packed_linear import PackedLinears, prefill_mode


@dataclass
class SamplingParams:
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0  # 1.0 = off; HF rule: divide positive logits, multiply negative ones
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature} (use do_sample=False for greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


def next_tokens(logits: torch.Tensor, p: SamplingParams, seen: torch.Tensor | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """Pick one token per row from fp32 logits [B, V], in the HF order: penalty, temperature, top-k, top-p."""
    if seen is not None and p.repetition_penalty != 1.0:
        penalised = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if not p.do_sample:
        return logits.argmax(-1)
    logits = logits / p.temperature
    if p.top_k:
        kth = torch.topk(logits, min(p.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token once the mass before it already reaches top_p; the best token always stays.
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= p.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class ContextLengthError(ValueError):
    """The prompt plus the requested new tokens do not fit the model's positions."""


def context_limit(cfg: LLMConfig) -> int | None:
    """The most positions a sequence may use, or None when the RoPE scaling has no bound.

    Dynamic NTK recomputes its base for any length. Linear scaling divides positions by its
    factor, so it covers factor * max_position_embeddings (a config that already states the
    stretched length is then allowed more than it needs; we only refuse what cannot work).
    """
    kind = (cfg.rope_scaling or {}).get("type")
    if kind == "dynamic":
        return None
    if kind == "linear":
        return int(cfg.max_position_embeddings * cfg.rope_scaling["factor"])
    return cfg.max_position_embeddings


def check_context(cfg: LLMConfig, prompt_len: int, max_new_tokens: int) -> None:
    """ContextLengthError, naming the three numbers, when the longest prompt (real tokens) plus
    `max_new_tokens` needs more positions than the model has. Checked before any compute: past
    that bound the model would run on without a word, at positions it was never trained on."""
    limit = context_limit(cfg)
    total = prompt_len + max(max_new_tokens, 0)
    if limit is not None and total > limit:
        scaled = "" if limit == cfg.max_position_embeddings else f" x linear RoPE factor {cfg.rope_scaling['factor']:g}"
        raise ContextLengthError(
            f"prompt of {prompt_len} tokens + max_new_tokens {max_new_tokens} = {total} tokens exceeds "
            f"the model's max_position_embeddings {cfg.max_position_embeddings}{scaled}; "
            "shorten the prompt (fewer tiles or less history) or lower max_new_tokens"
        )


@dataclass
class Prompt:
    """One request: token ids (1D) and its tiles [n, 3, S, S] (or None)."""

    input_ids: Sequence[int] | torch.Tensor
    pixel_values: torch.Tensor | None = None


class Engine:
    """Generation on a model: KV cache, sampling, stop tokens, streaming, batches.

    `cpu_decode` (default: on for an fp32 model on CPU) runs decode steps through
    `cpu_decode.CPUDecoder`: the text path on fused kernels, `kernels` (default: the compiled ones
    when they build, else PyTorch ops; see `decode_kernels`). Off, decode steps go through
    `LanguageModel.forward` like prefill.

    `packed_prefill` (default: on for an fp32 model on CPU) runs the prefill's decoder and `mlp1` GEMMs on
    weights packed once for oneDNN (`packed_linear.PackedLinears`: 1.2-2.5x faster GEMMs, the same
    sums to fp32 rounding, one more copy of the decoder's weights in memory), and so do CPU decode
    steps of `decode_kernels.PACKED_MIN_ROWS` rows or more (batches); False keeps both on plain weights."""

    def __init__(self, model: MonoInternVL, cpu_decode: bool | None = None,
                 kernels: NativeKernels | TorchKernels | None = None, packed_prefill: bool | None = None):
        self.model = model
        if cpu_decode and not cpu_decode_available(model):
            raise ValueError(f"cpu_decode needs an fp32 model on CPU, got {model.dtype} on {model.device}")
        if packed_prefill:
            PackedLinears.require(model)
        self.cpu_decode = cpu_decode
        self.kernels = kernels
        self.packed_prefill = packed_prefill

    def _generator(self, p: SamplingParams) -> torch.Generator | None:
        if not p.do_sample:
            return None
        g = torch.Generator(device=self.model.device)
        g.manual_seed(p.seed if p.seed is not None else torch.seed())
        return g

    @torch.inference_mode()
    def stream(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
               image_token_id: int | None = None, attention_mask: torch.Tensor | None = None,
               max_new_tokens: int = 16, sampling: SamplingParams | None = None,
               stop_token_ids: Sequence[int] = ()) -> Iterator[torch.Tensor]:
        """Yield the next token of every row, [B], step by step; rows that stopped yield the pad id.

        A row stops after emitting one of `stop_token_ids` (the stop token is yielded). Iteration
        ends when every row stopped or after `max_new_tokens` steps.
        """
        model, cfg = self.model, self.model.config.llm
        sampling = sampling or SamplingParams()
        device = model.device
        input_ids = input_ids.to(device)
        b, t = input_ids.shape
        if attention_mask is not None:
            attention_mask = attention_mask.to(device).bool()
        check_context(cfg, t if attention_mask is None else int(attention_mask.sum(1).max()), max_new_tokens)
        if max_new_tokens <= 0:
            return
        if attention_mask is not None:
            if bool(attention_mask.all()):
                attention_mask = None  # no padding: use the mask-free fused attention paths
        cache = KVCache(cfg.num_hidden_layers, b, cfg.num_key_value_heads, cfg.head_dim,
                        t + max_new_tokens, model.dtype, device)
        generator = self._generator(sampling)
        seen = None
        if sampling.repetition_penalty != 1.0:
            seen = torch.zeros(b, cfg.vocab_size, dtype=torch.bool, device=device)
            valid = attention_mask if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
            seen[torch.arange(b, device=device)[:, None].expand(b, t)[valid], input_ids[valid]] = True
        stop = torch.tensor(list(stop_token_ids), dtype=torch.long, device=device)
        done = torch.zeros(b, dtype=torch.bool, device=device)

        with prefill_mode(model, self.packed_prefill):
            logits = model(input_ids, pixel_values, image_token_id, attention_mask=attention_mask,
                           cache=cache, logits_to_keep=1).logits[:, -1]
        if attention_mask is None:
            positions = torch.full((b, 1), t, dtype=torch.long, device=device)
        else:
            positions = positions_from_mask(attention_mask, 0, t, device, b)[:, -1:] + 1
        if self.cpu_decode is not False and cpu_decode_available(model):  # checked here: the model may have moved
            decode = CPUDecoder(model, self.kernels, self.packed_prefill)
        else:
            embed = model.language_model.model.tok_embeddings

            def decode(tokens, positions, cache, attention_mask):
                # Generated tokens are text: no visual mask, so every layer runs the text experts.
                return model.language_model(embed(tokens[:, None]), positions, None, attention_mask, cache)[:, -1]
        for step in range(max_new_tokens):
            token = next_tokens(logits, sampling, seen, generator)
            token = token.masked_fill(done, cfg.pad_token_id)
            yield token
            done |= torch.isin(token, stop)
            if bool(done.all()) or step == max_new_tokens - 1:
                return
            if seen is not None:
                seen[torch.arange(b, device=device), token] = True
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(b, 1)], dim=1)
            logits = decode(token, positions, cache, attention_mask)
            positions = positions + 1

    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                 image_token_id: int | None = None, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 16, sampling: SamplingParams | None = None,
                 stop_token_ids: Sequence[int] = ()) -> torch.LongTensor:
        """All new tokens, [B, n] (n <= max_new_tokens); after its stop token a row is padded with pad_token_id."""
        steps = list(self.stream(input_ids, pixel_values, image_token_id, attention_mask, max_new_tokens,
                                 sampling, stop_token_ids))
        if not steps:
            return torch.empty(input_ids.shape[0], 0, dtype=torch.long)
        return torch.stack(steps, dim=1).cpu()

    def generate_batch(self, prompts: Sequence[Prompt], image_token_id: int | None = None,
                       max_new_tokens: int = 16, sampling: SamplingParams | None = None,
                       stop_token_ids: Sequence[int] = ()) -> list[list[int]]:
        """Several prompts of any lengths and image counts in one batch; each row's tokens up to its stop."""
        if not prompts:
            return []
        ids, mask, pixels = left_pad(prompts, self.model.config.llm.pad_token_id)
        out = self.generate(ids, pixels, image_token_id, mask, max_new_tokens, sampling, stop_token_ids)
        stops = set(stop_token_ids)
        results = []
        for row in out.tolist():
            kept = []
            for tok in row:
                kept.append(tok)
                if tok in stops:
                    break
            results.append(kept)
        return results


def left_pad(prompts: Sequence[Prompt], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Stack prompts right-aligned: ids [B, T], mask [B, T] (1 = real), tiles concatenated in row order."""
    rows = [torch.as_tensor(p.input_ids, dtype=torch.long).reshape(-1) for p in prompts]
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, t - len(r):] = r
        mask[i, t - len(r):] = 1
    tiles = [p.pixel_values for p in prompts if p.pixel_values is not None]
    return ids, mask, (torch.cat(tiles) if tiles else None)
