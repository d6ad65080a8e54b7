"""`monovl eval run|score|text`: benchmark TSVs through a model, score predictions, language retention.

    monovl eval run --model DIR --data MMBench_DEV_EN.tsv --task mmbench --out runs/mmb [--batch-size 8]
    monovl eval score --task mmbench --predictions runs/mmb/predictions.tsv --out scores.json
    monovl eval text --model DIR --data wiki.txt            # perplexity
    monovl eval text --model DIR --data mmlu_dev.tsv        # option log-likelihood accuracy
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..eval.tasks import get_task, task_names
from .chat import add_quantize_arg


def _load(model_dir: str, dtype: str | None, device: str | None, official_convert: bool = False,
          quantize: str | None = None):
    from ..model.mono_internvl import MonoInternVL
    from ..processing import MonoProcessor

    model = MonoInternVL.from_pretrained(model_dir, dtype=dtype, device=device, quantize=quantize)
    processor = MonoProcessor.from_pretrained(model_dir, official_convert=official_convert)
    if model.image_token_id is None:
        model.image_token_id = processor.image_token_id
    return model, processor


def _print_summary(scores: dict) -> None:
    overall = scores["overall"]
    shown = "n/a" if overall is None else (f"{overall:.2f}" if isinstance(overall, float) else str(overall))
    if "out_of" in scores:
        shown += f" / {scores['out_of']}"
    print(f"{scores['task']}: {scores['metric']} = {shown} ({scores['unit']}) over {scores['n']} rows")
    for name, value in (scores.get("per_category") or {}).items():
        v = "n/a" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))
        print(f"  {name}: {v}")


def run_eval(args: argparse.Namespace) -> int:
    from ..eval.runner import ERRORS_FILE, ModelPredictor, run_benchmark

    task = get_task(args.task)  # fail on a bad task before loading a model
    if not Path(args.data).is_file():
        raise FileNotFoundError(f"no such data file: {args.data}")
    model, processor = _load(args.model, args.dtype, args.device, args.official_preprocessing, args.quantize)
    predictor = ModelPredictor(model, processor, args.max_new_tokens or task.max_new_tokens, args.max_tiles)
    result = run_benchmark(predictor, args.data, task, args.out, batch_size=args.batch_size, limit=args.limit,
                           progress=not args.no_progress)
    scores = result.scores
    _print_summary(scores)
    if scores["n_errors"]:
        print(f"{scores['n_errors']} row(s) failed ({scores['n_image_errors']} with an undecodable image): "
              f"empty prediction, scored as wrong (see {Path(args.out) / ERRORS_FILE})", file=sys.stderr)
    print(f"predictions: {result.predictions_path}\nscores: {result.scores_path}, {result.markdown_path}")
    return 0


def score_eval(args: argparse.Namespace) -> int:
    from ..eval.runner import score_predictions, write_scores

    scores = score_predictions(args.task, args.predictions)
    out = Path(args.out)
    write_scores(scores, out, out.with_suffix(".md"))
    _print_summary(scores)
    print(f"scores: {out}")
    return 0


def text_eval(args: argparse.Namespace) -> int:
    from ..eval.language import mcq_accuracy, perplexity
    from ..eval.tsv import read_tsv, require_columns
    from ..processing import load_tokenizer

    data = Path(args.data)
    if not data.is_file():
        raise FileNotFoundError(f"no such data file: {data}")
    kind = "perplexity" if data.suffix.lower() in (".txt", ".text", ".md") else "mcq"
    if kind == "mcq" and data.suffix.lower() not in (".tsv",):
        raise ValueError(f"{data}: use a .txt file for perplexity or a .tsv file for multiple choice")
    from ..model.mono_internvl import MonoInternVL
    from ..processing import MonoProcessor

    # Text only: no pixel values ever reach the model; the processor is needed only for --chat.
    model = MonoInternVL.from_pretrained(args.model, dtype=args.dtype, device=args.device, quantize=args.quantize)
    tokenizer = load_tokenizer(args.model)  # the checkpoint's own tokenizer, as `chat` loads it
    processor = MonoProcessor.from_pretrained(args.model, tokenizer=tokenizer) if args.chat else None
    result: dict = {"model": args.model, "data": str(data), "kind": kind}
    if kind == "perplexity":
        text = data.read_text(encoding="utf-8")
        context = model.config.llm.max_position_embeddings
        window = min(args.window, context)
        ids = tokenizer.encode(text, add_bos=True)
        result.update(perplexity(model, ids, window=window, stride=args.stride))
        print(f"perplexity {result['ppl']:.3f} (mean NLL {result['nll']:.4f} nats) over {result['tokens']} tokens, "
              f"window {result['window']}, stride {result['stride']}")
    else:
        table = read_tsv(data)
        require_columns(table, ("question", "A", "B", "answer"), "text multiple choice")
        rows = table.rows[: args.limit] if args.limit else table.rows
        result.update(mcq_accuracy(model, tokenizer, rows, processor=processor, chat=args.chat))
        result["prompt_style"] = "chat" if args.chat else "plain"
        print(f"accuracy {result['overall']:.2f}% over {result['n']} questions")
        for subject, acc in result["per_subject"].items():
            print(f"  {subject}: {acc:.2f}")
    out = Path(args.out) if args.out else Path(f"{data.stem}.text_eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"results: {out}")
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint directory with tokenizer files")
    p.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    p.add_argument("--device", default=None, help="cpu or cuda (default cpu)")
    add_quantize_arg(p)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="run and score benchmarks, language retention",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    esub = p.add_subparsers(dest="eval_command", required=True)

    r = esub.add_parser("run", help="generate predictions for a VLMEvalKit TSV (resumable) and score them")
    _model_args(r)
    r.add_argument("--data", required=True, help="benchmark TSV (VLMEvalKit format, base64 images)")
    r.add_argument("--task", required=True, choices=task_names())
    r.add_argument("--out", required=True, help="output directory (predictions.tsv, scores.json, scores.md); "
                                                "rerun with the same --out to resume")
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's (16-128)")
    r.add_argument("--max-tiles", type=int, default=None, help="tile budget per image (default: the config's)")
    r.add_argument("--limit", type=int, default=None, help="only the first N rows")
    r.add_argument("--official-preprocessing", action="store_true",
                   help="load images as the official code and VLMEvalKit do, a plain convert('RGB'), to reproduce "
                        "published numbers (default: EXIF orientation applied, transparency composited on white)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=run_eval)

    s = esub.add_parser("score", help="score an existing predictions TSV (no model)")
    s.add_argument("--task", required=True, choices=task_names())
    s.add_argument("--predictions", required=True, help="TSV with the task's columns and 'prediction'")
    s.add_argument("--out", required=True, help="scores JSON (a Markdown twin is written next to it)")
    s.set_defaults(func=score_eval)

    t = esub.add_parser("text", help="language retention: perplexity (.txt) or MMLU-style accuracy (.tsv)")
    _model_args(t)
    t.add_argument("--data", required=True, help=".txt for perplexity; .tsv with question, A..D, answer, "
                                                 "subject? for multiple choice")
    t.add_argument("--window", type=int, default=1024, help="perplexity window (capped at the model's context)")
    t.add_argument("--stride", type=int, default=None, help="perplexity stride (default window/2)")
    t.add_argument("--chat", action="store_true", help="multiple choice inside the chat template")
    t.add_argument("--limit", type=int, default=None, help="only the first N questions")
    t.add_argument("--out", default=None, help="results JSON (default ./<data stem>.text_eval.json)")
    t.set_defaults(func=text_eval)
