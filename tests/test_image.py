"""Image loading, dynamic tiling and normalisation (reference section 3)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from monovl.processing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageLoadError,
    candidate_grids,
    choose_grid,
    dynamic_tiles,
    load_image,
    preprocess_images,
    split_tile_budget,
    tile_image,
    tiles_to_tensor,
)

S = 448
HALF_TILE_AREA = 0.5 * S * S  # 100352: the tie rule's threshold per tile


def solid(width: int, height: int, color=(10, 20, 30)) -> Image.Image:
    return Image.new("RGB", (width, height), color)


# ------------------------------------------------------------ candidate grids
def test_candidate_grid_order_matches_published_set_order():
    # Output of the official expression `sorted(set(...), key=i*j)` on CPython;
    # within one tile count the order is the set's, e.g. (2, 2) comes before
    # (4, 1) for max 12 but after (1, 4) for max 6.
    assert candidate_grids(1, 12) == [
        (1, 1), (1, 2), (2, 1), (3, 1), (1, 3), (2, 2), (4, 1), (1, 4), (5, 1), (1, 5),
        (1, 6), (6, 1), (3, 2), (2, 3), (7, 1), (1, 7), (4, 2), (2, 4), (1, 8), (8, 1),
        (1, 9), (3, 3), (9, 1), (2, 5), (5, 2), (10, 1), (1, 10), (11, 1), (1, 11),
        (12, 1), (3, 4), (4, 3), (1, 12), (6, 2), (2, 6),
    ]  # fmt: skip
    assert candidate_grids(1, 6) == [
        (1, 1), (1, 2), (2, 1), (3, 1), (1, 3), (4, 1), (1, 4), (2, 2), (1, 5), (5, 1),
        (6, 1), (2, 3), (1, 6), (3, 2),
    ]  # fmt: skip
    assert candidate_grids(2, 2) == [(1, 2), (2, 1)]
    assert candidate_grids(1, 1) == [(1, 1)]


def test_candidate_grids_rejects_bad_range():
    with pytest.raises(ValueError):
        candidate_grids(0, 4)
    with pytest.raises(ValueError):
        candidate_grids(5, 4)


# ------------------------------------------------------------- golden tiling
@pytest.mark.parametrize(
    "width,height,max_num,grid,n_tiles",
    [
        # square, diff 0 at (1,1); the (2,2) tie needs area > 4*HALF_TILE_AREA = 401408 > 200704
        (448, 448, 12, (1, 1), 1),
        # ratio 2 -> (2,1) exactly; 2 tiles + thumbnail
        (800, 400, 6, (2, 1), 3),
        # ratio 3.33: (3,1) diff 0.33; (6,2) ties but 300000 <= 12*HALF_TILE_AREA
        (1000, 300, 12, (3, 1), 4),
        # square tie: 490000 > 401408 so (2,2) wins, but not > 9*HALF = 903168 for (3,3)
        (700, 700, 12, (2, 2), 5),
        # square tie lost: 360000 <= 401408 keeps (1,1)
        (600, 600, 12, (1, 1), 1),
        # square tie won twice: (3,3); (4,4) exceeds max 12
        (1792, 1792, 12, (3, 3), 10),
        # ratio 2.5: (2,1) and (3,1) tie at 0.5 and 400000 > 3*HALF = 301056 -> (3,1); (5,2) > 6 tiles
        (1000, 400, 6, (3, 1), 4),
        # with max 12 the exact (5,2) exists
        (1000, 400, 12, (5, 2), 11),
        # tall 0.05: (1,12) at 0.083 is closest
        (100, 2000, 12, (1, 12), 13),
        (100, 2000, 6, (1, 6), 7),
        # max_num=1: always one tile, never a thumbnail
        (800, 400, 1, (1, 1), 1),
    ],
)
def test_tiling_golden(width, height, max_num, grid, n_tiles):
    result = tile_image(solid(width, height), S, 1, max_num, True)
    assert result.grid == grid
    assert result.num_tiles == n_tiles
    assert result.has_thumbnail == (n_tiles > 1)
    assert all(t.size == (S, S) and t.mode == "RGB" for t in result.tiles)
    assert len(dynamic_tiles(solid(width, height), S, 1, max_num, True)) == n_tiles


def test_equal_tile_count_tie_follows_set_order():
    # min=max=2 leaves (1,2) then (2,1) (set order). Ratio 1.25 is 0.75 from both.
    # 500x400: 200000 <= 2*HALF_TILE_AREA = 200704, so the first, (1,2), stays.
    assert choose_grid(500, 400, candidate_grids(2, 2)) == (1, 2)
    # 1000x800: 800000 > 200704, so the later (2,1) replaces it.
    assert choose_grid(1000, 800, candidate_grids(2, 2)) == (2, 1)


def test_no_thumbnail_when_disabled():
    result = tile_image(solid(800, 400), S, 1, 6, use_thumbnail=False)
    assert result.grid == (2, 1) and result.num_tiles == 2 and not result.has_thumbnail


def test_crops_are_row_major_and_thumbnail_last():
    # 900x600 = 3x2 blocks of 300 px, each its own colour; ratio 1.5 -> grid (3,2).
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    image = Image.new("RGB", (900, 600))
    for k, colour in enumerate(colours):
        col, row = k % 3, k // 3
        image.paste(colour, (col * 300, row * 300, col * 300 + 300, row * 300 + 300))
    result = tile_image(image, S, 1, 6, True)
    assert result.grid == (3, 2)
    assert result.boxes == [
        (0, 0, 448, 448), (448, 0, 896, 448), (896, 0, 1344, 448),
        (0, 448, 448, 896), (448, 448, 896, 896), (896, 448, 1344, 896),
    ]  # fmt: skip
    assert result.num_tiles == 7
    for k, colour in enumerate(colours):
        assert result.tiles[k].getpixel((S // 2, S // 2)) == colour
    expected_thumb = image.resize((S, S), Image.Resampling.BICUBIC)
    assert result.tiles[-1].tobytes() == expected_thumb.tobytes()
    # Tiles are crops of the whole image resized to 1344x896 with PIL's default (bicubic).
    resized = image.resize((1344, 896))
    assert result.tiles[4].tobytes() == resized.crop((448, 448, 896, 896)).tobytes()


def test_non_rgb_input_is_converted():
    tiles = dynamic_tiles(Image.new("L", (448, 448), 7))
    assert tiles[0].mode == "RGB" and tiles[0].getpixel((0, 0)) == (7, 7, 7)


# ------------------------------------------------------------ normalisation
def test_normalisation_of_constant_colour():
    colour = (255, 0, 128)
    pixels = tiles_to_tensor(dynamic_tiles(solid(800, 400, colour), S, 1, 6))
    assert pixels.shape == (3, 3, S, S) and pixels.dtype == torch.float32
    for c in range(3):
        expected = (colour[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(pixels[:, c], torch.full_like(pixels[:, c], expected), atol=1e-6)
    # Bit-exact float32 recipe of ToTensor + Normalize.
    value = torch.tensor(128, dtype=torch.float32).div(255)
    exact = value.sub(torch.tensor(0.406)).div(torch.tensor(0.225))
    assert torch.equal(pixels[0, 2, 0, 0], exact)
    assert pixels[0, 0, 0, 0].item() == pytest.approx((1.0 - 0.485) / 0.229, abs=1e-6)


def test_tiles_to_tensor_resizes_odd_tiles():
    pixels = tiles_to_tensor([solid(100, 50, (0, 0, 0))], image_size=32)
    assert pixels.shape == (1, 3, 32, 32)
    assert torch.allclose(pixels[0, 0], torch.full((32, 32), -0.485 / 0.229), atol=1e-6)
    with pytest.raises(ValueError):
        tiles_to_tensor([])


# ---------------------------------------------------------- several images
def test_tile_budget_is_shared_between_images():
    assert split_tile_budget(12, 1) == 12
    assert split_tile_budget(12, 2) == 6
    assert split_tile_budget(6, 4) == 1
    assert split_tile_budget(6, 12) == 1  # never below one tile
    # Budget 6 over 2 images -> 3 each: 800x400 -> (2,1)+thumb; 1000x300 -> (3,1)+thumb.
    pixels, counts = preprocess_images([solid(800, 400), solid(1000, 300)], S, max_num=6)
    assert counts == [3, 4]
    assert pixels.shape == (7, 3, S, S)
    # Without sharing, 1792x1792 gets (2,2)+thumb from max 6 ((3,3) is 9 > 6).
    _, counts = preprocess_images([solid(1792, 1792)] * 2, S, max_num=6, share_budget=False)
    assert counts == [5, 5]
    # Shared: 3 each; (1,1) for a square image since (2,2) would need 4.
    _, counts = preprocess_images([solid(1792, 1792)] * 2, S, max_num=6)
    assert counts == [1, 1]


def test_preprocess_accepts_a_single_path(tmp_path):
    path = tmp_path / "one.png"
    solid(800, 400).save(path)
    pixels, counts = preprocess_images(path, S, max_num=6)
    assert counts == [3] and pixels.shape == (3, 3, S, S)
    with pytest.raises(ValueError):
        preprocess_images([], S)


# ------------------------------------------------------------------ loading
def _noise_image_bytes(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def test_load_image_converts_to_rgb(tmp_path):
    path = tmp_path / "rgba.png"
    Image.new("RGBA", (5, 4), (1, 2, 3, 0)).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (5, 4)
    assert image.getpixel((0, 0)) == (255, 255, 255)  # fully transparent: composited onto white
    assert load_image(path, official_convert=True).getpixel((0, 0)) == (1, 2, 3)  # official: alpha dropped
    assert load_image(str(path)).size == (5, 4)
    assert load_image(Image.new("P", (3, 3))).mode == "RGB"


@pytest.mark.parametrize(
    "name,make",
    [
        ("missing.jpg", None),
        ("empty.png", lambda: b""),
        ("notes.txt.png", lambda: b"this is plainly not an image\n" * 10),
        ("truncated.jpg", lambda: _noise_image_bytes("JPEG")[:600]),
        ("truncated.png", lambda: _noise_image_bytes("PNG")[: len(_noise_image_bytes("PNG")) // 2]),
        ("corrupt.jpg", lambda: _noise_image_bytes("JPEG")[:20] + bytes(range(256)) * 8),
    ],
)
def test_unreadable_images_raise_value_error(tmp_path, name, make):
    path = tmp_path / name
    if make is not None:
        path.write_bytes(make())
    with pytest.raises(ValueError) as info:
        load_image(path)
    assert isinstance(info.value, ImageLoadError)
    assert str(path) in str(info.value)
    assert "not a readable image" in str(info.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_image_fails_even_if_someone_enabled_truncated_loading(tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes(_noise_image_bytes("JPEG")[:600])
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(ImageLoadError):
            load_image(path)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_directory_and_wrong_type_raise(tmp_path):
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_image(tmp_path)
    with pytest.raises(ImageLoadError):
        load_image(123)  # type: ignore[arg-type]
