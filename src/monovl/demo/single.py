"""Single-object scenes: the easiest rung of the demo world, for measuring what a recipe can learn.

The demo's questions refer to one object among 1-4 small ones ("What color is the star?"), so the
model must find the object before it can answer. A scene here holds exactly one object, and its
questions refer to no object ("What color is the shape?"), so the answer is a property of the
whole image. Its size is a parameter: `radius` is a (low, high) range in fractions of the image's
shorter side (the demo world draws 0.065-0.15; 0.2-0.4 fills a third to four fifths of the side).
Everything else is the demo world's: canvas aspect, scale and background styles, the colour and
shape palette, and the held-out colour-shape pairs (:data:`~monovl.demo.world.HELDOUT_PAIRS`):
training scenes never draw them, evaluation scenes always do, so a right colour for a blue circle
means "blue" was learnt apart from the shapes it came with.

With ``factorized=True`` (training sets only), half of the colour questions (``factorized_share``)
are about a shape outside the vocabulary (:data:`~monovl.demo.render.EXTRA_SHAPES`: diamond,
pentagon, hexagon, cross) and half of the shape questions about a fill outside the palette
(:data:`~monovl.demo.render.EXTRA_FILLS`: grey, black, brown, teal, pink). Then no colour comes
with only a few shapes, nor a shape with only a few colours, and the colour and the shape must be
learnt apart: without it a small model learns colour-shape pairs and names a held-out pair's colour
or shape wrong (README, "Why the demo's model answers from the prior").

With ``all_pairs=True`` (training sets only) scenes draw all 24 colour-shape pairs, the held-out
ones included, so that no colour predicts the shape at all; evaluation then measures new images
(another seed), not new pairs.

With ``questions=k`` (training sets only), a record asks its task first and then up to ``k - 1`` of
the other tasks about the same image, in a random order, skipping a colour or shape question whose
answer a factorized scene moved outside the vocabulary: the image tokens, most of a sample's cost,
are then paid once for several answers (the demo world's s1.3 does the same).

Tasks: ``color`` (6 answers), ``shape`` (4) and ``position`` (the 3x3 cell of the object's centre,
9 answers). An object of radius 0.2-0.4 has its centre in the middle cell about two times in three
(a centre at least r from every edge), so with ``balanced_position=True`` a position question is
asked about one large object (world.LARGE_RADIUS) in a cell drawn uniformly, as count scenes place
them: then no cell is the answer prior (the demo's evaluation, and `--full`'s s1.3c).
:func:`write_single_object_set` writes the official conversation JSONL, images beside it, and
``task`` plus ``answer`` on every record, so :func:`monovl.demo.evaluate.load_eval_items` reads it
as an evaluation set and `monovl train` as training data; :func:`write_eval_set` is the demo's
evaluation set.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from . import world
from .render import EXTRA_FILLS, EXTRA_SHAPES, FONT_STYLES, TEXT_COLORS, render_scene, text_extent

SINGLE_TASKS = ("color", "shape", "position")

# Generic references only: naming the shape would give the shape question away.
_QUESTIONS = {
    "color": ("What color is the shape?", "What colour is the object?", "What is the color of the shape?",
              "Which colour is the shape?", "Tell me the color of the object.", "What's the colour of the shape?"),
    "shape": ("What shape is shown?", "What shape is the object?", "Which shape is in the image?",
              "What kind of shape is this?", "Name the shape.", "What's the shape in the picture?"),
    "position": ("Where is the shape?", "Where is the object located?", "In which part of the image is the shape?",
                 "Where's the object?", "Tell me where the shape is.", "Which part of the picture holds the shape?"),
}


def single_object_scene(rng: random.Random, heldout: bool, radius: tuple[float, float],
                        all_pairs: bool = False, any_cell: bool = False) -> dict:
    """A scene (render.render_scene meta) with one object of radius `radius` (fractions of the shorter
    side), anywhere inside the canvas; a held-out colour-shape pair iff `heldout`, any of the 24 pairs
    with `all_pairs`, else a training pair. With `any_cell`, the object is large (world.LARGE_RADIUS,
    not `radius`) and its cell is drawn uniformly from the 3x3 grid."""
    lo, hi = radius
    if not 0 < lo <= hi < 0.5:
        raise ValueError(f"radius range {radius} must satisfy 0 < low <= high < 0.5 (fractions of the shorter side)")
    color, shape = rng.choice(world.HELDOUT_PAIRS if heldout else world.ALL_PAIRS if all_pairs else world.TRAIN_PAIRS)
    if any_cell:
        return world._sample_shapes(rng, world.ALL_PAIRS, target=(color, shape), n=1, sizes=("large",))[0]
    meta, _ = world._sample_shapes(rng, world.ALL_PAIRS, target=(color, shape), n=1)
    aspect = meta["aspect"]
    # r is in units of the shorter side; x, y in fractions of width, height (as in world._sample_shapes)
    rx, ry = min(1.0, 1.0 / aspect), min(1.0, aspect)
    r = rng.uniform(lo, hi)
    x = rng.uniform(r * rx, 1 - r * rx)
    y = rng.uniform(r * ry, 1 - r * ry)
    cell = world.CELL_NAMES[min(2, int(y * 3)) * 3 + min(2, int(x * 3))]
    meta["objects"] = [{"shape": shape, "color": color, "size": "large" if r >= world.LARGE_RADIUS[0] else "small",
                        "cell": cell, "x": world._r4(x), "y": world._r4(y), "r": world._r4(r)}]
    return meta


def single_object_record(task: str, index: int, seed: int, heldout: bool, radius: tuple[float, float],
                         factorized: bool = False, questions: int = 1, pool: tuple[str, ...] = SINGLE_TASKS,
                         factorized_share: float = 0.5, all_pairs: bool = False,
                         balanced_position: bool = False) -> dict:
    """Questions (`task` first, then others from `pool`, `questions` at most) about one scene; a pure
    function of the arguments (no image path yet). `balanced_position`: a position record's object
    sits in a uniformly drawn cell (`single_object_scene(any_cell=True)`)."""
    if task not in SINGLE_TASKS:
        raise ValueError(f"unknown single-object task {task!r}; choose from {SINGLE_TASKS}")
    if factorized and heldout:
        raise ValueError("factorized scenes are for training; evaluation draws the held-out pairs")
    if not 1 <= questions <= len(SINGLE_TASKS):
        raise ValueError(f"questions must be 1-{len(SINGLE_TASKS)}, got {questions}")
    if questions > 1 and heldout:
        raise ValueError("evaluation records ask one question each; questions > 1 is for training")
    if not 0 <= factorized_share <= 1:
        raise ValueError(f"factorized_share must be in [0, 1], got {factorized_share}")
    if all_pairs and heldout:
        raise ValueError("all_pairs is for training; evaluation draws the held-out pairs")
    rng = random.Random(f"monovl-single|{seed}|{task}|{index}|{int(heldout)}")
    meta = single_object_scene(rng, heldout, radius, all_pairs, any_cell=balanced_position and task == "position")
    obj = meta["objects"][0]
    if factorized and task in ("color", "shape") and rng.random() < factorized_share:
        if task == "color":
            obj["shape"] = rng.choice(EXTRA_SHAPES)
        else:
            obj["color"] = rng.choice(tuple(EXTRA_FILLS))
    answers = {"color": obj["color"], "shape": obj["shape"], "position": obj["cell"]}
    asked = [task]
    turns = [(rng.choice(_QUESTIONS[task]), answers[task], True)]  # drawn first: as a one-question record
    if questions > 1:
        # only answers inside the vocabulary: a factorized extra shape or fill is not asked about
        others = [t for t in pool if t != task
                  and not (t == "shape" and obj["shape"] in EXTRA_SHAPES)
                  and not (t == "color" and obj["color"] in EXTRA_FILLS)]
        rng.shuffle(others)
        asked += others[:questions - 1]
        turns += [(rng.choice(_QUESTIONS[t]), answers[t], True) for t in asked[1:]]
    rec = {"id": f"single-{task}-{index:06d}", "task": task, "answer": answers[task], "meta": meta,
           "conversations": world._conversation(turns)}
    if questions > 1:
        rec["tasks"] = asked
    return rec


# ------------------------------------------------------------ the full demo's two more rungs
# `monovl demo --full` scores counting and reading, on the easiest scenes that still ask for them
# (it trains counting; no run has learnt reading yet: README, "--full"):
# - count: 1-4 objects, every one large (world.LARGE_RADIUS, 0.12-0.15 of the shorter side, one per
#   3x3 cell, so none overlap), any colours and shapes; the question asks for the total;
# - word: one word of RUNG_WORDS as the world draws it (8 font styles, 40-90% of the width, rotated up to
#   8 degrees in half the images, any background), or another vocabulary and a plainer style, through
#   WordScenes (bench_learning.py --words, --word-style).
# The goal is reading training words in new renders, so evaluation draws the same vocabulary at
# another seed: new fonts, sizes, angles and places for known words.
RUNG_TASKS = ("count", "word")
# The vocabulary the full demo reads: the world's first 24 training words. With all 276 (~2 renders
# per word in 600 scenes) no word was read; 24 were not either, after 800 (README, "--full").
RUNG_WORDS: tuple[str, ...] = world.TRAIN_WORDS[:24]
# Word-scene styles, a ladder of render variety (`WordScenes.style`), each a superset of the one before:
# - plain: PLAIN_WORD_FONT, black ink, a flat white 224 px square, never rotated, PLAIN_WORD_PX px
#   (a letter about two 14 px patches wide), at a random place;
# - fonts: plain, in any of the world's 8 font styles (or a subset of them: WordScenes.fonts);
# - inks: fonts, in any of the world's 4 inks on any of its backgrounds (flat, gradient, noise);
# - world: the world's renders (world._sample_text), which add canvas aspect and scale, sizes of
#   40-90% of the width and rotation up to 8 degrees in half the images.
WORD_STYLES = ("plain", "fonts", "inks", "world")
PLAIN_WORD_FONT, PLAIN_WORD_PX = "sans-bold", (44, 52)


@dataclass(frozen=True)
class WordScenes:
    """How word scenes are drawn: `words`, the vocabulary (default RUNG_WORDS); `style`, one of
    WORD_STYLES (default "world", the world's renders); `fonts`, the font styles that "fonts" and "inks"
    draw from (default all 8 of render.FONT_STYLES). Plain renders are a rung below the world's: 8
    words were read from them (50% after 1,200 scenes) and not from the world's renders (4%; README,
    "--full"); "fonts" and "inks" are the rungs between. Raises ValueError on words outside
    world.TRAIN_WORDS, an unknown style or font, or `fonts` with a style that does not use them."""

    words: tuple[str, ...] = RUNG_WORDS
    style: str = "world"
    fonts: tuple[str, ...] = FONT_STYLES

    def __post_init__(self):
        if not self.words or not set(self.words) <= set(world.TRAIN_WORDS):
            raise ValueError("word scenes need a non-empty vocabulary of the world's training words "
                             "(world.TRAIN_WORDS), so that no held-out word is ever trained")
        if self.style not in WORD_STYLES:
            raise ValueError(f"unknown word-scene style {self.style!r}; choose from {WORD_STYLES}")
        if not self.fonts or not set(self.fonts) <= set(FONT_STYLES):
            raise ValueError(f"word-scene fonts must be a non-empty subset of {FONT_STYLES}, got {self.fonts}")
        if self.fonts != FONT_STYLES and self.style not in ("fonts", "inks"):
            raise ValueError(f"a font subset is drawn by the 'fonts' and 'inks' styles, not {self.style!r}")

    def scene(self, rng: random.Random, text: str) -> dict:
        """A render.render_scene meta of `text` in this style."""
        if self.style == "world":
            return world._sample_text(rng, "word", text)
        font = PLAIN_WORD_FONT if self.style == "plain" else rng.choice(self.fonts)
        canvas, color = {"bg": "white", "bg_style": "flat"}, "black"
        if self.style == "inks":
            canvas = {k: v for k, v in world._sample_canvas(rng).items() if k not in ("aspect", "scale")}
            color = rng.choice(tuple(TEXT_COLORS))
        px, side = rng.randint(*PLAIN_WORD_PX), 224
        x, y = world._place_text(rng, side, side, *text_extent(font, px, text, 0.0))
        return {"kind": "word", "text": text, "aspect": 1.0, "scale": 1.0, **canvas, "font": font, "color": color,
                "size": world._r4(px / side), "angle": 0.0, "x": world._r4(x / side), "y": world._r4(y / side)}


def rung_record(task: str, index: int, seed: int, all_pairs: bool = False,
                word_scenes: WordScenes = WordScenes()) -> dict:
    """One question about a count scene or a word scene (`task` in RUNG_TASKS); count scenes draw
    training colour-shape pairs, or all 24 with `all_pairs`; word scenes follow `word_scenes`. A pure
    function of the arguments."""
    if task not in RUNG_TASKS:
        raise ValueError(f"unknown rung task {task!r}; choose from {RUNG_TASKS}")
    rng = random.Random(f"monovl-rung|{seed}|{task}|{index}|{int(all_pairs)}")
    if task == "count":
        meta, _ = world._sample_shapes(rng, world.ALL_PAIRS if all_pairs else world.TRAIN_PAIRS,
                                       n=rng.randint(1, 4), sizes=("large",))
        question, answer = rng.choice(world._COUNT_Q), str(len(meta["objects"]))
    else:
        text = rng.choice(word_scenes.words)
        meta = word_scenes.scene(rng, text)
        question, answer = rng.choice(world._WORD_Q), meta["text"]
    return {"id": f"{task}-{index:06d}", "task": task, "answer": answer, "meta": meta,
            "conversations": world._conversation([(question, answer, True)])}


def _draw(rec: dict, folder: Path, image_size: int) -> None:
    """Set rec["image"] and draw it under `folder` unless present: the file name carries a hash of the
    scene and the size, so a changed generator (say, new fills) never reuses a stale image."""
    scene = hashlib.sha1(json.dumps([rec["meta"], image_size], sort_keys=True).encode()).hexdigest()[:16]
    rec["image"] = f"images/{rec['id']}-{scene}.png"
    if not (folder / rec["image"]).exists():
        render_scene(rec["meta"], image_size).save(folder / rec["image"])


def write_single_object_set(out: str | Path, tasks: list[str], n: int, seed: int, heldout: bool,
                            radius: tuple[float, float], image_size: int = 224, factorized: bool = False,
                            questions: int = 1, factorized_share: float = 0.5, all_pairs: bool = False,
                            balanced_position: bool = False, word_scenes: WordScenes = WordScenes()) -> Path:
    """Write `n` records (tasks in turn, SINGLE_TASKS or RUNG_TASKS) with their images under `out`;
    returns `out/data.jsonl`. A rung task's record asks one question, of training pairs, or of all 24
    with `all_pairs` or `heldout` (`radius`, `factorized`, `questions` and `balanced_position` apply to
    single objects, `word_scenes` to word scenes).

    Images are drawn at nominal size `image_size` (render.render_scene) and reused when present (their
    names hash the scene), so a second call with the same arguments only rewrites the JSONL.
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        if task in RUNG_TASKS:  # one question each, whatever `questions` says
            rec = rung_record(task, i, seed, all_pairs=all_pairs or heldout, word_scenes=word_scenes)
        else:
            rec = single_object_record(task, i, seed, heldout, radius, factorized=factorized, questions=questions,
                                       pool=tuple(t for t in tasks if t not in RUNG_TASKS),
                                       factorized_share=factorized_share, all_pairs=all_pairs,
                                       balanced_position=balanced_position)
        _draw(rec, out, image_size)
        lines.append(json.dumps(rec))
    jsonl = out / "data.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    return jsonl


def write_eval_set(out: str | Path, tasks: tuple[str, ...] | list[str], per_task: int, seed: int,
                   radius: tuple[float, float], image_size: int = 224,
                   word_scenes: WordScenes = WordScenes()) -> Path:
    """The demo's evaluation set (`monovl demo`, bench_learning.py, bench_own_images.py): `per_task`
    records of each of `tasks`, in turn, with another seed than training's; objects of all 24
    colour-shape pairs, so no training answer ties a shape to a palette colour and the 6 held-out
    pairs are asked too; position about an object in a uniformly drawn cell. Returns out/data.jsonl."""
    return write_single_object_set(out, list(tasks), per_task * len(tasks), seed=seed, heldout=False, radius=radius,
                                   image_size=image_size, all_pairs=True, balanced_position=True,
                                   word_scenes=word_scenes)


# ---------------------------------------------------------------- the default demo's curriculum
# The EViP stages on single-object scenes, factorized per task, as the learning curves say
# (README, "The demo" and "Shape: learnt once the colour cannot stand in for it"):
# - shape scenes have a fill outside the palette, so no palette colour is seen with a shape answer
#   and the colour cannot stand in for the shape (the shortcut that made the model name colour-shape
#   pairs); the darker fills also make shapes quicker to learn. Once shape is learnt that way, a
#   second phase (`shape_share=0.5`) asks half its shape questions about training pairs in palette
#   colours, which the shortcut no longer spoils (README, shape runs, rows 12 and 25-26);
# - colour scenes have a shape outside the vocabulary half of the time (share 0.5), so each colour
#   is seen on many shapes, and on the shapes it will be asked about;
# - position scenes draw training pairs, and may add a colour question, never a shape one;
# - a caption names colour and shape at once, so a caption scene never has a palette colour with a
#   vocabulary shape (the shape is swapped for one outside the vocabulary).
CURRICULUM_FACTORIZED_SHARE = {"color": 0.5, "shape": 1.0, "position": 0.0}
_FOLLOW_UPS = {"color": ("color", "position"), "shape": ("shape", "position"), "position": ("position", "color")}
CURRICULUM_STAGES = ("s1.1", "s1.2", "s1.3", "s2")

# s2's second turn answers in a sentence, as instruction data does.
_NATURAL = {"color": "The {ref} is {color}.", "shape": "It is {a_shape}.", "position": "The {ref} is {cell}."}


def _natural(task: str, obj: dict, rng: random.Random) -> str:
    ref = rng.choice(("shape", "object"))
    article = "an" if obj["shape"][0] in "aeiou" else "a"
    return _NATURAL[task].format(ref=ref, color=obj["color"], a_shape=f"{article} {obj['shape']}",
                                 cell=world._CELL_PHRASES[obj["cell"]])


def curriculum_record(stage: str, index: int, seed: int, radius: tuple[float, float],
                      questions: int = 1, noisy_rate: float = 0.15,
                      tasks: tuple[str, ...] = SINGLE_TASKS, shape_share: float | None = None,
                      balanced_position: bool = False, word_scenes: WordScenes = WordScenes()) -> dict:
    """One training record of `stage` (s1.1 noisy captions, s1.2 clean captions, s1.3 question
    answering with `questions` (1 or 2) questions, s2 two-turn conversations); the scene's task is
    `tasks[index % len(tasks)]` (a task may repeat, to weight it; RUNG_TASKS, s1.3 only, ask one
    question: `rung_record`). `shape_share` (s1.3 only): the
    share of shape questions asked about a fill outside the palette, instead of
    CURRICULUM_FACTORIZED_SHARE's 1.0; the rest draw training pairs (the second phase of the shape
    curve, README "The demo"). `balanced_position` (s1.3 only): position scenes put one large
    object in a uniformly drawn cell. `word_scenes`: how word scenes are drawn. A pure function of
    the arguments (no image path yet)."""
    if stage not in CURRICULUM_STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {CURRICULUM_STAGES}")
    if not tasks or not set(tasks) <= set(SINGLE_TASKS + RUNG_TASKS):
        raise ValueError(f"tasks {tasks!r} must be a non-empty sequence from {SINGLE_TASKS + RUNG_TASKS}")
    if stage != "s1.3" and set(tasks) & set(RUNG_TASKS):
        raise ValueError(f"count and word scenes ({RUNG_TASKS}) are for s1.3 only, not {stage}")
    if shape_share is not None and (stage != "s1.3" or not 0 <= shape_share <= 1):
        raise ValueError(f"shape_share must be in [0, 1] and is for s1.3 only, got {shape_share} for {stage}")
    if balanced_position and stage != "s1.3":
        raise ValueError(f"balanced_position is for s1.3 only, not {stage}")
    task = tasks[index % len(tasks)]
    if task in RUNG_TASKS:
        return {**rung_record(task, index, seed, word_scenes=word_scenes), "id": f"{stage}-{index:06d}"}
    rng = random.Random(f"monovl-single-curriculum|{seed}|{stage}|{index}")
    share = shape_share if task == "shape" and shape_share is not None else CURRICULUM_FACTORIZED_SHARE[task]
    rec = single_object_record(task, index, seed, heldout=False, radius=radius, factorized=True,
                               factorized_share=share,
                               questions=min(questions if stage == "s1.3" else 2, 2), pool=_FOLLOW_UPS[task],
                               balanced_position=balanced_position)
    rec["id"] = f"{stage}-{index:06d}"
    meta = rec["meta"]
    if stage == "s1.3":
        return rec
    if stage in ("s1.1", "s1.2"):
        obj = meta["objects"][0]
        if obj["color"] in world.COLOR_NAMES and obj["shape"] in world.SHAPES:
            obj["shape"] = rng.choice(EXTRA_SHAPES)  # a caption names both: never a palette colour with a shape
        if stage == "s1.1":
            caption, quality = world.noisy_caption(meta, rng, noisy_rate)
            rec["caption_quality"] = quality
        else:
            caption = world.canonical_caption(meta)
        instruction = rng.choice(world.CAPTION_INSTRUCTIONS)
        rec.update(task="caption", answer=caption, conversations=world._conversation([(instruction, caption, False)]))
        rec.pop("tasks", None)
        return rec
    # s2: two questions about the scene (one when nothing else is in the vocabulary); one of them,
    # at random, asks for a single word, the other is answered in a sentence, so that every
    # question type is seen both ways and the answer suffix, not the task, sets the format
    obj = meta["objects"][0]
    asked = rec.get("tasks", [rec["task"]])
    questions = [c["value"].removeprefix("<image>\n").removesuffix("\n" + world.ANSWER_SUFFIX)
                 for c in rec["conversations"][::2]]
    exact = rng.randrange(len(asked))
    answers = {"color": obj["color"], "shape": obj["shape"], "position": obj["cell"]}
    turns = [(q, answers[t] if k == exact else _natural(t, obj, rng), k == exact)
             for k, (q, t) in enumerate(zip(questions, asked))]
    rec.update(task="chat", conversations=world._conversation(turns))
    return rec


def write_curriculum(out: str | Path, sizes: dict[str, int], seed: int, radius: tuple[float, float],
                     image_size: int, questions: int = 1, tasks: tuple[str, ...] = SINGLE_TASKS,
                     shape_share: float | None = None, first_index: int = 0,
                     balanced_position: bool = False, word_scenes: WordScenes = WordScenes()) -> dict[str, Path]:
    """Write each stage of `sizes` ({stage: records}) under `out/<stage>/`; returns {stage: data.jsonl}.
    Records are indices `first_index` .. `first_index + n - 1` of `curriculum_record` (a second
    part of a stage starts after the first, so its scenes are new). An image is reused when present:
    its file name carries a hash of the scene it draws."""
    paths = {}
    for stage, n in sizes.items():
        folder = Path(out) / stage
        (folder / "images").mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(first_index, first_index + n):
            rec = curriculum_record(stage, i, seed, radius, questions=questions, tasks=tasks, shape_share=shape_share,
                                    balanced_position=balanced_position, word_scenes=word_scenes)
            _draw(rec, folder, image_size)
            lines.append(json.dumps(rec))
        paths[stage] = folder / "data.jsonl"
        paths[stage].write_text("\n".join(lines) + "\n")
    return paths
