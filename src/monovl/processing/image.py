"""Image loading and InternVL dynamic tiling (reference section 3).

The published preprocessing is reproduced exactly, including its quirks:

* candidate grids are ordered by tile count, and among equal tile counts by the
  iteration order of a Python ``set`` of ``(i, j)`` tuples (see
  :func:`candidate_grids`);
* the tie rule prefers a larger grid only when the image has more than half the
  pixels of that grid;
* the thumbnail is a plain (aspect-distorting) resize of the whole image and is
  appended *after* the tiles, and only when there is more than one tile.

No torchvision here: ToTensor + Normalize are re-done with numpy/torch, with the
same float32 operation order so the values match bit for bit.

Loading differs from the official ``load_image`` by default (:func:`to_rgb`):
the EXIF orientation is applied and transparency is composited onto white, as
vLLM and SGLang do; ``official_convert=True`` restores the plain
``convert('RGB')``. 16-bit and float images are mapped to 8 bits in both modes.
Tile budgets are bounded by :data:`MAX_TILES`.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageInput",
    "ImageLoadError",
    "MAX_TILES",
    "TilingResult",
    "candidate_grids",
    "check_tile_budget",
    "choose_grid",
    "dynamic_tiles",
    "load_image",
    "open_image",
    "preprocess_images",
    "split_tile_budget",
    "tile_image",
    "tiles_to_tensor",
    "to_rgb",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Anything a caller may hand us as "an image": a path, encoded file bytes, a PIL image.
ImageInput = Union[str, os.PathLike, bytes, Image.Image]


class ImageLoadError(ValueError):
    """A path or bytes that do not hold a readable image (missing, empty, truncated, corrupt)."""


# Upper bound on a tile budget. Tiling cost grows with the budget (a 1x4000
# image gets a 1x64 grid at 64), and 64 tiles are already 16,384 image tokens
# at 256 per tile, several times the 6-24 that InternVL models are run with.
MAX_TILES = 64


def check_tile_budget(max_num: int, what: str = "max_num") -> int:
    """Return ``max_num`` if it is an int in ``1..MAX_TILES``, else raise ``ValueError`` naming the bound."""
    if not isinstance(max_num, int) or isinstance(max_num, bool) or not 1 <= max_num <= MAX_TILES:
        raise ValueError(f"{what} must be an int from 1 to {MAX_TILES} (MAX_TILES), got {max_num!r}")
    return max_num


def open_image(image: ImageInput) -> Image.Image:
    """Fully decode a path, encoded bytes or PIL image, keeping its stored mode and metadata.

    This is the one place images are read from files and bytes (chat, training
    records, TSV base64); :func:`to_rgb` turns the result into model input.
    Raises :class:`ImageLoadError` for anything that is not a readable image.
    """
    if isinstance(image, Image.Image):
        try:
            image.load()  # a lazily opened PIL image can still fail to decode here
        except Exception as exc:
            raise ImageLoadError(f"the given PIL image is not a readable image: {exc}") from exc
        return image
    if isinstance(image, (bytes, bytearray)):
        if not image:
            raise ImageLoadError("the image data is empty")
        source, name = io.BytesIO(image), f"<{len(image)} bytes>"
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            reason = "no such file" if not path.exists() else "not a regular file"
            raise ImageLoadError(f"{str(path)!r} is not a readable image ({reason})")
        source, name = path, repr(str(path))
    else:
        raise ImageLoadError(f"expected an image path, bytes or a PIL.Image, got {type(image).__name__}")
    # A truncated file must fail loudly, never decode to a half-grey picture. Some
    # other library in the process may have flipped this global on; we force it
    # off for the duration of our own decode and put the caller's value back.
    saved_flag = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(source) as opened:  # closing keeps the decoded pixels and EXIF
            # Image.open only parses the header; .load() decodes the pixel data so
            # truncated or corrupt payloads are detected here, not later in a resize.
            opened.load()
            return opened
    except Exception as exc:
        # Pillow's decoders raise a zoo of types (OSError, SyntaxError, EOFError,
        # struct.error, zlib.error, DecompressionBombError, ...); callers only need
        # to know that this input is unusable, and why.
        raise ImageLoadError(f"{name} is not a readable image ({type(exc).__name__}: {exc})") from exc
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved_flag


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale -> 8-bit ``L``; other modes unchanged.

    Pillow's own conversion clips these at 255, so a 16-bit pixel of 30000
    would be white. Integer data (``I;16*``, and ``I``, which is how Pillow
    opens 16-bit PNG and TIFF files) is read as 16-bit: ``round(v / 257)``
    maps 0..65535 onto 0..255. Float (``F``) data in [0, 1] is scaled by 255,
    other float data is read like integer data. Values outside those ranges
    (negative, above 65535, NaN) raise :class:`ImageLoadError`.
    """
    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode == "F" and 0.0 <= low and high <= 1.0:
        scale = 255.0
    elif 0.0 <= low and high <= 65535.0:  # NaN fails both comparisons
        scale = 1 / 257
    else:
        raise ImageLoadError(
            f"a {image.mode!r} image with values from {low} to {high} cannot be mapped to 8 bits: "
            "expected 0..65535 (or 0..1 for float images)"
        )
    out = Image.fromarray(np.rint(values * scale).astype(np.uint8))
    out.info = dict(image.info)  # keeps the EXIF orientation
    if isinstance(out.info.get("transparency"), (int, float)):  # a transparent grey level
        out.info["transparency"] = int(np.rint(out.info["transparency"] * scale))
    return out


def to_rgb(image: Image.Image, official_convert: bool = False) -> Image.Image:
    """A decoded PIL image -> 8-bit RGB model input.

    Default (what vLLM and SGLang do): the EXIF orientation is applied
    (``ImageOps.exif_transpose``, so a phone photo is upright) and any
    transparency is composited onto white (a transparent logo stays visible).
    ``official_convert=True`` is the official InternVL ``load_image``: a plain
    ``convert('RGB')``, EXIF orientation ignored, alpha dropped (transparent
    pixels show their stored colour, often black). High bit depth images are
    mapped to 8 bits in both modes (see :func:`_to_8bit`).
    """
    if not official_convert:
        image = ImageOps.exif_transpose(image)
    image = _to_8bit(image)
    if not official_convert and image.has_transparency_data:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(image: ImageInput, official_convert: bool = False) -> Image.Image:
    """Open ``image`` (a path, encoded bytes or a PIL image) and return a fully decoded RGB image.

    :func:`open_image` then :func:`to_rgb`; ``official_convert`` is explained
    there. Raises :class:`ImageLoadError` for unreadable input.
    """
    opened = open_image(image)
    try:
        return to_rgb(opened, official_convert)
    except ImageLoadError:
        raise
    except Exception as exc:  # e.g. a corrupt EXIF block
        raise ImageLoadError(f"cannot convert the image to RGB ({type(exc).__name__}: {exc})") from exc


def candidate_grids(min_num: int = 1, max_num: int = 12) -> list[tuple[int, int]]:
    """All ``(cols, rows)`` grids with ``min_num <= cols*rows <= max_num``, in the published order.

    The official code builds a ``set`` and sorts it by ``cols*rows`` only, so grids
    with the same tile count keep the set's iteration order. That order is
    deterministic in CPython (small-int tuples hash identically across runs and
    PYTHONHASHSEED values), but it depends on the set's size and insertion
    history. The official generator loops over ``n, i, j`` up to ``max_num``
    (cubic time); we insert the same grids in the same first-seen order (a
    repeated insert does not change a set), visiting only valid grids.
    ``max_num`` may be at most :data:`MAX_TILES`; a larger value raises.
    """
    if not 1 <= min_num <= max_num:
        raise ValueError(f"need 1 <= min_num <= max_num, got min_num={min_num}, max_num={max_num}")
    check_tile_budget(max_num)

    def fits(i: int, j: int) -> bool:
        return min_num <= i * j <= max_num

    # n = min_num: every (i, j) with i, j <= min_num. Each later n adds the
    # grids whose larger side is n: (i, n) for i < n, then (n, j) for j <= n.
    order = [(i, j) for i in range(1, min_num + 1) for j in range(1, min_num + 1) if fits(i, j)]
    for n in range(min_num + 1, max_num + 1):
        order += [(i, n) for i in range(1, min(n - 1, max_num // n) + 1) if fits(i, n)]
        order += [(n, j) for j in range(1, min(n, max_num // n) + 1) if fits(n, j)]
    return sorted(set(order), key=lambda g: g[0] * g[1])


def choose_grid(
    width: int,
    height: int,
    grids: Sequence[tuple[int, int]],
    image_size: int = 448,
) -> tuple[int, int]:
    """Pick the grid whose aspect ratio is closest to ``width/height``.

    Same float expressions as the official code so that exact ties (which happen
    for common sizes, e.g. every square image) resolve identically.
    """
    aspect_ratio = width / height
    area = width * height
    best_diff = float("inf")
    best = (1, 1)
    for cols, rows in grids:
        diff = abs(aspect_ratio - cols / rows)
        if diff < best_diff:
            best_diff = diff
            best = (cols, rows)
        elif diff == best_diff:
            # Later candidates have at least as many tiles; take the bigger grid only
            # if the image has enough pixels to fill more than half of it.
            if area > 0.5 * image_size * image_size * cols * rows:
                best = (cols, rows)
    return best


@dataclass(frozen=True)
class TilingResult:
    """Tiles of one image plus how they were made (for inspection and tests)."""

    tiles: list[Image.Image]
    grid: tuple[int, int]  # (cols, rows)
    boxes: list[tuple[int, int, int, int]]  # crop boxes in the resized image, row-major
    has_thumbnail: bool

    @property
    def num_tiles(self) -> int:
        """Number of tiles including the thumbnail."""
        return len(self.tiles)


def tile_image(
    image: Image.Image,
    image_size: int = 448,
    min_num: int = 1,
    max_num: int = 12,
    use_thumbnail: bool = True,
) -> TilingResult:
    """Dynamic tiling with full details: chosen grid, crop boxes, thumbnail flag."""
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if image.mode != "RGB":
        image = to_rgb(image)
    width, height = image.size
    if width < 1 or height < 1:
        raise ValueError(f"cannot tile an empty image of size {width}x{height}")
    cols, rows = choose_grid(width, height, candidate_grids(min_num, max_num), image_size)
    # Explicit BICUBIC: it is PIL's default for RGB, spelled out so a future Pillow
    # default change cannot silently alter the pixels.
    resized = image.resize((image_size * cols, image_size * rows), Image.Resampling.BICUBIC)
    boxes = []
    for k in range(cols * rows):
        x0 = (k % cols) * image_size
        y0 = (k // cols) * image_size
        boxes.append((x0, y0, x0 + image_size, y0 + image_size))
    tiles = [resized.crop(box) for box in boxes]
    has_thumbnail = use_thumbnail and len(tiles) != 1
    if has_thumbnail:
        tiles.append(image.resize((image_size, image_size), Image.Resampling.BICUBIC))
    return TilingResult(tiles=tiles, grid=(cols, rows), boxes=boxes, has_thumbnail=has_thumbnail)


def dynamic_tiles(
    image: Image.Image,
    image_size: int = 448,
    min_num: int = 1,
    max_num: int = 12,
    use_thumbnail: bool = True,
) -> list[Image.Image]:
    """The official ``dynamic_preprocess``: tiles row-major, thumbnail last.

    Use :func:`tile_image` to also get the chosen grid and crop boxes.
    """
    return tile_image(image, image_size, min_num, max_num, use_thumbnail).tiles


def tiles_to_tensor(tiles: Sequence[Image.Image], image_size: int = 448) -> torch.Tensor:
    """Stack tiles into ``[n, 3, S, S]`` float32: ToTensor then ImageNet normalisation."""
    if len(tiles) == 0:
        raise ValueError("tiles_to_tensor needs at least one tile")
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    out = torch.empty((len(tiles), 3, image_size, image_size), dtype=torch.float32)
    for k, tile in enumerate(tiles):
        if tile.mode != "RGB":
            tile = tile.convert("RGB")
        if tile.size != (image_size, image_size):
            tile = tile.resize((image_size, image_size), Image.Resampling.BICUBIC)
        arr = np.asarray(tile, dtype=np.uint8)  # [H, W, 3]
        chw = torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div(255)
        # (x/255 - mean)/std in float32, the same op order as ToTensor + Normalize.
        out[k] = chw.sub(mean).div(std)
    return out


def split_tile_budget(max_num: int, num_images: int) -> int:
    """Per-image tile limit when several images share one sample's budget.

    Official multi-image training gives every image ``max_num // num_images``
    tiles; we clamp at 1 so that many images still get one tile each (the total
    then exceeds ``max_num``, which is unavoidable).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    return max(1, max_num // num_images)


def preprocess_images(
    images: Sequence[ImageInput] | ImageInput,
    image_size: int = 448,
    max_num: int = 12,
    use_thumbnail: bool = True,
    min_num: int = 1,
    share_budget: bool = True,
    official_convert: bool = False,
) -> tuple[torch.Tensor, list[int]]:
    """Load, tile and normalise one or more images.

    Returns ``(pixel_values [sum(tiles), 3, S, S], tiles_per_image)``; tiles of
    image 0 come first. With several images and ``share_budget`` (the default),
    each image may use ``max(1, max_num // num_images)`` tiles, the rule of the
    official multi-image training; with ``share_budget=False`` every image gets
    the full ``max_num`` (what the README's multi-image chat example does).
    ``max_num`` above :data:`MAX_TILES` raises ``ValueError``; ``official_convert``
    is explained in :func:`to_rgb`.
    """
    if isinstance(images, (str, os.PathLike, bytes, Image.Image)):
        images = [images]
    images = list(images)
    if not images:
        raise ValueError("preprocess_images needs at least one image")
    check_tile_budget(max_num)
    per_image_max = split_tile_budget(max_num, len(images)) if share_budget else max_num
    per_image_min = min(min_num, per_image_max)
    chunks: list[torch.Tensor] = []
    counts: list[int] = []
    for item in images:
        pil = load_image(item, official_convert)
        tiles = dynamic_tiles(pil, image_size, per_image_min, per_image_max, use_thumbnail)
        chunks.append(tiles_to_tensor(tiles, image_size))
        counts.append(len(tiles))
    return torch.cat(chunks, dim=0), counts
