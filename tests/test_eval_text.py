"""Language retention: sliding-window perplexity and MMLU-style option log-likelihood accuracy."""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from monovl.cli import eval as eval_cli
from monovl.eval.language import mcq_accuracy, mmlu_prompt, perplexity
from monovl.processing import MonoProcessor, Tokenizer
from tiny import tiny_model

TEXT = ("The cat sat on the mat. A dog ran in the park and the sun was warm. "
        "Two birds sang a song while the children played near the old tree.")


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=7)


@pytest.fixture(scope="module")
def ids(tiny_tokenizer):
    return tiny_tokenizer.encode(TEXT, add_bos=True)


def test_perplexity_is_exp_of_mean_nll_from_logits(model, ids):
    x = torch.tensor(ids)[None]
    with torch.no_grad():
        logits = model(x).logits[0]
    nll = F.cross_entropy(logits[:-1], x[0, 1:]).item()
    result = perplexity(model, ids, window=1024)
    assert result["tokens"] == len(ids) - 1
    assert result["nll"] == pytest.approx(nll, rel=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(nll), rel=1e-5)


def test_sliding_windows_score_each_token_once_with_its_window_context(model, ids):
    window, stride = 8, 3
    result = perplexity(model, ids, window=window, stride=stride)
    assert result["tokens"] == len(ids) - 1
    # Reference: token j is scored in the chunk [start, end) containing it, with context ids[end-window:j].
    total, start = 0.0, 1
    with torch.no_grad():
        while start < len(ids):
            end = min(start + stride, len(ids))
            begin = max(0, end - window)
            for j in range(start, end):
                logp = torch.log_softmax(model(torch.tensor(ids[begin:j])[None]).logits[0, -1], -1)
                total -= logp[ids[j]].item()
            start = end
    assert result["nll"] == pytest.approx(total / (len(ids) - 1), rel=1e-5)
    with pytest.raises(ValueError, match="stride must be in"):
        perplexity(model, ids, window=8, stride=8)


class FavourTokens:
    """A stand-in model whose next-token distribution always prefers the given ids."""

    device = torch.device("cpu")

    def __init__(self, vocab: int, favoured: list[int]):
        self.bias = torch.zeros(vocab)
        self.bias[favoured] = 5.0

    def __call__(self, x, logits_to_keep=None):
        t = x.shape[1] if logits_to_keep is None else logits_to_keep
        return SimpleNamespace(logits=self.bias.expand(1, t, -1).clone())


def _mmlu_rows():
    return [
        {"question": "2 + 2 = ?", "A": "3", "B": "4", "C": "5", "D": "22", "answer": "B", "subject": "math"},
        {"question": "Sky colour?", "A": "green", "B": "red", "C": "blue", "D": "pink", "answer": "C",
         "subject": "world_facts"},
    ]


def test_mcq_picks_the_most_likely_option(tiny_tokenizer):
    # Favour the token(s) that " C" adds after "Answer:": option C must win every time.
    prompt = mmlu_prompt("q", {"A": "a", "B": "b", "C": "c", "D": "d"})
    ctx = tiny_tokenizer.encode(prompt)
    c_tokens = tiny_tokenizer.encode(prompt + " C")[len(ctx):]
    stub = FavourTokens(len(tiny_tokenizer), c_tokens)
    numeric = {"question": "3 + 3 = ?", "A": "5", "B": "33", "C": "6", "D": "0", "answer": "2", "subject": "math"}
    result = mcq_accuracy(stub, tiny_tokenizer, _mmlu_rows() + [numeric])  # answer 2 (0-based) is C
    assert result["predictions"] == ["C", "C", "C"]
    assert result["overall"] == pytest.approx(200 / 3)
    assert result["per_subject"] == {"math": 50.0, "world_facts": 100.0}


def test_mcq_choice_matches_direct_log_likelihoods(model, tiny_tokenizer):
    rows = _mmlu_rows()
    expected = []
    for row in rows:
        options = {L: row[L] for L in "ABCD"}
        prompt = mmlu_prompt(row["question"], options, row["subject"])
        ctx = tiny_tokenizer.encode(prompt)
        scores = {}
        for letter in options:
            full = tiny_tokenizer.encode(prompt + " " + letter)
            assert full[: len(ctx)] == ctx
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor(full)[None]).logits[0], -1)
            scores[letter] = sum(logp[i - 1, full[i]].item() for i in range(len(ctx), len(full)))
        expected.append(max(scores, key=scores.get))
    rows = [{**r, "answer": e} for r, e in zip(rows, expected)]
    result = mcq_accuracy(model, tiny_tokenizer, rows)
    assert result["predictions"] == expected and result["overall"] == 100.0
    assert mmlu_prompt("Q?", {"A": "x", "B": "y"}, "high_school_math") == (
        "The following are multiple choice questions (with answers) about high school math.\n\n"
        "Q?\nA. x\nB. y\nAnswer:")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer_dir):
    d = tmp_path_factory.mktemp("text_model")
    tiny_model(seed=7).save_pretrained(d)
    for item in tiny_tokenizer_dir.iterdir():
        shutil.copy(item, d / item.name)
    return d


def _run_cli(argv):
    parser = argparse.ArgumentParser()
    eval_cli.add_parser(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_text_cli_perplexity_and_mcq(model_dir, tmp_path):
    txt = tmp_path / "wiki.txt"
    txt.write_text(TEXT)
    out = tmp_path / "ppl.json"
    assert _run_cli(["eval", "text", "--model", str(model_dir), "--data", str(txt), "--window", "16",
                     "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["kind"] == "perplexity" and res["window"] == 16 and res["stride"] == 8
    assert res["ppl"] == pytest.approx(math.exp(res["nll"]))

    tsv = tmp_path / "mmlu.tsv"
    with open(tsv, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["question", "A", "B", "C", "D", "answer", "subject"])
        for r in _mmlu_rows():
            w.writerow([r[c] for c in ("question", "A", "B", "C", "D", "answer", "subject")])
    for extra in ([], ["--chat"]):
        out = tmp_path / f"mcq{len(extra)}.json"
        assert _run_cli(["eval", "text", "--model", str(model_dir), "--data", str(tsv), "--out", str(out),
                         *extra]) == 0
        res = json.loads(out.read_text())
        assert res["kind"] == "mcq" and res["n"] == 2 and set(res["per_subject"]) == {"math", "world_facts"}
        assert res["prompt_style"] == ("chat" if extra else "plain")


def test_chat_mcq_scores_the_letter_after_the_assistant_turn(model, model_dir):
    processor = MonoProcessor.from_pretrained(model_dir)
    tokenizer = Tokenizer.from_pretrained(model_dir)
    row = _mmlu_rows()[0]
    result = mcq_accuracy(model, tokenizer, [row], processor=processor, chat=True)
    context = processor(mmlu_prompt(row["question"], {L: row[L] for L in "ABCD"}, row["subject"]))["prompt"]
    assert context.rstrip().endswith("assistant")  # the letter is the start of the assistant's answer
    assert result["n"] == 1 and result["predictions"][0] in "ABCD"
