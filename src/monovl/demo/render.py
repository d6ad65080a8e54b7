"""Drawing for the demo's synthetic visual world: scene metadata in, a Pillow image out.

Every image is a pure function of its scene metadata (a JSON-serialisable dict,
see :mod:`monovl.demo.world`) and the image size, so a stored sample can be
re-rendered bit-exactly from its record (the tests do this). Geometry is stored
as fractions of the image side, so the same scene can be drawn at any size.

Scene kinds:

``shapes``  flat light background; each object ``{"shape", "color", "x", "y",
            "r"}`` (centre and radius as fractions of the side) drawn filled with
            a darker outline, supersampled 2x and box-filtered down so edges are
            anti-aliased but interiors keep the exact palette colour.
``word`` / ``number``
            one string in a DejaVu font (``font`` style key), ``size`` = font
            pixel size / side, optionally rotated by ``angle`` degrees about its
            centre ``(x, y)``.
``chart``   a vertical bar chart: light grid lines for 1..9, axes, one bar per
            ``labels``/``values`` entry, the value printed above each bar and the
            label below it.

Fonts: the DejaVu TTFs are looked up at run time (``$MONOVL_FONT_DIR``, the
usual system font folders, then the copies matplotlib bundles); if none is
found, ``PIL.ImageFont.load_default(size=...)`` is used for every style with a
warning (images then stay readable but all styles look alike, and pixels differ
from machines that have the fonts).
"""

from __future__ import annotations

import glob
import importlib.util
import math
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "FONT_FILES",
    "FONT_STYLES",
    "TEXT_COLORS",
    "CHART_LAYOUT",
    "font_paths",
    "get_font",
    "render_scene",
    "text_extent",
]

# Shape fill colours: six hues that stay distinct after resizing and JPEG-ish blur.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (30, 150, 50),
    "blue": (35, 75, 215),
    "yellow": (245, 205, 0),
    "purple": (135, 50, 175),
    "orange": (245, 125, 15),
}

# Light backgrounds (every shape colour and text colour contrasts with each).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "light grey": (226, 226, 226),
    "pale blue": (214, 230, 250),
    "cream": (250, 243, 222),
    "pale green": (220, 242, 220),
    "pale pink": (250, 225, 232),
}

# Dark ink for words and numbers.
TEXT_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "dark blue": (20, 40, 140),
    "dark red": (150, 20, 20),
    "dark green": (20, 100, 40),
}

# style key -> DejaVu file name
FONT_FILES: dict[str, str] = {
    "sans": "DejaVuSans.ttf",
    "sans-bold": "DejaVuSans-Bold.ttf",
    "sans-oblique": "DejaVuSans-Oblique.ttf",
    "serif": "DejaVuSerif.ttf",
    "serif-bold": "DejaVuSerif-Bold.ttf",
    "serif-italic": "DejaVuSerif-Italic.ttf",
    "mono": "DejaVuSansMono.ttf",
    "mono-bold": "DejaVuSansMono-Bold.ttf",
}
FONT_STYLES: tuple[str, ...] = tuple(FONT_FILES)

# Chart geometry (fractions of the side).
CHART_LAYOUT = {
    "left": 0.09,  # y axis
    "right": 0.04,
    "top": 0.13,  # room for the value printed above a bar of height 9
    "bottom": 0.14,  # room for the labels
    "bar_fill": 0.62,  # bar width / slot width
    "value_font": 0.085,
    "label_font": 0.085,
}

_SUPERSAMPLE = 2


# ------------------------------------------------------------------------ fonts
def _font_dirs() -> list[Path]:
    dirs: list[Path] = []
    env = os.environ.get("MONOVL_FONT_DIR")
    if env:
        dirs.append(Path(env))
    dirs += [
        Path("/usr/share/fonts/truetype/dejavu"),
        Path("/usr/share/fonts/dejavu"),
        Path("/usr/share/fonts/TTF"),
        Path("/usr/share/fonts"),
        Path("/usr/local/share/fonts"),
        Path.home() / ".fonts",
        Path.home() / ".local/share/fonts",
        Path("/Library/Fonts"),
        Path.home() / "Library/Fonts",
        Path("C:/Windows/Fonts"),
    ]
    spec = importlib.util.find_spec("matplotlib")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            dirs.append(Path(loc) / "mpl-data" / "fonts" / "ttf")
    return dirs


@lru_cache(maxsize=1)
def font_paths() -> dict[str, str | None]:
    """Style key -> path of its DejaVu TTF (None where not found). Searched once per process."""
    found: dict[str, str] = {}
    for d in _font_dirs():
        if not d.is_dir():
            continue
        pattern = str(d / "**" / "DejaVu*.ttf")
        for p in sorted(glob.glob(pattern, recursive=True)):
            found.setdefault(os.path.basename(p), p)
        if all(name in found for name in FONT_FILES.values()):
            break
    return {style: found.get(name) for style, name in FONT_FILES.items()}


_warned_styles: set[str] = set()


@lru_cache(maxsize=2048)
def get_font(style: str, px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The font for a style key at ``px`` pixels (cached)."""
    px = max(6, int(px))
    path = font_paths().get(style)
    if path is None:
        # A missing style falls back to another DejaVu face before the Pillow default.
        path = next((p for p in font_paths().values() if p), None)
        if style not in _warned_styles:
            _warned_styles.add(style)
            warnings.warn(
                f"monovl.demo: DejaVu font for style {style!r} not found; using "
                + (os.path.basename(path) if path else "PIL's default font"),
                RuntimeWarning,
                stacklevel=2,
            )
    if path is not None:
        return ImageFont.truetype(path, px)
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _text_bbox(font: Any, text: str) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in font.getbbox(text))  # type: ignore[return-value]


def text_extent(style: str, px: int, text: str, angle: float = 0.0) -> tuple[float, float]:
    """Width and height (pixels) of ``text`` after rotation by ``angle`` degrees (its bounding box)."""
    l, t, r, b = _text_bbox(get_font(style, px), text)
    w, h = r - l, b - t
    a = math.radians(angle)
    c, s = abs(math.cos(a)), abs(math.sin(a))
    return w * c + h * s, w * s + h * c


# --------------------------------------------------------------------- drawing
def _darker(rgb: tuple[int, int, int], f: float = 0.6) -> tuple[int, int, int]:
    return tuple(int(round(v * f)) for v in rgb)  # type: ignore[return-value]


def _star_points(cx: float, cy: float, r: float, inner: float = 0.45) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * inner
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def shape_outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Polygon vertices of a shape (None for a circle). All shapes fit in the circle of radius r."""
    if shape == "square":
        h = 0.86 * r  # inside the r-box; about 94% of the circle's area
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + 0.92 * r), (cx - r, cy + 0.92 * r)]
    if shape == "star":
        return _star_points(cx, cy, r)
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}")


def _render_shapes(meta: Mapping[str, Any], size: int) -> Image.Image:
    ss = _SUPERSAMPLE
    big = size * ss
    img = Image.new("RGB", (big, big), BACKGROUNDS[meta["bg"]])
    draw = ImageDraw.Draw(img)
    width = max(1, round(1.5 * ss * size / 224))
    for obj in meta["objects"]:
        fill = COLORS[obj["color"]]
        outline = _darker(fill)
        cx, cy, r = obj["x"] * big, obj["y"] * big, obj["r"] * big
        pts = shape_outline(obj["shape"], cx, cy, r)
        if pts is None:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=width)
        else:
            draw.polygon(pts, fill=fill, outline=outline, width=width)
    return img.reduce(ss)


def _paste_text(
    img: Image.Image, text: str, style: str, px: int, rgb: tuple[int, int, int],
    cx: float, cy: float, angle: float = 0.0, line_ref: str | None = None,
) -> None:
    """Draw ``text`` centred on (cx, cy) pixels, rotated by ``angle`` degrees (kept inside the image).

    With ``line_ref`` the vertical extent is that of ``text`` + ``line_ref``, so texts
    drawn with the same reference share a baseline (chart labels with and without descenders).
    """
    font = get_font(style, px)
    l, t, r, b = _text_bbox(font, text)
    if line_ref:
        _, t2, _, b2 = _text_bbox(font, line_ref)
        t, b = min(t, t2), max(b, b2)
    pad = 2
    mask = Image.new("L", (r - l + 2 * pad, b - t + 2 * pad), 0)
    ImageDraw.Draw(mask).text((pad - l, pad - t), text, font=font, fill=255)
    if angle:
        mask = mask.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    w, h = mask.size
    x0 = min(max(int(round(cx - w / 2)), 0), max(img.width - w, 0))
    y0 = min(max(int(round(cy - h / 2)), 0), max(img.height - h, 0))
    img.paste(Image.new("RGB", mask.size, rgb), (x0, y0), mask)


def _render_text(meta: Mapping[str, Any], size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), BACKGROUNDS[meta["bg"]])
    _paste_text(
        img, meta["text"], meta["font"], round(meta["size"] * size), TEXT_COLORS[meta["color"]],
        meta["x"] * size, meta["y"] * size, float(meta.get("angle", 0.0)),
    )
    return img


def chart_bar_boxes(n: int, values: list[int], size: int) -> list[tuple[int, int, int, int]]:
    """Pixel boxes (x0, y0, x1, y1) of the bars of a chart; y1 is the baseline."""
    L = CHART_LAYOUT
    x_left, x_right = L["left"] * size, (1 - L["right"]) * size
    y_top, y_base = L["top"] * size, (1 - L["bottom"]) * size
    unit = (y_base - y_top) / 9.0
    slot = (x_right - x_left) / n
    boxes = []
    for k, v in enumerate(values):
        cx = x_left + slot * (k + 0.5)
        half = slot * L["bar_fill"] / 2
        boxes.append((int(round(cx - half)), int(round(y_base - v * unit)), int(round(cx + half)), int(round(y_base))))
    return boxes


@lru_cache(maxsize=4096)
def _fit_px(style: str, px: int, text: str, max_width: float) -> int:
    while px > 8 and text_extent(style, px, text)[0] > max_width:
        px -= 1
    return px


def _render_chart(meta: Mapping[str, Any], size: int) -> Image.Image:
    L = CHART_LAYOUT
    bg = BACKGROUNDS[meta["bg"]]
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    labels, values = list(meta["labels"]), [int(v) for v in meta["values"]]
    n = len(values)
    x_left, x_right = L["left"] * size, (1 - L["right"]) * size
    y_top, y_base = L["top"] * size, (1 - L["bottom"]) * size
    unit = (y_base - y_top) / 9.0
    grid = _darker(bg, 0.9)
    for v in range(1, 10):
        y = int(round(y_base - v * unit))
        draw.line([(int(x_left), y), (int(x_right), y)], fill=grid, width=1)
    fill = COLORS[meta["bar_color"]]
    axis_w = max(1, round(2 * size / 224))
    ink = TEXT_COLORS["black"]
    vfont_px = round(L["value_font"] * size)
    slot = (x_right - x_left) / n
    # one label size for the whole chart: the largest at which every label fits its slot
    lpx = min(_fit_px("sans-bold", round(L["label_font"] * size), lab, slot * 0.85) for lab in labels)
    _, lh = text_extent("sans-bold", lpx, "Ag")
    for (x0, y0, x1, y1), v, lab in zip(chart_bar_boxes(n, values, size), values, labels):
        draw.rectangle([x0, y0, x1, y1], fill=fill, outline=_darker(fill), width=1)
        cx = (x0 + x1) / 2
        _, vh = text_extent("sans-bold", vfont_px, str(v))
        _paste_text(img, str(v), "sans-bold", vfont_px, ink, cx, y0 - 3 - vh / 2)
        _paste_text(img, lab, "sans-bold", lpx, ink, cx, y_base + 4 + lh / 2 + axis_w, line_ref="Ag")
    draw.line([(int(x_left), int(y_base)), (int(x_right), int(y_base))], fill=ink, width=axis_w)
    draw.line([(int(x_left), int(y_top) - 4), (int(x_left), int(y_base))], fill=ink, width=axis_w)
    return img


def render_scene(meta: Mapping[str, Any], size: int = 224) -> Image.Image:
    """Draw a scene (see the module docstring) as a ``size`` x ``size`` RGB image."""
    kind = meta["kind"]
    if kind == "shapes":
        return _render_shapes(meta, size)
    if kind in ("word", "number"):
        return _render_text(meta, size)
    if kind == "chart":
        return _render_chart(meta, size)
    raise ValueError(f"unknown scene kind {kind!r}")
