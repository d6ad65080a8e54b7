"""A preallocated key/value cache shared by all decoder layers.

Keys are stored after RoPE and before any GQA expansion, [B, n_kv_heads, max_len, head_dim],
as in the official model (reference 1.6), so a cache filled by prefill is reused unchanged by
decode. Preallocation avoids the O(T^2) copying of `torch.cat` growth during long decodes.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len = max_len
        self.length = 0  # tokens already stored; advanced by the model after all layers ran

    @classmethod
    def on_buffers(cls, buffers: list[torch.Tensor], batch_size: int, num_kv_heads: int, head_dim: int,
                   max_len: int) -> "KVCache":
        """A cache whose keys and values are views of `buffers`: 2 x num_layers flat tensors (each
        layer's K, then its V), each of at least batch_size * num_kv_heads * max_len * head_dim
        elements. Lets a caller reuse memory it already touched; ValueError if a buffer is too small."""
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        n = batch_size * num_kv_heads * max_len * head_dim
        if len(buffers) % 2 or any(b.dim() != 1 or b.numel() < n for b in buffers):
            raise ValueError(f"on_buffers needs an even number of flat buffers of >= {n} elements")
        cache = cls.__new__(cls)
        views = [b[:n].view(shape) for b in buffers]
        cache.k, cache.v = views[0::2], views[1::2]
        cache.max_len, cache.length = max_len, 0
        return cache

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]

    def end_after(self, new_tokens: int) -> int:
        """The length once `new_tokens` more are stored; ValueError if they do not fit."""
        end = self.length + new_tokens
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} tokens > max_len {self.max_len}")
        return end

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new [B, h, T, d] keys/values after the stored ones; return views of everything so far."""
        end = self.end_after(k.shape[2])
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (e.g. drop finished sequences)."""
        self.k = [t.index_select(0, rows) for t in self.k]
        self.v = [t.index_select(0, rows) for t in self.v]
