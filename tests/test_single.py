"""Single-object scenes (monovl.demo.single): held-out pairs, geometry, answers, files."""

import json

import pytest

from monovl.demo import world
from monovl.demo.evaluate import load_eval_items
from monovl.demo.render import canvas_size
from monovl.demo.single import SINGLE_TASKS, single_object_record, write_single_object_set


def test_records_are_pure_and_pairs_are_held_out():
    for task in SINGLE_TASKS:
        for i in range(60):
            train = single_object_record(task, i, seed=0, heldout=False, radius=(0.2, 0.4))
            assert train == single_object_record(task, i, seed=0, heldout=False, radius=(0.2, 0.4))
            (obj,) = train["meta"]["objects"]
            assert (obj["color"], obj["shape"]) in world.TRAIN_PAIRS
            (obj,) = single_object_record(task, i, seed=1, heldout=True, radius=(0.2, 0.4))["meta"]["objects"]
            assert (obj["color"], obj["shape"]) in world.HELDOUT_PAIRS


@pytest.mark.parametrize("task", SINGLE_TASKS)
def test_answer_matches_the_scene_and_the_object_fits(task):
    for i in range(100):
        rec = single_object_record(task, i, seed=3, heldout=False, radius=(0.1, 0.45))
        meta = rec["meta"]
        (obj,) = meta["objects"]
        w, h = canvas_size(meta, 224)
        short = min(w, h)
        # the object's box (half-side r of the shorter side) lies inside the image
        assert obj["x"] * w - obj["r"] * short >= -1e-6 and obj["x"] * w + obj["r"] * short <= w + 1e-6
        assert obj["y"] * h - obj["r"] * short >= -1e-6 and obj["y"] * h + obj["r"] * short <= h + 1e-6
        assert 0.1 <= obj["r"] <= 0.45
        col, row = min(2, int(obj["x"] * 3)), min(2, int(obj["y"] * 3))
        expected = {"color": obj["color"], "shape": obj["shape"], "position": world.CELL_NAMES[row * 3 + col]}[task]
        assert rec["answer"] == expected == rec["conversations"][1]["value"]
        question = rec["conversations"][0]["value"]
        assert question.startswith("<image>\n") and question.endswith(world.ANSWER_SUFFIX)
        # the question names no colour and no shape: the answer can only come from the image
        words = set(question.lower().replace("?", " ").replace(".", " ").split())
        assert not words & (set(world.COLOR_NAMES) | set(world.SHAPES))


def test_written_set_is_an_eval_set(tmp_path):
    jsonl = write_single_object_set(tmp_path / "s", ["color", "position"], 6, seed=1, heldout=True,
                                    radius=(0.2, 0.3), image_size=56)
    recs = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["task"] for r in recs] == ["color", "position"] * 3
    assert all((jsonl.parent / r["image"]).is_file() for r in recs)
    items = load_eval_items(jsonl)
    assert [i.answers for i in items] == [[r["answer"]] for r in recs]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="radius range"):
        single_object_record("color", 0, 0, False, radius=(0.3, 0.6))
    with pytest.raises(ValueError, match="unknown single-object task"):
        single_object_record("count", 0, 0, False, radius=(0.2, 0.3))


def test_factorized_sets_separate_colour_from_shape(tmp_path):
    from monovl.demo.render import EXTRA_FILLS, EXTRA_SHAPES, render_scene

    recs = {t: [single_object_record(t, i, 0, False, (0.2, 0.4), factorized=True) for i in range(200)]
            for t in ("color", "shape", "position")}
    objs = {t: [r["meta"]["objects"][0] for r in rs] for t, rs in recs.items()}
    # colour questions: about half on shapes outside the vocabulary, answers still the palette colour
    extra = [o for o in objs["color"] if o["shape"] in EXTRA_SHAPES]
    assert 70 < len(extra) < 130 and {o["shape"] for o in extra} == set(EXTRA_SHAPES)
    assert [r["answer"] for r in recs["color"]] == [o["color"] for o in objs["color"]]
    assert all(o["color"] in world.COLOR_NAMES for o in objs["color"])
    # shape questions: about half with fills outside the palette
    extra = [o for o in objs["shape"] if o["color"] in EXTRA_FILLS]
    assert 70 < len(extra) < 130 and all(o["shape"] in world.SHAPES for o in objs["shape"])
    assert [r["answer"] for r in recs["shape"]] == [o["shape"] for o in objs["shape"]]
    # position questions are unchanged, and no training scene draws a held-out pair
    assert recs["position"] == [single_object_record("position", i, 0, False, (0.2, 0.4)) for i in range(200)]
    assert not any((o["color"], o["shape"]) in world.HELDOUT_PAIRS for os_ in objs.values() for o in os_)
    # every extra shape and fill renders, and differs from the background
    for o in objs["color"][:20] + objs["shape"][:20]:
        meta = {**recs["color"][0]["meta"], "bg_style": "flat", "objects": [o]}
        img = render_scene(meta, 56)
        assert len(img.getcolors(maxcolors=1 << 16) or [0, 0]) > 1
    with pytest.raises(ValueError, match="factorized"):
        single_object_record("color", 0, 1, True, (0.2, 0.4), factorized=True)


def test_several_questions_per_image_answer_the_same_scene():
    from monovl.demo.render import EXTRA_FILLS, EXTRA_SHAPES

    answers = {"color": "color", "shape": "shape", "position": "cell"}
    for task in SINGLE_TASKS:
        for i in range(40):
            one = single_object_record(task, i, 0, False, (0.2, 0.4), factorized=True)
            rec = single_object_record(task, i, 0, False, (0.2, 0.4), factorized=True, questions=3)
            # the same scene and first question as the one-question record
            assert rec["meta"] == one["meta"] and rec["conversations"][:2] == one["conversations"]
            (obj,) = rec["meta"]["objects"]
            assert rec["tasks"][0] == task and len(set(rec["tasks"])) == len(rec["tasks"])
            assert [c["value"] for c in rec["conversations"][1::2]] == [obj[answers[t]] for t in rec["tasks"]]
            # never a question whose answer a factorized scene moved outside the vocabulary
            assert not ("shape" in rec["tasks"] and obj["shape"] in EXTRA_SHAPES)
            assert not ("color" in rec["tasks"] and obj["color"] in EXTRA_FILLS)
            assert "<image>" in rec["conversations"][0]["value"]
            assert not any("<image>" in c["value"] for c in rec["conversations"][1:])
        # other tasks come only from the pool the set was asked for
        assert single_object_record(task, 0, 0, False, (0.2, 0.4), questions=3, pool=(task,))["tasks"] == [task]
    with pytest.raises(ValueError, match="questions"):
        single_object_record("color", 0, 0, False, (0.2, 0.4), questions=4)
    with pytest.raises(ValueError, match="evaluation"):
        single_object_record("color", 0, 1, True, (0.2, 0.4), questions=2)


def test_factorized_share_sets_how_many_questions_leave_the_vocabulary():
    from monovl.demo.render import EXTRA_FILLS, EXTRA_SHAPES

    def objs(task, share):
        return [single_object_record(task, i, 0, False, (0.2, 0.4), factorized=True, factorized_share=share)
                ["meta"]["objects"][0] for i in range(100)]

    assert all(o["shape"] in EXTRA_SHAPES for o in objs("color", 1.0))
    assert all(o["color"] in EXTRA_FILLS for o in objs("shape", 1.0))
    assert not any(o["color"] in EXTRA_FILLS for o in objs("shape", 0.0))
    assert [single_object_record("shape", i, 0, False, (0.2, 0.4), factorized=True, factorized_share=0.5)
            for i in range(50)] == [single_object_record("shape", i, 0, False, (0.2, 0.4), factorized=True)
                                    for i in range(50)]
    with pytest.raises(ValueError, match="factorized_share"):
        single_object_record("shape", 0, 0, False, (0.2, 0.4), factorized=True, factorized_share=1.5)


def test_all_pairs_draws_every_pair_held_out_ones_included():
    pairs = [tuple(single_object_record("shape", i, 0, False, (0.2, 0.4), all_pairs=True)["meta"]["objects"][0]
                   [k] for k in ("color", "shape")) for i in range(400)]
    assert set(pairs) == set(world.ALL_PAIRS)
    # roughly uniform: no colour comes with one shape more than the others
    for color in world.COLOR_NAMES:
        shapes = [s for c, s in pairs if c == color]
        assert max(shapes.count(s) for s in world.SHAPES) < 2.5 * min(shapes.count(s) for s in world.SHAPES)
    with pytest.raises(ValueError, match="all_pairs is for training"):
        single_object_record("shape", 0, 1, True, (0.2, 0.4), all_pairs=True)


def test_curriculum_asks_shape_only_about_fills_outside_the_palette():
    from monovl.demo.render import EXTRA_FILLS, EXTRA_SHAPES
    from monovl.demo.single import CURRICULUM_STAGES, curriculum_record

    colour_on_extra_shape, s2_exact_turns = [], []
    for stage in CURRICULUM_STAGES:
        for i in range(90):
            rec = curriculum_record(stage, i, seed=0, radius=(0.2, 0.4), questions=2)
            assert rec == curriculum_record(stage, i, seed=0, radius=(0.2, 0.4), questions=2)
            (obj,) = rec["meta"]["objects"]
            convs = rec["conversations"]
            assert convs[0]["value"].startswith("<image>\n") and len(convs) % 2 == 0
            asked = rec.get("tasks", [rec["task"]])
            if "shape" in asked:  # the colour can never stand in for the shape
                assert obj["color"] in EXTRA_FILLS, (stage, i, obj)
            if rec["task"] == "caption":
                assert not (obj["color"] in world.COLOR_NAMES and obj["shape"] in world.SHAPES), (stage, i, obj)
            if rec["task"] == "color":
                colour_on_extra_shape.append(obj["shape"] in EXTRA_SHAPES)
            answers = [c["value"] for c in convs[1::2]]
            if stage == "s1.3":
                assert rec["answer"] == answers[0] and len(answers) == len(asked) <= 2
                assert all(a in world.COLOR_NAMES + world.SHAPES + world.CELL_NAMES for a in answers)
            elif stage == "s1.2":
                assert answers == [world.canonical_caption(rec["meta"])]
            elif stage == "s2":
                # exactly one turn asks for a single word; the others are answered in a sentence
                exact = [c["value"].endswith(world.ANSWER_SUFFIX) for c in convs[::2]]
                assert sum(exact) == 1
                assert all(a.endswith(".") != e for a, e in zip(answers, exact))
                s2_exact_turns.append(exact.index(True))
    assert 0.3 < sum(colour_on_extra_shape) / len(colour_on_extra_shape) < 0.7
    assert set(s2_exact_turns) == {0, 1}  # the one-word turn is sometimes the second
    with pytest.raises(ValueError, match="unknown stage"):
        curriculum_record("s3", 0, 0, (0.2, 0.4))
    with pytest.raises(ValueError, match="must be a non-empty sequence"):
        curriculum_record("s1.3", 0, 0, (0.2, 0.4), tasks=("chart",))


def test_write_curriculum_writes_training_data(tmp_path):
    from monovl.data.records import parse_record
    from monovl.demo.single import write_curriculum

    paths = write_curriculum(tmp_path, {"s1.1": 3, "s1.3": 6}, seed=0, radius=(0.2, 0.4), image_size=56, questions=2)
    assert set(paths) == {"s1.1", "s1.3"}
    recs = [json.loads(line) for line in paths["s1.3"].read_text().splitlines()]
    assert [r["task"] for r in recs] == list(SINGLE_TASKS) * 2
    assert all((paths["s1.3"].parent / r["image"]).is_file() for r in recs)
    for path in paths.values():  # every record is valid training data for `monovl train`
        for line in path.read_text().splitlines():
            parse_record(json.loads(line), root=path.parent)


def test_a_changed_scene_is_drawn_anew_not_read_from_a_stale_file(tmp_path):
    # Images are reused when present; their names must change with the scene (here: the radius), or a
    # second set written into the same folder would pair new questions with old pictures.
    small = json.loads(write_single_object_set(tmp_path, ["shape"], 2, seed=0, heldout=False,
                                               radius=(0.1, 0.15), image_size=64).read_text().splitlines()[0])
    large = json.loads(write_single_object_set(tmp_path, ["shape"], 2, seed=0, heldout=False,
                                               radius=(0.3, 0.4), image_size=64).read_text().splitlines()[0])
    assert small["id"] == large["id"] and small["image"] != large["image"]
    assert (tmp_path / small["image"]).exists() and (tmp_path / large["image"]).exists()
    again = json.loads(write_single_object_set(tmp_path, ["shape"], 2, seed=0, heldout=False,
                                               radius=(0.3, 0.4), image_size=64).read_text().splitlines()[0])
    assert again["image"] == large["image"]


def test_second_phase_of_s1_3_asks_shape_on_training_pairs_and_draws_new_scenes(tmp_path):
    # DemoPlan's s1.3b: half its shape questions about palette colours (training pairs only, never a
    # held-out pair), the rest on fills outside the palette; its records continue s1.3a's indices.
    from monovl.demo.render import EXTRA_FILLS
    from monovl.demo.single import curriculum_record, write_curriculum

    palette = []
    for i in range(200):
        rec = curriculum_record("s1.3", i, seed=0, radius=(0.2, 0.4), tasks=("shape",), shape_share=0.5)
        (obj,) = rec["meta"]["objects"]
        palette.append(obj["color"] in world.COLOR_NAMES)
        if palette[-1]:
            assert (obj["color"], obj["shape"]) in world.TRAIN_PAIRS
        else:
            assert obj["color"] in EXTRA_FILLS
    assert 0.35 < sum(palette) / len(palette) < 0.65
    with pytest.raises(ValueError, match="s1.3 only"):
        curriculum_record("s1.1", 0, 0, (0.2, 0.4), shape_share=0.5)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        curriculum_record("s1.3", 0, 0, (0.2, 0.4), shape_share=1.5)
    a = write_curriculum(tmp_path / "a", {"s1.3": 4}, seed=0, radius=(0.2, 0.4), image_size=56, tasks=("shape",))
    b = write_curriculum(tmp_path / "b", {"s1.3": 4}, seed=0, radius=(0.2, 0.4), image_size=56, tasks=("shape",),
                         first_index=4)
    scenes = [json.loads(line)["meta"] for p in (a, b) for line in p["s1.3"].read_text().splitlines()]
    assert len({json.dumps(m, sort_keys=True) for m in scenes}) == 8


def test_count_scenes_hold_one_to_four_large_objects_that_never_overlap():
    from monovl.demo.single import rung_record

    counts = []
    for i in range(300):
        rec = rung_record("count", i, seed=0)
        assert rec == rung_record("count", i, seed=0)
        objs = rec["meta"]["objects"]
        counts.append(len(objs))
        assert rec["answer"] == str(len(objs)) == rec["conversations"][1]["value"]
        assert rec["conversations"][0]["value"].endswith(world.ANSWER_SUFFIX)
        assert all(o["size"] == "large" and world.LARGE_RADIUS[0] <= o["r"] <= world.LARGE_RADIUS[1] for o in objs)
        assert all((o["color"], o["shape"]) in world.TRAIN_PAIRS for o in objs)  # training pairs only
        assert len({o["cell"] for o in objs}) == len(objs)  # one object per 3x3 cell: none overlap
    assert set(counts) == {1, 2, 3, 4} and min(counts.count(n) for n in range(1, 5)) > 50
    drawn = {(o["color"], o["shape"]) for i in range(300)
             for o in rung_record("count", i, 1, all_pairs=True)["meta"]["objects"]}
    assert set(world.HELDOUT_PAIRS) <= drawn  # evaluation scenes draw all 24 pairs


def test_word_scenes_ask_the_rung_vocabulary_and_evaluation_renders_it_anew(tmp_path):
    from monovl.demo.single import RUNG_WORDS, rung_record

    train = [rung_record("word", i, seed=0) for i in range(200)]
    evals = [rung_record("word", i, seed=1) for i in range(200)]
    for rec in train + evals:
        assert rec["answer"] == rec["meta"]["text"] in RUNG_WORDS
    assert set(RUNG_WORDS) <= set(world.TRAIN_WORDS)  # never a held-out word of the world
    assert {r["answer"] for r in train} == {r["answer"] for r in evals} == set(RUNG_WORDS)  # all of it, both seeds
    # another seed: the same vocabulary in new renders (fonts, sizes, angles, places, backgrounds)
    assert not {json.dumps(r["meta"], sort_keys=True) for r in train} & {json.dumps(r["meta"], sort_keys=True)
                                                                         for r in evals}
    jsonl = write_single_object_set(tmp_path, ["color", "count", "word"], 6, seed=1, heldout=False,
                                    radius=(0.2, 0.4), image_size=64, all_pairs=True)
    recs = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["task"] for r in recs] == ["color", "count", "word"] * 2
    assert all((tmp_path / r["image"]).is_file() and len(r["conversations"]) == 2 for r in recs)
    with pytest.raises(ValueError, match="unknown rung task"):
        rung_record("color", 0, 0)


def test_plain_word_scenes_draw_a_chosen_vocabulary_in_one_style_inside_a_white_square(tmp_path):
    import numpy as np
    from PIL import Image

    from monovl.demo.single import PLAIN_WORD_FONT, PLAIN_WORD_PX, WordScenes, rung_record, write_eval_set

    words = world.TRAIN_WORDS[:8]
    plain = WordScenes(words, style="plain")

    train = [rung_record("word", i, seed=0, word_scenes=plain) for i in range(120)]
    evals = [rung_record("word", i, seed=1, all_pairs=True, word_scenes=plain) for i in range(120)]
    assert train[5] == rung_record("word", 5, seed=0, word_scenes=plain)  # pure
    assert {r["answer"] for r in train} == {r["answer"] for r in evals} == set(words)
    for rec in train + evals:
        m = rec["meta"]
        assert rec["answer"] == m["text"] and m["font"] == PLAIN_WORD_FONT and m["color"] == "black"
        assert (m["bg"], m["bg_style"], m["aspect"], m["scale"], m["angle"]) == ("white", "flat", 1.0, 1.0, 0.0)
        assert PLAIN_WORD_PX[0] / 224 - 1e-4 <= m["size"] <= PLAIN_WORD_PX[1] / 224 + 1e-4
    assert len({(r["meta"]["x"], r["meta"]["y"]) for r in train}) > 100  # a new place in (almost) every scene
    # count scenes ignore the word setting; the default is the world's renders of RUNG_WORDS
    assert rung_record("count", 3, 0, word_scenes=plain) == rung_record("count", 3, 0)
    assert len({rung_record("word", i, 0)["meta"]["font"] for i in range(60)}) > 4
    jsonl = write_eval_set(tmp_path, ("color", "word"), 3, seed=1, radius=(0.2, 0.4), image_size=224,
                           word_scenes=plain)
    recs = [json.loads(line) for line in jsonl.read_text().splitlines()]
    for rec in (r for r in recs if r["task"] == "word"):
        img = np.asarray(Image.open(tmp_path / rec["image"]).convert("L"))
        assert img.shape == (224, 224) and img.max() == 255  # white canvas, nominal size
        assert 0.02 < (img < 100).mean() < 0.3  # black ink, the whole word on the canvas
    with pytest.raises(ValueError, match="training words"):
        WordScenes(world.HELDOUT_WORDS[:2])
    with pytest.raises(ValueError, match="unknown word-scene style"):
        WordScenes(words, style="fancy")


def test_word_styles_between_plain_and_the_world_add_one_kind_of_variety_each():
    from monovl.demo.render import FONT_STYLES, TEXT_COLORS
    from monovl.demo.single import PLAIN_WORD_PX, WordScenes, rung_record

    words = world.TRAIN_WORDS[:8]

    def metas(style):
        return [rung_record("word", i, seed=0, word_scenes=WordScenes(words, style))["meta"] for i in range(200)]

    def seen(ms, key):
        return {m.get(key) for m in ms}

    fonts, inks, world_ = metas("fonts"), metas("inks"), metas("world")
    for m in fonts + inks:  # still square, nominal scale, unrotated, plain sizes
        assert (m["aspect"], m["scale"], m["angle"]) == (1.0, 1.0, 0.0)
        assert PLAIN_WORD_PX[0] / 224 - 1e-4 <= m["size"] <= PLAIN_WORD_PX[1] / 224 + 1e-4
    # fonts: every font style, still black on flat white
    assert seen(fonts, "font") == set(FONT_STYLES) and seen(fonts, "color") == {"black"}
    assert seen(fonts, "bg") == {"white"} and seen(fonts, "bg_style") == {"flat"}
    # inks: every ink and background style as well
    assert seen(inks, "font") == set(FONT_STYLES) and seen(inks, "color") == set(TEXT_COLORS)
    assert seen(inks, "bg_style") == {"flat", "gradient", "noise"} and len(seen(inks, "bg")) > 3
    # world: the rest (aspect, rotation, sizes beyond the plain range)
    assert len(seen(world_, "aspect")) > 5 and len(seen(world_, "angle")) > 5
    assert max(m["size"] for m in world_) > PLAIN_WORD_PX[1] / 224
    with pytest.raises(ValueError, match="training words"):
        WordScenes(())


def test_a_font_subset_narrows_the_fonts_and_inks_rungs_only():
    from monovl.demo.render import FONT_STYLES
    from monovl.demo.single import WordScenes, rung_record

    words, two = world.TRAIN_WORDS[:8], ("sans-bold", "serif")
    for style in ("fonts", "inks"):
        metas = [rung_record("word", i, seed=0, word_scenes=WordScenes(words, style, fonts=two))["meta"]
                 for i in range(100)]
        assert {m["font"] for m in metas} == set(two)
    # all fonts named explicitly draw exactly the default's records
    assert (rung_record("word", 3, 0, word_scenes=WordScenes(words, "fonts", fonts=FONT_STYLES))
            == rung_record("word", 3, 0, word_scenes=WordScenes(words, "fonts")))
    with pytest.raises(ValueError, match="subset"):
        WordScenes(words, "fonts", fonts=("comic-sans",))
    with pytest.raises(ValueError, match="subset"):
        WordScenes(words, "fonts", fonts=())
    for style in ("plain", "world"):
        with pytest.raises(ValueError, match="not '"):
            WordScenes(words, style, fonts=two)


def test_count_and_word_scenes_are_s1_3_only_and_continue_its_indices():
    from monovl.demo.single import curriculum_record, rung_record

    rec = curriculum_record("s1.3", 5, 0, (0.2, 0.4), tasks=("word", "count"))
    assert rec["task"] == "count" and rec["id"] == "s1.3-000005"
    assert rec["meta"] == rung_record("count", 5, 0)["meta"]
    with pytest.raises(ValueError, match="s1.3 only"):
        curriculum_record("s2", 0, 0, (0.2, 0.4), tasks=("color", "word"))


def test_balanced_position_draws_every_cell_alike_and_leaves_other_tasks_alone():
    from collections import Counter

    from monovl.demo.single import curriculum_record

    radius = (0.2, 0.4)
    plain = Counter(single_object_record("position", i, 1, False, radius)["answer"] for i in range(450))
    assert plain["center"] > 0.5 * 450  # why: a centre r >= 0.2 from every edge is mostly in the middle cell
    recs = [single_object_record("position", i, 1, False, radius, balanced_position=True) for i in range(450)]
    cells = Counter(r["answer"] for r in recs)
    assert set(cells) == set(world.CELL_NAMES) and max(cells.values()) < 2.2 * 450 / 9
    for rec in recs:
        (obj,) = rec["meta"]["objects"]
        assert obj["cell"] == rec["answer"] and obj["size"] == "large"
        assert world.LARGE_RADIUS[0] <= obj["r"] <= world.LARGE_RADIUS[1]
        assert (obj["color"], obj["shape"]) in world.TRAIN_PAIRS
    held = single_object_record("position", 0, 1, True, radius, balanced_position=True)["meta"]["objects"][0]
    assert (held["color"], held["shape"]) in world.HELDOUT_PAIRS
    # colour and shape scenes are the same draws with or without it
    for task in ("color", "shape"):
        assert (single_object_record(task, 3, 1, False, radius, balanced_position=True)
                == single_object_record(task, 3, 1, False, radius))
    rec = curriculum_record("s1.3", 2, 0, radius, tasks=("color", "shape", "position"), balanced_position=True)
    assert rec["task"] == "position" and rec["meta"]["objects"][0]["size"] == "large"
    with pytest.raises(ValueError, match="s1.3 only"):
        curriculum_record("s1.2", 2, 0, radius, balanced_position=True)
