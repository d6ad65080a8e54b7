"""Benchmark tasks: the prompt each row becomes, and how a predictions table is scored.

Task names and what they compute (units are the ones papers print):

==========  ======================================  ==============================
task        metric (``monovl.eval`` function)         ``overall`` unit
==========  ======================================  ==============================
textvqa     VQA accuracy (:func:`vqa_accuracy`)        percent
vqav2       VQA accuracy (:func:`vqa_accuracy`)        percent
docvqa      ANLS (:func:`anls_score`)                  ANLS x 100
infovqa     ANLS (:func:`anls_score`)                  ANLS x 100
chartqa     relaxed accuracy                          percent
ocrbench    substring hit (:func:`ocrbench_score`)     count correct (of ``n``)
mmbench     CircularEval (:func:`circular_eval`)       percent of questions
mcq         plain MCQ (:func:`mcq_eval`)               percent
caption     CIDEr-D (:func:`cider_d`)                  CIDEr x 100
==========  ======================================  ==============================

Prompts (the user turn; the chat template and image block are the processor's):

* ``textvqa``, ``vqav2``, ``docvqa``, ``infovqa``, ``chartqa``, ``ocrbench``:
  ``{question}`` + :data:`VQA_SUFFIX` (``"\\nAnswer the question using a single
  word or phrase."``). Both toolkits use this suffix for the VQA sets; for
  ChartQA and OCRBench we follow what VLMEvalKit's InternVL wrapper and
  InternVL's own ChartQA script send (the numbers Mono-InternVL reports),
  not lmms-eval's ChartQA ``"\\nAnswer the question with a single word."``.
* ``mmbench``, ``mcq``: :func:`monovl.eval.choice.build_mcq_prompt` (VEK's
  ``Hint: ...\\nQuestion: ...\\nOptions:\\nA. ...\\nPlease select the correct
  answer from the options above. \\n``); NaN options are skipped.
* ``caption``: :data:`CAPTION_PROMPT` (``"Provide a one-sentence caption for
  the provided image."``, InternVL's COCO caption prompt); the ``question``
  column, if any, is ignored.

A prediction cell that is empty (e.g. a row whose image could not be decoded)
is scored like any other wrong answer: it stays in the denominator so scores
remain comparable with the full benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .caption import coco_caption_scores
from .choice import GroupResult, accuracy_report, build_mcq_prompt, circular_eval, mcq_eval, options_from_row
from .metrics import anls_score, mean_percent, ocrbench_score, relaxed_accuracy, vqa_accuracy
from .tsv import Row, parse_answer_list

__all__ = ["VQA_SUFFIX", "CAPTION_PROMPT", "Task", "TASKS", "get_task", "task_names"]

VQA_SUFFIX = "\nAnswer the question using a single word or phrase."
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."


def _cell(row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    if value is None:
        raise ValueError(f"row index={row.get('index')}: the {column!r} cell is empty")
    return str(value)


def _prediction(row: Mapping[str, Any]) -> str:
    value = row.get("prediction")
    return "" if value is None else str(value)


def _answers(row: Mapping[str, Any]) -> list[str]:
    try:
        return parse_answer_list(row.get("answer"))
    except ValueError as e:
        raise ValueError(f"row index={row.get('index')}: {e}") from None


# ------------------------------------------------------------------ prompts


def _vqa_prompt(row: Mapping[str, Any]) -> str:
    return _cell(row, "question") + VQA_SUFFIX


def _mcq_prompt(row: Mapping[str, Any]) -> str:
    options = options_from_row(row)
    if not options:
        raise ValueError(f"row index={row.get('index')}: no option columns A.. with a value")
    return build_mcq_prompt(_cell(row, "question"), options, row.get("hint"))


def _caption_prompt(row: Mapping[str, Any]) -> str:
    return CAPTION_PROMPT


# ------------------------------------------------------------------ scoring


def _group_column(rows: Sequence[Mapping[str, Any]], candidates: Sequence[str]) -> str | None:
    """The first candidate column that has a value in some row (the per-category breakdown)."""
    for column in candidates:
        if any(r.get(column) is not None for r in rows):
            return column
    return None


def _score_open_ended(rows: Sequence[Row], per_row: Callable[[str, list[str]], float],
                      group_candidates: Sequence[str] = ("category",)) -> dict[str, Any]:
    scores = [per_row(_prediction(r), _answers(r)) for r in rows]
    column = _group_column(rows, group_candidates)
    buckets: dict[str, list[float]] = {}
    if column is not None:
        for r, s in zip(rows, scores):
            if r.get(column) is not None:
                buckets.setdefault(str(r[column]), []).append(s)
    return {
        "overall": mean_percent(scores),
        "per_category": {k: mean_percent(v) for k, v in sorted(buckets.items())},
        "category_counts": {k: len(v) for k, v in sorted(buckets.items())},
        "category_column": column,
    }


def _score_vqa(rows: Sequence[Row]) -> dict[str, Any]:
    return _score_open_ended(rows, vqa_accuracy)


def _score_anls(rows: Sequence[Row]) -> dict[str, Any]:
    return _score_open_ended(rows, anls_score)


def _score_chartqa(rows: Sequence[Row]) -> dict[str, Any]:
    # ChartQA is reported overall and per human/augmented split; VEK stores it
    # in `category` or `split`, lmms-eval in `type`.
    return _score_open_ended(rows, relaxed_accuracy, ("category", "split", "type"))


def _score_ocrbench(rows: Sequence[Row]) -> dict[str, Any]:
    prepared = []
    for r in rows:
        prepared.append({"prediction": _prediction(r), "answer": _answers(r), "category": _cell(r, "category")})
    totals = ocrbench_score(prepared)
    groups = ("Text Recognition", "Scene Text-centric VQA", "Doc-oriented VQA",
              "Key Information Extraction", "Handwritten Mathematical Expression Recognition")
    fine = {k: v for k, v in totals.items()
            if k not in groups and k not in ("Final Score", "Total Questions", "Final Score Norm")}
    return {
        "overall": totals["Final Score"],
        "out_of": totals["Total Questions"],
        "final_score_norm": totals["Final Score Norm"],
        "per_category": {g: totals[g] for g in groups},
        "fine_categories": fine,
    }


def _percent(hits: Sequence[bool]) -> float:
    return 100.0 * sum(hits) / len(hits) if hits else math.nan


def _choice_summary(results: Sequence[GroupResult]) -> dict[str, Any]:
    by_cat: dict[str, list[bool]] = {}
    by_l2: dict[str, list[bool]] = {}
    for r in results:
        if r.category is not None:
            by_cat.setdefault(r.category, []).append(r.hit)
        if r.l2_category is not None:
            by_l2.setdefault(r.l2_category, []).append(r.hit)
    return {
        "overall": _percent([r.hit for r in results]),
        "questions": len(results),
        "per_category": {k: _percent(v) for k, v in sorted(by_cat.items())},
        "category_counts": {k: len(v) for k, v in sorted(by_cat.items())},
        "per_l2_category": {k: _percent(v) for k, v in sorted(by_l2.items())},
        "per_split": accuracy_report(results),
    }


def _check_int_index(rows: Sequence[Row]) -> None:
    for r in rows:
        try:
            int(str(r.get("index")))
        except ValueError:
            raise ValueError(f"MCQ scoring needs integer indices, got index={r.get('index')!r}") from None


def _score_mmbench(rows: Sequence[Row]) -> dict[str, Any]:
    _check_int_index(rows)
    return _choice_summary(circular_eval(rows))


def _score_mcq(rows: Sequence[Row]) -> dict[str, Any]:
    _check_int_index(rows)
    return _choice_summary(mcq_eval(rows))


def _score_caption(rows: Sequence[Row]) -> dict[str, Any]:
    candidates = {str(r["index"]): _prediction(r) for r in rows}
    references = {str(r["index"]): _answers(r) for r in rows}
    scores = coco_caption_scores(candidates, references, tokenize=True)
    # CIDEr's idf comes from the evaluated set itself, so a per-category CIDEr
    # would not be comparable with the overall one: none is reported.
    return {
        "overall": 100.0 * scores["CIDEr"],
        "per_category": {},
        "bleu": {k: 100.0 * v for k, v in scores.items() if k.startswith("Bleu")},
        "cider_raw": scores["CIDEr"],
    }


# ------------------------------------------------------------------ registry


@dataclass(frozen=True)
class Task:
    """One benchmark family: columns it needs, prompt per row, scorer for a predictions table."""

    name: str
    metric: str
    unit: str
    required_columns: tuple[str, ...]
    max_new_tokens: int  # default generation budget; answers are short except captions/OCR
    build_prompt: Callable[[Mapping[str, Any]], str]
    _score: Callable[[Sequence[Row]], dict[str, Any]]
    needs_image: bool = True

    def prompt(self, row: Mapping[str, Any]) -> str:
        return self.build_prompt(row)

    def score(self, rows: Sequence[Row]) -> dict[str, Any]:
        """Scores of predicted rows: ``task``, ``metric``, ``unit``, ``n``, ``overall``, ``per_category``, extras."""
        rows = list(rows)
        if not rows:
            raise ValueError(f"no predicted rows to score for task {self.name!r}")
        body = self._score(rows)
        return {"task": self.name, "metric": self.metric, "unit": self.unit, "n": len(rows), **body}


_OPEN = ("index", "question", "answer")
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("textvqa", "VQA accuracy", "percent", _OPEN, 32, _vqa_prompt, _score_vqa),
        Task("vqav2", "VQA accuracy", "percent", _OPEN, 32, _vqa_prompt, _score_vqa),
        Task("docvqa", "ANLS", "ANLS x100", _OPEN, 32, _vqa_prompt, _score_anls),
        Task("infovqa", "ANLS", "ANLS x100", _OPEN, 32, _vqa_prompt, _score_anls),
        Task("chartqa", "relaxed accuracy", "percent", _OPEN, 32, _vqa_prompt, _score_chartqa),
        Task("ocrbench", "OCRBench substring match", "count correct", _OPEN + ("category",), 128,
             _vqa_prompt, _score_ocrbench),
        Task("mmbench", "CircularEval accuracy", "percent", ("index", "question", "answer", "A", "B"), 16,
             _mcq_prompt, _score_mmbench),
        Task("mcq", "accuracy", "percent", ("index", "question", "answer", "A", "B"), 16,
             _mcq_prompt, _score_mcq),
        Task("caption", "CIDEr-D", "CIDEr x100", ("index", "answer"), 64, _caption_prompt, _score_caption),
    )
}


def task_names() -> list[str]:
    return list(TASKS)


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}") from None
