"""Golden tests for monovl.eval.choice (spec: /work/shared/docs/eval-metrics.md, A5)."""

from __future__ import annotations

import pytest

from monovl.eval.choice import (
    accuracy_report,
    build_mcq_prompt,
    can_infer,
    can_infer_option,
    can_infer_text,
    circular_eval,
    circular_groups,
    extract_choice,
    mcq_eval,
    options_from_row,
)

ABCD = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}

# ---------------------------------------------------------------------------
# Prompt
# ---------------------------------------------------------------------------


def test_prompt_with_hint_and_nan_option() -> None:
    row = {"question": "What is it?", "hint": "Look closely.", "A": "cat", "B": "dog",
           "C": float("nan"), "D": None}
    prompt = build_mcq_prompt(row["question"], options_from_row(row), row["hint"])
    assert prompt == (
        "Hint: Look closely.\n"
        "Question: What is it?\n"
        "Options:\n"
        "A. cat\n"
        "B. dog\n"
        # VEK's instruction ends in a space before the newline
        "Please select the correct answer from the options above. \n"
    )


def test_prompt_without_hint_or_options() -> None:
    assert build_mcq_prompt("Q?", {"A": "x"}, float("nan")) == (
        "Question: Q?\nOptions:\nA. x\nPlease select the correct answer from the options above. \n"
    )
    # no options at all: no Options block and no instruction
    assert build_mcq_prompt("Q?", {}) == "Question: Q?\n"


def test_options_from_row_order_and_missing() -> None:
    row = {"B": 2, "A": 1.5, "C": float("nan"), "E": "e", "index": 3}
    # letter order, numbers stringified, NaN dropped, gaps allowed
    assert options_from_row(row) == {"A": "1.5", "B": "2", "E": "e"}


# ---------------------------------------------------------------------------
# can_infer
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("B", "B"),
        ("(C)", "C"),  # brackets become spaces
        ("The answer is B.", "B"),  # 4 tokens, B at index 3 > 4 - 5
        ("B is my answer", "B"),  # index 0 > 4 - 5 = -1
        ("**D**", "D"),  # '*' becomes a space
        # refusal phrase -> Z
        ("Cannot determine the answer from the image.", "Z"),
        ("Sorry, I can't help with images of people yet.", "Z"),
        # no option letter but a standalone Z token -> Z
        ("Z", "Z"),
    ],
)
def test_can_infer_letters(prediction: str, expected: str) -> None:
    assert can_infer(prediction, ABCD) == expected


def test_last_four_tokens_rule() -> None:
    # B is the only letter but it is token 0 of 8 (needs index > 8 - 5 = 3):
    # no letter; option texts total 14 chars, limit 28 < 38 chars -> None.
    pred = "B seems right to me after some thought"
    assert can_infer_option(pred, ABCD) is None
    assert can_infer(pred, ABCD) is None
    assert extract_choice(pred, ABCD) == "Z"  # unmatched -> Z -> counts as wrong
    # Same letter at token 4 of 8 (4 > 3): accepted
    assert can_infer("after some long thought B seems right then", ABCD) == "B"


def test_two_letters_are_ambiguous() -> None:
    # A and B both standalone -> count 2 -> no letter; "a or b" not an option text
    assert can_infer_option("A or B", ABCD) is None
    # "A" as an article counts as a letter too (VEK behaviour): A and C present
    assert can_infer_option("A bird, so C", ABCD) is None
    # lowercase letters are not option letters
    assert can_infer_option("i think c", ABCD) is None


def test_answer_is_regex() -> None:
    # Two letters (A, B) among tokens, so step 4 fails; the regex finds c.
    pred = "A and B are wrong; the correct answer is **c** because birds fly high"
    assert can_infer_option(pred, ABCD) == "C"
    # Regex only accepts letters that are options of this question
    assert can_infer_option("A or B? The answer is D", {"A": "x", "B": "y", "C": "z"}) is None


def test_option_text_fallback() -> None:
    # no letter tokens ('a' is lower-case); "it is a dog" (11 chars) <= 2 * 14
    assert can_infer_text("It is a dog", ABCD) == "B"
    assert can_infer("It is a dog", ABCD) == "B"
    # two option texts match -> ambiguous
    assert can_infer_text("cat and dog", ABCD) is None
    # too long: 31 chars > 2 * 14 (even though "dog" is in it)
    assert can_infer_text("it is a dog and nothing else!!!", ABCD) is None
    # substring of a word still counts ("catalog" contains "cat")
    assert can_infer_text("catalog", ABCD) == "A"


def test_api_failure_marker_skips_letters_but_not_text() -> None:
    choices = {"A": "Failed to obtain answer via API", "B": "x"}
    # Letter step returns nothing even though "B" is a token ...
    assert can_infer_option("Failed to obtain answer via API B", choices) is None
    # ... and the text fallback (VEK can_infer) still runs: text of A matches
    assert can_infer("Failed to obtain answer via API B", choices) == "A"


# ---------------------------------------------------------------------------
# CircularEval
# ---------------------------------------------------------------------------


def _rot(index: int, answer: str, prediction: str, **meta: str) -> dict[str, object]:
    row: dict[str, object] = {"index": index, "answer": answer, "prediction": prediction,
                              "A": "red", "B": "green", "C": "blue"}
    row.update(meta)
    return row


META_CP = {"category": "color", "l2-category": "CP", "split": "dev"}
META_LR = {"category": "logic", "l2-category": "LR", "split": "dev"}


def _rows() -> list[dict[str, object]]:
    return [
        # group 7: GT moves with the rotation, every rotation right -> 1
        _rot(7, "A", "A", **META_CP),
        _rot(1_000_007, "C", "C. blue", **META_CP),
        _rot(2_000_007, "B", "The answer is B", **META_CP),
        # group 8: two rotations right, one unmatched -> 0 (all-or-nothing)
        _rot(8, "B", "B", **META_LR),
        _rot(1_000_008, "A", "A", **META_LR),
        _rot(2_000_008, "C", "I do not know", **META_LR),
        # group 9: first rotation wrong -> 0
        _rot(9, "C", "A", **META_CP),
        _rot(1_000_009, "B", "B", **META_CP),
        _rot(2_000_009, "A", "A", **META_CP),
    ]


def test_circular_grouping() -> None:
    groups = circular_groups(reversed(_rows()))
    assert list(groups) == [7, 8, 9]
    assert [r["index"] for r in groups[7]] == [7, 1_000_007, 2_000_007]  # sorted by index


def test_circular_all_or_nothing() -> None:
    results = circular_eval(_rows())
    assert [(r.index, r.hit) for r in results] == [(7, True), (8, False), (9, False)]
    report = accuracy_report(results)
    # 1 of 3 groups; CP: groups 7 (hit) and 9 (miss) -> 50; LR: group 8 -> 0
    assert report["dev"]["Overall"] == pytest.approx(100 / 3)
    assert report["dev"]["l2-category"] == {"CP": 50.0, "LR": 0.0}
    assert report["dev"]["category"] == {"color": 50.0, "logic": 0.0}


def test_same_rows_non_circular() -> None:
    # Vanilla scoring of the same 9 rows: 7 of 9 rows are right
    # (the "I do not know" and group 9's first rotation are wrong).
    results = mcq_eval(_rows())
    assert sum(r.hit for r in results) == 7
    report = accuracy_report(results)
    assert report["dev"]["Overall"] == pytest.approx(700 / 9)
    # LR rows: B, A right, unknown wrong -> 2/3
    assert report["dev"]["l2-category"]["LR"] == pytest.approx(200 / 3)


def test_report_per_split_and_missing_meta() -> None:
    rows = [
        {"index": 1, "answer": "A", "prediction": "A", "A": "x", "B": "y", "split": "dev"},
        {"index": 2, "answer": "B", "prediction": "A", "A": "x", "B": "y", "split": "test"},
        {"index": 3, "answer": "B", "prediction": float("nan"), "A": "x", "B": "y"},
    ]
    report = accuracy_report(mcq_eval(rows))
    assert list(report) == ["dev", "none", "test"]
    assert report["dev"] == {"Overall": 100.0, "category": {}, "l2-category": {}}
    assert report["test"]["Overall"] == 0.0
    assert report["none"]["Overall"] == 0.0  # missing prediction counts as wrong
    assert accuracy_report([]) == {}
