"""The demo's results: a Markdown table, a JSON file, and a PNG chart under the output directory."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from .evaluate import StageScores

VISUAL_NOTE = ("exact match after VQA normalisation, %, on new images from another seed: objects of all 24 "
               "colour-shape pairs (6 of them never in training); word: training-vocabulary words in new renders")


def _visual_mean(s: StageScores) -> float:
    vals = [v for t, v in s.tasks.items() if not t.startswith("caption")]
    return sum(vals) / len(vals) if vals else 0.0


def results_table(results: dict[str, StageScores]) -> str:
    tasks = list(next(iter(results.values())).tasks)
    base = results.get("base")
    head = "| stage | " + " | ".join(tasks) + " | visual mean | English NLL | text answers = base |"
    lines = [head, "|" + "---|" * (len(tasks) + 4)]
    for stage, s in results.items():
        same = "-" if base is None or stage == "base" else (
            "yes" if s.language_answers == base.language_answers else
            f"{sum(a == b for a, b in zip(s.language_answers, base.language_answers))}/{len(base.language_answers)}")
        cells = [f"{s.tasks[t]:.1f}" for t in tasks]
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {_visual_mean(s):.1f} | {s.english_nll:.4f} | {same} |")
    return "\n".join(lines)


def ablation_table(main: StageScores, ablations: dict[str, StageScores]) -> str:
    tasks = list(main.tasks)
    lines = ["| run | " + " | ".join(tasks) + " | visual mean | English NLL |", "|---|" + "---|" * (len(tasks) + 2)]
    for name, s in {"staged EViP with delta tuning (main run)": main, **ablations}.items():
        cells = " | ".join(f"{s.tasks.get(t, float('nan')):.1f}" for t in tasks)
        lines.append(f"| {name} | {cells} | {_visual_mean(s):.1f} | {s.english_nll:.4f} |")
    return "\n".join(lines)


def plot(results: dict[str, StageScores], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(next(iter(results.values())).tasks)
    stages = list(results)
    fig, ax = plt.subplots(figsize=(max(8, len(tasks) * 1.2), 4), dpi=100)
    width = 0.8 / len(stages)
    for i, stage in enumerate(stages):
        xs = [t + i * width for t in range(len(tasks))]
        ax.bar(xs, [results[stage].tasks[t] for t in tasks], width, label=stage)
    ax.set_xticks([t + 0.4 - width / 2 for t in range(len(tasks))], tasks, rotation=20)
    ax.set_ylabel("score")
    ax.set_title("held-out visual tasks after each EViP stage")
    ax.legend(fontsize=8, ncols=len(stages))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def write_report(out: Path, results: dict[str, StageScores], ablations: dict[str, StageScores],
                 timings: dict[str, float], plan: dict, reused: list[str] = ()) -> str:
    md = ["# monovl demo results", "", f"Scores: {VISUAL_NOTE}.", "", results_table(results), ""]
    if reused:
        md += [f"Reused from an earlier run in this folder (trained with the same config and data; their training "
               f"is not in this run's time): {', '.join(reused)}.", ""]
    base = results.get("base")
    if base is not None:
        md += ["Language retention: greedy answers to fixed text prompts compared with the base SmolLM2, and the",
               "mean NLL on a held-out English text. Through s1.1/s1.2 the LLM is frozen, so both must be identical.", ""]
    if ablations:
        md += ["## Ablation (same step budget)", "", ablation_table(results["s2"], ablations), ""]
    md += ["## Time", "", "| part | seconds |", "|---|---|"] + [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    examples = results[list(results)[-1]].examples
    md += ["", "## Examples (last stage)", "", "| task | question | answer | prediction |", "|---|---|---|---|"]
    for task, rows in examples.items():
        for r in rows:
            q = r["question"].replace("\n", " ").replace("|", "/")
            md.append(f"| {task} | {q} | {r['answer']} | {r['prediction'].replace('|', '/')} |")
    text = "\n".join(md) + "\n"
    (out / "results.md").write_text(text)
    payload = {"results": {k: asdict(v) for k, v in results.items()},
               "ablations": {k: asdict(v) for k, v in ablations.items()}, "timings_s": timings, "plan": plan,
               "reused_stages": list(reused)}
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=str))
    plot(results, out / "results.png")
    return results_table(results) + ("\n\n" + ablation_table(results["s2"], ablations) if ablations else "")
