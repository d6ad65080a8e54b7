"""The demo's synthetic visual world: determinism, schema, held-out splits, answers vs. pixels."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monovl.demo import render, world
from monovl.demo.render import BACKGROUNDS, COLORS, chart_bar_boxes, render_scene
from monovl.demo.world import (
    ANSWER_SUFFIX,
    CELL_NAMES,
    EVAL_TASKS,
    HELDOUT_PAIRS,
    HELDOUT_WORDS,
    QA_TASKS,
    SHAPES,
    CurriculumSizes,
    canonical_caption,
    generate_curriculum,
    heldout_english_text,
    is_heldout_number,
    language_prompts,
    make_sample,
)

TRAIN_STAGES = ("s1.1", "s1.2", "s1.3", "s2")
SIZES = CurriculumSizes.quick()


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    out = tmp_path_factory.mktemp("world")
    return out, generate_curriculum(out, seed=0, sizes=SIZES, workers=2)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------ determinism
def test_same_seed_same_bytes(quick, tmp_path):
    out, _ = quick
    again = tmp_path / "again"
    generate_curriculum(again, seed=0, sizes=SIZES, workers=1)  # thread count must not matter
    assert _tree_hash(again) == _tree_hash(out)
    other = tmp_path / "other"
    generate_curriculum(other, seed=1, sizes=CurriculumSizes(s1_1=8, s1_2=8, s1_3=8, s2=8, eval_per_task=2))
    a = (out / "s1.3" / "data.jsonl").read_text().splitlines()[:8]
    b = (other / "s1.3" / "data.jsonl").read_text().splitlines()[:8]
    assert a != b


def test_reuse_skips_regeneration(quick):
    out, paths = quick
    before = {p: p.stat().st_mtime_ns for p in (out / "s1.3" / "images").iterdir()}
    again = generate_curriculum(out, seed=0, sizes=SIZES, reuse=True)
    assert again == paths
    assert {p: p.stat().st_mtime_ns for p in (out / "s1.3" / "images").iterdir()} == before


def test_empty_stages(tmp_path):
    paths = generate_curriculum(tmp_path, sizes=CurriculumSizes(s1_1=0, s1_2=2, s1_3=0, s2=0, eval_per_task=1))
    assert paths["s1.1"].read_text() == "" and paths["s1.1-captions"].read_text() == ""
    assert len(_read(paths["s1.2"])) == 2 and len(_read(paths["eval"])) == len(EVAL_TASKS)


def test_make_sample_is_pure():
    for stage in TRAIN_STAGES:
        assert make_sample(stage, 17, seed=3) == make_sample(stage, 17, seed=3)
        assert make_sample(stage, 17, seed=3) != make_sample(stage, 17, seed=4)


def test_quick_preset_is_small():
    q = CurriculumSizes.quick()
    total = sum(q.stage_count(s) for s in (*TRAIN_STAGES, "eval"))
    assert total < 500
    d = CurriculumSizes()
    assert (d.s1_1, d.s1_2, d.s1_3, d.s2, d.eval_per_task) == (1500, 1500, 2500, 800, 60)


# ----------------------------------------------------------------------- schema
def test_files_and_schema(quick):
    out, paths = quick
    assert set(paths) == {"s1.1", "s1.2", "s1.3", "s2", "eval", "s1.1-captions", "s1.2-captions", "manifest"}
    from monovl.data.records import parse_record  # the consumer must accept every record

    for stage in (*TRAIN_STAGES, "eval"):
        recs = _read(paths[stage])
        assert len(recs) == SIZES.stage_count(stage)
        assert len({r["id"] for r in recs}) == len(recs)
        for r in recs:
            conv = r["conversations"]
            assert len(conv) % 2 == 0 and conv
            assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
            assert conv[0]["value"].startswith("<image>\n")
            assert sum(t["value"].count("<image>") for t in conv) == 1
            assert all(t["value"].strip() for t in conv)
            assert not Path(r["image"]).is_absolute()
            assert (paths[stage].parent / r["image"]).is_file()
            parse_record(r, root=paths[stage].parent)
            if stage in ("s1.3", "eval") and r["task"] != "caption":
                assert len(conv) == (2 if stage == "eval" else 2 * len(r["tasks"]))
                assert all(conv[k]["value"].endswith("\n" + ANSWER_SUFFIX) for k in range(0, len(conv), 2))
                assert conv[1]["value"] == r["answer"]
            if stage == "s2":
                assert 4 <= len(conv) <= 6 and len(r["tasks"]) == len(conv) // 2
                exact = [k for k in range(0, len(conv), 2) if conv[k]["value"].endswith(ANSWER_SUFFIX)]
                assert len(exact) == 1
                assert len(conv[exact[0] + 1]["value"].split()) <= 2
            if stage == "eval":
                assert r["task"] in EVAL_TASKS and r["answer"] in r["answers"]
                assert r["question"] in conv[0]["value"]
        # images open, have the right size, and there is one per record
        imgs = sorted((paths[stage].parent / "images").iterdir())
        assert len(imgs) == len(recs)
        for p in imgs[:: max(1, len(imgs) // 10)]:
            with Image.open(p) as im:
                assert im.size == (224, 224) and im.mode == "RGB"
    for stage in ("s1.1", "s1.2"):
        caps = _read(paths[f"{stage}-captions"])
        data = _read(paths[stage])
        assert [c["id"] for c in caps] == [d["id"] for d in data]
        assert [c["image"] for c in caps] == [d["image"] for d in data]
        for c, d in zip(caps, data):
            assert c["caption"] == d["conversations"][1]["value"]
            parse_record(c, root=paths[stage].parent)
    eval_tasks = Counter(r["task"] for r in _read(paths["eval"]))
    assert eval_tasks == {t: SIZES.eval_per_task for t in EVAL_TASKS}
    assert Counter(r["task"] for r in _read(paths["s1.3"])).keys() == set(QA_TASKS)
    caption_evals = [r for r in _read(paths["eval"]) if r["task"] == "caption"]
    assert all(len(r["answers"]) == 3 and len(set(r["answers"])) == 3 for r in caption_evals)


# -------------------------------------------------------------------- held out
_HELDOUT_PHRASES = [f"{c} {s}" for c, s in HELDOUT_PAIRS]


def _texts(rec: dict) -> list[str]:
    return [t["value"] for t in rec["conversations"]] + ([rec["caption"]] if "caption" in rec else [])


def test_heldout_never_in_training():
    word_re = re.compile(r"\b(" + "|".join(HELDOUT_WORDS) + r")\b", re.IGNORECASE)
    for stage in TRAIN_STAGES:
        for i in range(800):
            rec = make_sample(stage, i, seed=0)
            meta = rec["meta"]
            if meta["kind"] == "shapes":
                assert not {(o["color"], o["shape"]) for o in meta["objects"]} & set(HELDOUT_PAIRS)
            if meta["kind"] == "word":
                assert meta["text"] not in HELDOUT_WORDS
            if meta["kind"] == "number":
                assert not is_heldout_number(int(meta["text"]))
            if meta["kind"] == "chart":
                assert not set(meta["labels"]) & set(HELDOUT_WORDS)
            for text in _texts(rec):
                assert not word_re.search(text), (stage, i, text)
                assert not any(p in text for p in _HELDOUT_PHRASES), (stage, i, text)
                for num in re.findall(r"\d+", text):
                    assert not is_heldout_number(int(num)), (stage, i, text)


def test_eval_targets_heldout_content(quick):
    _, paths = quick
    for r in _read(paths["eval"]):
        meta, task, q = r["meta"], r["task"], r["question"]
        if task in ("count", "color", "shape", "position"):
            pairs = {(o["color"], o["shape"]) for o in meta["objects"]}
            assert pairs & set(HELDOUT_PAIRS)
            target = tuple(r["heldout"].split(":")[1].split())
            assert target in HELDOUT_PAIRS and target in pairs
            if task == "color":
                assert target[1] in q and r["answer"] == target[0]
            if task == "shape":
                assert target[0] in q and r["answer"] == target[1]
            if task == "position":
                assert target[0] in q or target[1] in q
        if task == "ocr_word":
            assert r["answer"] in HELDOUT_WORDS
        if task == "ocr_number":
            assert is_heldout_number(int(r["answer"]))


# --------------------------------------------------------- answers vs. pixels
def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _expected_answer(task: str, question: str, meta: dict) -> str:
    """Recompute an answer from the scene, independently of the generator's QA code."""
    if task in ("ocr_word", "ocr_number"):
        return meta["text"]
    if task == "chart":
        (lab,) = [lab for lab in meta["labels"] if re.search(rf"\b(bar|of) {re.escape(lab)}\b", question)]
        return str(meta["values"][meta["labels"].index(lab)])
    objs = meta["objects"]
    shape_in_q = [s for s in SHAPES if re.search(rf"\b{s}s?\b", question)]
    color_in_q = [c for c in COLORS if re.search(rf"\b{c}\b", question)]
    if task == "count":
        if shape_in_q:
            return str(sum(o["shape"] == shape_in_q[0] for o in objs))
        return str(len(objs))
    if shape_in_q:
        (match,) = [o for o in objs if o["shape"] == shape_in_q[0]]  # the question is unambiguous
    else:
        (match,) = [o for o in objs if o["color"] == color_in_q[0]]
    return {"color": match["color"], "shape": match["shape"], "position": match["cell"]}[task]


def _check_drawing(meta: dict, pix: np.ndarray) -> None:
    size = pix.shape[0]
    bg = np.array(BACKGROUNDS[meta["bg"]])
    if meta["kind"] == "shapes":
        occupied = set()
        for o in meta["objects"]:
            x, y = int(o["x"] * size), int(o["y"] * size)
            assert tuple(pix[y, x]) == COLORS[o["color"]]
            occupied.add(CELL_NAMES.index(o["cell"]))
            col, row = CELL_NAMES.index(o["cell"]) % 3, CELL_NAMES.index(o["cell"]) // 3
            assert col == int(o["x"] * 3) and row == int(o["y"] * 3)
        third = size // 3
        for cell in range(9):
            if cell not in occupied:  # an empty cell is pure background
                col, row = cell % 3, cell // 3
                block = pix[row * third + 1:(row + 1) * third - 1, col * third + 1:(col + 1) * third - 1]
                assert (block == bg).all()
    elif meta["kind"] == "chart":
        fill = np.array(COLORS[meta["bar_color"]])
        for (x0, y0, x1, y1), v in zip(chart_bar_boxes(len(meta["values"]), meta["values"], size), meta["values"]):
            assert (pix[y1 - 3, (x0 + x1) // 2] == fill).all()  # bar bottom
            assert (pix[y0 + 2, x0 + 3] == fill).all()  # bar top
            assert not (pix[y0 - 3, x0 + 2] == fill).all()  # nothing of the bar above its top
    else:  # text: some dark ink on a light background
        assert (pix == bg).all(axis=-1).mean() > 0.7
        assert (pix.sum(axis=-1) < 300).any()


def test_answers_match_what_is_drawn(quick):
    _, paths = quick
    for stage in ("eval", "s1.3"):
        root = paths[stage].parent
        for r in _read(paths[stage]):
            pix = _pixels(root / r["image"])
            # the stored scene redraws to exactly the stored pixels
            assert (np.asarray(render_scene(r["meta"], 224)) == pix).all()
            _check_drawing(r["meta"], pix)
            if r["task"] == "caption":
                assert r["answer"] == canonical_caption(r["meta"])
            else:
                question = r.get("question", r["conversations"][0]["value"])
                assert r["answer"] == _expected_answer(r["task"], question, r["meta"])
                conv = r["conversations"]
                for task, k in zip(r.get("tasks", []), range(0, len(conv), 2)):
                    assert conv[k + 1]["value"] == _expected_answer(task, conv[k]["value"], r["meta"])


def test_s2_answers_match_scene():
    for i in range(200):
        rec = make_sample("s2", i)
        meta, conv = rec["meta"], rec["conversations"]
        for k in range(0, len(conv), 2):
            q, a = conv[k]["value"], conv[k + 1]["value"]
            reading = not any(w in q for w in ("digits", "letters", "color"))
            if q.endswith(ANSWER_SUFFIX) and meta["kind"] in ("word", "number") and reading:
                assert a == meta["text"]
            if "Describe" in q:
                assert a == canonical_caption(meta)
            if meta["kind"] == "shapes" and q.startswith(("How many shapes", "Count the shapes")):
                n = len(meta["objects"])
                assert a == str(n) or world._num(n) in a


def test_other_image_sizes():
    for stage in ("s1.2", "s2"):
        for i in range(8):
            meta = make_sample(stage, i)["meta"]
            for size in (112, 448):
                im = render_scene(meta, size)
                assert im.size == (size, size)
                if meta["kind"] == "shapes":
                    _check_drawing(meta, np.asarray(im))


# ---------------------------------------------------------------- s1.1 noise
_NUMS = {w: k for k, w in enumerate(world._NUM_WORDS)}


def _caption_agrees(meta: dict, cap: str) -> bool | None:
    """True/False where a caption's claims can be checked against the scene; None if it claims nothing."""
    if meta["kind"] in ("word", "number"):
        stop = {"the", "word", "number", "in", "dark", "blue", "red", "green", "black"}
        claims = [t for t in re.findall(r"[a-z0-9]+", cap.lower()) if t not in stop]
        if not claims or cap in ("text", "a word", "typography", "lettering", "a sign", "font sample",
                                 "digits", "a number", "numbers", "numerals", "a code"):
            return None
        return meta["text"] in claims
    if meta["kind"] == "shapes":
        present = {(o["color"], o["shape"]) for o in meta["objects"]}
        pairs = re.findall(r"(" + "|".join(COLORS) + r") (" + "|".join(SHAPES) + r")", cap)
        if pairs:
            return all(p in present for p in pairs)
        m = re.match(r"(\w+) (?:colorful )?shapes?", cap)
        if m and (m.group(1) in _NUMS or m.group(1).isdigit()):
            n = int(m.group(1)) if m.group(1).isdigit() else _NUMS[m.group(1)]
            return n == len(meta["objects"])
        return None
    m = re.search(r"\b(\d+|" + "|".join(_NUMS) + r") (?:\w+ )?bars", cap)
    if m:
        n = int(m.group(1)) if m.group(1).isdigit() else _NUMS[m.group(1)]
        return n == len(meta["values"])
    return None


@pytest.mark.parametrize("rate", [0.15, 0.3])
def test_noisy_caption_fraction(rate):
    n = 1500
    quality = Counter()
    for i in range(n):
        rec = make_sample("s1.1", i, seed=0, noisy_rate=rate)
        q = rec["caption_quality"]
        quality[q] += 1
        agrees = _caption_agrees(rec["meta"], rec["caption"])
        if q == "wrong":
            assert agrees is False, rec["caption"]
        elif q == "clean":
            assert agrees is not False, (rec["caption"], rec["meta"])
        else:
            assert agrees is None, rec["caption"]
    assert abs(quality["wrong"] / n - rate) < 0.005
    assert abs(quality["vague"] / n - 0.25) < 0.005


# ------------------------------------------------------------------ language
def test_language_material():
    prompts = language_prompts()
    assert 6 <= len(prompts) <= 12 and all(isinstance(p, str) and p.strip() for p in prompts)
    assert prompts == language_prompts()
    text = heldout_english_text()
    assert 1300 <= len(text.split()) <= 1800
    assert "<image>" not in text and text.count("\n\n") >= 5


# ---------------------------------------------------------------------- fonts
def test_fonts_found_and_fallback(monkeypatch):
    assert all(render.font_paths().values()), "DejaVu fonts should be found here (system or matplotlib copy)"
    render.get_font.cache_clear()
    render._fit_px.cache_clear()
    monkeypatch.setattr(render, "font_paths", lambda: {s: None for s in render.FONT_STYLES})
    monkeypatch.setattr(render, "_warned_styles", set())
    try:
        with pytest.warns(RuntimeWarning, match="not found"):
            im = render_scene({"kind": "word", "text": "garden", "bg": "white", "font": "serif-bold",
                               "color": "black", "size": 0.2, "angle": 3.0, "x": 0.5, "y": 0.5}, 224)
        assert im.size == (224, 224)
        assert (np.asarray(im).sum(axis=-1) < 300).any()
    finally:
        render.get_font.cache_clear()
        render._fit_px.cache_clear()
