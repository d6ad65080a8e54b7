"""Image side of a monolithic model: a patch embedding (no ViT blocks), pixel shuffle, and the `mlp1` projector.

Module and parameter names mirror the official checkpoint (`vision_model.embeddings.*`, `mlp1.{0,1,3}`),
so the state dict needs no key mapping (reference 1.2-1.4, 1.7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import MonoConfig, VisionConfig


class PatchEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        # The CLS token and its position row are dead weights (the CLS output is dropped), kept
        # only so checkpoints round-trip with the official key set (reference 9.1).
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, d))
        self.patch_embedding = nn.Conv2d(cfg.num_channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, 1 + cfg.grid**2, d))

    def _patch_positions(self, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
        pos = self.position_embedding[:, 1:]
        g = self.cfg.grid
        if (h, w) == (g, g):
            # Bicubic resampling to the same size with align_corners=False is the identity
            # (every output sample lands on an input sample), so the official per-call
            # interpolation is skipped here without changing a bit.
            return pos.to(dtype)
        d = pos.shape[-1]
        grid = pos.float().reshape(1, g, g, d).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid.reshape(1, d, h * w).permute(0, 2, 1).to(dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[tiles, 3, S, S] -> [tiles, (S/14)^2, Dv], row-major patches, CLS already dropped."""
        w = self.patch_embedding.weight
        x = self.patch_embedding(pixel_values.to(w.dtype))  # [T, Dv, Hp, Wp]
        _, _, h, wd = x.shape
        x = x.flatten(2).transpose(1, 2)
        # The official model prepends CLS, adds positions, then drops CLS again: adding the
        # positions of rows 1: directly is the same arithmetic without the wasted row.
        return x + self._patch_positions(h, wd, x.dtype)


class VisionModel(nn.Module):
    """`vision_model` in the checkpoint: only `embeddings`."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embeddings = PatchEmbeddings(cfg)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.embeddings(pixel_values)


def pixel_shuffle(x: torch.Tensor, scale: float = 0.5, version: str = "v2") -> torch.Tensor:
    """Merge each 2x2 block of patches into one token: [T, H, W, C] -> [T, H*s, W*s, C/s^2].

    Follows the official view/permute sequence so channel order is (dy, dx) = (0,0), (0,1),
    (1,0), (1,1), each block of C channels (reference 1.3). Version "v1" leaves the grid
    transposed, as the published code does for old checkpoints.
    """
    t, h, w, c = x.shape
    x = x.reshape(t, h, int(w * scale), int(c / scale))  # merge x-pairs
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.reshape(t, int(w * scale), int(h * scale), int(c / (scale * scale)))  # merge y-pairs
    if version == "v2":
        x = x.permute(0, 2, 1, 3).contiguous()
    return x


class Projector(nn.Sequential):
    """`mlp1`: LayerNorm(4Dv) -> Linear(4Dv, H) -> GELU(erf) -> Linear(H, H); indices 0, 1, 3 hold weights."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    @classmethod
    def after_pixel_shuffle(cls, channels: int, downsample_ratio: float, out_dim: int) -> "Projector":
        """The projector for `channels`-wide patch features merged by `pixel_shuffle(scale=downsample_ratio)`,
        which makes them channels / downsample_ratio^2 wide (4x at the usual 0.5)."""
        return cls(int(channels / downsample_ratio**2), out_dim)


def image_features(vision_model: VisionModel, mlp1: Projector, pixel_values: torch.Tensor, cfg: MonoConfig) -> torch.Tensor:
    """Tiles [T, 3, S, S] -> LLM embeddings [T * num_image_token, H], tiles in order, tokens row-major."""
    x = vision_model(pixel_values)
    t, n, c = x.shape
    side = int(n**0.5)
    if side * side != n:
        raise ValueError(f"patch count {n} is not a square; images must be square tiles")
    x = pixel_shuffle(x.reshape(t, side, side, c), cfg.downsample_ratio, cfg.ps_version)
    x = x.flatten(1, 2)  # [T, tokens per tile, 4Dv]; explicit dims so zero tiles (training filler) work
    return mlp1(x).flatten(0, 1)
