"""Language retention checks on the text path (no pixel values): perplexity and MMLU-style accuracy.

Perplexity (:func:`perplexity`): the text is tokenised once by the checkpoint's
own tokenizer (BOS first when it uses one) and scored with sliding windows of
``window`` tokens that advance by ``stride``. The first id is never scored: it
is the BOS, or, for tokenizers without one (Qwen2, SmolLM2), the first text
token, which has no context to be predicted from. Every later token is predicted exactly once, by the window whose new
part contains it, so with ``stride < window`` each scored token sees at least
``window - stride`` tokens of context. The result is the token-weighted mean
negative log-likelihood (nats) and ``ppl = exp(mean NLL)``.

Multiple choice (:func:`mcq_accuracy`): zero-shot, the prompt of the original
MMLU paper (Hendrycks et al.) as lm-evaluation-harness writes it::

    The following are multiple choice questions (with answers) about {subject}.

    {question}
    A. {A}
    B. {B}
    C. {C}
    D. {D}
    Answer:

(``subject`` with ``_`` replaced by spaces; without a subject the first line
is ``The following are multiple choice questions (with answers).``). Each
option is scored by the log-likelihood of the continuation ``" A"``, ``" B"``
... after the prompt and the highest one is the model's choice. With
``chat=True`` the prompt is instead the user turn of the model's chat template
and the continuation is the bare letter (``"A"``), which is how a chat model
would start its answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..processing.chat_template import encode_prompt

__all__ = ["MMLU_HEADER", "mmlu_prompt", "perplexity", "option_logprobs", "mcq_accuracy"]

MMLU_HEADER = "The following are multiple choice questions (with answers){about}.\n\n"
_LETTERS = "ABCDEFGHIJ"


def _logits(model: Any, ids: Sequence[int], keep: int) -> torch.Tensor:
    """fp32 logits [keep, V] of the last ``keep`` positions of one text-only sequence."""
    x = torch.as_tensor(list(ids), dtype=torch.long, device=model.device)[None]
    return model(x, logits_to_keep=keep).logits[0].float()


@torch.inference_mode()
def perplexity(model: Any, token_ids: Sequence[int], window: int = 1024,
               stride: int | None = None) -> dict[str, float]:
    """Sliding-window perplexity of ``token_ids``; the first id (BOS, or the first text token when
    the tokenizer has no BOS) is context only, never scored.

    Returns ``{"nll", "ppl", "tokens", "window", "stride", "windows"}``; ``nll``
    is the mean over the ``tokens = len(token_ids) - 1`` scored tokens.
    """
    ids = list(token_ids)
    if len(ids) < 2:
        raise ValueError("perplexity needs at least two tokens (the first one is never scored)")
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    stride = window // 2 if stride is None else stride
    if not 1 <= stride < window:
        raise ValueError(f"stride must be in [1, window), got {stride} with window {window}: "
                         f"every window needs at least one token of context for its first scored token")
    total, count, windows = 0.0, 0, 0
    scored_until = 1  # position of the next token to score; position 0 has no context
    while scored_until < len(ids):
        end = min(scored_until + stride, len(ids))
        begin = max(0, end - window)
        # Targets are positions [scored_until, end); they are predicted from the
        # positions one earlier, i.e. the last (end - scored_until + 1) logits
        # minus the very last one.
        n_new = end - scored_until
        logits = _logits(model, ids[begin:end], n_new + 1)[:-1]
        targets = torch.as_tensor(ids[scored_until:end], dtype=torch.long, device=logits.device)
        total += float(F.cross_entropy(logits, targets, reduction="sum"))
        count += n_new
        windows += 1
        scored_until = end
    nll = total / count
    return {"nll": nll, "ppl": math.exp(nll), "tokens": count, "window": window, "stride": stride,
            "windows": windows}


def mmlu_prompt(question: str, options: Mapping[str, str], subject: str | None = None) -> str:
    about = f" about {subject.replace('_', ' ').strip()}" if subject else ""
    text = MMLU_HEADER.format(about=about) + question.strip() + "\n"
    for letter, option in options.items():
        text += f"{letter}. {option}\n"
    return text + "Answer:"


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading items `a` and `b` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@torch.inference_mode()
def option_logprobs(model: Any, context_ids: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[float]:
    """Sum of log-probabilities of each continuation's tokens after ``context_ids``.

    When every continuation is a single token (the usual case for ``" A"``)
    one forward pass of the context scores them all.
    """
    ctx = list(context_ids)
    if all(len(c) == 1 for c in continuations):
        logp = torch.log_softmax(_logits(model, ctx, 1)[-1], dim=-1)
        return [float(logp[c[0]]) for c in continuations]
    out = []
    for cont in continuations:
        if not cont:
            raise ValueError("an option continuation tokenised to nothing")
        full = ctx + list(cont)
        logp = torch.log_softmax(_logits(model, full, len(cont) + 1)[:-1], dim=-1)
        out.append(float(logp.gather(1, torch.as_tensor(cont, device=logp.device)[:, None]).sum()))
    return out


def _split_tokens(encode: Callable[[str], list[int]], context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context ids and continuation ids such that ``context + continuation`` tokenises to their concatenation.

    Sentencepiece may merge across the boundary, so we tokenise the whole
    string and cut where it stops agreeing with the tokenised context.
    """
    ctx = encode(context)
    full = encode(context + continuation)
    cut = min(common_prefix(ctx, full), len(full) - 1)
    return full[:cut], full[cut:]


def mcq_accuracy(model: Any, tokenizer: Any, rows: Sequence[Mapping[str, Any]],
                 processor: Any | None = None, chat: bool = False) -> dict[str, Any]:
    """Zero-shot log-likelihood accuracy on MMLU-like rows (``question``, ``A``.., ``answer``, ``subject``?).

    ``answer`` is a letter, or a 0-based option number as in the HF ``cais/mmlu`` dump.

    Returns ``{"overall", "n", "per_subject", "subject_counts", "predictions"}``
    with accuracies in percent; ``predictions`` holds the chosen letter per row.
    """
    if chat and processor is None:
        raise ValueError("chat=True needs the processor (for the chat template)")
    if chat:  # BOS as the template wants it (a Jinja template writes its own)
        def encode(text: str) -> list[int]:
            return encode_prompt(tokenizer, text, processor.template.add_bos)
    else:
        def encode(text: str) -> list[int]:
            return tokenizer.encode(text, add_bos=True)
    hits: list[bool] = []
    chosen: list[str] = []
    by_subject: dict[str, list[bool]] = {}
    for k, row in enumerate(rows):
        options = {L: str(row[L]) for L in _LETTERS if row.get(L) is not None}
        if len(options) < 2:
            raise ValueError(f"row {k}: needs at least options A and B, got {sorted(options)}")
        answer = str(row.get("answer") or "").strip().upper()
        if answer.isdigit() and int(answer) < len(options):  # HF `cais/mmlu` stores 0..3
            answer = list(options)[int(answer)]
        if answer not in options:
            raise ValueError(f"row {k}: answer {row.get('answer')!r} is not one of the options {sorted(options)}")
        subject = row.get("subject")
        prompt = mmlu_prompt(str(row["question"]), options, None if subject is None else str(subject))
        if chat:
            context_text = processor(prompt)["prompt"]  # the rendered chat turn (BOS only if the template writes it)
            sep = ""
        else:
            context_text, sep = prompt, " "
        splits = [_split_tokens(encode, context_text, sep + letter) for letter in options]
        contexts = {tuple(c) for c, _ in splits}
        if len(contexts) == 1:
            scores = option_logprobs(model, splits[0][0], [c for _, c in splits])
        else:  # the boundary merged differently per letter: score each full string on its own
            scores = [option_logprobs(model, c, [cont])[0] for c, cont in splits]
        letters = list(options)
        pick = letters[max(range(len(letters)), key=lambda i: scores[i])]
        hit = pick == answer
        hits.append(hit)
        chosen.append(pick)
        by_subject.setdefault("all" if subject is None else str(subject), []).append(hit)
    if not hits:
        raise ValueError("no rows to evaluate")
    return {
        "overall": 100.0 * sum(hits) / len(hits),
        "n": len(hits),
        "per_subject": {s: 100.0 * sum(v) / len(v) for s, v in sorted(by_subject.items())},
        "subject_counts": {s: len(v) for s, v in sorted(by_subject.items())},
        "predictions": chosen,
    }
