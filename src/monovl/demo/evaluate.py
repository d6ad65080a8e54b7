"""Scoring a demo model: held-out visual questions per task, captions, and language retention.

Visual tasks use exact match after the VQA answer normalisation (lower case, punctuation, number
words to digits, articles), the usual metric for single-word answers; captions use CIDEr-D against
three references. Language retention compares the model's greedy answers to fixed text prompts
with the base LLM's, and its mean NLL on a held-out English text: with the LLM frozen (s1.x) both
must be identical, bit for bit.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..engine import Engine, Prompt
from ..eval.caption import cider_d
from ..eval.language import perplexity
from ..eval.metrics import normalize_vqa_answer
from ..model.mono_internvl import MonoInternVL
from ..processing import IMAGE_PLACEHOLDER, MonoProcessor
from .world import heldout_english_text, language_prompts


@dataclass
class EvalItem:
    task: str
    question: str  # the user turn, with the `<image>` placeholder
    image: str
    answers: list[str]


@dataclass
class StageScores:
    tasks: dict[str, float] = field(default_factory=dict)  # task -> percent (CIDEr x100 for caption)
    examples: dict[str, list[dict]] = field(default_factory=dict)
    language_answers: list[str] = field(default_factory=list)
    english_nll: float | None = None
    eval_s: float = 0.0  # wall-clock seconds the evaluation took, model loading included


def load_eval_items(jsonl: Path, per_task: int | None = None, task_suffix: str = "") -> list[EvalItem]:
    items, counts = [], defaultdict(int)
    for line in jsonl.read_text().splitlines():
        rec = json.loads(line)
        task = rec["task"] + task_suffix
        if per_task is not None and counts[task] >= per_task:
            continue
        counts[task] += 1
        answers = rec.get("answers") or [rec.get("answer") or rec["conversations"][1]["value"]]
        items.append(EvalItem(task, rec["conversations"][0]["value"], str(jsonl.parent / rec["image"]), answers))
    return items


def generate_answers(model: MonoInternVL, processor: MonoProcessor, questions: list[tuple[str, str | None]],
                     max_new_tokens: int, batch_size: int = 16, desc: str = "eval") -> list[str]:
    """Greedy answers to (question, image-or-None) pairs, batched."""
    engine = Engine(model)
    stops = processor.stop_token_ids
    answers = []
    for start in tqdm(range(0, len(questions), batch_size), desc=desc, unit="batch", leave=False):
        chunk = questions[start:start + batch_size]
        prompts = []
        for q, image in chunk:
            inputs = processor(q, images=[image] if image else None)
            prompts.append(Prompt(inputs["input_ids"][0], inputs["pixel_values"]))
        for ids in engine.generate_batch(prompts, max_new_tokens=max_new_tokens, stop_token_ids=stops):
            text = processor.decode([t for t in ids if t not in stops])
            answers.append(processor.extract_response(text))
    return answers


def answer_hit(prediction: str, answers: list[str]) -> bool:
    """Exact match after VQA normalisation against any of the answers."""
    return normalize_vqa_answer(prediction) in {normalize_vqa_answer(a) for a in answers}


def score_visual(model: MonoInternVL, processor: MonoProcessor, items: list[EvalItem], batch_size: int = 16,
                 n_examples: int = 3) -> tuple[dict[str, float], dict[str, list[dict]]]:
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        by_task[item.task].append(i)
    scores, examples = {}, {}
    for task, idx in by_task.items():
        caption = task.startswith("caption")
        preds = generate_answers(model, processor, [(items[i].question, items[i].image) for i in idx],
                                 max_new_tokens=40 if caption else 8, batch_size=batch_size, desc=f"eval {task}")
        if caption:
            cider, _ = cider_d({i: p for i, p in zip(idx, preds)}, {i: items[i].answers for i in idx})
            scores[task] = 100 * cider
        else:
            hits = [answer_hit(p, items[i].answers) for i, p in zip(idx, preds)]
            scores[task] = 100 * sum(hits) / len(hits)
        examples[task] = [{"question": items[i].question.replace(IMAGE_PLACEHOLDER + "\n", ""),
                           "image": items[i].image, "answer": items[i].answers[0], "prediction": p}
                          for i, p in list(zip(idx, preds))[:n_examples]]
    return scores, examples


def language_retention(model: MonoInternVL, processor: MonoProcessor, max_new_tokens: int = 40,
                       english_tokens: int = 2048, window: int = 512) -> tuple[list[str], float]:
    """Greedy answers to the fixed text prompts, and mean NLL on the held-out English text."""
    answers = generate_answers(model, processor, [(p, None) for p in language_prompts()], max_new_tokens,
                               desc="language")
    # Without a BOS (SmolLM2's tokenizer adds none) the first word is context only: never scored.
    ids = processor.tokenizer.encode(heldout_english_text(), add_bos=True)[:english_tokens]
    with torch.inference_mode():
        nll = perplexity(model, ids, window=window)["nll"]
    return answers, nll


def evaluate_stage(model: MonoInternVL, processor: MonoProcessor, items: list[EvalItem],
                   batch_size: int = 16, english_tokens: int = 2048, answer_tokens: int = 40) -> StageScores:
    model.eval()
    tasks, examples = score_visual(model, processor, items, batch_size)
    answers, nll = language_retention(model, processor, max_new_tokens=answer_tokens, english_tokens=english_tokens)
    return StageScores(tasks, examples, answers, nll)
