"""Drawing for the demo's synthetic visual world: scene metadata in, a Pillow image out.

Every image is a pure function of its scene metadata (a JSON-serialisable dict,
see :mod:`monovl.demo.world`) and the nominal image size, so a stored sample can
be re-rendered bit-exactly from its record (the tests do this). Geometry is
stored as fractions of the image, so the same scene can be drawn at any size.

Canvas (keys every scene kind may have; a missing key takes the default, so
scenes written before these keys existed draw exactly as they did):

``aspect``  width / height (default 1.0), ``scale`` (default 1.0): at nominal
            size ``size`` the image is ``round(size * scale * sqrt(aspect))``
            pixels wide and ``round(size * scale / sqrt(aspect))`` high
            (:func:`canvas_size`), so ``size`` stays the side of a square image
            of the same area at scale 1. ``x`` / ``y`` are fractions of the
            width / height; lengths (radii, font sizes) are fractions of the
            shorter side or of ``size * scale`` as stated below.
``bg``      one of :data:`BACKGROUNDS` (the colour captions name).
``bg_style``
            ``flat`` (default); ``gradient``: linear from ``bg`` to the palette
            colour ``bg_to`` along ``bg_dir`` (``vertical``: top to bottom,
            ``horizontal``: left to right, ``diagonal``: top left to bottom
            right); ``noise``: ``bg`` plus per-pixel grey noise, uniform in
            -:data:`NOISE_AMPLITUDE`..+:data:`NOISE_AMPLITUDE` per pixel, drawn
            from ``numpy.random.RandomState(bg_seed)`` (that generator's stream
            is frozen across numpy versions) at the output resolution.
            Everything else is drawn over the background, so shape fills, ink
            and bars keep their exact palette colours inside (only edges blend).

Scene kinds:

``shapes``  each object ``{"shape", "color", "x", "y", "r"}`` (centre as
            fractions of width / height, radius ``r`` as a fraction of the
            shorter side, so shapes keep their form at any aspect) drawn filled
            with a darker outline, supersampled 2x and box-filtered down so
            edges are anti-aliased but interiors keep the exact palette colour.
``word`` / ``number``
            one string in a DejaVu font (``font`` style key), ``size`` = font
            pixel size / (``size * scale``), optionally rotated by ``angle``
            degrees about its centre ``(x, y)``.
``chart``   a vertical bar chart: light grid lines for 1..9, axes, one bar per
            ``labels``/``values`` entry, the value printed above each bar and the
            label below it. Horizontal layout fractions (:data:`CHART_LAYOUT`) are
            of the width, vertical ones of the height, font sizes of the shorter
            side.

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

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "BACKGROUNDS",
    "BG_DIRECTIONS",
    "BG_STYLES",
    "COLORS",
    "FONT_FILES",
    "FONT_STYLES",
    "NOISE_AMPLITUDE",
    "TEXT_COLORS",
    "CHART_LAYOUT",
    "canvas_size",
    "chart_bar_boxes",
    "font_paths",
    "get_font",
    "render_background",
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

# Fills outside the colour vocabulary, for shape questions that must not tie a shape to a palette
# colour (monovl.demo.single, `factorized`); no question asks for them, and only the default demo's
# single-object captions name them.
EXTRA_FILLS: dict[str, tuple[int, int, int]] = {
    "grey": (110, 110, 110),
    "black": (25, 25, 25),
    "brown": (120, 72, 30),
    "teal": (0, 128, 128),
    "pink": (235, 120, 175),
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

BG_STYLES: tuple[str, ...] = ("flat", "gradient", "noise")
BG_DIRECTIONS: tuple[str, ...] = ("vertical", "horizontal", "diagonal")
# Grey levels added to a ``noise`` background: visible texture that stays far from every
# shape and ink colour (the darkest background, light grey 226, stays above 210).
NOISE_AMPLITUDE = 12

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

# Chart geometry: left/right fractions of the width, top/bottom of the height, fonts of the shorter side.
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


# ---------------------------------------------------------------------- canvas
def canvas_size(meta: Mapping[str, Any], size: int) -> tuple[int, int]:
    """(width, height) in pixels of a scene drawn at nominal size ``size`` (see the module docstring)."""
    aspect, scale = float(meta.get("aspect", 1.0)), float(meta.get("scale", 1.0))
    root = math.sqrt(aspect)
    return max(1, round(size * scale * root)), max(1, round(size * scale / root))


def render_background(meta: Mapping[str, Any], width: int, height: int) -> Image.Image:
    """The scene's background alone, ``width`` x ``height`` pixels (``bg_style``, see the module docstring)."""
    base = BACKGROUNDS[meta["bg"]]
    style = meta.get("bg_style", "flat")
    if style == "flat":
        return Image.new("RGB", (width, height), base)
    if style == "gradient":
        # t runs 0 -> 1 from the top / left / top-left corner to the opposite side
        tx = np.linspace(0.0, 1.0, width) if width > 1 else np.zeros(1)
        ty = np.linspace(0.0, 1.0, height) if height > 1 else np.zeros(1)
        direction = meta["bg_dir"]
        if direction == "vertical":
            t = np.broadcast_to(ty[:, None], (height, width))
        elif direction == "horizontal":
            t = np.broadcast_to(tx[None, :], (height, width))
        elif direction == "diagonal":
            t = (tx[None, :] + ty[:, None]) / 2
        else:
            raise ValueError(f"unknown gradient direction {direction!r}")
        a, b = np.array(base, np.float64), np.array(BACKGROUNDS[meta["bg_to"]], np.float64)
        pix = np.rint(a + (b - a) * t[..., None])
        return Image.fromarray(pix.astype(np.uint8), "RGB")
    if style == "noise":
        # grey (same offset in every channel): keeps the named hue, and PNGs stay half the size
        # of colour noise. RandomState, not default_rng: its stream is frozen across numpy versions.
        rs = np.random.RandomState(int(meta["bg_seed"]) % 2**32)
        noise = rs.randint(-NOISE_AMPLITUDE, NOISE_AMPLITUDE + 1, size=(height, width, 1))
        pix = np.clip(np.array(base, np.int16) + noise, 0, 255).astype(np.uint8)
        return Image.fromarray(pix, "RGB")
    raise ValueError(f"unknown background style {style!r}")


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


_POLYGON_SIDES = {"diamond": 4, "pentagon": 5, "hexagon": 6}
EXTRA_SHAPES: tuple[str, ...] = ("diamond", "pentagon", "hexagon", "cross")


def shape_outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Polygon vertices of a shape (None for a circle). All shapes fit in the square of half-side r
    around (cx, cy) (the triangle's corners stick out of the circle of radius r)."""
    if shape == "square":
        h = 0.86 * r  # inside the r-box; about 94% of the circle's area
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + 0.92 * r), (cx - r, cy + 0.92 * r)]
    if shape == "star":
        return _star_points(cx, cy, r)
    if shape == "circle":
        return None
    # Shapes outside the shape vocabulary, for colour questions that must not tie a colour to one of
    # the four shapes (monovl.demo.single, `factorized`); no question or caption ever names them.
    if shape == "cross":
        t = 0.35 * r
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
                (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
                (cx - r, cy - t), (cx - t, cy - t)]
    if shape in _POLYGON_SIDES:
        n = _POLYGON_SIDES[shape]
        return [(cx + r * math.sin(2 * math.pi * k / n), cy - r * math.cos(2 * math.pi * k / n)) for k in range(n)]
    raise ValueError(f"unknown shape {shape!r}")


def _render_shapes(meta: Mapping[str, Any], size: int) -> Image.Image:
    ss = _SUPERSAMPLE
    w, h = canvas_size(meta, size)
    # the background at output resolution, each pixel repeated ss x ss: the box filter below then
    # gives back its exact pixels wherever no shape covers them
    img = render_background(meta, w, h).resize((w * ss, h * ss), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    side = min(w, h)
    width = max(1, round(1.5 * ss * side / 224))
    for obj in meta["objects"]:
        fill = COLORS[obj["color"]] if obj["color"] in COLORS else EXTRA_FILLS[obj["color"]]
        outline = _darker(fill)
        cx, cy, r = obj["x"] * w * ss, obj["y"] * h * ss, obj["r"] * side * ss
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
    w, h = canvas_size(meta, size)
    img = render_background(meta, w, h)
    # font size is relative to size * scale (not to the width): the sampler fitted it to the width
    px = round(meta["size"] * size * float(meta.get("scale", 1.0)))
    _paste_text(
        img, meta["text"], meta["font"], px, TEXT_COLORS[meta["color"]],
        meta["x"] * w, meta["y"] * h, float(meta.get("angle", 0.0)),
    )
    return img


def chart_bar_boxes(
    n: int, values: list[int], width: int, height: int | None = None,
) -> list[tuple[int, int, int, int]]:
    """Pixel boxes (x0, y0, x1, y1) of the bars of a chart drawn ``width`` x ``height`` pixels
    (``height`` defaults to ``width``); y1 is the baseline."""
    height = width if height is None else height
    L = CHART_LAYOUT
    x_left, x_right = L["left"] * width, (1 - L["right"]) * width
    y_top, y_base = L["top"] * height, (1 - L["bottom"]) * height
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
    w, h = canvas_size(meta, size)
    side = min(w, h)
    img = render_background(meta, w, h)
    draw = ImageDraw.Draw(img)
    labels, values = list(meta["labels"]), [int(v) for v in meta["values"]]
    n = len(values)
    x_left, x_right = L["left"] * w, (1 - L["right"]) * w
    y_top, y_base = L["top"] * h, (1 - L["bottom"]) * h
    unit = (y_base - y_top) / 9.0
    grid = _darker(bg, 0.9)
    for v in range(1, 10):
        y = int(round(y_base - v * unit))
        draw.line([(int(x_left), y), (int(x_right), y)], fill=grid, width=1)
    fill = COLORS[meta["bar_color"]]
    axis_w = max(1, round(2 * side / 224))
    ink = TEXT_COLORS["black"]
    vfont_px = round(L["value_font"] * side)
    slot = (x_right - x_left) / n
    # one label size for the whole chart: the largest at which every label fits its slot
    lpx = min(_fit_px("sans-bold", round(L["label_font"] * side), lab, slot * 0.85) for lab in labels)
    _, lh = text_extent("sans-bold", lpx, "Ag")
    for (x0, y0, x1, y1), v, lab in zip(chart_bar_boxes(n, values, w, h), values, labels):
        draw.rectangle([x0, y0, x1, y1], fill=fill, outline=_darker(fill), width=1)
        cx = (x0 + x1) / 2
        _, vh = text_extent("sans-bold", vfont_px, str(v))
        _paste_text(img, str(v), "sans-bold", vfont_px, ink, cx, y0 - 3 - vh / 2)
        _paste_text(img, lab, "sans-bold", lpx, ink, cx, y_base + 4 + lh / 2 + axis_w, line_ref="Ag")
    draw.line([(int(x_left), int(y_base)), (int(x_right), int(y_base))], fill=ink, width=axis_w)
    draw.line([(int(x_left), int(y_top) - 4), (int(x_left), int(y_base))], fill=ink, width=axis_w)
    return img


def render_scene(meta: Mapping[str, Any], size: int = 224) -> Image.Image:
    """Draw a scene (see the module docstring) as an RGB image of :func:`canvas_size` ``(meta, size)``
    pixels: ``size`` x ``size`` for a scene without ``aspect`` / ``scale``."""
    kind = meta["kind"]
    if kind == "shapes":
        return _render_shapes(meta, size)
    if kind in ("word", "number"):
        return _render_text(meta, size)
    if kind == "chart":
        return _render_chart(meta, size)
    raise ValueError(f"unknown scene kind {kind!r}")
