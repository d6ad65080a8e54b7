"""Golden tests for monovl.eval.metrics (spec: /work/shared/docs/eval-metrics.md, A1-A4).

Every expected number is worked out by hand in the comment next to it.
"""

from __future__ import annotations

import random
import time

import pytest

from monovl.eval.metrics import (
    OCRBENCH_HME_CATEGORY,
    anls_score,
    exact_match,
    grouped_percent,
    levenshtein,
    mean_percent,
    normalize_vqa_answer,
    ocrbench_hit,
    ocrbench_score,
    relaxed_accuracy,
    relaxed_correctness,
    vqa_accuracy,
)

# ---------------------------------------------------------------------------
# A1. VQA normalisation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1,000", "1000"),  # digit-comma-digit: ',' deleted, not spaced
        ("t-shirt", "t shirt"),  # '-' not next to a space: replaced by a space
        ("yes, it is", "yes it is"),  # ", " present: ',' deleted
        ("t-shirt - red", "tshirt red"),  # " -" in original text: every '-' deleted
        ("1,000 t-shirts", "1000 tshirts"),  # digit-comma-digit deletes all 21 chars
        # The test is on the *original* text: '(' becomes a space first, which
        # creates " -" in the edited string, but the original has no " -", so
        # '-' is still replaced by a space (not deleted): z-w -> "z w".
        ("x(-y z-w", "x y z w"),
        ("(left)", "left"),  # '(' / ')' replaced by spaces, then re-joined
        ("3.", "3"),  # official period regex: '.' not followed by a digit goes
        ("3.5", "3.5"),  # '.' followed by a digit stays
        ("hello.", "hello"),
        ("U.S.A.", "usa"),
        ("12:30", "12:30"),  # ':' is not in the list
        ("50%", "50%"),  # '%' is not in the list
        ("it's", "it's"),  # apostrophe kept
        ("Two dogs", "2 dogs"),  # number words, lower-cased
        ("none", "0"),
        ("zero", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),  # only none/zero..ten are mapped
        ("The Dog", "dog"),  # article dropped
        ("a cat and an owl", "cat and owl"),
        ("dont", "don't"),  # contraction table
        ("whats up", "what's up"),
        ("youre", "you're"),
        ("oclock", "o'clock"),
        ("Im", "im"),  # capitalised key "Im" never fires after lower-casing
        ("somebody'd", "somebodyd"),  # the reversed official entry
        ("  line1\nline2\tx  ", "line1 line2 x"),  # \n, \t -> space, strip, collapse
    ],
)
def test_normalize_vqa_answer_official(raw: str, expected: str) -> None:
    assert normalize_vqa_answer(raw) == expected


def test_period_rule_vlmevalkit_alternative() -> None:
    # Corrected regex (?<!\d)\.(?!\d): a period after a digit is kept.
    assert normalize_vqa_answer("3.", period_rule="vlmevalkit") == "3."
    assert normalize_vqa_answer("3.5", period_rule="vlmevalkit") == "3.5"
    assert normalize_vqa_answer("hello.", period_rule="vlmevalkit") == "hello"
    with pytest.raises(ValueError):
        normalize_vqa_answer("x", period_rule="bogus")  # type: ignore[arg-type]


def test_period_strip_is_capped_at_32() -> None:
    # Official code passes re.UNICODE (== 32) as `count`: only 32 periods go.
    assert normalize_vqa_answer("a" + "." * 40) == "a" + "." * 8


# ---------------------------------------------------------------------------
# A1. VQA accuracy
# ---------------------------------------------------------------------------


def _answers(k: int, n: int = 10, hit: str = "cat", miss: str = "dog") -> list[str]:
    return [hit] * k + [miss] * (n - k)


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        # k matches out of 10: (k*min(1,(k-1)/3) + (10-k)*min(1,k/3)) / 10
        (0, 0.0),
        (1, 0.3),  # (1*0 + 9*1/3)/10 = 3/10
        (2, 0.6),  # (2*1/3 + 8*2/3)/10 = 6/10
        (3, 0.9),  # (3*2/3 + 7*1)/10 = 9/10
        (4, 1.0),  # everyone sees >= 3 others
        (10, 1.0),
    ],
)
def test_vqa_accuracy_leave_one_out(k: int, expected: float) -> None:
    assert vqa_accuracy("cat", _answers(k)) == expected


def test_vqa_accuracy_uses_normalisation_on_both_sides() -> None:
    # Prediction "Two." -> "2"; GT "2" x3 and "two" x1 -> all "2": 4 matches -> 1.0
    assert vqa_accuracy("Two.", ["2", "2", "2", "two"] + ["3"] * 6) == 1.0
    # "1,000" vs "1000": 1 match out of 10 -> 0.3
    assert vqa_accuracy("1,000", ["1000"] + ["500"] * 9) == 0.3
    # Period rule decides "3." vs "3": official -> match (2 of 10 -> 0.6)
    assert vqa_accuracy("3.", ["3", "3"] + ["4"] * 8) == 0.6
    assert vqa_accuracy("3.", ["3", "3"] + ["4"] * 8, period_rule="vlmevalkit") == 0.0


def test_vqa_accuracy_fewer_than_ten_answers() -> None:
    # n = 3, all match: each answer sees 2 others -> 2/3.
    assert vqa_accuracy("a", ["a", "a", "a"]) == pytest.approx(2 / 3, abs=1e-15)
    # n = 1: the leave-one-out set is empty -> always 0 (documented).
    assert vqa_accuracy("cat", ["cat"]) == 0.0
    # n = 5, 4 match: matching ones see 3 others (1), the miss sees 4 (1) -> 1.0
    assert vqa_accuracy("cat", _answers(4, n=5)) == 1.0
    with pytest.raises(ValueError):
        vqa_accuracy("cat", [])


def test_vqa_accuracy_official_gt_quirk() -> None:
    # All GT identical and not in normal form: official leaves them raw, the
    # prediction "the dog" -> "dog" never equals "the dog".
    assert vqa_accuracy("the dog", ["the dog"] * 10, official_gt_quirk=True) == 0.0
    assert vqa_accuracy("the dog", ["the dog"] * 10) == 1.0
    # GT disagree: official applies only the punctuation step to GT, so
    # "t-shirt" -> "t shirt" matches (x2 -> 0.6), but "Two" is not mapped to
    # "2" on the GT side (0 matches for prediction "2").
    gts = ["t-shirt", "t-shirt"] + ["shirt"] * 8
    assert vqa_accuracy("t-shirt", gts, official_gt_quirk=True) == 0.6
    assert vqa_accuracy("2", ["Two"] * 5 + ["3"] * 5, official_gt_quirk=True) == 0.0
    assert vqa_accuracy("2", ["Two"] * 5 + ["3"] * 5) == 1.0


# ---------------------------------------------------------------------------
# A2. Levenshtein / ANLS
# ---------------------------------------------------------------------------


def _dp_levenshtein(a: str, b: str) -> int:
    # Independent textbook O(len(a) * len(b)) dynamic programme.
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_levenshtein_known_values() -> None:
    assert levenshtein("kitten", "sitting") == 3  # k->s, e->i, +g
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "") == 3
    assert levenshtein("", "") == 0
    assert levenshtein("flaw", "lawn") == 2  # -f, +n
    assert levenshtein("abc", "abc") == 0


def test_levenshtein_matches_dp_on_random_strings() -> None:
    rng = random.Random(0)
    alphabet = "abcdé 1"
    for _ in range(600):
        # lengths up to 70 cross the 64-bit boundary of the bit vectors
        a = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 70)))
        b = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 70)))
        assert levenshtein(a, b) == _dp_levenshtein(a, b), (a, b)


def test_levenshtein_is_fast() -> None:
    rng = random.Random(1)
    pairs = [
        (
            "".join(rng.choice("abcdefgh ") for _ in range(rng.randint(5, 30))),
            "".join(rng.choice("abcdefgh ") for _ in range(rng.randint(5, 30))),
        )
        for _ in range(10_000)
    ]
    start = time.perf_counter()
    for a, b in pairs:
        levenshtein(a, b)
    assert time.perf_counter() - start < 2.0  # ~0.3 s here; generous for slow CI


def test_anls_normalises_case_and_whitespace() -> None:
    # Normalised strings are equal -> NL = 0 -> 1.0
    assert anls_score("  Hello   World ", ["hello world"]) == 1.0
    assert anls_score("ABC", ["abc"]) == 1.0


def test_anls_denominator_uses_raw_lengths() -> None:
    # GT "ab  cd" (raw length 6, normalised "ab cd"), prediction "ab cx" (5).
    # lev("ab cd", "ab cx") = 1; denominator max(6, 5) = 6 -> 1 - 1/6 = 5/6.
    # (Normalised lengths would give 1 - 1/5 = 0.8.)
    assert anls_score("ab cx", ["ab  cd"]) == pytest.approx(5 / 6, abs=1e-15)


def test_anls_threshold_keeps_exactly_half() -> None:
    # lev("abcd", "abxy") = 2, length 4 -> s = 0.5; official test is s < 0.5.
    assert anls_score("abxy", ["abcd"]) == 0.5
    # lev = 3 -> s = 0.25 < 0.5 -> 0
    assert anls_score("axyz", ["abcd"]) == 0.0


def test_anls_min_over_answers_and_empty() -> None:
    # best GT "abcd": lev("abce","abcd") = 1 / 4 -> 0.75 ("foo" gives NL 4/4)
    assert anls_score("abce", ["foo", "abcd"]) == 0.75
    assert anls_score("", [""]) == 0.0  # an empty prediction scores 0, even against an empty GT
    assert anls_score("abc", [""]) == 0.0  # NL = 3/3 = 1 -> s = 0
    with pytest.raises(ValueError):
        anls_score("x", [])


# ---------------------------------------------------------------------------
# A3. ChartQA relaxed accuracy
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "target", "expected"),
    [
        ("12%", "12", False),  # 0.12 vs 12: 99% off
        ("12", "12%", False),  # 12 vs 0.12
        ("12%", "12%", True),
        ("0.12", "12%", True),  # both 0.12
        ("105", "100", True),  # |5| / 100 = 0.05 <= 0.05 (inclusive)
        ("95", "100", True),
        ("105.1", "100", False),  # 0.051 > 0.05
        ("21", "20", True),  # 1/20 = 0.05 exactly
        ("0", "0", True),  # zero target -> string match
        ("0.0", "0", False),  # zero target: "0.0" != "0" as strings
        ("0.01", "0", False),
        ("1000", "1,000", False),  # "1,000" does not parse -> string match fails
        ("1,000", "1,000", True),
        ("12 kg", "12", False),  # units: not a float -> string match fails
        (" 12 \n", "12", True),  # prediction stripped
        ("Yes", "yes", True),  # case-insensitive string match
        ("yes ", "Yes", True),
        ("no", "yes", False),
    ],
)
def test_relaxed_correctness(prediction: str, target: str, expected: bool) -> None:
    assert relaxed_correctness(prediction, target) is expected


def test_relaxed_accuracy_max_over_answers() -> None:
    assert relaxed_accuracy("Twenty", ["10", "twenty"]) == 1.0
    assert relaxed_accuracy("11", ["10", "12"]) == 0.0  # 10% and 8.3% off
    assert relaxed_accuracy("10.4", ["10", "12"]) == 1.0  # 4% off the first


# ---------------------------------------------------------------------------
# Exact match and aggregation
# ---------------------------------------------------------------------------


def test_exact_match() -> None:
    assert exact_match("  New\nYork ", ["new york"]) == 1.0  # case + whitespace folded
    assert exact_match("New York.", ["new york"]) == 0.0  # punctuation is not folded
    assert exact_match("b", ["a", "B"]) == 1.0
    assert exact_match("c", ["a", "b"]) == 0.0


def test_mean_and_grouped_percent() -> None:
    assert mean_percent([1.0, 0.0, 0.5, 0.5]) == 50.0
    out = grouped_percent([1.0, 0.0, 1.0], ["human", "human", "augmented"])
    # Overall 2/3; human 1/2; augmented 1/1
    assert out == {"Overall": pytest.approx(200 / 3), "augmented": 100.0, "human": 50.0}
    assert list(out) == ["Overall", "augmented", "human"]


# ---------------------------------------------------------------------------
# A4. OCRBench
# ---------------------------------------------------------------------------


def test_ocrbench_substring_rules() -> None:
    cat = "Regular Text Recognition"
    assert ocrbench_hit("The answer is 1000", ["1"], cat)  # substring rewards long answers
    assert ocrbench_hit("HELLO world", ["Hello"], cat)  # case-insensitive
    assert ocrbench_hit("line a b c", ["a\nb"], cat)  # GT '\n' -> ' '
    assert not ocrbench_hit("hello", ["hello world"], cat)  # GT must be inside prediction
    assert ocrbench_hit("foo", ["bar", "fo"], cat)  # any of the answers


def test_ocrbench_hme_rules() -> None:
    hme = OCRBENCH_HME_CATEGORY
    # spaces deleted on both sides
    assert ocrbench_hit("x^{2}", ["x ^ { 2 }"], hme)
    assert ocrbench_hit("$ x ^ 2 \n+ 1 $", ["x^2+1"], hme)
    # case-sensitive
    assert not ocrbench_hit("x^2", ["X^2"], hme)
    # the same strings in a normal category would match (lower-cased)
    assert ocrbench_hit("x^2", ["X^2"], "Doc-oriented VQA")


def test_ocrbench_fullwidth_folding_option() -> None:
    cat = "Scene Text-centric VQA"
    assert not ocrbench_hit("ＡＢＣ１", ["abc1"], cat)  # VLMEvalKit: no folding
    assert ocrbench_hit("ＡＢＣ１", ["abc1"], cat, fold_fullwidth=True)
    # U+3000 ideographic space becomes ' ', which HME then deletes
    assert ocrbench_hit("x\u3000＋\u30001", ["x+1"], OCRBENCH_HME_CATEGORY, fold_fullwidth=True)


def test_ocrbench_score_totals_and_purity() -> None:
    rows = [
        {"category": "Regular Text Recognition", "answer": ["cat"], "prediction": "Cat"},  # hit
        {"category": "Digit String Recognition", "answer": ["123"], "prediction": "12"},  # miss
        {"category": "Handwriting Recognition", "answer": "pen", "prediction": "a pen"},  # hit
        {"category": "Scene Text-centric VQA", "answer": ["stop"], "prediction": "STOP sign"},  # hit
        {"category": "Doc-oriented VQA", "answer": ["2020"], "prediction": "2021"},  # miss
        {"category": "Key Information Extraction", "answer": ["$5"], "prediction": "$5.00"},  # hit
        {"category": OCRBENCH_HME_CATEGORY, "answer": ["a + b"], "prediction": "a+b"},  # hit
        {"category": OCRBENCH_HME_CATEGORY, "answer": ["A+b"], "prediction": "a+b"},  # miss
    ]
    first = ocrbench_score(rows)
    assert first["Regular Text Recognition"] == 1
    assert first["Digit String Recognition"] == 0
    assert first["Handwriting Recognition"] == 1
    assert first["Text Recognition"] == 2  # sum of the six recognition categories
    assert first["Scene Text-centric VQA"] == 1
    assert first["Doc-oriented VQA"] == 0
    assert first["Key Information Extraction"] == 1
    assert first[OCRBENCH_HME_CATEGORY] == 1
    assert first["Final Score"] == 5  # 2 + 1 + 0 + 1 + 1
    assert first["Total Questions"] == 8
    assert first["Final Score Norm"] == 62.5  # 100 * 5 / 8
    # No module-level state: a second call gives identical numbers.
    assert ocrbench_score(rows) == first


def test_ocrbench_unknown_category_raises() -> None:
    with pytest.raises(ValueError):
        ocrbench_score([{"category": "Nope", "answer": ["a"], "prediction": "a"}])
