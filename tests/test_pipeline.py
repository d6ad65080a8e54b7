"""The demo's plan and data (monovl.demo.pipeline): what each run trains on and is scored on."""

import json
from collections import Counter
from dataclasses import replace

from monovl.demo.pipeline import FULL_READING, FULL_S13C, FULL_WORDS, DemoPlan, curriculum
from monovl.demo.render import FONT_STYLES


def test_full_plan_trains_and_scores_position_in_every_cell_and_keeps_the_default_data(tmp_path):
    plan = replace(DemoPlan.quick(full=True), eval_late=18)
    data, items = curriculum(tmp_path, plan)
    assert list(data) == ["s1.1", "s1.2", "s1.3a", "s1.3b", "read-plain", "read-world", "s1.3c", "s2"]
    # evaluation: position asked about objects in any cell (no cell is the answer prior)
    cells = Counter(i.answers[0] for i in items if i.task == "position")
    assert sum(cells.values()) == 18 and len(cells) >= 6 and cells["center"] <= 6
    assert {i.task for i in items} == {"color", "shape", "position", "count", "word"}

    def records(stage):
        return [json.loads(line) for line in data[stage].read_text().splitlines()]

    # s1.3c's position scenes hold one large object (world.LARGE_RADIUS, <= 0.15); the default plan's
    # s1.3b keeps its scenes (radius 0.2-0.4)
    assert FULL_S13C.balanced_position and not any(sp.balanced_position for sp in DemoPlan().stages.values())
    for stage, large in (("s1.3c", True), ("s1.3b", False)):
        objs = [r["meta"]["objects"][0] for r in records(stage) if r["task"] == "position"]
        assert objs and all((o["r"] <= 0.15) == large for o in objs)


def test_full_plan_climbs_a_reading_ladder_of_its_own_vocabulary_and_keeps_words_in_s13c(tmp_path):
    full = DemoPlan.full()
    assert list(full.stages) == ["s1.1", "s1.2", "s1.3a", "s1.3b", *FULL_READING, "s1.3c", "s2"]
    # 6 steps of 4 per run (the s1.3c cycle's both word slots), 8 evaluation items per task
    plan = replace(full, stages={k: replace(sp, steps=6, batch_size=4) for k, sp in full.stages.items()},
                   eval_late=8)
    data, items = curriculum(tmp_path, plan)

    def records(stage):
        return [json.loads(line) for line in data[stage].read_text().splitlines()]

    metas = {stage: [r["meta"] for r in records(stage)] for stage in FULL_READING}
    assert all(r["task"] == "word" for stage in FULL_READING for r in records(stage))
    assert {m["font"] for m in metas["read-plain"]} == {"sans-bold"}
    assert all(m["bg"] == "white" and m["color"] == "black" for m in metas["read-plain"] + metas["read-fonts"])
    assert {m["font"] for m in metas["read-3fonts"]} <= {"sans-bold", "sans", "serif"}
    assert len({m["font"] for m in metas["read-fonts"]}) > 3
    assert all(m["font"] in FONT_STYLES for m in metas["read-fonts"])
    assert {m["color"] for m in metas["read-inks"]} != {"black"}
    assert {m["angle"] for m in metas["read-world"]} != {0.0} or {m["aspect"] for m in metas["read-world"]} != {1.0}
    # every word trained and asked is one of FULL_WORDS; s1.3c keeps word scenes in its cycle
    words = [m["text"] for ms in metas.values() for m in ms]
    words += [r["answer"] for r in records("s1.3c") if r["task"] == "word"]
    assert set(words) <= set(FULL_WORDS) and len(set(words)) > 1
    assert Counter(r["task"] for r in records("s1.3c"))["word"] == 4
    asked = [i.answers[0] for i in items if i.task == "word"]
    assert len(asked) == 8 and set(asked) <= set(FULL_WORDS)
    # the default plan's vocabulary and word scenes are as before
    assert DemoPlan().words == DemoPlan().word_scenes().words != FULL_WORDS
