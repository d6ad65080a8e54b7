"""The model side of continuous batching: chunked prefill of one prompt, and the running decode batch.

Both go through the model's own code: prefill chunks through `LanguageModel.forward` with a
`KVCache` (as `Engine.stream` prefills, cut into pieces), decode steps through the engine's
`CPUDecoder` or `LanguageModel.forward`, exactly as `Engine.stream` picks them. Nothing here
re-implements model arithmetic; what is new is where the keys and values live between steps.

Layout of the running batch (the engine's left-padding rule, kept up as rows come and go): every
row's tokens are right-aligned in one `KVCache` of shape [B, kv heads, capacity, head dim], so all
rows write their next key at the same column. A row shorter than the longest has padding columns on
its left, masked out by `mask` [B, L] (True = real token) and zeroed so that a masked value is never
NaN garbage (softmax gives it weight 0, but 0 * NaN is NaN). Positions count a row's real tokens
only, so a row computes what it computes alone (`Engine.generate_batch` relies on the same rule).
A row joining or leaving rebuilds the cache once (a copy of the live columns); decode steps in
between only append.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.cpu_decode import CPUDecoder, available as cpu_decode_available
from ..engine.decode_kernels import NativeKernels, TorchKernels
from ..engine.packed_linear import prefill_mode
from ..model.kv_cache import KVCache
from ..model.mono_internvl import MonoInternVL
from ..model.vision import image_features


def new_cache(model: MonoInternVL, batch: int, max_len: int) -> KVCache:
    cfg = model.config.llm
    return KVCache(cfg.num_hidden_layers, batch, cfg.num_key_value_heads, cfg.head_dim, max_len,
                   model.dtype, model.device)


def kv_bytes_per_token(model: MonoInternVL) -> int:
    """Bytes one token occupies in the KV cache: layers x (K and V) x kv heads x head dim x element size."""
    cfg = model.config.llm
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * model.dtype.itemsize


class ChunkedPrefill:
    """Prefill one prompt (batch 1) a chunk at a time into its own `KVCache`.

    `input_ids` [T], `pixel_values` [tiles, 3, S, S] or None. Each `step()` embeds at most `chunk`
    tokens, running the patch embedding and `mlp1` only for the tiles whose image tokens fall in
    that chunk, so one large image costs at most one chunk of work between two decode steps.
    """

    def __init__(self, model: MonoInternVL, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
                 image_token_id: int | None, chunk: int):
        self.model = model
        self.ids = input_ids.reshape(-1).to(model.device)
        self.pixels = pixel_values
        n = self.ids.numel()
        image_token_id = model.image_token_id if image_token_id is None else image_token_id
        self.is_image = (self.ids == image_token_id) if image_token_id is not None else torch.zeros_like(self.ids,
                                                                                                      dtype=torch.bool)
        n_slots = int(self.is_image.sum())
        per_tile = model.num_image_token
        n_tiles = 0 if pixel_values is None else pixel_values.shape[0]
        if n_slots != n_tiles * per_tile:  # the same check, and message, as MonoInternVL.embed
            raise ValueError(f"image token count mismatch: input_ids have {n_slots} <IMG_CONTEXT> tokens but "
                             f"{n_tiles} tiles give {n_tiles * per_tile} image features ({per_tile} per tile)")
        # Index of each image token's feature among all features (row-major over tiles).
        self.feature_index = self.is_image.long().cumsum(0) - 1
        cfg = model.config.llm
        kind = (cfg.rope_scaling or {}).get("type")
        # Dynamic NTK rotates a prefill by the length of the whole forward; past max_position_embeddings
        # chunks would rotate earlier tokens by a shorter length and change the result, so such
        # prompts go in one piece (the one exception to the chunk bound).
        self.whole = kind == "dynamic" and n > cfg.max_position_embeddings
        self.chunk = max(1, chunk)
        self.cache = new_cache(model, 1, n)
        self.pos = 0
        self._tiles: tuple[int, torch.Tensor] | None = None  # (first tile, features) of the last chunk

    @property
    def length(self) -> int:
        return self.ids.numel()

    @property
    def done(self) -> bool:
        return self.pos >= self.length

    def _features(self, first: int, last: int) -> torch.Tensor:
        """Features of tiles first..last, [(last-first+1) * per_tile, H]; a tile cut by a chunk boundary
        is reused from the previous chunk instead of being embedded twice."""
        per_tile = self.model.num_image_token
        parts, start = [], first
        if self._tiles is not None:
            t0, feats = self._tiles
            t1 = t0 + feats.shape[0] // per_tile - 1
            if t0 <= first <= t1:
                parts.append(feats[(first - t0) * per_tile:(min(last, t1) - t0 + 1) * per_tile])
                start = t1 + 1
        if start <= last:
            pixels = self.pixels[start:last + 1].to(self.model.device, self.model.dtype)
            parts.append(image_features(self.model.vision_model, self.model.mlp1, pixels, self.model.config))
        feats = torch.cat(parts) if len(parts) > 1 else parts[0]
        self._tiles = (first, feats)
        return feats

    @torch.inference_mode()
    def step(self, budget: int | None = None) -> torch.Tensor | None:
        """Run the next chunk (at most `budget` tokens, when given); returns the fp32 logits [1, V] of
        the last prompt token once the prompt is done, else None."""
        model, s = self.model, self.pos
        size = self.length if self.whole else self.chunk if budget is None else max(1, min(self.chunk, budget))
        e = min(s + size, self.length)
        ids = self.ids[s:e]
        embeds = model.language_model.model.tok_embeddings(ids)
        visual = self.is_image[s:e]
        if bool(visual.any()):
            per_tile = model.num_image_token
            idx = self.feature_index[s:e][visual]
            first, last = int(idx[0]) // per_tile, int(idx[-1]) // per_tile
            feats = self._features(first, last)
            embeds = embeds.masked_scatter(visual[:, None], feats[idx - first * per_tile].to(embeds.dtype))
            visual_mask = visual[None]
        else:
            visual_mask = None
        positions = torch.arange(s, e, device=ids.device)[None]
        with prefill_mode(model):  # the engine's prefill GEMMs (packed for oneDNN on an fp32 CPU model)
            logits = model.language_model(embeds[None], positions, visual_mask, None, self.cache, logits_to_keep=1)
        self.pos = e
        return logits[:, -1] if self.done else None


@dataclass
class Row:
    """One sequence in the running batch: `length` real tokens in the cache, `remaining` feeds left
    (tokens it may still put into the cache), `token` the last sampled id, fed by the next step."""

    key: object
    length: int
    remaining: int
    token: int


class RunningBatch:
    """Decoding sequences sharing one right-aligned KV cache (see the module docstring).

    `cpu_decode`/`kernels` mean what they mean for `Engine`: None picks the fused CPU step for an
    fp32 model on CPU, False forces the module path."""

    def __init__(self, model: MonoInternVL, cpu_decode: bool | None = None,
                 kernels: NativeKernels | TorchKernels | None = None):
        self.model = model
        self.rows: list[Row] = []
        self.cache: KVCache | None = None
        self.mask: torch.Tensor | None = None  # [B, L] bool, True = real token
        if cpu_decode is not False and cpu_decode_available(model):
            self._decode = CPUDecoder(model, kernels)
        else:
            embed = model.language_model.model.tok_embeddings

            def module_step(tokens, positions, cache, attention_mask):
                # Generated tokens are text: no visual mask, as in Engine.stream.
                return model.language_model(embed(tokens[:, None]), positions, None, attention_mask, cache)[:, -1]

            self._decode = module_step

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def footprint(lengths: list[int], remaining: list[int]) -> int:
        """KV tokens a batch of rows needs: rows x (longest row + most feeds left), the cache this
        layout allocates (padding included)."""
        return len(lengths) * (max(lengths) + max(remaining)) if lengths else 0

    def kv_tokens(self) -> int:
        """Token slots held by the current cache (0 when empty)."""
        return 0 if self.cache is None else self.cache.batch_size * self.cache.max_len

    @torch.inference_mode()
    def rebuild(self, keep: list[int], joining: list[tuple[Row, KVCache]] = ()) -> None:
        """Keep the rows at indices `keep` and append `joining` rows (each with its own filled batch-1
        cache); copy every live column into a fresh cache sized for what the rows still need."""
        sources = [(self.rows[i], self.cache, i) for i in keep] + [(row, c, 0) for row, c in joining]
        self.rows = [row for row, _, _ in sources]
        if not sources:
            self.cache, self.mask = None, None
            return
        length = max(row.length for row in self.rows)
        cache = new_cache(self.model, len(sources), length + max(max(row.remaining for row in self.rows), 1))
        cache.length = length
        mask = torch.zeros(len(sources), length, dtype=torch.bool, device=self.model.device)
        for j, (row, src, i) in enumerate(sources):
            n, end = row.length, src.length
            mask[j, length - n:] = True
            for dst_t, src_t in ((cache.k, src.k), (cache.v, src.v)):
                for layer in range(len(dst_t)):
                    dst_t[layer][j, :, :length - n].zero_()
                    dst_t[layer][j, :, length - n:length] = src_t[layer][i, :, end - n:end]
        self.cache, self.mask = cache, mask

    @torch.inference_mode()
    def step(self) -> torch.Tensor:
        """Feed every row its `token`; returns fp32 logits [B, V] for each row's next token."""
        b, device = len(self.rows), self.model.device
        tokens = torch.tensor([row.token for row in self.rows], dtype=torch.long, device=device)
        # Positions count real tokens only: a padded row continues where it would alone.
        positions = torch.tensor([[row.length] for row in self.rows], dtype=torch.long, device=device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(b, 1)], dim=1)
        # No padding anywhere: the mask-free fused attention paths, as Engine.stream takes them.
        mask = None if bool(self.mask.all()) else self.mask
        logits = self._decode(tokens, positions, self.cache, mask)
        for row in self.rows:
            row.length += 1
            row.remaining -= 1
        return logits
