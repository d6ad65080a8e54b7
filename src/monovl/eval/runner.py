"""Run a benchmark TSV through a model, resumably, and score the predictions.

Files written to the output directory:

* ``predictions.tsv``: the input columns minus ``image``, plus ``prediction``.
  Appended and fsync-ed once per batch, so an interrupted run resumes where it
  stopped: rows whose ``index`` is already there are skipped, and a torn last
  record is dropped (:func:`monovl.eval.tsv.read_predictions`).
* ``errors.jsonl``: one ``{"index", "stage", "error"}`` line per row that failed
  on its own: its image could not be decoded (stage ``image``), its prompt could
  not be built from the row (``prompt``), or the predictor refused it with a
  ``ValueError`` (``predict``; e.g. a question holding a reserved token, a
  prompt too long for the model). Decision: such a row does **not** stop the
  run; it gets an empty prediction (scored 0, so the denominator stays the
  benchmark's), is written to ``predictions.tsv`` like any row (so a resume
  does not retry it) and is listed in the summary (``errors``, and
  ``image_errors`` for the image stage). Any other exception (a model fault,
  out of memory) is not one row's fault: it stops the run, and a resume retries.
* ``run.json``: which data file and task the directory belongs to, so a
  resume with another task or data file is refused instead of mixing rows.
* ``scores.json`` and ``scores.md``: :meth:`Task.score` plus run metadata.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from .tasks import Task, get_task
from .tsv import (
    ImageDecodeError,
    ImageResolver,
    PredictionWriter,
    Row,
    prediction_header,
    read_predictions,
    read_tsv,
    require_columns,
)

__all__ = [
    "Request",
    "Predictor",
    "ModelPredictor",
    "RunResult",
    "run_benchmark",
    "score_predictions",
    "write_scores",
    "scores_markdown",
]

PREDICTIONS_FILE = "predictions.tsv"
ERRORS_FILE = "errors.jsonl"
RUN_FILE = "run.json"


@dataclass
class Request:
    """One generation request: the user text and its images (possibly none).

    Images are decoded but keep their stored mode (RGBA, 16-bit, EXIF
    orientation...); ``monovl.processing.image.load_image`` makes them RGB.
    """

    prompt: str
    images: list[Image.Image]


class Predictor(Protocol):
    def __call__(self, requests: Sequence[Request]) -> list[str]: ...


class ModelPredictor:
    """Greedy batched generation with the Engine; stops at the template's stop tokens."""

    def __init__(self, model: Any, processor: Any, max_new_tokens: int, max_tiles: int | None = None):
        from ..engine import Engine, Prompt, SamplingParams
        from ..processing.image import check_tile_budget

        if max_tiles is not None:  # a bad budget is the run's fault, not every row's: refuse it now
            check_tile_budget(max_tiles, "max_tiles")
        self._prompt_cls = Prompt
        self.engine = Engine(model)
        self.processor = processor
        self.sampling = SamplingParams()  # greedy
        self.max_new_tokens = max_new_tokens
        self.max_tiles = max_tiles

    def __call__(self, requests: Sequence[Request]) -> list[str]:
        prompts = []
        for req in requests:
            inputs = self.processor(req.prompt, images=req.images or None, max_tiles=self.max_tiles)
            prompts.append(self._prompt_cls(inputs["input_ids"][0], inputs["pixel_values"]))
        stops = self.processor.stop_token_ids
        outputs = self.engine.generate_batch(prompts, image_token_id=self.processor.image_token_id,
                                             max_new_tokens=self.max_new_tokens, sampling=self.sampling,
                                             stop_token_ids=stops)
        stop_set = set(stops)
        texts = []
        for ids in outputs:
            text = self.processor.decode([t for t in ids if t not in stop_set], skip_special_tokens=True)
            texts.append(self.processor.extract_response(text))
        return texts


@dataclass
class RunResult:
    scores: dict[str, Any]
    predictions_path: Path
    scores_path: Path
    markdown_path: Path


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def scores_markdown(scores: dict[str, Any]) -> str:
    """A small Markdown report: overall, per category (with counts when known), errors."""
    lines = [f"# {scores['task']}: {scores['metric']}", ""]
    overall = _fmt(scores["overall"])
    if "out_of" in scores:
        overall += f" / {scores['out_of']}"
    lines += ["| rows | overall (" + scores["unit"] + ") |", "|---|---|", f"| {scores['n']} | {overall} |", ""]
    per_cat = scores.get("per_category") or {}
    if per_cat:
        counts = scores.get("category_counts") or {}
        lines += ["| category | score | n |", "|---|---|---|"]
        for name, value in per_cat.items():
            lines.append(f"| {name} | {_fmt(value)} | {counts.get(name, '')} |")
        lines.append("")
    errors = scores.get("errors") or []
    if errors:
        lines.append(f"{len(errors)} row(s) failed and were scored with an empty prediction (see {ERRORS_FILE}): "
                     + ", ".join(f"{e['index']} ({e.get('stage')})" for e in errors[:20])
                     + (" ..." if len(errors) > 20 else ""))
        lines.append("")
    return "\n".join(lines)


def write_scores(scores: dict[str, Any], json_path: str | os.PathLike,
                 markdown_path: str | os.PathLike | None = None) -> None:
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(_json_safe(scores), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if markdown_path is not None:
        Path(markdown_path).write_text(scores_markdown(scores), encoding="utf-8")


def score_predictions(task: str | Task, predictions: str | os.PathLike) -> dict[str, Any]:
    """Score an existing predictions TSV (no model). Does not modify the file."""
    task = get_task(task) if isinstance(task, str) else task
    path = Path(predictions)
    if not path.is_file():
        raise FileNotFoundError(f"no such predictions file: {path}")
    rows = read_predictions(path, repair=False)
    if rows and "prediction" not in rows[0]:
        raise ValueError(f"{path} has no 'prediction' column")
    missing = [c for c in task.required_columns if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing} required by task {task.name!r}")
    scores = task.score(rows)
    scores["predictions"] = str(path)
    return scores


def _read_errors(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    errors = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            errors.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line from an interrupted run
    return errors


def _predict_rows(predictor: Predictor, requests: Sequence[Request]) -> list[str | ValueError]:
    """The predictor's answers; a ``ValueError`` is confined to its row by retrying the rows one by one."""
    try:
        answers = predictor(requests)
    except ValueError as e:
        if len(requests) == 1:
            return [e]
        return [out for req in requests for out in _predict_rows(predictor, [req])]
    if len(answers) != len(requests):
        raise RuntimeError(f"predictor returned {len(answers)} answers for {len(requests)} requests")
    return list(answers)


def _check_run_identity(out_dir: Path, task: str, data: Path) -> None:
    identity = {"task": task, "data": str(data.resolve())}
    path = out_dir / RUN_FILE
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("task") != task or old.get("data") != identity["data"]:
            raise ValueError(
                f"{out_dir} holds a run of task {old.get('task')!r} on {old.get('data')!r}; "
                f"use another --out for task {task!r} on {identity['data']!r}"
            )
    else:
        path.write_text(json.dumps(identity, indent=2) + "\n", encoding="utf-8")


def run_benchmark(
    predictor: Predictor,
    data: str | os.PathLike,
    task: str | Task,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = True,
    after_batch: Callable[[int], None] | None = None,
) -> RunResult:
    """Predict every row of ``data`` not yet in ``out_dir``'s predictions, then score all of them.

    ``limit`` keeps the first N rows of the file. ``after_batch(k)`` is called
    after batch ``k`` (0-based) is on disk; tests use it to interrupt a run.
    """
    task = get_task(task) if isinstance(task, str) else task
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    data = Path(data)
    table = read_tsv(data)
    require_columns(table, task.required_columns, f"task {task.name!r}")
    if task.needs_image:
        require_columns(table, ("image",), f"task {task.name!r} (base64 images)")
    seen: set[str] = set()
    for row in table.rows:
        key = str(row["index"])
        if key in seen:
            raise ValueError(f"{data}: index {key!r} occurs twice; indices must be unique")
        seen.add(key)
    rows = table.rows[:limit] if limit is not None else table.rows

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_run_identity(out, task.name, data)
    pred_path, err_path = out / PREDICTIONS_FILE, out / ERRORS_FILE
    header = prediction_header(table.columns)
    done: set[str] = set()
    if pred_path.exists() and pred_path.stat().st_size > 0:
        done = {str(r["index"]) for r in read_predictions(pred_path, header, repair=True)}
    todo = [r for r in rows if str(r["index"]) not in done]

    resolver = ImageResolver(table.rows)
    from tqdm import tqdm  # imported here: scoring needs no progress bar

    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), unit="row", desc=task.name,
               disable=not progress, dynamic_ncols=True)
    try:
        with PredictionWriter(pred_path, header) as writer, open(err_path, "a", encoding="utf-8") as err_file:

            def failed(row: Row, stage: str, error: Exception) -> None:
                record = {"index": str(row["index"]), "stage": stage, "error": str(error)}
                err_file.write(json.dumps(record, ensure_ascii=False) + "\n")

            for k, start in enumerate(range(0, len(todo), batch_size)):
                batch = todo[start : start + batch_size]
                predictions: list[str] = [""] * len(batch)
                requests: list[Request] = []
                slots: list[int] = []
                for i, row in enumerate(batch):
                    try:
                        images = resolver.images(row) if task.needs_image else []
                    except ImageDecodeError as e:
                        failed(row, "image", e)
                        continue
                    try:
                        prompt = task.prompt(row)
                    except ValueError as e:
                        failed(row, "prompt", e)
                        continue
                    requests.append(Request(prompt, images))
                    slots.append(i)
                for i, answer in zip(slots, _predict_rows(predictor, requests) if requests else []):
                    if isinstance(answer, ValueError):
                        failed(batch[i], "predict", answer)
                    else:
                        predictions[i] = answer
                err_file.flush()
                writer.write_rows({**{c: row.get(c) for c in header[:-1]}, "prediction": p}
                                  for row, p in zip(batch, predictions))
                bar.update(len(batch))
                if after_batch is not None:
                    after_batch(k)
    finally:
        bar.close()

    wanted = {str(r["index"]) for r in rows}
    predicted = [r for r in read_predictions(pred_path, header) if str(r["index"]) in wanted]
    scores = task.score(predicted)
    errors = [e for e in _read_errors(err_path) if e.get("index") in wanted]
    # De-duplicate: a batch interrupted after logging its errors is redone on resume.
    unique = list({e["index"]: e for e in errors}.values())
    image_errors = [e for e in unique if e.get("stage") == "image"]
    scores.update({
        "data": str(data),
        "rows_in_file": len(table.rows),
        "complete": len(predicted) == len(rows),
        "errors": unique,
        "n_errors": len(unique),
        "image_errors": image_errors,
        "n_image_errors": len(image_errors),
        "predictions": str(pred_path),
    })
    json_path, md_path = out / "scores.json", out / "scores.md"
    write_scores(scores, json_path, md_path)
    return RunResult(scores, pred_path, json_path, md_path)
