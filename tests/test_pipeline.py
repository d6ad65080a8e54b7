"""The demo's plan and data (monovl.demo.pipeline): what each run trains on and is scored on."""

import json
from collections import Counter
from dataclasses import replace

from monovl.demo.pipeline import FULL_S13C, DemoPlan, curriculum


def test_full_plan_trains_and_scores_position_in_every_cell_and_keeps_the_default_data(tmp_path):
    plan = replace(DemoPlan.quick(full=True), eval_late=18)
    data, items = curriculum(tmp_path, plan)
    assert list(data) == ["s1.1", "s1.2", "s1.3a", "s1.3b", "s1.3c", "s2"]
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
