"""COCO-caption metrics without Java: PTB-like tokenisation, CIDEr-D and BLEU-1..4.

Spec: ``/work/shared/docs/eval-metrics.md`` section A6. The scores follow
pycocoevalcap's ``CiderScorer`` and ``BleuScorer`` arithmetic exactly; only the
tokeniser is an approximation of the Stanford PTBTokenizer that the official
pipeline runs through Java (see :func:`ptb_tokenize`).

Inputs are keyed by image id: ``candidates[id]`` is one generated caption,
``references[id]`` the list of human captions. Both mappings must have the
same keys (pycocoevalcap asserts this too).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

__all__ = [
    "PTB_PUNCTUATION",
    "ptb_tokenize",
    "cider_d",
    "bleu",
    "coco_caption_scores",
]

# Tokens pycocoevalcap's PTBTokenizer drops after tokenising (its
# PUNCTUATIONS list, lower-cased because we lower-case first), plus the raw
# bracket/quote characters which the Java tokenizer would have turned into
# -LRB-/``/'' style tokens before dropping them.
PTB_PUNCTUATION = frozenset(
    {"''", "'", "``", "`", "-lrb-", "-rrb-", "-lcb-", "-rcb-", ".", "?", "!", ",",
     ":", "-", "--", "...", ";"}
    | set("()[]{}\"")
)

_TOKEN = re.compile(
    r"""
    (?:[^\W\d_]\.){2,}            # abbreviations: u.s. a.m. e.g.
    | \d+(?:[.,:]\d+)+            # numbers with separators: 3.5 1,000 10:30
    | \w+(?:[-'&]\w+)*'?          # words, incl. t-shirt, don't, at&t, dogs'
    | \.\.\. | --                 # multi-character punctuation
    | \S                          # any other single character
    """,
    re.VERBOSE,
)
# PTB splits clitics off their host word: don't -> do n't, cat's -> cat 's.
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ll|'ve|'m|'d|')$")


def ptb_tokenize(text: str) -> str:
    """Java-free approximation of pycocoevalcap's PTBTokenizer; returns space-joined tokens.

    Lower-case (the official call passes ``-lowerCase``), split off
    punctuation, split clitics like PTB (``"don't" -> "do n't"``,
    ``"dog's" -> "dog 's"``), keep hyphenated words, abbreviations and
    numbers such as ``"3.5"``/``"1,000"`` whole, then drop PTB punctuation
    tokens (:data:`PTB_PUNCTUATION`). Example:
    ``'A man, riding a horse.' -> 'a man riding a horse'``.

    Known differences from the Java tokenizer: brackets are dropped (Java
    emits ``-LSB-``/``-RSB-``, which its punctuation list misses); rare PTB
    rules (``cannot -> can not``, ``gonna``, '/' escaping) are not reproduced.
    Common COCO captions tokenise identically.
    """
    tokens: list[str] = []
    for tok in _TOKEN.findall(text.replace("\n", " ").lower()):
        clitic = _CLITIC.match(tok)
        if clitic and tok[0].isalnum():
            tokens.extend([clitic.group(1), clitic.group(2)])
        else:
            tokens.append(tok)
    return " ".join(t for t in tokens if t not in PTB_PUNCTUATION)


Ngram = tuple[str, ...]


def _ngram_counts(sentence: str, n: int) -> Counter[Ngram]:
    """pycocoevalcap ``precook``: counts of all 1..n-grams of ``sentence.split()``."""
    words = sentence.split()
    counts: Counter[Ngram] = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def _check_inputs(
    candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
) -> list[Hashable]:
    if set(candidates) != set(references):
        raise ValueError("candidates and references must have the same keys")
    for key, refs in references.items():
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references[{key!r}] must be a non-empty list of strings")
    return list(candidates)


def _prepare(
    candidates: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    tokenize: bool,
) -> tuple[list[Hashable], dict[Hashable, str], dict[Hashable, list[str]]]:
    keys = _check_inputs(candidates, references)
    tok = ptb_tokenize if tokenize else (lambda s: s)
    cands = {k: tok(candidates[k]) for k in keys}
    refs = {k: [tok(r) for r in references[k]] for k in keys}
    return keys, cands, refs


# ---------------------------------------------------------------------------
# CIDEr-D
# ---------------------------------------------------------------------------


class _TfIdf:
    """One sentence as pycocoevalcap ``counts2vec``: per-order tf-idf vectors, norms, length."""

    def __init__(self, counts: Counter[Ngram], df: Counter[Ngram], log_n: float, n: int):
        self.vec: list[dict[Ngram, float]] = [{} for _ in range(n)]
        sq = [0.0] * n
        self.length = 0
        for gram, tf in counts.items():
            order = len(gram) - 1
            # df of an n-gram absent from every reference set is clamped to 1
            # (log 1 = 0), so it gets the maximal weight log N.
            w = float(tf) * (log_n - math.log(max(1.0, float(df[gram]))))
            self.vec[order][gram] = w
            sq[order] += w * w
            # pycocoevalcap's quirk: `if n == 1` with n = len(gram) - 1, so the
            # "length" is the number of *bigrams*, not of words.
            if order == 1:
                self.length += tf
        self.norm = [math.sqrt(s) for s in sq]


def _cider_sim(hyp: _TfIdf, ref: _TfIdf, sigma: float) -> list[float]:
    """Per-order clipped cosine times the Gaussian length penalty."""
    delta = float(hyp.length - ref.length)
    penalty = math.exp(-(delta**2) / (2 * sigma**2))
    out = []
    for h_vec, r_vec, h_norm, r_norm in zip(hyp.vec, ref.vec, hyp.norm, ref.norm):
        # Clipping: min(hyp, ref) * ref, summed over the hypothesis n-grams.
        val = sum(min(w, r_vec.get(g, 0.0)) * r_vec.get(g, 0.0) for g, w in h_vec.items())
        if h_norm != 0 and r_norm != 0:
            val /= h_norm * r_norm
        out.append(val * penalty)
    return out


def cider_d(
    candidates: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    *,
    tokenize: bool = True,
    n: int = 4,
    sigma: float = 6.0,
) -> tuple[float, dict[Hashable, float]]:
    """CIDEr-D as pycocoevalcap computes it; returns ``(corpus score, per-image scores)``.

    * n-grams n = 1..4 of the whitespace-split (tokenised) captions.
    * ``df(g)`` = number of images whose *reference set* contains ``g``,
      counted over the evaluated images only, so a subset's score is not
      comparable with the full set's. Weight ``tf * (log N - log max(1, df))``
      with raw term counts.
    * Per order: ``sum_g min(v_hyp, v_ref) * v_ref / (|v_hyp| |v_ref|)``
      (division skipped if a norm is 0) times ``exp(-delta^2 / (2 sigma^2))``,
      ``sigma = 6``.
    * ``delta`` = hypothesis length - reference length, measured in
      **bigram counts** as in pycocoevalcap (the doc's quirk, followed
      exactly). For non-empty sentences this equals the word-length
      difference, and an empty side scores 0 anyway, so it never changes a
      score; it is kept to stay literally faithful.
    * Mean over the 4 orders, summed over references, divided by the number
      of references, times 10; corpus score = mean over images.

    The value is pycocoevalcap's raw number (~1.0 for a good model); papers
    usually print it times 100. With a single image ``log N = 0`` and every
    score is 0, as in pycocoevalcap. ``tokenize=False`` scores the strings as
    given (VLMEvalKit's raw-string behaviour).
    """
    keys, cands, refs = _prepare(candidates, references, tokenize)
    ref_counts = {k: [_ngram_counts(r, n) for r in refs[k]] for k in keys}
    df: Counter[Ngram] = Counter()
    for k in keys:
        df.update({g for counts in ref_counts[k] for g in counts})
    log_n = math.log(float(len(keys))) if keys else 0.0
    per_image: dict[Hashable, float] = {}
    for k in keys:
        hyp = _TfIdf(_ngram_counts(cands[k], n), df, log_n, n)
        total = [0.0] * n
        for counts in ref_counts[k]:
            sims = _cider_sim(hyp, _TfIdf(counts, df, log_n, n), sigma)
            total = [t + s for t, s in zip(total, sims)]
        per_image[k] = sum(total) / n / len(ref_counts[k]) * 10.0
    corpus = sum(per_image.values()) / len(per_image) if per_image else 0.0
    return corpus, per_image


# ---------------------------------------------------------------------------
# BLEU
# ---------------------------------------------------------------------------

# pycocoevalcap's smoothing constants: the precision is (correct + TINY) /
# (guess + SMALL), so a zero count gives ~1e-6 instead of a division error.
_TINY = 1e-15
_SMALL = 1e-9


def _closest_ref_len(ref_lens: Sequence[int], test_len: int) -> int:
    # min over (|diff|, length): on a tie the *shorter* reference wins.
    return min((abs(r - test_len), r) for r in ref_lens)[1]


def _bleu_from_counts(
    correct: Sequence[int], guess: Sequence[int], test_len: float, ref_len: float
) -> list[float]:
    scores = []
    product = 1.0
    for k in range(len(correct)):
        product *= (correct[k] + _TINY) / (guess[k] + _SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + _TINY) / (ref_len + _SMALL)
    if ratio < 1:
        bp = math.exp(1 - 1 / ratio)
        scores = [s * bp for s in scores]
    return scores


def bleu(
    candidates: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    *,
    tokenize: bool = True,
    n: int = 4,
) -> tuple[list[float], dict[Hashable, list[float]]]:
    """BLEU-1..n as pycocoevalcap's ``Bleu`` computes it; returns ``(corpus, per-image)``.

    Corpus level (the number COCO reports): clipped n-gram matches (clip =
    max count of that n-gram in any single reference) and candidate n-gram
    counts are summed over all images; BLEU-k is the geometric mean of the
    modified precisions p_1..p_k times the brevity penalty
    ``exp(1 - r/c)`` if ``c < r``, where ``c`` is the total candidate length
    and ``r`` the sum over images of the **closest** reference length (ties
    go to the shorter reference) - pycocoevalcap's ``option='closest'``.
    We follow it rather than NLTK/sacreBLEU (which smooth differently or use
    the shortest reference) because COCO numbers are produced this way.
    pycocoevalcap's constants are kept: precision = ``(correct + 1e-15) /
    (guess + 1e-9)``, and the same for the length ratio.

    Per-image scores use the same formula on one image's counts (not used
    for the reported number).
    """
    keys, cands, refs = _prepare(candidates, references, tokenize)
    tot_correct, tot_guess = [0] * n, [0] * n
    tot_test, tot_ref = 0, 0
    per_image: dict[Hashable, list[float]] = {}
    for k in keys:
        test_counts = _ngram_counts(cands[k], n)
        test_len = len(cands[k].split())
        max_ref: Counter[Ngram] = Counter()
        for r in refs[k]:
            max_ref |= _ngram_counts(r, n)  # Counter union keeps the max count
        ref_len = _closest_ref_len([len(r.split()) for r in refs[k]], test_len)
        guess = [max(0, test_len - j) for j in range(n)]
        correct = [0] * n
        for gram, count in test_counts.items():
            correct[len(gram) - 1] += min(max_ref[gram], count)
        per_image[k] = _bleu_from_counts(correct, guess, test_len, ref_len)
        tot_correct = [a + b for a, b in zip(tot_correct, correct)]
        tot_guess = [a + b for a, b in zip(tot_guess, guess)]
        tot_test += test_len
        tot_ref += ref_len
    corpus = _bleu_from_counts(tot_correct, tot_guess, tot_test, tot_ref)
    return corpus, per_image


def coco_caption_scores(
    candidates: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    *,
    tokenize: bool = True,
) -> dict[str, float]:
    """``Bleu_1``..``Bleu_4`` and ``CIDEr`` (pycocoevalcap key names, raw values).

    METEOR, ROUGE-L and SPICE are not computed (METEOR and SPICE need Java).
    """
    bleu_scores, _ = bleu(candidates, references, tokenize=tokenize)
    cider, _ = cider_d(candidates, references, tokenize=tokenize)
    out = {f"Bleu_{i + 1}": s for i, s in enumerate(bleu_scores)}
    out["CIDEr"] = cider
    return out
