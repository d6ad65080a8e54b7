"""Per-question metrics for the open-ended VQA benchmarks, computed as the
official benchmark scripts compute them.

Spec: ``/work/shared/docs/eval-metrics.md`` (sections A1-A4). Every function
here is pure: no module-level counters, no caching of results, so scoring the
same rows twice gives the same numbers (unlike lmms-eval's OCRBench, which
keeps a module-level dict).

Conventions:

* Argument order is always ``(prediction, answers)``. (VLMEvalKit's
  ``relaxed_correctness`` takes ``(target, prediction)``; we do not.)
* An empty or all-whitespace prediction scores 0 under every metric (and
  never hits in OCRBench). Without this rule normalisation can make it equal
  to a GT: ``"A"`` and ``"the"`` normalise to ``""`` in VQA accuracy, so an
  empty answer (e.g. of a row whose image failed to decode) got full marks.
* Per-question scores are floats in ``[0, 1]``. Dataset aggregates are
  percentages (``100 * mean``) as VLMEvalKit reports them, except OCRBench,
  which is a count of correct questions (out of 1000 on the full set).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

__all__ = [
    "PeriodRule",
    "normalize_vqa_answer",
    "vqa_accuracy",
    "levenshtein",
    "anls_score",
    "relaxed_correctness",
    "relaxed_accuracy",
    "exact_match",
    "OCRBENCH_CATEGORIES",
    "OCRBENCH_HME_CATEGORY",
    "ocrbench_hit",
    "ocrbench_score",
    "mean_percent",
    "grouped_percent",
]


def _is_empty(prediction: object) -> bool:
    """True for a prediction that says nothing: scored 0 everywhere (see the module docstring)."""
    return prediction is None or not str(prediction).strip()


# ---------------------------------------------------------------------------
# A1. VQA accuracy (VQAv2 / TextVQA)
# ---------------------------------------------------------------------------

# The 21 characters of the official ``punct`` list (20 plus the backtick).
# Apostrophe, colon, '%' and '.' are deliberately absent: '.' has its own rule.
_VQA_PUNCT: tuple[str, ...] = tuple(';/[]"{}()=+\\_-><@`,?!')
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")

# Official regex. The ``(?!<=\d)`` was meant as a look-behind but is a
# look-ahead for the literal text "<=digit"; right before a '.' it never
# matches, so the regex deletes every '.' that is not followed by a digit.
_PERIOD_OFFICIAL = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The "fixed" regex some VLMEvalKit versions use: keep '.' after a digit too.
_PERIOD_VLMEVALKIT = re.compile(r"(?<!\d)\.(?!\d)")
# Every copy of the official code calls ``periodStrip.sub("", text, re.UNICODE)``:
# the third positional argument of ``Pattern.sub`` is ``count``, so at most
# ``int(re.UNICODE) == 32`` periods are removed. We reproduce the cap.
_PERIOD_MAX_REPLACEMENTS = 32

PeriodRule = Literal["official", "vlmevalkit"]

_NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3",
    "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
    "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

# The official vqaEval contraction table, written out here. It is applied to
# tokens that are already lower-cased, so the three capitalised keys
# ("Id've", "I'dve", "Im", "Ive") can never fire: "im" stays "im", exactly as
# in the official code. The reversed entry "somebody'd" -> "somebodyd" is also
# official and kept as is.
_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't",
    "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd",
    "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't",
    "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've",
    "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd",
    "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've",
    "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}


def _vqa_punctuation(text: str, period_rule: PeriodRule) -> str:
    """Official ``processPunctuation``: punctuation list, then the period rule."""
    # The decision is per character but tests the *original* text: in
    # "t-shirt - red" the " -" makes *every* '-' vanish -> "tshirt red", and
    # any digit-comma-digit anywhere makes all 21 characters vanish
    # ("1,000 t-shirts" -> "1000 tshirts").
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in _VQA_PUNCT:
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    if period_rule == "official":
        pattern = _PERIOD_OFFICIAL
    elif period_rule == "vlmevalkit":
        pattern = _PERIOD_VLMEVALKIT
    else:
        raise ValueError(f"unknown period_rule {period_rule!r}")
    return pattern.sub("", out, count=_PERIOD_MAX_REPLACEMENTS)


def _vqa_digit_article(text: str) -> str:
    """Official ``processDigitArticle``: lower, number words, articles, contractions."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(text: str, *, period_rule: PeriodRule = "official") -> str:
    """Normalise one answer exactly as the official VQA evaluation does.

    Steps (spec A1): replace ``\\n``/``\\t`` by spaces and strip; punctuation
    rule (each of ``;/[]"{}()=+\\_-><@`,?!`` is deleted if the original text
    contains it next to a space or contains a digit-comma-digit, else replaced
    by a space); period strip; lower-case, number words ``none/zero..ten`` to
    digits, drop ``a/an/the``, official contraction table; single spaces.

    Examples: ``"1,000" -> "1000"``, ``"t-shirt" -> "t shirt"``,
    ``"yes, it is" -> "yes it is"``, ``"Two dogs" -> "2 dogs"``.

    ``period_rule``:
        ``"official"`` (default) uses the official regex
        ``(?!<=\\d)(\\.)(?!\\d)``, which (because of a typo) removes every
        '.' not followed by a digit: ``"3." -> "3"``, ``"3.5"`` stays. This is
        what the VQAv2/TextVQA evaluation servers compute, so it is the
        benchmark definition.
        ``"vlmevalkit"`` uses the corrected ``(?<!\\d)\\.(?!\\d)`` that newer
        VLMEvalKit versions use: a '.' after a digit is kept, so ``"3."``
        stays ``"3."`` and no longer matches ``"3"``.
    Both rules keep the official cap of 32 removed periods (the official code
    passes ``re.UNICODE`` where ``re.sub`` expects ``count``).
    """
    # str(): TSV cells may arrive as numbers (e.g. an answer 2 read by pandas).
    text = str(text).replace("\n", " ").replace("\t", " ").strip()
    return _vqa_digit_article(_vqa_punctuation(text, period_rule))


def _official_gt_form(answer: str, period_rule: PeriodRule) -> str:
    # The official script only applies processPunctuation to GT answers
    # (never processDigitArticle), and does not strip/replace tabs first.
    return _vqa_punctuation(answer, period_rule)


def vqa_accuracy(
    prediction: str,
    answers: Sequence[str],
    *,
    period_rule: PeriodRule = "official",
    official_gt_quirk: bool = False,
) -> float:
    """VQA accuracy of one prediction against the human answers (spec A1).

    Definition (leave-one-out over the answers, "10 choose 9")::

        acc = mean_i min(1, #{j != i : g_j == p} / 3)

    computed here as ``sum_i min(3, c_i) / (3 n)`` (same value, but an exact
    rational so e.g. one match out of ten gives exactly ``0.3``). With 10
    answers and ``k`` matches this is 0, 0.3, 0.6, 0.9, 1.0 for k = 0..4+.

    Leave-one-out is by *position*, like VLMEvalKit (official VQAv2 compares
    answer dicts that carry a unique ``answer_id``, which is the same thing).

    Answer counts other than 10 (TextVQA/VQAv2 always have 10): the formula is
    applied literally. With n answers a prediction needs 4 matches for 1.0
    (3 matches give ``(3*2/3 + (n-3)*1)/n``); with a single answer the
    leave-one-out set is empty and the score is always 0, so use
    :func:`exact_match` for single-answer datasets. An empty list raises.

    Normalisation (:func:`normalize_vqa_answer`) of the prediction is always
    applied. For the GT answers:

    * ``official_gt_quirk=False`` (default): every GT answer gets the same full
      normalisation as the prediction, as VLMEvalKit and lmms-eval do. We
      chose this because TextVQA answers in the VLMEvalKit TSVs are raw
      strings; the official quirk would then mark ``"the dog"`` (all ten GT)
      wrong against any prediction because the prediction loses its article.
      On answers that are already in normal form (VQAv2 annotations mostly
      are) the two modes agree.
    * ``official_gt_quirk=True``: reproduce the official ``vqaEval.py``: GT
      answers are processed only when they are not all identical
      (``len(set(gt)) > 1``), and then only by the punctuation/period step
      (no lower-casing, number words or articles).

    An empty or whitespace prediction scores 0.0 (``"A"`` against ``"A"`` is still 1.0).
    """
    if len(answers) == 0:
        raise ValueError("vqa_accuracy needs at least one GT answer")
    if _is_empty(prediction):
        return 0.0
    pred = normalize_vqa_answer(prediction, period_rule=period_rule)
    if official_gt_quirk:
        raw = [str(a) for a in answers]
        gts = [_official_gt_form(a, period_rule) for a in raw] if len(set(raw)) > 1 else raw
    else:
        gts = [normalize_vqa_answer(a, period_rule=period_rule) for a in answers]
    total_matches = sum(g == pred for g in gts)
    clipped = 0
    for g in gts:
        # Matches among the *other* answers: drop this answer if it matched.
        others = total_matches - (g == pred)
        clipped += min(3, others)
    return clipped / (3 * len(gts))


# ---------------------------------------------------------------------------
# A2. ANLS (DocVQA / InfoVQA)
# ---------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Levenshtein (edit) distance with unit insert/delete/substitute costs.

    Bit-parallel algorithm (Myers 1999 in Hyyrö's formulation) on Python ints:
    one pass over ``a`` with O(1) big-int operations per character, so 1e4
    pairs of short strings take a few tens of milliseconds. Common prefix and
    suffix are trimmed first since they never change the distance.
    """
    if a == b:
        return 0
    # Trim common prefix/suffix.
    start = 0
    limit = min(len(a), len(b))
    while start < limit and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    a, b = a[start:end_a], b[start:end_b]
    if not a or not b:
        return len(a) + len(b)
    if len(b) > len(a):
        a, b = b, a  # the shorter string is the bit-vector "pattern"
    m = len(b)
    peq: dict[str, int] = {}
    for i, ch in enumerate(b):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    mask = (1 << m) - 1
    high = 1 << (m - 1)
    pv, mv, score = mask, 0, m  # vertical +1/-1 deltas of column 0: all +1
    for ch in a:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & mask)
        mh = pv & xh
        if ph & high:
            score += 1
        elif mh & high:
            score -= 1
        # '| 1': row 0 of the DP grows by one per text character (global
        # distance, not approximate search).
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = mh | (~(xv | ph) & mask)
        mv = ph & xv
    return score


def _anls_distance(prediction: str, answer: str) -> float:
    """Normalised Levenshtein distance NL as the official DocVQA script defines it."""
    prediction, answer = str(prediction), str(answer)
    gt_norm = " ".join(answer.strip().lower().split())
    pred_norm = " ".join(prediction.strip().lower().split())
    # Denominator from the *raw* strings (official RRC script and lmms-eval:
    # ``max(len(answer.upper()), len(pred.upper()))``). ``.upper()`` is kept
    # because it can change the length ('ß' -> 'SS').
    length = max(len(answer.upper()), len(prediction.upper()))
    if length == 0:
        return 0.0
    return levenshtein(gt_norm, pred_norm) / length


def anls_score(prediction: str, answers: Sequence[str], *, threshold: float = 0.5) -> float:
    """ANLS of one prediction (spec A2): ``s = 1 - min_g NL(g, p)``, 0 if ``s < threshold``.

    ``NL = lev(g', p') / max(len(g), len(p))`` where ``g'``/``p'`` are
    stripped, lower-cased and whitespace-collapsed, but the lengths are those
    of the *un-normalised* strings (official DocVQA/RRC script, lmms-eval).
    Some VLMEvalKit versions divide by the normalised lengths instead; we
    follow the official script.

    Threshold: the official script zeroes ``s`` only when ``s < 0.5``, so a
    similarity of exactly 0.5 is *kept* (scores 0.5). The DocVQA paper's
    formula would give 0 there; we follow the evaluation script, since that
    is what the leaderboard computes. No punctuation/article normalisation.
    Dataset score: ``100 * mean`` (:func:`mean_percent`). An empty or
    whitespace prediction scores 0.0.
    """
    if len(answers) == 0:
        raise ValueError("anls_score needs at least one GT answer")
    if _is_empty(prediction):
        return 0.0
    similarity = 1.0 - min(_anls_distance(prediction, a) for a in answers)
    return 0.0 if similarity < threshold else similarity


# ---------------------------------------------------------------------------
# A3. ChartQA relaxed accuracy
# ---------------------------------------------------------------------------


def _relaxed_float(text: str) -> float | None:
    """pix2struct ``_to_float``: trailing '%' means /100; None if unparsable."""
    try:
        if text.endswith("%"):
            # rstrip as in pix2struct: "12%%" also parses (spec writes t[:-1]).
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(
    prediction: str, target: str, *, max_relative_change: float = 0.05
) -> bool:
    """ChartQA relaxed correctness of one prediction vs one target (spec A3).

    If the prediction parses as a float and the target parses to a *non-zero*
    float, correct iff ``|p - t| / |t| <= 0.05`` (inclusive). Otherwise
    correct only on a case-insensitive exact string match. Parsing is
    Python ``float()`` with a trailing '%' meaning /100 (pix2struct).

    Consequences (all intended, they are the benchmark definition):
    ``"12%"`` vs ``"12"`` compares 0.12 with 12 (wrong); a target of ``"0"``
    falls back to string match (``"0.0"`` is wrong); ``"1,000"`` does not
    parse, so it needs an exact string match; ``"12 kg"`` vs ``"12"`` is
    wrong.

    The prediction is ``strip()``-ed first (VLMEvalKit); the target is not.
    lmms-eval does not strip, which only differs for string matches since
    ``float()`` ignores surrounding whitespace. Note the argument order is
    ``(prediction, target)``, the reverse of pix2struct/VLMEvalKit.
    """
    prediction = str(prediction).strip()
    target = str(target)
    pred_f = _relaxed_float(prediction)
    target_f = _relaxed_float(target)
    if pred_f is not None and target_f:  # target 0.0 is falsy -> string match
        return abs(pred_f - target_f) / abs(target_f) <= max_relative_change
    return prediction.lower() == target.lower()


def relaxed_accuracy(
    prediction: str, answers: Sequence[str], *, max_relative_change: float = 0.05
) -> float:
    """ChartQA score of one question: max over GT answers of :func:`relaxed_correctness`.

    Returns 1.0 or 0.0. The dataset score is ``100 * mean``, reported overall
    and per split (``human`` / ``augmented``) with :func:`grouped_percent`.
    An empty or whitespace prediction scores 0.0.
    """
    if len(answers) == 0:
        raise ValueError("relaxed_accuracy needs at least one GT answer")
    if _is_empty(prediction):
        return 0.0
    hit = any(
        relaxed_correctness(prediction, a, max_relative_change=max_relative_change)
        for a in answers
    )
    return 1.0 if hit else 0.0


# ---------------------------------------------------------------------------
# Exact match
# ---------------------------------------------------------------------------


def _exact_form(text: str) -> str:
    return " ".join(str(text).lower().split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the prediction equals any GT answer after case/whitespace folding, else 0.0.

    Folding: lower-case, strip, and collapse internal runs of whitespace to
    one space (``"  New\\nYork "`` equals ``"new york"``). VLMEvalKit's
    ``accuracy`` method only strips the ends; collapsing internal whitespace
    additionally forgives line-wrapped generations, which we consider a
    formatting artefact rather than an error. No punctuation normalisation.
    An empty or whitespace prediction scores 0.0.
    """
    if len(answers) == 0:
        raise ValueError("exact_match needs at least one GT answer")
    if _is_empty(prediction):
        return 0.0
    pred = _exact_form(prediction)
    return 1.0 if any(_exact_form(a) == pred for a in answers) else 0.0


# ---------------------------------------------------------------------------
# A4. OCRBench
# ---------------------------------------------------------------------------

OCRBENCH_HME_CATEGORY = "Handwritten Mathematical Expression Recognition"

# Reported group -> (fine-grained categories in the data, questions in the full set).
OCRBENCH_CATEGORIES: dict[str, tuple[tuple[str, ...], int]] = {
    "Text Recognition": (
        (
            "Regular Text Recognition",
            "Irregular Text Recognition",
            "Artistic Text Recognition",
            "Handwriting Recognition",
            "Digit String Recognition",
            "Non-Semantic Text Recognition",
        ),
        300,
    ),
    "Scene Text-centric VQA": (("Scene Text-centric VQA",), 200),
    "Doc-oriented VQA": (("Doc-oriented VQA",), 200),
    "Key Information Extraction": (("Key Information Extraction",), 200),
    OCRBENCH_HME_CATEGORY: ((OCRBENCH_HME_CATEGORY,), 100),
}
_OCRBENCH_FINE = tuple(c for cats, _ in OCRBENCH_CATEGORIES.values() for c in cats)


def _fold_fullwidth(text: str) -> str:
    # U+FF01..U+FF5E are the full-width forms of ASCII 0x21..0x7E; U+3000 is
    # the ideographic space.
    return "".join(
        chr(ord(ch) - 0xFEE0) if "\uff01" <= ch <= "\uff5e" else (" " if ch == "\u3000" else ch)
        for ch in text
    )


def ocrbench_hit(
    prediction: str, answers: Sequence[str], category: str, *, fold_fullwidth: bool = False
) -> bool:
    """True if any GT string is a substring of the prediction (spec A4).

    Normal categories: both sides ``lower().strip()`` then ``\\n`` -> space.
    HME100k (``category == "Handwritten Mathematical Expression Recognition"``):
    ``strip()``, ``\\n`` -> space, then every space deleted; this comparison is
    case-sensitive. Substring matching deliberately rewards long answers
    (GT ``"1"`` matches ``"1000"``): that is the benchmark's definition.

    ``fold_fullwidth``: lmms-eval first maps full-width ASCII (U+FF01-FF5E)
    and U+3000 to ASCII. VLMEvalKit does not, and Mono-InternVL's reported
    OCRBench numbers come from VLMEvalKit, so the default is ``False``.
    An empty or whitespace prediction never hits (an empty GT would be a
    substring of it).
    """
    if _is_empty(prediction):
        return False
    pred = str(prediction)
    golds = [str(a) for a in answers]
    if fold_fullwidth:
        pred = _fold_fullwidth(pred)
        golds = [_fold_fullwidth(g) for g in golds]
    if category == OCRBENCH_HME_CATEGORY:
        def norm(s: str) -> str:
            return s.strip().replace("\n", " ").replace(" ", "")
    else:
        def norm(s: str) -> str:
            return s.lower().strip().replace("\n", " ")
    pred_n = norm(pred)
    return any(norm(g) in pred_n for g in golds)


def ocrbench_score(
    rows: Iterable[Mapping[str, object]], *, fold_fullwidth: bool = False
) -> dict[str, float]:
    """OCRBench totals from rows with ``prediction``, ``answer`` (list of str) and ``category``.

    Returns correct counts per fine-grained category (10 keys), per reported
    group (``Text Recognition`` = the six recognition categories, then Scene
    Text-centric VQA, Doc-oriented VQA, Key Information Extraction, HMER),
    ``Final Score`` (sum of the five groups, out of ``Total Questions``; 1000
    on the full set), ``Total Questions`` and ``Final Score Norm`` =
    ``100 * Final / Total`` (equals VLMEvalKit's ``Final / 10`` on the full
    set; 0 for no rows). A string ``answer`` counts as a single acceptable
    answer. Unknown categories raise ``ValueError`` rather than being dropped
    silently. Pure: calling it twice gives identical results.
    """
    counts = {c: 0 for c in _OCRBENCH_FINE}
    total = 0
    for row in rows:
        category = str(row["category"])
        if category not in counts:
            raise ValueError(f"unknown OCRBench category {category!r}")
        answer = row["answer"]
        answers = [answer] if isinstance(answer, str) else list(answer)  # type: ignore[arg-type]
        total += 1
        if ocrbench_hit(str(row["prediction"]), answers, category, fold_fullwidth=fold_fullwidth):
            counts[category] += 1
    result: dict[str, float] = dict(counts)
    final = 0
    for group, (cats, _) in OCRBENCH_CATEGORIES.items():
        group_total = sum(counts[c] for c in cats)
        result[group] = group_total
        final += group_total
    result["Final Score"] = final
    result["Total Questions"] = total
    result["Final Score Norm"] = 100.0 * final / total if total else 0.0
    return result


# ---------------------------------------------------------------------------
# Aggregation helpers
# ---------------------------------------------------------------------------


def mean_percent(scores: Iterable[float]) -> float:
    """Dataset score as toolkits report it: ``100 * mean(scores)``; NaN if empty."""
    values = list(scores)
    if not values:
        return math.nan
    return 100.0 * math.fsum(values) / len(values)


def grouped_percent(
    scores: Sequence[float], groups: Sequence[str], *, overall_key: str = "Overall"
) -> dict[str, float]:
    """``100 * mean`` overall and per group label (e.g. ChartQA ``human``/``augmented``).

    ``scores[i]`` belongs to ``groups[i]``. Keys: ``overall_key`` first, then
    the group labels in sorted order.
    """
    if len(scores) != len(groups):
        raise ValueError("scores and groups must have the same length")
    buckets: dict[str, list[float]] = {}
    for s, g in zip(scores, groups):
        buckets.setdefault(str(g), []).append(s)
    out = {overall_key: mean_percent(scores)}
    for g in sorted(buckets):
        out[g] = mean_percent(buckets[g])
    return out
