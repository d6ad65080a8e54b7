"""Golden tests for monovl.eval.caption (spec: /work/shared/docs/eval-metrics.md, A6)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from monovl.eval.caption import bleu, cider_d, coco_caption_scores, ptb_tokenize

LN2 = math.log(2.0)

# ---------------------------------------------------------------------------
# Tokeniser
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A man, riding a horse.", "a man riding a horse"),  # lower-case, drop , and .
        ("Don't touch the dog's t-shirt!", "do n't touch the dog 's t-shirt"),  # PTB clitics
        ("It costs 3.5 dollars (about 1,000 yen).", "it costs 3.5 dollars about 1,000 yen"),
        ('He said "hi" -- twice...', "he said hi twice"),  # quotes, --, ... dropped
        ("the dogs' bowls; a cat: on it?", "the dogs bowls a cat on it"),
        ("in the U.S. at 10:30", "in the u.s. at 10:30"),  # abbreviation, time kept
        ("Two\ncats", "two cats"),
    ],
)
def test_ptb_tokenize(raw: str, expected: str) -> None:
    assert ptb_tokenize(raw) == expected


# ---------------------------------------------------------------------------
# CIDEr-D
# ---------------------------------------------------------------------------


def _independent_cider(cands: dict[int, str], refs: dict[int, list[str]]) -> float:
    """Straightforward re-derivation of CIDEr-D from the formula, for cross-checking."""
    def grams(s: str, k: int) -> Counter[tuple[str, ...]]:
        w = s.split()
        return Counter(tuple(w[i : i + k]) for i in range(len(w) - k + 1))

    n_img = len(cands)
    scores = []
    for img in cands:
        total = 0.0
        for ref in refs[img]:
            # length in bigram counts (= words - 1 for non-empty captions)
            delta = max(len(cands[img].split()) - 1, 0) - max(len(ref.split()) - 1, 0)
            per_order = []
            for k in range(1, 5):
                def weights(counts: Counter[tuple[str, ...]]) -> dict[tuple[str, ...], float]:
                    out = {}
                    for g, tf in counts.items():
                        df = sum(1 for other in refs if any(g in grams(r, k) for r in refs[other]))
                        out[g] = tf * (math.log(n_img) - math.log(max(1, df)))
                    return out

                h, r = weights(grams(cands[img], k)), weights(grams(ref, k))
                num = sum(min(h[g], r.get(g, 0.0)) * r.get(g, 0.0) for g in h)
                nh = math.sqrt(sum(v * v for v in h.values()))
                nr = math.sqrt(sum(v * v for v in r.values()))
                cos = num / (nh * nr) if nh and nr else num
                per_order.append(cos * math.exp(-delta * delta / 72.0))  # 2 * 6^2 = 72
            total += sum(per_order) / 4
        scores.append(10 * total / len(refs[img]))
    return sum(scores) / len(scores)


def test_cider_hand_computed_small_example() -> None:
    # N = 2 images, every n-gram has df <= 1, so each weight is tf * ln 2
    # (n-grams in no reference get df clamped to 1, i.e. the same weight).
    # Image 1: hyp "a b", ref "a c".
    #   n=1: hyp {a, b}, ref {a, c}: clipped dot ln2^2, norms ln2*sqrt2 each
    #        -> cos = 1/2. n=2: {a b} vs {a c} -> 0. n=3,4: empty -> 0.
    #   bigram lengths 1 vs 1 -> penalty 1. Score = 10 * (1/2) / 4 = 1.25
    # Image 2: hyp "a", ref "d" -> 0.  Corpus mean = 0.625.
    corpus, per_image = cider_d({1: "a b", 2: "a"}, {1: ["a c"], 2: ["d"]}, tokenize=False)
    assert per_image[1] == pytest.approx(1.25, abs=1e-12)
    assert per_image[2] == 0.0
    assert corpus == pytest.approx(0.625, abs=1e-12)


def test_cider_length_penalty_hand_computed() -> None:
    # Image 1: hyp "a b c", ref "a b" (image 2 disjoint, so all weights tf*ln2).
    #   n=1: dot 2 ln2^2 / (ln2 sqrt3 * ln2 sqrt2) = 2/sqrt6
    #   n=2: {ab, bc} vs {ab}: 1 / (sqrt2 * 1) = 1/sqrt2; n=3: ref empty -> 0
    #   delta = 2 - 1 bigrams -> exp(-1/72)
    expected = 10 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    # 2.5 * (0.8164966 + 0.7071068) * 0.9862071 = 3.756471
    assert expected == pytest.approx(3.756471, abs=1e-6)
    _, per_image = cider_d({1: "a b c", 2: "z"}, {1: ["a b"], 2: ["y"]}, tokenize=False)
    assert per_image[1] == pytest.approx(expected, abs=1e-12)


def test_cider_clipping_hand_computed() -> None:
    # Image 1: hyp "a a", ref "a b" (image 2 disjoint -> weights tf * ln2).
    #   n=1: hyp {a: 2 ln2}, ref {a: ln2, b: ln2}
    #        clipped dot = min(2 ln2, ln2) * ln2 = ln2^2 (unclipped: 2 ln2^2)
    #        norms 2 ln2 and sqrt2 ln2 -> cos = 1 / (2 sqrt2) = 0.353553
    #   n=2: {a a} vs {a b} -> 0; bigram lengths 1 vs 1 -> no penalty
    #   score = 10 * 0.353553 / 4 = 0.883883
    _, per = cider_d({1: "a a", 2: "z"}, {1: ["a b"], 2: ["y"]}, tokenize=False)
    assert per[1] == pytest.approx(10 / (2 * math.sqrt(2)) / 4, abs=1e-12)
    assert per[1] == pytest.approx(0.883883, abs=1e-6)


def test_cider_averages_over_references() -> None:
    # Image 1: hyp "a b", refs "a b" (cos 1 for n=1,2 -> mean 2/4) and "c d" (0).
    # Sum over refs 0.5, divided by 2 refs, times 10 -> 2.5
    _, per = cider_d({1: "a b", 2: "z"}, {1: ["a b", "c d"], 2: ["y"]}, tokenize=False)
    assert per[1] == pytest.approx(2.5, abs=1e-12)


def test_cider_identical_vs_unrelated() -> None:
    cands = {1: "a man rides a horse", 2: "two dogs play", 3: "x y z"}
    refs = {1: ["a man rides a horse"], 2: ["two dogs play"], 3: ["red car parked"]}
    _, per = cider_d(cands, refs, tokenize=False)
    # Identical and with image-unique n-grams: cosine 1 for every order that
    # exists. 5 words have 1..4-grams -> 10 * 4/4 = 10.
    assert per[1] == pytest.approx(10.0, abs=1e-12)
    # 3 words have no 4-gram (norm 0 -> 0): 10 * 3/4 = 7.5
    assert per[2] == pytest.approx(7.5, abs=1e-12)
    # unrelated caption: no shared n-gram -> 0
    assert per[3] == 0.0


def test_cider_matches_independent_computation() -> None:
    cands = {
        1: "a man riding a horse on a beach",
        2: "a dog runs in the grass",
        3: "two people standing near a red car",
    }
    refs = {
        1: ["a man rides a horse on the beach", "a person riding a horse", "man on horse at the sea"],
        2: ["a dog running through grass", "the dog is running in a field"],
        3: ["two men stand by a red car", "people next to a car", "a red car parked near people"],
    }
    corpus, _ = cider_d(cands, refs, tokenize=False)
    assert corpus == pytest.approx(_independent_cider(cands, refs), abs=1e-12)
    assert corpus > 0.5  # sanity: overlapping captions score well above 0


def test_cider_document_frequency_is_over_evaluated_set() -> None:
    # A single image: log N = 0 so every weight vanishes -> 0 (pycocoevalcap).
    corpus, _ = cider_d({1: "a b c d"}, {1: ["a b c d"]}, tokenize=False)
    assert corpus == 0.0
    # Adding an image changes the score of image 1 (subset != full set).
    _, per = cider_d({1: "a b c d", 2: "z"}, {1: ["a b c d"], 2: ["y"]}, tokenize=False)
    assert per[1] == pytest.approx(10.0, abs=1e-12)


def test_cider_tokenizes_by_default() -> None:
    # "A B." -> "a b" once tokenised: identical to the reference "a b" -> 10 * 2/4 = 5
    _, per = cider_d({1: "A B.", 2: "z"}, {1: ["a, b"], 2: ["y"]})
    assert per[1] == pytest.approx(5.0, abs=1e-12)


def test_cider_key_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        cider_d({1: "a"}, {2: ["a"]})


# ---------------------------------------------------------------------------
# BLEU
# ---------------------------------------------------------------------------


def test_bleu_tiny_hand_computed() -> None:
    # hyp "a a b", refs "a b c" / "a b". Closest ref length to 3 is 3.
    # unigrams: a clipped to max ref count 1, b 1 -> 2/3
    # bigrams: {a a, a b} vs max-ref {a b, b c} -> 1/2; trigrams 0/1; 4-grams 0/0
    scores, _ = bleu({1: "a a b"}, {1: ["a b c", "a b"]}, tokenize=False)
    assert scores[0] == pytest.approx(2 / 3, rel=1e-8)
    assert scores[1] == pytest.approx(math.sqrt(2 / 3 * 1 / 2), rel=1e-8)
    # zero trigram matches: pycocoevalcap smoothing gives (1e-15/1) -> tiny, not 0
    assert scores[2] == pytest.approx((2 / 3 * 1 / 2 * 1e-15) ** (1 / 3), rel=1e-6)
    assert scores[3] == pytest.approx((2 / 3 * 1 / 2 * 1e-15 * 1e-6) ** (1 / 4), rel=1e-6)


def test_bleu_brevity_penalty() -> None:
    # c = 2, r = 4: BP = exp(1 - 4/2) = e^-1; both precisions are 1
    scores, _ = bleu({1: "a b"}, {1: ["a b c d"]}, tokenize=False)
    assert scores[0] == pytest.approx(math.exp(-1), rel=1e-8)
    assert scores[1] == pytest.approx(math.exp(-1), rel=1e-8)


def test_bleu_closest_ref_tie_takes_shorter() -> None:
    # c = 3, refs of length 2 and 4 are equally close -> r = 2, no penalty.
    # (r = 4 would give exp(1 - 4/3) = 0.7165.)
    scores, _ = bleu({1: "a b c"}, {1: ["a b", "a b c x"]}, tokenize=False)
    assert scores[0] == pytest.approx(1.0, rel=1e-8)


def test_bleu_is_corpus_level() -> None:
    # Image 1 matches 2/2 unigrams, image 2 matches 0/4: corpus BLEU-1 = 2/6,
    # not the mean of sentence scores (0.5). c = r = 6 -> no penalty.
    scores, per = bleu({1: "a b", 2: "c d e f"}, {1: ["a b"], 2: ["w x y z"]}, tokenize=False)
    assert scores[0] == pytest.approx(1 / 3, rel=1e-8)
    assert per[1][0] == pytest.approx(1.0, rel=1e-8)
    assert per[2][0] == pytest.approx(0.0, abs=1e-6)


def test_coco_caption_scores_keys() -> None:
    out = coco_caption_scores({1: "A dog.", 2: "a cat"}, {1: ["a dog"], 2: ["a cat"]})
    assert list(out) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"]
    assert out["Bleu_2"] == pytest.approx(1.0, rel=1e-8)  # perfect match after tokenising
    # "a" has df = 2 -> weight 0; "dog"/"cat" and the bigrams -> cos 1 for n=1,2
    assert out["CIDEr"] == pytest.approx(5.0, abs=1e-12)
