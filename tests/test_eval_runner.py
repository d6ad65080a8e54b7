"""Benchmark runner: TSV reading, resumable predictions, per-task scoring, `monovl eval run|score`."""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import shutil

import pytest
from PIL import Image

from monovl.eval.runner import Request, run_benchmark, score_predictions
from monovl.eval.tasks import CAPTION_PROMPT, VQA_SUFFIX, get_task
from monovl.eval.tsv import (
    ImageDecodeError,
    ImageResolver,
    PredictionWriter,
    parse_answer_list,
    prediction_header,
    read_predictions,
    read_tsv,
    require_columns,
)
from monovl.eval.caption import cider_d
from monovl.cli import eval as eval_cli
from tiny import tiny_model


def b64_png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48), mode: str = "RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else colour + (128,)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_tsv(path, columns, rows) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r[c] for c in columns])


def parse(argv):
    parser = argparse.ArgumentParser()
    eval_cli.add_parser(parser.add_subparsers(dest="verb"))
    return parser.parse_args(argv)


def indices(path) -> list[str]:
    return [r["index"] for r in read_predictions(path, repair=False)]


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer_dir):
    d = tmp_path_factory.mktemp("eval_model")
    tiny_model(seed=5).save_pretrained(d)
    for item in tiny_tokenizer_dir.iterdir():
        shutil.copy(item, d / item.name)
    return d


BAD_IMAGE = "Tm90IGFuIGltYWdlIGF0IGFsbCwganVzdCBzb21lIHRleHQgdGhhdCBpcyBsb25nZXIgdGhhbiA2NCBjaGFyYWN0ZXJz"


@pytest.fixture
def vqa_tsv(tmp_path):
    """Six TextVQA-style rows: list answers, one row reusing row 0's image, one corrupt image."""
    red, blue = b64_png((220, 20, 20)), b64_png((20, 20, 220), mode="RGBA")
    rows = [
        {"index": 0, "image": red, "question": "What colour?", "answer": str(["red"] * 10), "category": "colour"},
        {"index": 1, "image": blue, "question": "What colour is it?", "answer": "['blue', 'navy']",
         "category": "colour"},
        {"index": 2, "image": "0", "question": "Same image, new\nquestion \"quoted\"", "answer": "['red']",
         "category": "misc"},
        {"index": 3, "image": BAD_IMAGE, "question": "Broken?", "answer": "['no']", "category": "misc"},
        {"index": 4, "image": red, "question": "Tab\there?", "answer": "['yes']", "category": "misc"},
        {"index": 5, "image": "1", "question": "Last one", "answer": "['5']", "category": "misc"},
    ]
    path = tmp_path / "tiny_textvqa.tsv"
    write_tsv(path, ["index", "image", "image_path", "question", "answer", "category"], rows)
    return path


class Interrupt(Exception):
    pass


# ---------------------------------------------------------------------------- end to end

def test_interrupted_run_resumes_with_each_row_once(model_dir, vqa_tsv, tmp_path):
    from monovl import MonoInternVL
    from monovl.eval.runner import ModelPredictor
    from monovl.processing import MonoProcessor

    model = MonoInternVL.from_pretrained(model_dir)
    processor = MonoProcessor.from_pretrained(model_dir)
    predictor = ModelPredictor(model, processor, max_new_tokens=4, max_tiles=1)
    out = tmp_path / "run"

    def stop_after_first(k):
        if k == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_benchmark(predictor, vqa_tsv, "textvqa", out, batch_size=2, progress=False,
                      after_batch=stop_after_first)
    assert indices(out / "predictions.tsv") == ["0", "1"]
    # A run killed in the middle of a write leaves a torn record: it must be dropped.
    with open(out / "predictions.tsv", "a", encoding="utf-8") as f:
        f.write('2\t\t"Same image, new\n')

    # Resume through the CLI, as a user would.
    args = parse(["eval", "run", "--model", str(model_dir), "--data", str(vqa_tsv), "--task", "textvqa",
                  "--out", str(out), "--batch-size", "2", "--max-new-tokens", "4", "--max-tiles", "1",
                  "--no-progress"])
    assert args.func(args) == 0
    assert indices(out / "predictions.tsv") == ["0", "1", "2", "3", "4", "5"]

    rows = read_predictions(out / "predictions.tsv", repair=False)
    assert list(rows[0]) == ["index", "image_path", "question", "answer", "category", "prediction"]
    assert rows[2]["question"] == 'Same image, new\nquestion "quoted"'
    assert rows[3]["prediction"] == ""  # the corrupt image row
    scores = json.loads((out / "scores.json").read_text())
    assert scores["task"] == "textvqa" and scores["n"] == 6 and scores["complete"] is True
    assert scores["n_image_errors"] == 1 and scores["image_errors"][0]["index"] == "3"
    assert set(scores["per_category"]) == {"colour", "misc"}
    assert scores["category_counts"] == {"colour": 2, "misc": 4}
    assert isinstance(scores["overall"], float)
    assert "| colour |" in (out / "scores.md").read_text()

    # The same batches in one uninterrupted run give the same predictions (greedy, deterministic).
    fresh = run_benchmark(predictor, vqa_tsv, "textvqa", tmp_path / "fresh", batch_size=2, progress=False)
    assert [r["prediction"] for r in read_predictions(fresh.predictions_path)] == [r["prediction"] for r in rows]
    # Row 2 reuses row 0's image: the model saw real pixels, not an error.
    assert "2" not in {e["index"] for e in fresh.scores["image_errors"]}


def test_a_row_the_processor_refuses_does_not_stop_the_run(model_dir, tmp_path):
    from monovl import MonoInternVL
    from monovl.eval.runner import ModelPredictor
    from monovl.processing import MonoProcessor

    red = b64_png((220, 20, 20))
    path = tmp_path / "img_tag.tsv"
    write_tsv(path, ["index", "image", "question", "answer"],
              [{"index": i, "image": red, "question": q, "answer": "['red']"}
               for i, q in enumerate(["What colour?", "What is <img> in HTML?", "Red?"])])
    predictor = ModelPredictor(MonoInternVL.from_pretrained(model_dir), MonoProcessor.from_pretrained(model_dir),
                               max_new_tokens=2, max_tiles=1)
    result = run_benchmark(predictor, path, "textvqa", tmp_path / "run", batch_size=3, progress=False)
    assert indices(result.predictions_path) == ["0", "1", "2"] and result.scores["complete"] is True
    # Refused (today's processor) or answered as literal text: either way only row 1 may have an error.
    assert {e["index"] for e in result.scores["errors"]} <= {"1"}


def test_resume_skips_done_rows_and_limit(vqa_tsv, tmp_path):
    calls: list[str] = []

    def predictor(requests):
        calls.extend(r.prompt for r in requests)
        return ["red"] * len(requests)

    out = tmp_path / "run"
    res = run_benchmark(predictor, vqa_tsv, "textvqa", out, batch_size=4, limit=3, progress=False)
    assert res.scores["n"] == 3 and len(calls) == 3
    assert calls[0] == "What colour?" + VQA_SUFFIX
    res = run_benchmark(predictor, vqa_tsv, "textvqa", out, batch_size=4, progress=False)
    assert len(calls) == 3 + 2  # rows 3 (bad image) and 4, 5: the bad one is never sent
    assert indices(res.predictions_path) == [str(i) for i in range(6)]
    # Category 'colour': row 0 (10 x 'red') scores 100, row 1 (blue/navy) 0.
    assert res.scores["per_category"]["colour"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="holds a run of task 'textvqa'"):
        run_benchmark(predictor, vqa_tsv, "vqav2", out, progress=False)


def test_unknown_task_and_missing_column_are_clear(vqa_tsv, tmp_path):
    with pytest.raises(ValueError, match="unknown task 'gqa'; choose from textvqa"):
        get_task("gqa")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['A', 'B'\] required by task 'mmbench'"):
        run_benchmark(lambda r: [""] * len(r), vqa_tsv, "mmbench", tmp_path / "x", progress=False)
    with pytest.raises(SystemExit):  # argparse refuses unknown task names
        parse(["eval", "score", "--task", "nope", "--predictions", "p.tsv", "--out", "s.json"])


# ---------------------------------------------------------------------------- TSV edge cases

def test_tsv_reading_edge_cases(tmp_path):
    red = b64_png((200, 0, 0), size=(10, 10))
    rows = [
        {"index": 1, "image": red, "question": "q", "A": "x", "B": "y", "C": "nan", "D": None,
         "hint": None, "answer": "A"},
        {"index": 1000001, "image": "1", "question": "q", "A": "y", "B": "x", "C": None, "D": None,
         "hint": "NaN", "answer": "B"},
        {"index": 7, "image": "1000001", "question": "q2", "A": "None", "B": "0", "C": "c", "D": None,
         "hint": "look closely", "answer": "C"},
        {"index": 8, "image": "999", "question": "q3", "A": "a", "B": "b", "answer": "A"},
        {"index": 9, "image": str([red, "1"]), "question": "two", "A": "a", "B": "b", "answer": "A"},
    ]
    path = tmp_path / "mcq.tsv"
    write_tsv(path, ["index", "image", "question", "hint", "A", "B", "C", "D", "answer"], rows)
    table = read_tsv(path)
    assert table.rows[0]["C"] is None and table.rows[0]["D"] is None  # "nan" and empty are NaN options
    assert table.rows[1]["hint"] is None
    assert table.rows[2]["A"] == "None"  # unlike pandas, "None" is text
    task = get_task("mmbench")
    assert task.prompt(table.rows[0]) == (
        "Question: q\nOptions:\nA. x\nB. y\nPlease select the correct answer from the options above. \n")
    assert task.prompt(table.rows[2]).startswith("Hint: look closely\nQuestion: q2\nOptions:\nA. None\nB. 0\nC. c\n")

    resolver = ImageResolver(table.rows)
    assert resolver.base64_of(table.rows[2]["image"]) == [red]  # a chain of two references
    assert resolver.images(table.rows[1])[0].size == (10, 10)
    assert len(resolver.images(table.rows[4])) == 2  # list literal with a reference inside
    with pytest.raises(ImageDecodeError, match="neither base64 nor the index"):
        resolver.images(table.rows[3])
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        ImageResolver([{"index": "0", "image": BAD_IMAGE}]).images({"image": BAD_IMAGE})
    rgba = ImageResolver([]).images({"image": b64_png((1, 2, 3), mode="RGBA")})[0]
    assert rgba.mode == "RGBA"  # decoded as stored: the processor makes it RGB, as its settings say

    with pytest.raises(ValueError, match=r"lacks column\(s\) \['category'\] required by ocrbench"):
        require_columns(table, ["index", "category"], "ocrbench")


def test_answer_lists_are_parsed_safely():
    assert parse_answer_list("['a', 'b']") == ["a", "b"]
    assert parse_answer_list('["1,000", 2]') == ["1,000", "2"]
    assert parse_answer_list("plain answer") == ["plain answer"]
    assert parse_answer_list("[not a literal") == ["[not a literal"]
    assert parse_answer_list("[__import__('os').system('true')]") == ["[__import__('os').system('true')]"]
    with pytest.raises(ValueError, match="empty"):
        parse_answer_list(None)


def test_duplicate_index_and_bad_row_width(tmp_path):
    path = tmp_path / "dup.tsv"
    write_tsv(path, ["index", "image", "question", "answer"],
              [{"index": 1, "image": "x", "question": "q", "answer": "a"}] * 2)
    with pytest.raises(ValueError, match="index '1' occurs twice"):
        run_benchmark(lambda r: [""] * len(r), path, "vqav2", tmp_path / "o", progress=False)
    path.write_text("index\tquestion\n1\tq\textra\n")
    with pytest.raises(ValueError, match="record 1 has 3 cells but the header has 2"):
        read_tsv(path)


def test_torn_records_are_detected(tmp_path):
    header = prediction_header(["index", "image", "question", "prediction"])
    assert header == ["index", "question", "prediction"]
    path = tmp_path / "p.tsv"
    with PredictionWriter(path, header) as w:
        w.write_rows([{"index": "1", "question": "multi\nline", "prediction": "A\nB"},
                      {"index": "2", "question": "q", "prediction": ""}])
    good = path.read_text()
    for torn in ['3\t"multi\n', "3\tq\tpartial pred", "3\tq", '3\tq\t"A\n']:
        path.write_text(good + torn)
        rows = read_predictions(path, header)
        assert [r["index"] for r in rows] == ["1", "2"]
        assert rows[0]["question"] == "multi\nline" and rows[0]["prediction"] == "A\nB"
        assert path.read_text() == good  # repaired in place
    with pytest.raises(ValueError, match="belongs to another data file"):
        read_predictions(path, ["index", "prediction"])
    # Scoring a foreign file (repair=False): a last line without its newline is still a row.
    path.write_text(good + "3\tq\tC")
    assert [r["prediction"] for r in read_predictions(path, header, repair=False)] == ["A\nB", "", "C"]
    path.write_text("index\tques")  # interrupted while writing the header
    assert read_predictions(path, header) == [] and path.read_text() == ""


# ---------------------------------------------------------------------------- scoring

def _score(task, rows):
    return get_task(task).score(rows)


def test_vqa_tasks_use_vqa_accuracy():
    rows = [
        {"index": "1", "answer": str(["red"] * 3 + ["blue"] * 7), "prediction": "Red.", "category": "a"},
        {"index": "2", "answer": "['red']", "prediction": "green", "category": "b"},
    ]
    # 3 of 10 match: each matching answer sees 2 others (2/3), each other one 3 (1): 27/30.
    for task in ("textvqa", "vqav2"):
        s = _score(task, rows)
        assert s["overall"] == pytest.approx(45.0)
        assert s["per_category"] == {"a": pytest.approx(90.0), "b": 0.0}
        assert s["unit"] == "percent" and s["n"] == 2
    assert _score("vqav2", [{"index": "1", "answer": str(["2"] * 10), "prediction": "two"}])["overall"] == 100.0


def test_anls_tasks():
    rows = [{"index": "1", "answer": "['hello']", "prediction": "helo"},
            {"index": "2", "answer": "['hello', 'xyz']", "prediction": "xyz"},
            {"index": "3", "answer": "['hello']", "prediction": "abc"}]
    for task in ("docvqa", "infovqa"):
        s = _score(task, rows)
        # 1 - 1/5 = 0.8; exact match 1.0; 5 edits / 5 -> 0 (below 0.5): mean 0.6 -> 60 (ANLS x100).
        assert s["overall"] == pytest.approx(60.0) and s["unit"] == "ANLS x100"


def test_chartqa_relaxed_accuracy_per_split():
    rows = [{"index": "1", "answer": "10", "prediction": "10.4", "split": "human"},
            {"index": "2", "answer": "12", "prediction": "12%", "split": "augmented"},
            {"index": "3", "answer": "Yes", "prediction": "yes ", "split": "augmented"}]
    s = _score("chartqa", rows)
    assert s["overall"] == pytest.approx(200 / 3)
    assert s["per_category"] == {"augmented": 50.0, "human": 100.0}
    assert s["category_column"] == "split"


def test_ocrbench_counts():
    rows = [
        {"index": "1", "answer": "['hello']", "prediction": "The word is HELLO",
         "category": "Regular Text Recognition"},
        {"index": "2", "answer": "['x^2']", "prediction": "x ^ 2",
         "category": "Handwritten Mathematical Expression Recognition"},
        {"index": "3", "answer": "['X^2']", "prediction": "x^2",  # HMER is case-sensitive
         "category": "Handwritten Mathematical Expression Recognition"},
        {"index": "4", "answer": "['yes']", "prediction": "no", "category": "Doc-oriented VQA"},
    ]
    s = _score("ocrbench", rows)
    assert s["overall"] == 2 and s["out_of"] == 4 and s["unit"] == "count correct"
    assert s["per_category"]["Text Recognition"] == 1
    assert s["per_category"]["Handwritten Mathematical Expression Recognition"] == 1
    assert s["per_category"]["Doc-oriented VQA"] == 0
    assert s["final_score_norm"] == pytest.approx(50.0)


def _mcq_row(index, answer, prediction, category):
    return {"index": str(index), "question": "q", "A": "cat", "B": "dog", "C": None, "answer": answer,
            "prediction": prediction, "category": category, "l2-category": "L", "split": "dev"}


def test_mmbench_circular_grouping():
    rows = [
        _mcq_row(1, "A", "A", "attr"), _mcq_row(1_000_001, "B", "The answer is B", "attr"),
        _mcq_row(2, "A", "A", "count"), _mcq_row(1_000_002, "B", "A", "count"),  # one rotation wrong
    ]
    s = _score("mmbench", rows)
    assert s["n"] == 4 and s["questions"] == 2
    assert s["overall"] == 50.0
    assert s["per_category"] == {"attr": 100.0, "count": 0.0}
    assert s["per_split"]["dev"]["Overall"] == 50.0
    # Not circular: every row counts on its own (3 of 4 right).
    assert _score("mcq", rows)["overall"] == 75.0


def test_caption_routes_to_cider():
    rows = [{"index": "1", "answer": str(["a dog runs on the grass", "a dog running"]), "prediction": "a dog runs"},
            {"index": "2", "answer": str(["a red car parked", "a car on a street"]), "prediction": "a red car"},
            {"index": "3", "answer": str(["two cats sleeping", "cats on a sofa"]), "prediction": "a banana"}]
    s = _score("caption", rows)
    cider, _ = cider_d({r["index"]: r["prediction"] for r in rows},
                       {r["index"]: parse_answer_list(r["answer"]) for r in rows})
    assert s["overall"] == pytest.approx(100 * cider) and s["overall"] > 0
    assert s["unit"] == "CIDEr x100" and s["per_category"] == {}
    assert get_task("caption").prompt({}) == CAPTION_PROMPT


def test_scoring_a_file_twice_is_identical(tmp_path):
    header = ["index", "question", "A", "B", "answer", "category", "prediction"]
    path = tmp_path / "preds.tsv"
    with PredictionWriter(path, header) as w:
        w.write_rows([_mcq_row(1, "A", "A", "x"), _mcq_row(1_000_001, "B", "B", "x"),
                      _mcq_row(2, "B", "I think A", "y")])
    first = score_predictions("mmbench", path)
    second = score_predictions("mmbench", path)
    assert first == second and first["overall"] == 50.0
    outs = []
    for name in ("s1.json", "s2.json"):
        args = parse(["eval", "score", "--task", "mmbench", "--predictions", str(path),
                      "--out", str(tmp_path / name)])
        assert args.func(args) == 0
        outs.append((tmp_path / name).read_text())
    assert outs[0] == outs[1]
    assert json.loads(outs[0])["per_category"] == {"x": 100.0, "y": 0.0}
    assert (tmp_path / "s1.md").exists()


def test_requests_carry_prompts_and_images(vqa_tsv, tmp_path):
    seen: list[Request] = []

    def predictor(requests):
        seen.extend(requests)
        return [""] * len(requests)

    run_benchmark(predictor, vqa_tsv, "caption", tmp_path / "c", batch_size=8, limit=3, progress=False)
    assert [r.prompt for r in seen] == [CAPTION_PROMPT] * 3
    assert [len(r.images) for r in seen] == [1, 1, 1]
    assert [r.images[0].mode for r in seen] == ["RGB", "RGBA", "RGB"]  # row 1 is an RGBA PNG, decoded as stored
    # Row 2 points at row 0: the same pixels.
    assert seen[2].images[0].tobytes() == seen[0].images[0].tobytes()
