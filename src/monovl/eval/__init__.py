"""Benchmark metrics computed as the standard toolkits/benchmarks define them.

See ``/work/shared/docs/eval-metrics.md``. Pure Python, no Java:

* :mod:`monovl.eval.metrics` - VQA accuracy, ANLS, ChartQA relaxed accuracy,
  exact match, OCRBench.
* :mod:`monovl.eval.choice` - multiple-choice prompts, answer extraction,
  MMBench CircularEval.
* :mod:`monovl.eval.caption` - PTB-like tokenisation, CIDEr-D, BLEU-1..4.

Running benchmarks (``language`` and ``speed`` need torch and are not imported here):

* :mod:`monovl.eval.tsv` - VLMEvalKit TSV reading, resumable prediction files.
* :mod:`monovl.eval.tasks` - task registry: prompts and scorers per benchmark.
* :mod:`monovl.eval.runner` - batched, resumable benchmark runs and scoring.
* :mod:`monovl.eval.language` - perplexity and MMLU-style text accuracy.
* :mod:`monovl.eval.speed` - TTFT/decode benchmark (paper Table 6 shape).
"""

from monovl.eval.caption import bleu, cider_d, coco_caption_scores, ptb_tokenize
from monovl.eval.choice import (
    GroupResult,
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
from monovl.eval.runner import run_benchmark, score_predictions
from monovl.eval.tasks import TASKS, get_task
from monovl.eval.tsv import parse_answer_list, read_tsv
from monovl.eval.metrics import (
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

__all__ = [
    "accuracy_report",
    "anls_score",
    "bleu",
    "build_mcq_prompt",
    "can_infer",
    "can_infer_option",
    "can_infer_text",
    "cider_d",
    "circular_eval",
    "circular_groups",
    "coco_caption_scores",
    "exact_match",
    "extract_choice",
    "GroupResult",
    "grouped_percent",
    "levenshtein",
    "mcq_eval",
    "mean_percent",
    "normalize_vqa_answer",
    "ocrbench_hit",
    "ocrbench_score",
    "options_from_row",
    "ptb_tokenize",
    "relaxed_accuracy",
    "relaxed_correctness",
    "vqa_accuracy",
    "TASKS",
    "get_task",
    "parse_answer_list",
    "read_tsv",
    "run_benchmark",
    "score_predictions",
]
