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
Rows join and leave between decode steps, which only append. A cache is allocated with headroom
(free row slots, spare columns) so that a row leaving or joining moves one row: a leaving row's slot
takes the last row, a joining row is copied into a free slot. Only when there is no room (a joining
prompt longer than the filled columns, no columns left for some row's feeds) is every live column
copied into a new cache. At concurrency 16 in `benchmarks/bench_serve.py` a row joined or left
every 2.5 decode steps; copying every row each time cost 41-50 ms against a 65 ms step (2-core
Intel Xeon), most of it the first-touch page faults of the fresh 250 MB.
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
    fp32 model on CPU, False forces the module path. `max_rows` bounds the row slots a new cache is
    given for rows to join later."""

    def __init__(self, model: MonoInternVL, cpu_decode: bool | None = None,
                 kernels: NativeKernels | TorchKernels | None = None, max_rows: int = 1):
        self.model = model
        self.max_rows = max_rows
        self.rows: list[Row] = []
        self.cache: KVCache | None = None
        self.mask: torch.Tensor | None = None  # [B, L] bool, True = real token
        self._buffers: list[torch.Tensor] = []  # the flat memory under `cache`, 2 per layer
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
        """Token slots held by the current cache, free row slots and headroom included (0 when empty)."""
        return 0 if self.cache is None else self._buffers[0].numel() // self._row_numel(1)

    @torch.inference_mode()
    def rebuild(self, keep: list[int], joining: list[tuple[Row, KVCache]] = (), room: int = 0) -> None:
        """Keep the rows at indices `keep`, add `joining` rows (each with its own filled batch-1 cache).
        `room`: the KV token slots a new cache may take, headroom included (it never takes less than
        its rows need; 0, no headroom).

        Afterwards `rows` holds exactly those rows, in an order of this method's choosing (callers
        match rows by `Row.key`). Where the cache has room (every joining row no longer than the
        cache's filled length, the capacity covering every row's remaining feeds, a free row slot),
        it is updated in place: a kept row beyond the new batch size moves into a vacated slot and
        each joining row is copied in, one row each, nothing else moves. Otherwise every live column
        is copied into a new cache sized for what the rows still need (`_allocate`)."""
        rows = [self.rows[i] for i in keep] + [row for row, _ in joining]
        if not rows:  # idle: give the memory back
            self.rows, self.cache, self.mask, self._buffers = [], None, None, []
            return
        cache, length = self.cache, 0 if self.cache is None else self.cache.length
        if (cache is not None and all(row.length <= length for row, _ in joining)
                and length + max(row.remaining for row in rows) <= cache.max_len
                and len(rows) <= self._buffers[0].numel() // self._row_numel(cache.max_len)):
            self._update_in_place(keep, joining)
        else:
            self._copy_to_new_cache(keep, joining, room)

    def _row_numel(self, capacity: int) -> int:
        cfg = self.model.config.llm
        return cfg.num_key_value_heads * capacity * cfg.head_dim

    def _update_in_place(self, keep: list[int], joining: list[tuple[Row, KVCache]]) -> None:
        cache, length, old_rows = self.cache, self.cache.length, self.rows
        kept = len(keep)
        # Slots below `kept` that were left, filled by the kept rows sitting at or beyond `kept`.
        vacated = sorted(set(range(kept)) - set(keep))
        movers = [i for i in keep if i >= kept]
        slot = {i: i for i in keep if i < kept} | dict(zip(movers, vacated))
        order = [None] * kept
        for i, j in slot.items():
            order[j] = old_rows[i]
        for src, dst in zip(movers, vacated):  # on the old views: `src` may lie beyond the new batch
            n = old_rows[src].length
            for t in cache.k + cache.v:
                t[dst, :, length - n:length] = t[src, :, length - n:length]
        cfg = self.model.config.llm
        resized = KVCache.on_buffers(self._buffers, kept + len(joining), cfg.num_key_value_heads, cfg.head_dim,
                                     cache.max_len)
        resized.length = length
        mask = torch.zeros(kept + len(joining), length, dtype=torch.bool, device=self.model.device)
        for i, j in slot.items():
            mask[j] = self.mask[i]
        for t_index, (row, src) in enumerate(joining):
            self._write_row(resized, mask, kept + t_index, row, src, 0)
            order.append(row)
        self.rows, self.cache, self.mask = order, resized, mask

    def _copy_to_new_cache(self, keep: list[int], joining: list[tuple[Row, KVCache]], room: int) -> None:
        sources = [(self.rows[i], self.cache, i) for i in keep] + [(row, c, 0) for row, c in joining]
        self.rows = [row for row, _, _ in sources]
        length = max(row.length for row in self.rows)
        self._buffers = []  # the old cache is read below through `sources`; drop this handle first
        cache = self._allocate(len(sources), length, max(max(row.remaining for row in self.rows), 1), room)
        cache.length = length
        mask = torch.zeros(len(sources), length, dtype=torch.bool, device=self.model.device)
        for j, (row, src, i) in enumerate(sources):
            self._write_row(cache, mask, j, row, src, i)
        self.cache, self.mask = cache, mask

    @staticmethod
    def _write_row(cache: KVCache, mask: torch.Tensor, j: int, row: Row, src: KVCache, i: int) -> None:
        """Copy row `i` of `src` (its last `row.length` columns) right-aligned into row `j` of `cache`,
        zeroing the padding on its left."""
        n, end, length = row.length, src.length, cache.length
        mask[j, length - n:] = True
        for dst_t, src_t in ((cache.k, src.k), (cache.v, src.v)):
            for layer in range(len(dst_t)):
                dst_t[layer][j, :, :length - n].zero_()
                dst_t[layer][j, :, length - n:length] = src_t[layer][i, :, end - n:end]

    def _allocate(self, rows: int, length: int, remaining: int, room: int) -> KVCache:
        """A cache for `rows` rows of `length` filled columns that will take `remaining` more, with
        headroom so that later rows can join in place: as many columns again as `remaining` (up to
        that many decode steps later a row needing as many feeds still fits) and row slots up to
        `max_rows`, both only as far as `room` allows."""
        cfg = self.model.config.llm
        need = length + remaining
        capacity = max(need, min(need + remaining, room // rows))
        slots = max(rows, min(self.max_rows, room // capacity))
        numel = slots * self._row_numel(capacity)
        self._buffers = [torch.empty(numel, dtype=self.model.dtype, device=self.model.device)
                         for _ in range(2 * cfg.num_hidden_layers)]
        return KVCache.on_buffers(self._buffers, rows, cfg.num_key_value_heads, cfg.head_dim, capacity)

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
