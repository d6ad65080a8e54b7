"""A deterministic synthetic visual world for the EViP training demo.

:func:`generate_curriculum` writes one folder per training stage plus an
evaluation set, every file a pure function of ``seed`` (same bytes on every
run with the same Pillow/FreeType and fonts)::

    out_dir/
      manifest.json                 seed, sizes, held-out lists, file names
      s1.1/data.jsonl captions.jsonl images/   concept learning: noisy alt-text captions
      s1.2/data.jsonl captions.jsonl images/   semantic learning: clean detailed captions
      s1.3/data.jsonl images/                  alignment: 1-3 short-answer questions per image
      s2/data.jsonl images/                    instruction tuning: 2-3 turn conversations
      eval/data.jsonl images/                  held-out questions per task, with answers

Record format (the official InternVL conversation JSONL; image paths relative
to the JSONL's folder)::

    {"id": "s1.3-000012", "image": "images/000012.png",
     "conversations": [{"from": "human", "value": "<image>\\nWhere is the star?\\n"
                                                  "Answer with a single word or number."},
                       {"from": "gpt", "value": "top left"}],
     "task": "position", "meta": {...scene...}}

``captions.jsonl`` (s1.1/s1.2) holds the same images as caption pairs
``{"id", "image", "caption"}`` (the consumer picks the instruction); ``data.jsonl``
of those stages wraps each caption in a one-turn conversation with an
instruction from :data:`CAPTION_INSTRUCTIONS`. s1.1 records carry
``"caption_quality"``: ``clean`` / ``vague`` / ``wrong``. Eval records add
``"question"`` (without placeholder and suffix), ``"answer"`` (the exact
reference), ``"answers"`` (all references: 3 sentences for ``caption``) and
``"heldout"`` (what in the sample never occurs in training). Every record keeps
its scene in ``"meta"``; :func:`monovl.demo.render.render_scene` redraws the
image from it bit-exactly.

The world
---------
Every scene (all kinds) has a canvas drawn by :func:`_sample_canvas`:

* ``aspect`` (width / height): log-uniform in [0.6, 1.67] for 70% of the
  scenes, 1.0 for the rest; ``scale`` uniform in [0.75, 1.5]. At nominal size
  ``image_size`` (224) an image is ``round(224 * scale * sqrt(aspect))`` x
  ``round(224 * scale / sqrt(aspect))`` pixels, i.e. 130-434 px a side
  (:func:`monovl.demo.render.canvas_size`).
* ``bg``: one of 6 light colours (the name captions use), drawn ``bg_style``
  ``flat`` (40%), ``gradient`` (30%: linear to another palette colour
  ``bg_to``, ``bg_dir`` vertical / horizontal / diagonal) or ``noise`` (30%:
  per-pixel grey noise of +-12 from ``bg_seed``). Shapes, ink and bars keep
  their exact palette colours inside; only the background varies.

Scene contents:

* ``shapes``: 1-4 of {circle, square, triangle, star} in {red, green, blue,
  yellow, purple, orange}, small (radius 0.065-0.10 of the shorter side) or
  large (0.12-0.15), each inside its own cell of a 3x3 grid (no overlap, a
  margin of 0.014 of the shorter side, on both axes at any aspect), so every
  object's position is one of the 9 closed-set answers ``top left, top, top
  right, left, center, right, bottom left, bottom, bottom right``.
* ``word``: one of ~315 common English words (3-7 lowercase letters) in one of
  8 DejaVu styles (sans/serif/mono, bold/italic), 4 dark ink colours, font size
  chosen so the word spans 40-90% of the image's actual width (~38-80 px at
  nominal 224 and scale 1, so the lowercase x-height is >= ~20 px: about one
  28 px patch per letter; ``scale`` multiplies it), rotated by up to 8
  degrees in half of the images.
* ``number``: 1-4 digits, same fonts, larger (48-80 px).
* ``chart``: 3-5 bars (values 1-9, value printed above each bar, label under
  it: capital letters, or 3-letter words in 20% of charts, which then have 3-4
  bars), light grid lines at 1..9.

Question types (s1.3 and eval; each with 8-10 phrasings: plain, British
"colour", imperative "Tell me ...", casual "What's ..."), all answered from the
closed vocabulary of the world: ``count`` (total, or of one shape kind),
``color`` (asked about a shape kind only when exactly one object has it),
``shape`` (asked about a colour only when exactly one object has it),
``position`` (the referenced object is unique by kind or by colour),
``ocr_word``, ``ocr_number``, ``chart`` (value of one bar). Every s1.3 and eval
question ends with :data:`ANSWER_SUFFIX` so the demo learns the answer format
it is scored with. An s1.3 record asks its task first, then up to two more
exact-answer questions that the same scene supports (``"tasks"`` lists them).
s2 conversations mix natural sentences ("There are three shapes.") with exactly
one suffixed exact-answer turn, plus descriptions.

s1.1 captions are alt-text-like: ``noisy_rate`` (default 15%) are wrong (wrong
colour, count, word, digit or bar count), 25% vague ("a picture", "shapes"),
the rest short and correct ("a red circle and a blue square"); the quality
follows a golden-ratio sequence over the sample index, so any prefix of the
stage has these fractions to within ~0.2%. s1.2 captions
are one canonical detailed template per scene kind ("Two shapes on a cream
background: a small red circle at the top left and a large blue square at the
bottom right."); the eval ``caption`` task scores against that sentence and
two paraphrases (CIDEr).

What is held out (never drawn, asked or written anywhere in s1.1-s2)
--------------------------------------------------------------------
* colour x shape pairs :data:`HELDOUT_PAIRS` = blue circle, green triangle,
  orange square, red star (every colour and shape still occurs in training, in
  other pairs). Eval ``count/color/shape/position`` images always contain one
  held-out object and the question targets it (``color``: "What color is the
  star?" -> "red"; ``shape``: "What shape is the red object?" -> "star").
* every 8th word of :data:`WORDS` (:data:`HELDOUT_WORDS`, 40 words): eval
  ``ocr_word`` uses only these, so the score measures reading, not recall.
* numbers with 2-4 digits whose CRC32 is divisible by 8 (~1/8 of them,
  :func:`is_heldout_number`): eval ``ocr_number`` uses only these.
* eval images come from a separate seed stream (``...|eval|task|i``); eval
  charts are new random charts (values 1-9 cannot be held out meaningfully).
* eval ``caption`` cycles shapes (with a held-out pair), held-out words,
  held-out numbers and charts.

Sizes and speed
---------------
Defaults (:class:`CurriculumSizes`): s1.1 1500, s1.2 1500, s1.3 2500 (about
360 per question type), s2 800, eval 60 per task (8 tasks, 480): ~6,800
images of nominal 224 px (68,000 pixels on average, 1.36x a 224 x 224 image),
about 175 MB on disk (PNG, ``compress_level=1``: 4 KB on a flat background,
8 KB on a gradient, ~80 KB on noise, which does not compress). Writing them
costs ~27 s of CPU time (per image, measured on a busy 2-core machine: 0.1 ms
to sample the scene and text, 1.9 ms to draw, 2.1 ms to PNG-encode); encoding
runs in helper threads, so it overlaps drawing where a second core is free
(version 2, square flat images: ~12 s of CPU, 40 MB). The training stages are
sized so a 135M-parameter LLM can see each image a few times in a ~15-minute
CPU demo (the demo picks the sizes it uses); 60 eval samples per task give a
standard error of about 6 points on an accuracy, enough to see learning happen.
:meth:`CurriculumSizes.quick` is a 340-image preset for tests and smoke runs.

Everything random is drawn from ``random.Random("monovl-world|{seed}|{stage}|{i}")``
(string seeds hash with SHA-512: independent of ``PYTHONHASHSEED``), one
stream per sample, so any sample can be regenerated alone and the stages do
not depend on each other's sizes. The one draw outside it, a ``noise``
background's pixels, comes from ``numpy.random.RandomState(bg_seed)`` at render
time, with ``bg_seed`` itself drawn from the sample's stream and kept in
``meta``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .render import BACKGROUNDS, BG_DIRECTIONS, COLORS, FONT_STYLES, TEXT_COLORS, render_scene, text_extent

__all__ = [
    "ANSWER_SUFFIX",
    "CAPTION_INSTRUCTIONS",
    "CELL_NAMES",
    "CurriculumSizes",
    "EVAL_CAPTION_PROMPT",
    "EVAL_TASKS",
    "HELDOUT_PAIRS",
    "HELDOUT_WORDS",
    "QA_TASKS",
    "SHAPES",
    "TRAIN_PAIRS",
    "TRAIN_WORDS",
    "WORDS",
    "canonical_caption",
    "caption_references",
    "generate_curriculum",
    "heldout_english_text",
    "is_heldout_number",
    "language_prompts",
    "make_sample",
    "noisy_caption",
    "render_scene",
]

GENERATOR_VERSION = 3  # 3: aspect/scale, gradient/noise backgrounds, wider radii, 8+ phrasings

# ------------------------------------------------------------------ vocabulary
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
SHAPE_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars"}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
BG_NAMES: tuple[str, ...] = tuple(BACKGROUNDS)
INK_NAMES: tuple[str, ...] = tuple(TEXT_COLORS)

CELL_NAMES: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
# "at the top left", "in the center", "on the left" ...
_CELL_PHRASES = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}  # fmt: skip

HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("blue", "circle"),
    ("green", "triangle"),
    ("orange", "square"),
    ("red", "star"),
)
TRAIN_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (c, s) for c in COLOR_NAMES for s in SHAPES if (c, s) not in HELDOUT_PAIRS
)
ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOR_NAMES for s in SHAPES)

# Common short English words (3-7 letters; no colour, shape or template words).
WORDS: tuple[str, ...] = tuple("""
apple table chair house river garden window bread water music money paper night train plant
horse mouse cloud smile dream heart earth ocean tiger lemon sugar candy honey piano radio camera
pencil rabbit monkey turtle spider dragon castle bridge forest island desert valley winter
summer spring autumn morning evening coffee butter cheese pepper carrot potato tomato banana
cherry grape melon peach onion salad pizza pasta soup rice cake cookie milk juice tea egg fish
bird frog bear wolf fox deer lion duck goat sheep cow pig cat dog owl bee ant book door floor
wall roof lamp clock phone key ring coin hat shoe sock coat shirt dress glove scarf bag box cup
bowl plate spoon fork knife glass bottle bucket basket ladder hammer nail rope chain wheel wagon
boat ship plane truck bike road street city town village farm field hill rock stone sand mud
snow rain wind storm fire smoke ice sun moon sky planet rocket robot engine metal wood leaf tree
flower rose grass seed root branch fruit nut bean corn wheat run jump walk swim fly sing dance
draw paint cook bake clean wash sleep wake laugh play work build climb throw catch push pull
open close carry drive ride sail hunt grow think learn teach speak listen watch lose win keep
hold help start stop wait stay leave happy sad quick slow warm cold hot cool soft hard loud
quiet brave calm wise proud shy rich poor dirty fresh sweet sour bitter salty empty full heavy
busy rough bright shiny sunny rainy windy snowy foggy magic people family friend mother father
sister brother baby child king queen prince doctor farmer pilot artist singer teacher student
school lesson story poem song movie game sport ball goal team party gift card map flag tent camp
beach wave shell pearl whale shark crab seal eagle parrot zebra camel panda koala puppy kitten
pony
""".split())
HELDOUT_WORDS: tuple[str, ...] = WORDS[7::8]
_HELDOUT_WORD_SET = frozenset(HELDOUT_WORDS)
TRAIN_WORDS: tuple[str, ...] = tuple(w for w in WORDS if w not in _HELDOUT_WORD_SET)
_CHART_WORDS: tuple[str, ...] = tuple(
    w for w in "cat dog cow pig owl bee ant fox sun sky egg tea map hat cup box".split()
    if w not in _HELDOUT_WORD_SET
)
_CHART_LETTERS = "ABCDEFGHKLMNPRSTUVXYZ"  # no I/J/O/Q/W: confusable or too wide


def is_heldout_number(n: int) -> bool:
    """Numbers (2-4 digits) reserved for evaluation: about one in eight."""
    return 10 <= n <= 9999 and zlib.crc32(str(n).encode()) % 8 == 0


ANSWER_SUFFIX = "Answer with a single word or number."
EVAL_CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
CAPTION_INSTRUCTIONS: tuple[str, ...] = (
    "Describe the image briefly.",
    "Write a short caption for the image.",
    "What does the image show?",
    "Give a brief description of the image.",
    EVAL_CAPTION_PROMPT,
)
QA_TASKS: tuple[str, ...] = ("count", "color", "shape", "position", "ocr_word", "ocr_number", "chart")
EVAL_TASKS: tuple[str, ...] = QA_TASKS + ("caption",)
S13_QUESTIONS = 3  # at most this many question turns per s1.3 image (the first one asks its task)

_NUM_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_FONT_DESC = {
    "sans": "sans-serif", "sans-bold": "bold sans-serif", "sans-oblique": "italic sans-serif",
    "serif": "serif", "serif-bold": "bold serif", "serif-italic": "italic serif",
    "mono": "monospace", "mono-bold": "bold monospace",
}  # fmt: skip


# ------------------------------------------------------------------- scenes
def _r4(x: float) -> float:
    return round(float(x), 4)


ASPECT_RANGE = (0.6, 1.67)  # width / height, log-uniform, for ASPECT_FRACTION of the scenes
ASPECT_FRACTION = 0.7
SCALE_RANGE = (0.75, 1.5)  # image side / nominal side, uniform
# Shape radius ranges (fraction of the shorter side): the largest still fits its cell's
# narrow axis with the margin, 1/6 - 0.15 - 0.014 >= 0.
SMALL_RADIUS = (0.065, 0.10)
LARGE_RADIUS = (0.12, 0.15)
_CELL_MARGIN = 0.014  # gap between an object's box and its cell's edge, fraction of the shorter side


def _sample_canvas(rng: random.Random) -> dict:
    """The scene keys shared by every kind: ``aspect``, ``scale``, ``bg`` and its style keys."""
    if rng.random() < ASPECT_FRACTION:
        lo, hi = ASPECT_RANGE
        aspect = _r4(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    else:
        aspect = 1.0  # square stays common: the demo's model sees square tiles
    canvas: dict[str, Any] = {"aspect": aspect, "scale": _r4(rng.uniform(*SCALE_RANGE)), "bg": rng.choice(BG_NAMES)}
    u = rng.random()
    if u < 0.4:
        canvas["bg_style"] = "flat"
    elif u < 0.7:
        canvas["bg_style"] = "gradient"
        canvas["bg_to"] = rng.choice([b for b in BG_NAMES if b != canvas["bg"]])
        canvas["bg_dir"] = rng.choice(BG_DIRECTIONS)
    else:
        canvas["bg_style"] = "noise"
        canvas["bg_seed"] = rng.randrange(2**31)
    return canvas


def _sample_shapes(
    rng: random.Random,
    pairs: tuple[tuple[str, str], ...],
    target: tuple[str, str] | None = None,
    exclude: Callable[[str, str], bool] | None = None,
    n: int | None = None,
    sizes: tuple[str, ...] = ("small", "large"),
) -> tuple[dict, int | None]:
    """A shapes scene; returns (meta, index of the target object or None).

    Each object's size is drawn from ``sizes`` (``("large",)``: every object 0.12-0.15 of the
    shorter side, the largest that fits one per cell).

    ``target`` is placed first; the other objects come from ``pairs`` minus
    those ``exclude(color, shape)`` rejects (keeps the target unambiguous).
    """
    canvas = _sample_canvas(rng)
    aspect = canvas["aspect"]
    # r is a fraction of the shorter side; x / y are fractions of width / height, so one unit
    # of r is min(1, 1/aspect) of the width and min(1, aspect) of the height
    rx, ry = min(1.0, 1.0 / aspect), min(1.0, aspect)
    n = n if n is not None else rng.randint(1, 4)
    cells = rng.sample(range(9), n)
    objs = []
    others = [p for p in pairs if not (exclude and exclude(*p))]
    for k, cell in enumerate(cells):
        color, shape = target if (k == 0 and target) else rng.choice(others)
        size = rng.choice(sizes)
        r = rng.uniform(*SMALL_RADIUS) if size == "small" else rng.uniform(*LARGE_RADIUS)
        col, row = cell % 3, cell // 3
        # the object's box (half-side r, plus the margin) stays inside its cell of 1/3 x 1/3,
        # on the narrow axis too (jitter >= 0 there for the largest r); one object per cell
        # means no two objects overlap
        jx = max(0.0, 1 / 6 - (r + _CELL_MARGIN) * rx)
        jy = max(0.0, 1 / 6 - (r + _CELL_MARGIN) * ry)
        x = (col + 0.5) / 3 + rng.uniform(-jx, jx)
        y = (row + 0.5) / 3 + rng.uniform(-jy, jy)
        objs.append({"shape": shape, "color": color, "size": size, "cell": CELL_NAMES[cell],
                     "x": _r4(x), "y": _r4(y), "r": _r4(r)})
    tgt_obj = objs[0] if target else None
    objs.sort(key=lambda o: CELL_NAMES.index(o["cell"]))  # reading order
    meta = {"kind": "shapes", **canvas, "objects": objs}
    return meta, (objs.index(tgt_obj) if tgt_obj is not None else None)


def _place_text(rng: random.Random, W: float, H: float, w: float, h: float) -> tuple[float, float]:
    """A random centre (x, y), in pixels, for a w x h text box on a W x H canvas: the box stays 6 px
    inside every edge, or is centred on an axis where it does not fit that way."""
    mx, my = max(0.0, (W - w) / 2 - 6), max(0.0, (H - h) / 2 - 6)
    return W / 2 + rng.uniform(-mx, mx), H / 2 + rng.uniform(-my, my)


def _sample_text(rng: random.Random, kind: str, text: str) -> dict:
    canvas = _sample_canvas(rng)
    style = rng.choice(FONT_STYLES)
    angle = _r4(rng.uniform(-8, 8)) if rng.random() < 0.5 else 0.0
    # Sizes are fitted at the reference size (224 x scale 1) and stored as fractions; the
    # reference image is W x H pixels, so the width bounds follow the actual width.
    S = 224
    W, H = S * math.sqrt(canvas["aspect"]), S / math.sqrt(canvas["aspect"])
    if kind == "word":
        px = rng.randint(40, 64)
        lo_width, hi_width = 0.40, 0.90
    else:
        px = rng.randint(48, 76)
        lo_width, hi_width = 0.20, 0.85
    lo_px, hi_px = 24, 80

    def fits(p: int) -> bool:  # not too wide, and not too tall for a wide, low image
        w, h = text_extent(style, p, text, angle)
        return w <= hi_width * W and h <= 0.85 * H

    w = text_extent(style, px, text, angle)[0]
    if not (lo_width * W <= w and fits(px)):  # rescale (text width is about linear in px), then fix up
        goal = (hi_width if w > hi_width * W else lo_width) * W
        px = min(max(int(px * goal / w), lo_px), hi_px)
        while px > lo_px and not fits(px):
            px -= 1
        while px < hi_px and text_extent(style, px, text, angle)[0] < lo_width * W and fits(px + 1):
            px += 1
    x, y = _place_text(rng, W, H, *text_extent(style, px, text, angle))
    return {"kind": kind, "text": text, **canvas, "font": style,
            "color": rng.choice(INK_NAMES), "size": _r4(px / S), "angle": angle,
            "x": _r4(x / W), "y": _r4(y / H)}


def _sample_word(rng: random.Random, heldout: bool) -> dict:
    return _sample_text(rng, "word", rng.choice(HELDOUT_WORDS if heldout else TRAIN_WORDS))


def _sample_number(rng: random.Random, heldout: bool) -> dict:
    while True:
        digits = rng.randint(2, 4) if heldout else rng.randint(1, 4)
        n = rng.randint(1 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)
        if is_heldout_number(n) == heldout:
            return _sample_text(rng, "number", str(n))


def _sample_chart(rng: random.Random) -> dict:
    canvas = _sample_canvas(rng)
    if rng.random() < 0.2:  # word labels: at most 4 bars so the labels stay large
        n = rng.randint(3, 4)
        labels = rng.sample(_CHART_WORDS, n)
    else:
        n = rng.randint(3, 5)
        labels = rng.sample(_CHART_LETTERS, n)
        if rng.random() < 0.6:
            labels.sort()
    values = [rng.randint(1, 9) for _ in range(n)]
    return {"kind": "chart", **canvas, "bar_color": rng.choice(COLOR_NAMES), "labels": labels, "values": values}


def _sample_any(rng: random.Random) -> dict:
    """A training scene of a random kind (shapes 50%, word 20%, number 12%, chart 18%)."""
    u = rng.random()
    if u < 0.50:
        return _sample_shapes(rng, TRAIN_PAIRS)[0]
    if u < 0.70:
        return _sample_word(rng, False)
    if u < 0.82:
        return _sample_number(rng, False)
    return _sample_chart(rng)


# ------------------------------------------------------------------ language
def _num(n: int) -> str:
    return _NUM_WORDS[n] if 0 <= n < len(_NUM_WORDS) else str(n)


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(n: int, sing: str, plur: str | None = None) -> str:
    return sing if n == 1 else (plur or sing + "s")


def canonical_caption(meta: dict) -> str:
    """The clean, detailed s1.2 caption of a scene (one deterministic template per kind)."""
    kind = meta["kind"]
    if kind == "shapes":
        objs = meta["objects"]
        parts = [f"{_a(o['size'])} {o['color']} {o['shape']} {_CELL_PHRASES[o['cell']]}" for o in objs]
        n = len(objs)
        return f"{_num(n).capitalize()} {_plural(n, 'shape')} on {_a(meta['bg'])} background: {_join(parts)}."
    if kind == "word":
        return (f"The word '{meta['text']}' written in {meta['color']} {_FONT_DESC[meta['font']]} letters "
                f"on {_a(meta['bg'])} background.")
    if kind == "number":
        return (f"The number {meta['text']} written in {meta['color']} {_FONT_DESC[meta['font']]} digits "
                f"on {_a(meta['bg'])} background.")
    if kind == "chart":
        n = len(meta["values"])
        pairs = [f"{lab} is {v}" for lab, v in zip(meta["labels"], meta["values"])]
        return f"A bar chart with {_num(n)} {meta['bar_color']} bars: {_join(pairs)}."
    raise ValueError(kind)


def caption_references(meta: dict) -> list[str]:
    """Three reference captions (canonical first) for CIDEr."""
    kind = meta["kind"]
    refs = [canonical_caption(meta)]
    if kind == "shapes":
        objs = meta["objects"]
        n = len(objs)
        refs.append(f"{_a(meta['bg']).capitalize()} image with "
                    + _join([f"{_a(o['color'])} {o['shape']} {_CELL_PHRASES[o['cell']]}" for o in objs]) + ".")
        if n == 1:
            refs.append(f"A single {objs[0]['color']} {objs[0]['shape']} on {_a(meta['bg'])} background.")
        else:
            listed = _join([f"{_a(o['color'])} {o['shape']}" for o in objs])
            refs.append(f"{_num(n).capitalize()} shapes: {listed}.")
    elif kind == "word":
        refs.append(f"The text '{meta['text']}' in {meta['color']} {_FONT_DESC[meta['font']]} font.")
        refs.append(f"{_a(meta['bg']).capitalize()} image showing the word {meta['text']}.")
    elif kind == "number":
        refs.append(f"The digits {meta['text']} in {meta['color']} {_FONT_DESC[meta['font']]} font.")
        refs.append(f"{_a(meta['bg']).capitalize()} image showing the number {meta['text']}.")
    elif kind == "chart":
        n = len(meta["values"])
        refs.append(f"A chart with {_num(n)} bars labeled {_join(list(meta['labels']))}.")
        refs.append("Bar chart: " + ", ".join(f"{lab} = {v}" for lab, v in zip(meta["labels"], meta["values"])) + ".")
    return refs


def _safe_shape_phrase(color: str, shape: str) -> bool:
    return (color, shape) not in HELDOUT_PAIRS


def noisy_caption(
    meta: dict, rng: random.Random, noisy_rate: float = 0.15, vague_rate: float = 0.25, u: float | None = None,
) -> tuple[str, str]:
    """An s1.1 alt-text-like caption and its quality: ``clean``, ``vague`` or ``wrong``.

    ``u`` in [0, 1) picks the quality (default: drawn from ``rng``).
    """
    u = rng.random() if u is None else u
    quality = "wrong" if u < noisy_rate else ("vague" if u < noisy_rate + vague_rate else "clean")
    kind = meta["kind"]
    if kind == "shapes":
        objs = meta["objects"]
        n = len(objs)
        if quality == "vague":
            return rng.choice(["shapes", "a picture", "an image", "simple graphics", "clip art",
                               "colorful shapes", "geometry", "abstract art", "untitled"]), quality
        descs = [(o["color"], o["shape"]) for o in objs]
        if quality == "wrong":
            if rng.random() < 0.5:  # wrong colour of one object
                k = rng.randrange(n)
                c, s = descs[k]
                wrong = [x for x in COLOR_NAMES if (x, s) not in descs and _safe_shape_phrase(x, s)]
                rest = [d for i, d in enumerate(descs) if i != k]
                descs = [(rng.choice(wrong), s)] + (rest[:1] if rng.random() < 0.5 else [])
            else:  # wrong count
                m = rng.choice([x for x in range(1, 6) if x != n])
                return rng.choice([f"{_num(m)} {_plural(m, 'shape')}", f"{m} {_plural(m, 'shape')}",
                                   f"{_num(m)} colorful {_plural(m, 'shape')}"]), quality
        else:
            descs = descs[:2] if rng.random() < 0.6 else [descs[rng.randrange(n)]]
            if rng.random() < 0.25:
                return rng.choice([f"{_num(n)} {_plural(n, 'shape')}", f"{n} {_plural(n, 'shape')}",
                                   f"{_num(n)} {_plural(n, 'shape')} on {meta['bg']}"]), quality
        text = " and ".join(f"{_a(c)} {s}" if rng.random() < 0.7 else f"{c} {s}" for c, s in descs)
        return text, quality
    if kind in ("word", "number"):
        t = meta["text"]
        if quality == "vague":
            opts = ["text", "a word", "typography", "lettering", "a sign", "font sample"] if kind == "word" else \
                   ["digits", "a number", "numbers", "numerals", "a code"]
            return rng.choice(opts), quality
        if quality == "wrong":
            if kind == "word":
                t = rng.choice([w for w in TRAIN_WORDS if w != t])
            else:
                while True:
                    k = rng.randrange(len(t))
                    d = rng.choice([x for x in "0123456789" if x != t[k] and (k or x != "0" or len(t) == 1)])
                    cand = t[:k] + d + t[k + 1:]
                    if int(cand) > 0 and not is_heldout_number(int(cand)):
                        t = cand
                        break
        what = "word" if kind == "word" else "number"
        return rng.choice([t, f"the {what} {t}", f"{t} in {meta['color']}", f"'{t}'", f"{what}: {t}"]), quality
    if kind == "chart":
        n = len(meta["values"])
        if quality == "vague":
            return rng.choice(["a chart", "graph", "data", "statistics", "a diagram", "infographic"]), quality
        if quality == "wrong":
            n = rng.choice([x for x in range(2, 8) if x != n])
        return rng.choice([f"bar chart with {_num(n)} bars", f"a bar graph, {n} bars",
                           f"{_num(n)} {meta['bar_color']} bars", f"chart with {n} bars"]), quality
    raise ValueError(kind)


# ----------------------------------------------------------------------- QA
@dataclass
class QA:
    task: str
    question: str
    answer: str  # short exact answer
    natural: str  # a sentence


# Phrasings (a mix of plain, British "colour", imperative and casual forms) so the model learns
# the questions, not a handful of strings. Each must name exactly what the answer depends on
# (a shape kind, a colour, a bar label) and nothing else from the closed vocabulary.
_COUNT_Q = ("How many shapes are there?", "How many shapes are in the image?", "How many objects can you see?",
            "Count the shapes in the image.", "What is the number of shapes?", "How many shapes do you see?",
            "Tell me how many shapes there are.", "How many objects are in the picture?",
            "What's the total number of shapes?", "Count the objects.")
_COUNT_KIND_Q = ("How many {pl} are there?", "How many {pl} are in the image?", "Count the {pl}.",
                 "What is the number of {pl}?", "How many {pl} can you see?", "Tell me how many {pl} there are.",
                 "How many {pl} does the picture contain?", "Count how many {pl} are shown.")
_COLOR_Q = ("What color is the {shape}?", "What is the color of the {shape}?", "Which color does the {shape} have?",
            "The {shape} is what color?", "What colour is the {shape}?", "What is the colour of the {shape}?",
            "Tell me the color of the {shape}.", "Name the colour of the {shape}.",
            "Can you tell me the color of the {shape}?", "Which colour is the {shape}?")
_SHAPE_Q = ("What shape is the {color} object?", "What is the shape of the {color} object?",
            "Which shape is {color}?", "What is the {color} shape?", "What kind of shape is the {color} one?",
            "Tell me the shape of the {color} object.", "Name the {color} shape.",
            "Which shape is coloured {color}?", "What's the {color} thing?")
_POS_Q = ("Where is the {ref}?", "Where is the {ref} located?", "In which part of the image is the {ref}?",
          "What is the position of the {ref}?", "Where's the {ref}?", "Tell me where the {ref} is.",
          "Where can you find the {ref}?", "In what part of the picture is the {ref}?",
          "Which part of the image contains the {ref}?")
_WORD_Q = ("What word is written in the image?", "What does the text say?", "Which word is shown?",
           "What is written in the image?", "What word do you see?", "Read the word in the image.",
           "What's the word?", "Tell me what the text says.", "Which word appears in the picture?",
           "Read the text.")
_NUMBER_Q = ("What number is shown in the image?", "What number is written in the image?",
             "Which number is displayed?", "What number do you see?", "Read the number in the image.",
             "What's the number?", "Tell me the number shown.", "Which number appears in the picture?",
             "What number is printed here?")
_CHART_Q = ("What is the value of bar {l}?", "What value does bar {l} show?", "How high is bar {l}?",
            "According to the chart, what is the value of {l}?", "What's the value of bar {l}?",
            "Tell me the value of bar {l}.", "Read off the value of bar {l}.", "How tall is bar {l}?",
            "What number does bar {l} reach?", "In the chart, what is the value of {l}?")


def _qa_count(meta: dict, rng: random.Random, kind_of: str | None = None) -> QA:
    objs = meta["objects"]
    if kind_of is None:
        n = len(objs)
        return QA("count", rng.choice(_COUNT_Q), str(n),
                  f"There {'is' if n == 1 else 'are'} {_num(n)} {_plural(n, 'shape')}.")
    n = sum(o["shape"] == kind_of for o in objs)
    pl = SHAPE_PLURALS[kind_of]
    return QA("count", rng.choice(_COUNT_KIND_Q).format(pl=pl), str(n),
              f"There {'is' if n == 1 else 'are'} {_num(n)} {kind_of if n == 1 else pl}.")


def _qa_color(meta: dict, rng: random.Random, k: int) -> QA:
    o = meta["objects"][k]
    return QA("color", rng.choice(_COLOR_Q).format(shape=o["shape"]), o["color"], f"The {o['shape']} is {o['color']}.")


def _qa_shape(meta: dict, rng: random.Random, k: int) -> QA:
    o = meta["objects"][k]
    return QA("shape", rng.choice(_SHAPE_Q).format(color=o["color"]), o["shape"],
              f"The {o['color']} object is {_a(o['shape'])}.")


def _qa_position(meta: dict, rng: random.Random, k: int, by: str) -> QA:
    o = meta["objects"][k]
    ref = o["shape"] if by == "shape" else f"{o['color']} {rng.choice(('shape', 'object'))}"
    return QA("position", rng.choice(_POS_Q).format(ref=ref), o["cell"],
              f"The {ref} is {_CELL_PHRASES[o['cell']]}.")


def _qa_ocr(meta: dict, rng: random.Random) -> QA:
    t = meta["text"]
    if meta["kind"] == "word":
        return QA("ocr_word", rng.choice(_WORD_Q), t, f"The word is '{t}'.")
    return QA("ocr_number", rng.choice(_NUMBER_Q), t, f"The number is {t}.")


def _qa_chart(meta: dict, rng: random.Random, k: int) -> QA:
    lab, v = meta["labels"][k], meta["values"][k]
    return QA("chart", rng.choice(_CHART_Q).format(l=lab), str(v), f"Bar {lab} has a value of {v}.")


def _unique(objs: list[dict], key: str, k: int) -> bool:
    return sum(o[key] == objs[k][key] for o in objs) == 1


def _task_sample(task: str, rng: random.Random, heldout: bool) -> tuple[dict, QA, str]:
    """(scene, question, what is held out) for one single-question sample."""
    pairs = ALL_PAIRS if heldout else TRAIN_PAIRS
    target = rng.choice(HELDOUT_PAIRS if heldout else TRAIN_PAIRS)
    tag = f"pair:{target[0]} {target[1]}" if heldout else ""
    if task == "count":
        meta, k = _sample_shapes(rng, pairs, target=target)
        kind_of = meta["objects"][k]["shape"] if rng.random() < 0.3 else None
        return meta, _qa_count(meta, rng, kind_of), tag
    if task == "color":
        meta, k = _sample_shapes(rng, pairs, target=target, exclude=lambda c, s: s == target[1])
        return meta, _qa_color(meta, rng, k), tag
    if task == "shape":
        meta, k = _sample_shapes(rng, pairs, target=target, exclude=lambda c, s: c == target[0])
        return meta, _qa_shape(meta, rng, k), tag
    if task == "position":
        by = rng.choice(("shape", "color"))
        key = 1 if by == "shape" else 0
        meta, k = _sample_shapes(rng, pairs, target=target, exclude=lambda c, s: (c, s)[key] == target[key])
        return meta, _qa_position(meta, rng, k, by), tag
    if task == "ocr_word":
        meta = _sample_word(rng, heldout)
        return meta, _qa_ocr(meta, rng), "word" if heldout else ""
    if task == "ocr_number":
        meta = _sample_number(rng, heldout)
        return meta, _qa_ocr(meta, rng), "number" if heldout else ""
    if task == "chart":
        meta = _sample_chart(rng)
        return meta, _qa_chart(meta, rng, rng.randrange(len(meta["values"]))), "image"
    raise ValueError(f"unknown task {task!r}")


def _extra_qas(meta: dict, rng: random.Random) -> list[QA]:
    """Every question s2 may ask about a training scene (exact answer + natural sentence)."""
    kind = meta["kind"]
    out: list[QA] = []
    if kind == "shapes":
        objs = meta["objects"]
        out.append(_qa_count(meta, rng))
        kinds = sorted({o["shape"] for o in objs})
        out.append(_qa_count(meta, rng, rng.choice(kinds)))
        for k in range(len(objs)):
            if _unique(objs, "shape", k):
                out.append(_qa_color(meta, rng, k))
                out.append(_qa_position(meta, rng, k, "shape"))
            if _unique(objs, "color", k):
                out.append(_qa_shape(meta, rng, k))
    elif kind in ("word", "number"):
        out.append(_qa_ocr(meta, rng))
        t = meta["text"]
        if kind == "word":
            q = rng.choice(("How many letters does the word have?", "How many letters are there?"))
            out.append(QA("letters", q,
                          str(len(t)), f"The word '{t}' has {_num(len(t))} letters."))
        else:
            out.append(QA("digits", rng.choice(("How many digits does the number have?", "How many digits are there?")),
                          str(len(t)), f"It has {_num(len(t))} {_plural(len(t), 'digit')}."))
        out.append(QA("ink", rng.choice(("What color is the text?", "What color are the characters?")),
                      meta["color"], f"The text is {meta['color']}."))
    elif kind == "chart":
        vals, labs = meta["values"], meta["labels"]
        for k in range(len(vals)):
            out.append(_qa_chart(meta, rng, k))
        n = len(vals)
        out.append(QA("bars", rng.choice(("How many bars are in the chart?", "How many bars are there?")),
                      str(n), f"There are {_num(n)} bars."))
        hi, lo = max(vals), min(vals)
        if vals.count(hi) == 1:
            lab = labs[vals.index(hi)]
            out.append(QA("tallest", rng.choice(("Which bar is the tallest?", "Which bar has the highest value?")),
                          lab, f"Bar {lab} is the tallest, with a value of {hi}."))
        if vals.count(lo) == 1:
            lab = labs[vals.index(lo)]
            out.append(QA("shortest", rng.choice(("Which bar is the shortest?", "Which bar has the lowest value?")),
                          lab, f"Bar {lab} is the shortest, with a value of {lo}."))
    return out


# ----------------------------------------------------------------- samples
def _human(question: str, first: bool, exact: bool) -> dict:
    value = question + ("\n" + ANSWER_SUFFIX if exact else "")
    return {"from": "human", "value": ("<image>\n" if first else "") + value}


def _conversation(turns: Iterable[tuple[str, str, bool]]) -> list[dict]:
    """(question, answer, exact) turns -> conversation; the image placeholder goes in the first."""
    convs: list[dict] = []
    for k, (q, a, exact) in enumerate(turns):
        convs += [_human(q, k == 0, exact), {"from": "gpt", "value": a}]
    return convs


_GOLDEN = 0.6180339887498949


def _rng(seed: int, *parts: Any) -> random.Random:
    return random.Random("monovl-world|" + "|".join(str(p) for p in (seed, *parts)))


def make_sample(stage: str, index: int, seed: int = 0, noisy_rate: float = 0.15, eval_task: str | None = None) -> dict:
    """One record (without its ``image`` path) with its scene in ``meta``; pure function of the arguments.

    ``stage`` is ``s1.1``, ``s1.2``, ``s1.3``, ``s2`` or ``eval`` (then ``eval_task`` names the task).
    """
    if stage in ("s1.1", "s1.2"):
        rng = _rng(seed, stage, index)
        meta = _sample_any(rng)
        instruction = rng.choice(CAPTION_INSTRUCTIONS)
        rec: dict[str, Any] = {"id": f"{stage}-{index:06d}"}
        if stage == "s1.1":
            # a Weyl sequence instead of i.i.d. draws: every prefix of the stage has the
            # configured wrong/vague fractions to within a fraction of a percent
            u = (index * _GOLDEN + _rng(seed, "s1.1-offset").random()) % 1.0
            caption, quality = noisy_caption(meta, rng, noisy_rate, u=u)
        else:
            caption, quality = canonical_caption(meta), None
        rec["conversations"] = [_human(instruction, True, False), {"from": "gpt", "value": caption}]
        rec["caption"] = caption
        rec["task"] = "caption"
        if quality is not None:
            rec["caption_quality"] = quality
        rec["meta"] = meta
        return rec
    if stage == "s1.3":
        rng = _rng(seed, stage, index)
        task = QA_TASKS[index % len(QA_TASKS)]
        meta, qa, _ = _task_sample(task, rng, heldout=False)
        # More questions about the same image, when the scene has them: each extra answer costs
        # ~15 tokens against the ~110 of a sample (image, system prompt), so on a CPU budget this
        # multiplies the supervision per second.
        extra = [q for q in _extra_qas(meta, rng) if q.task in QA_TASKS and q.question != qa.question]
        rng.shuffle(extra)
        turns = [qa] + extra[: S13_QUESTIONS - 1]
        convs = _conversation((t.question, t.answer, True) for t in turns)
        return {"id": f"{stage}-{index:06d}", "conversations": convs, "task": task, "answer": qa.answer,
                "tasks": [t.task for t in turns], "meta": meta}
    if stage == "s2":
        rng = _rng(seed, stage, index)
        meta = _sample_any(rng)
        qas = _extra_qas(meta, rng)
        rng.shuffle(qas)
        chosen: list[QA] = []
        seen_q: set[str] = set()
        for qa in qas:
            if qa.question not in seen_q:
                chosen.append(qa)
                seen_q.add(qa.question)
        n_turns = rng.choice((2, 3))
        turns = chosen[: n_turns - (1 if rng.random() < 0.4 else 0)]
        exact_k = rng.randrange(len(turns))
        items: list[tuple[str, str, bool]] = []
        for k, qa in enumerate(turns):
            items.append((qa.question, qa.answer if k == exact_k else qa.natural, k == exact_k))
        tasks = [qa.task for qa in turns]
        if len(items) < n_turns:  # add a description turn somewhere
            desc = (rng.choice(("Describe the image.", "Describe the image in detail.", "What is in the image?")),
                    canonical_caption(meta), False)
            at = rng.randrange(len(items) + 1)
            items.insert(at, desc)
            tasks.insert(at, "describe")
        return {"id": f"{stage}-{index:06d}", "conversations": _conversation(items), "task": "chat",
                "tasks": tasks, "meta": meta}
    if stage == "eval":
        if eval_task not in EVAL_TASKS:
            raise ValueError(f"unknown eval task {eval_task!r}")
        rng = _rng(seed, "eval", eval_task, index)
        if eval_task == "caption":
            slot = index % 8
            if slot < 4:
                meta, _ = _sample_shapes(rng, ALL_PAIRS, target=rng.choice(HELDOUT_PAIRS))
                tag = "pair"
            elif slot < 6:
                meta, tag = _sample_word(rng, True), "word"
            elif slot < 7:
                meta, tag = _sample_number(rng, True), "number"
            else:
                meta, tag = _sample_chart(rng), "image"
            refs = caption_references(meta)
            question, answer, answers = EVAL_CAPTION_PROMPT, refs[0], refs
            human = _human(question, True, False)
        else:
            meta, qa, tag = _task_sample(eval_task, rng, heldout=True)
            question, answer, answers = qa.question, qa.answer, [qa.answer]
            human = _human(question, True, True)
        return {"id": f"eval-{eval_task}-{index:04d}",
                "conversations": [human, {"from": "gpt", "value": answer}],
                "task": eval_task, "question": question, "answer": answer, "answers": answers,
                "heldout": tag, "meta": meta}
    raise ValueError(f"unknown stage {stage!r}")


# ---------------------------------------------------------------- curriculum
@dataclass(frozen=True)
class CurriculumSizes:
    """Number of samples (= images) per stage; ``eval_per_task`` for each of the 8 eval tasks."""

    s1_1: int = 1500
    s1_2: int = 1500
    s1_3: int = 2500
    s2: int = 800
    eval_per_task: int = 60

    @classmethod
    def quick(cls) -> "CurriculumSizes":
        """A tiny preset (~340 images, about a second) for tests and smoke runs."""
        return cls(s1_1=64, s1_2=64, s1_3=84, s2=32, eval_per_task=12)

    def stage_count(self, stage: str) -> int:
        return {"s1.1": self.s1_1, "s1.2": self.s1_2, "s1.3": self.s1_3, "s2": self.s2,
                "eval": self.eval_per_task * len(EVAL_TASKS)}[stage]


STAGES: tuple[str, ...] = ("s1.1", "s1.2", "s1.3", "s2", "eval")


def _stage_records(stage: str, sizes: CurriculumSizes, seed: int, noisy_rate: float) -> Iterable[dict]:
    if stage == "eval":
        for task in EVAL_TASKS:
            for i in range(sizes.eval_per_task):
                yield make_sample("eval", i, seed, noisy_rate, eval_task=task)
    else:
        for i in range(sizes.stage_count(stage)):
            yield make_sample(stage, i, seed, noisy_rate)


def _image_name(rec: dict) -> str:
    return "images/" + rec["id"].split("-", 1)[1] + ".png"


def _write_stage(stage_dir: Path, stage: str, sizes: CurriculumSizes, seed: int, image_size: int,
                 noisy_rate: float, workers: int) -> dict[str, Path]:
    img_dir = stage_dir / "images"
    if img_dir.exists():
        shutil.rmtree(img_dir)
    img_dir.mkdir(parents=True)
    data_lines, caption_lines = [], []
    records = list(_stage_records(stage, sizes, seed, noisy_rate))

    # Drawing stays on this thread (FreeType faces are shared); PNG encoding to a real file
    # runs without the GIL, so it overlaps in ``workers - 1`` helper threads.
    def save(img: Any, path: Path) -> None:
        img.save(path, format="PNG", compress_level=1)

    if workers > 1:
        pending: deque = deque()
        with ThreadPoolExecutor(workers - 1) as pool:
            for rec in records:
                pending.append(pool.submit(save, render_scene(rec["meta"], image_size), stage_dir / _image_name(rec)))
                while len(pending) > 4 * workers:
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
    else:
        for rec in records:
            save(render_scene(rec["meta"], image_size), stage_dir / _image_name(rec))
    for rec in records:
        name = _image_name(rec)
        caption = rec.pop("caption", None)
        out = {"id": rec["id"], "image": name, **{k: v for k, v in rec.items() if k != "id"}}
        data_lines.append(json.dumps(out, ensure_ascii=False))
        if caption is not None:
            cap = {"id": rec["id"], "image": name, "caption": caption}
            if "caption_quality" in rec:
                cap["caption_quality"] = rec["caption_quality"]
            caption_lines.append(json.dumps(cap, ensure_ascii=False))
    paths = {stage: stage_dir / "data.jsonl"}
    _atomic_write(paths[stage], "".join(line + "\n" for line in data_lines))
    if stage in ("s1.1", "s1.2"):
        paths[f"{stage}-captions"] = stage_dir / "captions.jsonl"
        _atomic_write(paths[f"{stage}-captions"], "".join(line + "\n" for line in caption_lines))
    return paths


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def generate_curriculum(
    out_dir: str | os.PathLike,
    seed: int = 0,
    sizes: CurriculumSizes = CurriculumSizes(),
    image_size: int = 224,
    noisy_rate: float = 0.15,
    reuse: bool = False,
    workers: int | None = None,
) -> dict[str, Path]:
    """Write the five datasets under ``out_dir``; returns ``{"s1.1": .../s1.1/data.jsonl, ...,
    "s1.1-captions": .../s1.1/captions.jsonl, "s1.2-captions": ..., "eval": ..., "manifest": ...}``.

    With ``reuse=True`` an existing output written with the same arguments (per
    ``manifest.json``) is returned without regenerating. Each stage's ``images/``
    folder is replaced. ``workers``: threads that draw and PNG-encode (default: one
    per CPU, at most 4); the output does not depend on it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"version": GENERATOR_VERSION, "seed": seed, "image_size": image_size,
                "noisy_rate": noisy_rate, "sizes": asdict(sizes)}
    manifest_path = out / "manifest.json"
    if reuse and manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("settings") == settings and all((out / p).exists() for p in old.get("files", {}).values()):
            return {k: out / p for k, p in old["files"].items()} | {"manifest": manifest_path}
    if workers is None:
        workers = max(1, min(4, os.cpu_count() or 1))
    paths: dict[str, Path] = {}
    for stage in STAGES:
        paths.update(_write_stage(out / stage, stage, sizes, seed, image_size, noisy_rate, workers))
    manifest = {
        "settings": settings,
        "files": {k: str(p.relative_to(out)) for k, p in paths.items()},
        "counts": {s: sizes.stage_count(s) for s in STAGES},
        "heldout": {"pairs": [list(p) for p in HELDOUT_PAIRS], "words": list(HELDOUT_WORDS),
                    "numbers": "2-4 digit n with crc32(str(n)) % 8 == 0"},
        "answer_suffix": ANSWER_SUFFIX,
    }
    _atomic_write(manifest_path, json.dumps(manifest, indent=1) + "\n")
    paths["manifest"] = manifest_path
    return paths


# ------------------------------------------------------------------ language
def language_prompts() -> list[str]:
    """Fixed text-only prompts to watch the LLM's chat ability before/after visual training."""
    return [
        "What is the capital of France?",
        "Name three colors of the rainbow.",
        "How many days are there in a week?",
        "Write one sentence about the ocean.",
        "What do bees make?",
        "Give me a short tip for staying healthy.",
        "What is the opposite of hot?",
        "Tell me a fun fact about cats.",
    ]


_ENGLISH_TEXT = """\
The town of Wenmoor sits where two slow rivers meet, and for most of its history it has been known for \
nothing in particular. Travellers passing through on the old road would stop at the inn by the bridge, \
eat a bowl of soup, remark on the weather, and continue on their way without a second thought. The people \
who lived there did not mind this. They liked to say that a quiet town is a town where things get done, and \
they meant it. Every morning the baker opened his shutters before the sun was fully up, the ferryman checked \
the ropes on his flat wooden boat, and the schoolteacher walked along the river path with a stack of \
exercise books under her arm.

In the spring the fields around Wenmoor turned green almost overnight. Farmers who had spent the winter \
mending fences and sharpening tools went out at dawn to plough, and the smell of turned earth drifted over \
the rooftops. Children were sent to the edges of the fields to scare away the crows, a task they took very \
seriously for the first hour and then abandoned in favour of building dams in the ditches. By midsummer the \
wheat stood tall and pale, and the whole valley seemed to hum with insects. Old men sat on benches outside \
the inn and argued about whether the harvest would be early or late, although none of them had ever been \
right more often than chance would allow.

The most unusual building in the town was the clock tower, which stood in the small square opposite the \
church. It had been built more than two hundred years earlier by a merchant who had made his fortune \
trading salt and wanted to leave something behind that people would remember. Unfortunately, the clock had \
never kept good time. In winter it ran slow and in summer it ran fast, and on damp days it sometimes stopped \
altogether. Over the years the townspeople had grown fond of its moods. When someone arrived late to a \
meeting, they would simply say that they had been following the tower, and everyone would nod as though \
this were a perfectly reasonable excuse.

One autumn a young woman named Ada arrived in Wenmoor with a single suitcase and a letter of introduction \
addressed to the town council. She had trained as a mechanic in the city, where she had repaired engines, \
pumps and printing presses, and she had heard that the council was looking for someone to look after the \
mill by the lower river. The council, which consisted of five people who met on the first Tuesday of every \
month in the back room of the library, read her letter twice, asked her a few polite questions, and offered \
her the job before she had finished her tea. Nobody else had applied, and the mill wheel had been groaning \
for weeks.

Ada found the mill in worse condition than she had expected. The main shaft was bent, several of the wooden \
paddles had rotted through, and the gears had been greased so many times without being cleaned that they \
were coated in a thick black paste. She spent the first week simply taking things apart and laying the \
pieces out on the floor in careful rows, labelling each one with a scrap of paper. The miller, a patient man \
who had been grinding flour by hand while he waited, watched her with a mixture of hope and alarm. On the \
eighth day she began to put it all back together, and on the twelfth day the wheel turned smoothly for the \
first time in a year.

Word of the repaired mill spread quickly, and soon people began to bring Ada other things that needed \
fixing. A farmer arrived with a seed drill that had lost half its teeth. The innkeeper asked whether she \
could do anything about the pump in the yard, which produced more noise than water. A boy brought her a \
music box that had belonged to his grandmother and had not played a note in thirty years. Ada worked on all \
of them in the evenings, after the mill had stopped for the day, in a small workshop she had made out of a \
storeroom at the back of the building. She did not charge much, and she often refused payment from people \
who clearly could not afford it, accepting eggs or apples or a loaf of bread instead.

It was inevitable that sooner or later someone would ask her about the clock tower. The question came from \
the schoolteacher, who had grown tired of her pupils using the tower as an excuse for arriving late. Ada \
climbed the narrow stairs one Sunday afternoon with a lamp and a bag of tools, and she spent several hours \
inside the dusty chamber behind the clock face. When she came down, she told the small crowd that had \
gathered in the square that the problem was not really a problem at all. The pendulum had been made from a \
metal that grew longer in the heat and shorter in the cold, and the builder had not allowed for it. It \
could be fixed, she said, but it would take some time and a new pendulum.

To her surprise, the town did not immediately agree. A meeting was called, and it turned out to be the \
longest and loudest meeting the council had held in living memory. Some people argued that a clock should \
tell the time, and that there was no point in having one that did not. Others said that the tower was part \
of the character of Wenmoor, and that fixing it would be like straightening the crooked bridge or paving \
the river path. The baker pointed out that he had never once looked at the tower to decide when to open his \
shop. The innkeeper said that the tower was good for business, because visitors liked to hear the stories \
about it. The schoolteacher said that she would be happy with any decision as long as it was made before \
the end of term.

In the end, it was Ada herself who suggested a compromise. She would build a new pendulum that kept \
accurate time, but she would keep the old one, clean it, and hang it in a glass case at the foot of the \
tower, with a small sign explaining how it had worked and why it had wandered. That way, she said, the town \
would have a clock that told the time and a story that people could still tell. The council voted, and the \
proposal passed by four votes to one. The one vote against came from an old man who said that he simply did \
not like change, and who later admitted that he rather liked the glass case.

The new pendulum took most of the winter to make. Ada tested different metals, measured them in the cold \
of the workshop and again beside the stove, and wrote long columns of numbers in a notebook. When the \
pendulum was finally installed, on a bright morning in early March, a small crowd gathered in the square to \
watch the hands move. At noon the tower struck twelve at exactly the same moment as the church bell, and \
someone in the crowd began to clap. Others joined in, a little uncertainly at first, as if they were not \
sure whether it was proper to applaud a clock.

That spring the council also asked Ada to look at the ferry. The ferryman had managed for years with \
a rope stretched between two posts, pulling his flat boat across hand over hand, and his shoulders ached \
by the end of every market day. Ada built him a simple winch with a wooden drum and an iron handle, and she \
fixed a small bell to the post on the far bank so that travellers could call him without shouting. The \
ferryman was suspicious of the winch for about a week. After that he began to describe it to every \
passenger as his own idea, and Ada, who had never cared much about credit, let him. Children liked to ring \
the bell even when they had no intention of crossing, and the ferryman pretended to be annoyed, although \
he usually rowed over anyway to tell them the story of the old pendulum.

Life in Wenmoor did not change very much after that. The baker still opened his shutters before dawn, the \
ferryman still checked his ropes, and the old men on the bench still argued about the harvest. But the \
children arrived at school on time, more or less, and visitors who stopped at the inn now asked to see the \
old pendulum in its case. Ada stayed on at the mill for many years. She trained two apprentices, repaired \
more pumps than she could count, and never quite lost the habit of laying things out in careful rows before \
putting them back together. When people asked her why she had stayed in such a quiet place, she would say \
that a quiet town is a town where things get done, and she meant it.
"""


def heldout_english_text() -> str:
    """Original plain English prose (~1,500 words) for a language-retention loss check."""
    return _ENGLISH_TEXT
