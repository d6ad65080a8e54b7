"""Multiple-choice benchmarks (MMBench, CCBench, AI2D, ScienceQA, ...): prompt,
answer extraction and accuracy, as VLMEvalKit (VEK) defines them.

Spec: ``/work/shared/docs/eval-metrics.md`` section A5.

Rows are plain mappings with the VEK TSV columns: ``index``, ``question``,
``hint`` (optional), option columns ``A``..``Z`` (missing or NaN when absent),
``answer`` (the GT letter), ``prediction`` (model output), and optionally
``category``, ``l2-category`` and ``split``.

No LLM judge is used: VEK's ``exact_matching`` policy. A prediction from which
no letter can be inferred is recorded as ``"Z"`` and therefore counts as wrong.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "CIRCULAR_OFFSET",
    "NO_ANSWER",
    "is_missing",
    "options_from_row",
    "build_mcq_prompt",
    "can_infer_option",
    "can_infer_text",
    "can_infer",
    "extract_choice",
    "circular_groups",
    "GroupResult",
    "circular_eval",
    "mcq_eval",
    "accuracy_report",
]

# Rotated copies of a question have ``index = k * 1_000_000 + original``.
CIRCULAR_OFFSET = 1_000_000
# Letter recorded when nothing can be inferred (VEK's exact_matching policy).
NO_ANSWER = "Z"

_API_FAILURE = "Failed to obtain answer via API"
_REFUSALS: tuple[str, ...] = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_SPLIT_CHARS = ".()[],:;!*#{}"
# Only A-D, even when a question has more options (as in VEK); the letter
# must still be one of the question's options.
_ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
# Separators of the last extraction pass: CJK and full-width punctuation, and
# CJK ideographs, kana and Hangul, since those scripts put no space before a
# letter ("选项B", "答案：B"). Full-width letters are folded by NFKC first.
_CJK_SEPARATORS = re.compile(
    "[\u3000-\u303f\uff00-\uffef\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\u2018-\u201f]"
)


def is_missing(value: object) -> bool:
    """True for ``None`` and float NaN (how pandas stores an empty TSV cell)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def options_from_row(row: Mapping[str, object]) -> dict[str, str]:
    """Option letter -> text for the columns ``A``..``Z`` present and non-missing, in order.

    Mirrors VEK: iterate ``string.ascii_uppercase`` and keep a letter if the
    row has that column and the cell is not NaN.
    """
    return {
        letter: str(row[letter])
        for letter in string.ascii_uppercase
        if letter in row and not is_missing(row[letter])
    }


def build_mcq_prompt(
    question: str, options: Mapping[str, object], hint: object = None
) -> str:
    """VEK ``ImageMCQDataset.build_prompt`` text (image placement is the caller's job).

    Exactly::

        Hint: {hint}\\n                      (only if the hint is not None/NaN)
        Question: {question}\\n
        Options:\\n                          (only if there is at least one option)
        A. {text}\\n  ... one line per option, missing/NaN options skipped
        Please select the correct answer from the options above. \\n

    Note the space before the final newline: it is in VEK's string.
    """
    kept = {k: v for k, v in options.items() if not is_missing(v)}
    prompt = ""
    if not is_missing(hint):
        prompt += f"Hint: {hint}\n"
    prompt += f"Question: {question}\n"
    if kept:
        prompt += "Options:\n"
        for letter, text in kept.items():
            prompt += f"{letter}. {text}\n"
        prompt += "Please select the correct answer from the options above. \n"
    return prompt


def _tokens(answer: str) -> list[str]:
    for ch in _SPLIT_CHARS:
        answer = answer.replace(ch, " ")
    return answer.split()


def _letter_from_tokens(tokens: list[str], choices: Mapping[str, object]) -> str | None:
    """Steps 4-5 of :func:`can_infer_option` on a token list."""
    present = [c for c in choices if c in tokens]
    if len(present) == 1:
        letter = present[0]
        if tokens.index(letter) > len(tokens) - 5:
            return letter
    elif not present and "Z" in tokens:
        return "Z"
    return None


def can_infer_option(answer: str, choices: Mapping[str, object]) -> str | None:
    """Letter-based extraction, VEK ``can_infer_option`` plus the "answer is" regex.

    Steps (spec A5, 1-6):

    1. An API failure marker -> ``None`` (VEK returns ``False`` here; the
       text fallback in :func:`can_infer` still runs afterwards, as in VEK).
    2. A known refusal phrase -> ``"Z"``.
    3. Replace each of ``.()[],:;!*#{}`` by a space and split on whitespace.
    4. If exactly one option letter occurs as a standalone token and its
       *first* occurrence is among the last 4 tokens (``index > len - 5``),
       return it. (``"A dog is running, I think B"`` has two letters: no.)
    5. Else, if no letter occurs and a token ``"Z"`` does, return ``"Z"``.
    6. Else search ``(?i)(?:correct\\s+)?answer\\s+is\\s+\\**([ABCD])\\**`` and
       return the upper-cased letter if it is an option.
    7. Else, for answers in Chinese, Japanese or Korean (not in VEK): fold
       full-width forms with NFKC, treat CJK punctuation and CJK characters as
       separators too, and redo steps 3-5 (``"选项B"`` and ``"答案：B"`` give ``"B"``).

    Returns ``None`` when nothing matched. VEK's ``VERBOSE``-only "A might be a
    quantifier" check is not reproduced (it only applies with that env var).
    """
    answer = str(answer)
    if _API_FAILURE in answer:
        return None
    if any(phrase in answer for phrase in _REFUSALS):
        return "Z"
    letter = _letter_from_tokens(_tokens(answer), choices)
    if letter:
        return letter
    match = _ANSWER_IS.search(answer)
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    cjk_spaced = _CJK_SEPARATORS.sub(" ", unicodedata.normalize("NFKC", answer))
    return _letter_from_tokens(_tokens(cjk_spaced), choices)


def can_infer_text(answer: str, choices: Mapping[str, object]) -> str | None:
    """Option-text fallback, VEK ``can_infer_text`` (spec A5 step 7).

    If the prediction is at most twice as long as all option texts together,
    return the single option whose lower-cased text is a substring of the
    lower-cased prediction; ``None`` if zero or several options match.
    """
    lowered = str(answer).lower()
    texts = {k: str(v) for k, v in choices.items()}
    if len(lowered) > 2 * sum(len(t) for t in texts.values()):
        return None
    hits = [k for k, t in texts.items() if t.lower() in lowered]
    return hits[0] if len(hits) == 1 else None


def can_infer(answer: str, choices: Mapping[str, object]) -> str | None:
    """VEK ``can_infer``: :func:`can_infer_option`, else :func:`can_infer_text`.

    Returns a letter (possibly ``"Z"`` for refusals) or ``None``.
    """
    letter = can_infer_option(answer, choices)
    return letter if letter else can_infer_text(answer, choices)


def extract_choice(answer: str, choices: Mapping[str, object]) -> str:
    """The letter a prediction is scored as: :func:`can_infer`, or ``"Z"`` if nothing matched.

    This is VEK's ``exact_matching`` policy (no LLM judge): unmatched
    predictions become ``"Z"``, which is never a GT letter, so they are wrong.
    """
    letter = can_infer(answer, choices)
    return letter if letter else NO_ANSWER


def _row_hit(row: Mapping[str, object]) -> bool:
    choices = options_from_row(row)
    prediction = row.get("prediction")
    if is_missing(prediction):
        return False
    return extract_choice(str(prediction), choices) == str(row["answer"]).strip()


@dataclass(frozen=True)
class GroupResult:
    """Outcome of one question (one circular group, or one row for plain MCQ)."""

    index: int
    hit: bool
    category: str | None
    l2_category: str | None
    split: str | None


def _meta(row: Mapping[str, object], key: str) -> str | None:
    value = row.get(key)
    return None if is_missing(value) else str(value)


def circular_groups(
    rows: Iterable[Mapping[str, object]],
) -> dict[int, list[Mapping[str, object]]]:
    """Group rows by ``int(index) % 1_000_000``; each group sorted by index (k = 0 first)."""
    groups: dict[int, list[Mapping[str, object]]] = {}
    for row in rows:
        groups.setdefault(int(row["index"]) % CIRCULAR_OFFSET, []).append(row)  # type: ignore[call-overload]
    for members in groups.values():
        members.sort(key=lambda r: int(r["index"]))  # type: ignore[call-overload]
    return dict(sorted(groups.items()))


def circular_eval(rows: Iterable[Mapping[str, object]]) -> list[GroupResult]:
    """MMBench CircularEval: a group scores 1 only if *every* rotation is right.

    Each row is judged against its own ``answer`` (the GT letter moves with
    the rotation). VEK's prefetch shortcut (any wrongly extracted rotation
    ends the group at 0) gives the same result here because, without an LLM
    judge, an unmatched rotation is wrong as well. The group's metadata
    (category, l2-category, split) comes from its lowest-index row, i.e. the
    original question. Groups are scored with whatever rotations are
    present; a group of one row is plain (vanilla) evaluation.
    """
    results = []
    for g_index, members in circular_groups(rows).items():
        head = members[0]
        results.append(
            GroupResult(
                index=g_index,
                hit=all(_row_hit(r) for r in members),
                category=_meta(head, "category"),
                l2_category=_meta(head, "l2-category"),
                split=_meta(head, "split"),
            )
        )
    return results


def mcq_eval(rows: Iterable[Mapping[str, object]]) -> list[GroupResult]:
    """Non-circular MCQ (AI2D, ScienceQA, MMStar ...): each row is its own question.

    A row is right iff :func:`extract_choice` equals its ``answer`` letter.
    """
    return [
        GroupResult(
            index=int(row["index"]),  # type: ignore[call-overload]
            hit=_row_hit(row),
            category=_meta(row, "category"),
            l2_category=_meta(row, "l2-category"),
            split=_meta(row, "split"),
        )
        for row in rows
    ]


def _percent(hits: Sequence[bool]) -> float:
    return 100.0 * sum(hits) / len(hits) if hits else math.nan


def accuracy_report(results: Iterable[GroupResult]) -> dict[str, dict[str, object]]:
    """Accuracy (percent) per split: overall, per ``category`` and per ``l2-category``.

    Shape (like VEK ``report_acc``, which puts the same numbers in one table
    with fractions instead of percentages)::

        {split: {"Overall": float, "category": {name: float},
                 "l2-category": {name: float}}}

    Rows without a split are reported under ``"none"``; results without a
    category (or l2-category) are left out of that breakdown but still count
    in ``Overall``. Category names are sorted.
    """
    by_split: dict[str, list[GroupResult]] = {}
    for r in results:
        by_split.setdefault(r.split if r.split is not None else "none", []).append(r)
    report: dict[str, dict[str, object]] = {}
    for split in sorted(by_split):
        members = by_split[split]
        entry: dict[str, object] = {"Overall": _percent([r.hit for r in members])}
        for key, attr in (("category", "category"), ("l2-category", "l2_category")):
            buckets: dict[str, list[bool]] = {}
            for r in members:
                name = getattr(r, attr)
                if name is not None:
                    buckets.setdefault(name, []).append(r.hit)
            entry[key] = {name: _percent(buckets[name]) for name in sorted(buckets)}
        report[split] = entry
    return report
