"""Inference speed in the shape of the Mono-InternVL paper's Table 6.

Workload per cell: a prompt of ``text_tokens`` text tokens (half before, half
after the image block) and ``image_tokens`` image tokens (``image_tokens /
num_image_token`` tiles: 768/1792/3840 are 3/7/15 tiles of 256 tokens), then
``new_tokens`` greedy tokens with no stop token. ``concurrency`` c means one
batch of c identical-shape requests through :meth:`Engine.stream` (the
engine behind ``Engine.generate``), so the numbers are aggregate over the batch.

Measured per cell:

* TTFT: from the call until the first token of the batch exists (patch
  embedding, ``mlp1``, prefill of every request, KV cache allocation).
* decode throughput: ``(new_tokens - 1) * c`` tokens over the time from the
  first to the last token, in tokens/s.

Each cell runs twice: with monovl's routing (each token through one expert)
and with ``language_model.naive_routing = True``, the published code's rule
(both FFN experts on every prompt token, mixed by the mask). Generated tokens
are text in both (the published code also routes decode steps to the text
FFN because it keys routing on the KV cache), so the naive baseline mainly
changes the prefill, and the decode speed-up is expected to be about 1.

With ``modular_baseline`` each cell also runs a modular model of the paper's
comparison (InternVL-1.5-2B): an InternViT-300M-shaped encoder with random
weights in front of the same LLM (monovl.eval.modular), the same prompt and
tiles, every token through the text path. The table then gives how much lower
the monolithic TTFT is (the paper reports 59-67% on an A100, Table 6).

Weights do not affect speed, so a ``--preset`` model has random weights. On
CUDA the model runs in bf16 and timings are bracketed by
``torch.cuda.synchronize()``. Each shape is warmed up once (a short run) before
it is timed; the median over ``repeats`` timed runs is reported.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "PAPER_GRID",
    "QUICK_GRID",
    "SpeedGrid",
    "SpeedRow",
    "build_random_model",
    "make_workload",
    "time_generation",
    "run_speed",
    "speed_table",
    "speed_markdown",
    "save_speed",
]


@dataclass
class SpeedGrid:
    image_tokens: list[int]
    text_tokens: int = 256
    new_tokens: int = 120
    concurrency: list[int] = field(default_factory=lambda: [1, 16])
    repeats: int = 1
    naive_baseline: bool = True
    # An InternViT-300M-shaped encoder in front of the same LLM (monovl.eval.modular), the paper's
    # monolithic-vs-modular comparison.
    modular_baseline: bool = False

    def __post_init__(self) -> None:
        if not self.image_tokens or any(n < 0 for n in self.image_tokens):
            raise ValueError(f"image token counts must be >= 0, got {self.image_tokens}")
        if self.text_tokens < 1:
            raise ValueError(f"text tokens must be >= 1, got {self.text_tokens}")
        if self.new_tokens < 2:
            raise ValueError(f"new tokens must be >= 2 (one for TTFT, the rest for decode), got {self.new_tokens}")
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise ValueError(f"concurrency values must be >= 1, got {self.concurrency}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")


# The paper's Table 6 grid, and a CPU-sized one that finishes in minutes on cpu-420m.
PAPER_GRID = SpeedGrid(image_tokens=[768, 1792, 3840], text_tokens=256, new_tokens=120, concurrency=[1, 16])
QUICK_GRID = SpeedGrid(image_tokens=[768, 1792], text_tokens=256, new_tokens=32, concurrency=[1, 4])


@dataclass
class SpeedRow:
    image_tokens: int
    tiles: int
    text_tokens: int
    new_tokens: int
    concurrency: int
    routing: str  # "routed" (monovl), "naive" (both experts, masked) or "modular" (ViT + text-path LLM)
    ttft_s: float
    decode_tokens_per_s: float
    total_s: float
    peak_memory_gb: float | None = None


def build_random_model(preset_name: str, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """A random-weight model of a named preset; ``image_token_id`` set to an id inside the vocabulary."""
    from ..model.config import preset
    from ..model.mono_internvl import MonoInternVL, resolve_dtype

    dtype = resolve_dtype(dtype, device)
    torch.manual_seed(0)
    with torch.device(device):
        model = MonoInternVL(preset(preset_name))
    model.init_weights(generator=None)
    model.to(dtype)
    # The real <IMG_CONTEXT> sits 7 ids below the end of the 92553 vocabulary;
    # any in-vocabulary id works since the weights are random.
    model.image_token_id = model.config.llm.vocab_size - 7
    return model.eval()


def make_workload(model: Any, image_tokens: int, text_tokens: int, batch: int,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``input_ids`` [batch, text+image] and tiles [batch*tiles, 3, S, S] (identical rows)."""
    per_tile = model.num_image_token
    if image_tokens % per_tile:
        raise ValueError(f"{image_tokens} image tokens is not a whole number of tiles of {per_tile} tokens")
    tiles = image_tokens // per_tile
    vocab = model.config.llm.vocab_size
    image_id = model.image_token_id
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, min(vocab, 90000), (text_tokens,), generator=g)
    text = text.masked_fill(text == image_id, 3)  # a text token must never look like an image slot
    half = text_tokens // 2
    row = torch.cat([text[:half], torch.full((image_tokens,), image_id, dtype=torch.long), text[half:]])
    ids = row[None].expand(batch, -1).contiguous().to(model.device)
    if tiles == 0:
        return ids, None
    size = model.config.vision.image_size
    one = torch.randn(tiles, 3, size, size, generator=g)
    pixels = one.repeat(batch, 1, 1, 1).to(model.device, model.dtype)
    return ids, pixels


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_generation(model: Any, ids: torch.Tensor, pixels: torch.Tensor | None,
                    new_tokens: int) -> tuple[float, float, float]:
    """(TTFT s, decode tokens/s aggregated over the batch, total s) of one greedy run without stop tokens."""
    from ..engine import Engine

    engine = Engine(model)
    device = model.device
    _sync(device)
    start = time.perf_counter()
    first = last = start
    steps = 0
    for _ in engine.stream(ids, pixels, model.image_token_id, max_new_tokens=new_tokens):
        _sync(device)
        now = time.perf_counter()
        if steps == 0:
            first = now
        last = now
        steps += 1
    if steps != new_tokens:
        raise RuntimeError(f"expected {new_tokens} steps, got {steps}")
    decode_time = last - first
    tokens = (steps - 1) * ids.shape[0]
    return first - start, (tokens / decode_time if decode_time > 0 else float("inf")), last - start


def run_speed(model: Any, grid: SpeedGrid, log: Callable[[str], None] | None = print,
              encoder: Any = None) -> list[SpeedRow]:
    """Time every (image tokens, concurrency) cell, routed and (optionally) naive and modular.

    `encoder` (a monovl.eval.modular.EncoderConfig) shapes the modular baseline's ViT; default
    InternViT-300M at the model's tile size."""
    rows: list[SpeedRow] = []
    lm = model.language_model
    device = model.device
    modes = [("routed", model, False)] + ([("naive", model, True)] if grid.naive_baseline else [])
    if grid.modular_baseline:
        from .modular import ModularBaseline

        torch.manual_seed(0)
        modes.append(("modular", ModularBaseline(model, encoder).eval(), False))
    with torch.inference_mode():
        for n_img in grid.image_tokens:
            for conc in grid.concurrency:
                ids, pixels = make_workload(model, n_img, grid.text_tokens, conc)
                # Warm-up once per shape and model: allocator, kernels and thread pools.
                for m in dict.fromkeys(m for _, m, _ in modes):
                    time_generation(m, ids, pixels, 2)
                for name, timed, naive in modes:
                    lm.naive_routing = naive
                    try:
                        runs = []
                        if device.type == "cuda":
                            torch.cuda.reset_peak_memory_stats(device)
                        for _ in range(grid.repeats):
                            runs.append(time_generation(timed, ids, pixels, grid.new_tokens))
                    finally:
                        lm.naive_routing = False
                    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
                    row = SpeedRow(
                        image_tokens=n_img, tiles=n_img // model.num_image_token, text_tokens=grid.text_tokens,
                        new_tokens=grid.new_tokens, concurrency=conc, routing=name,
                        ttft_s=statistics.median(r[0] for r in runs),
                        decode_tokens_per_s=statistics.median(r[1] for r in runs),
                        total_s=statistics.median(r[2] for r in runs), peak_memory_gb=peak,
                    )
                    rows.append(row)
                    if log:
                        log(f"image {n_img:5d} x{conc:<3d} {name:7s}: TTFT {row.ttft_s * 1e3:8.1f} ms, "
                            f"decode {row.decode_tokens_per_s:8.1f} tok/s")
    return rows


def speed_table(rows: Sequence[SpeedRow]) -> list[dict[str, Any]]:
    """One entry per (image tokens, concurrency): routed and naive numbers side by side, with speed-ups."""
    cells: dict[tuple[int, int], dict[str, Any]] = {}
    for r in rows:
        cell = cells.setdefault((r.image_tokens, r.concurrency), {
            "image_tokens": r.image_tokens, "tiles": r.tiles, "text_tokens": r.text_tokens,
            "new_tokens": r.new_tokens, "concurrency": r.concurrency,
        })
        cell[f"ttft_ms_{r.routing}"] = r.ttft_s * 1e3
        cell[f"decode_tok_s_{r.routing}"] = r.decode_tokens_per_s
    for (image_tokens, conc), cell in cells.items():
        # One decode step for `conc` rows against `conc` single-row steps: tok/s(1) / tok/s(conc).
        # Under 1 means batching pays; 1/conc would be a step that costs no more than one row.
        single = cells.get((image_tokens, 1))
        if single is not None and "decode_tok_s_routed" in single and "decode_tok_s_routed" in cell:
            cell["batch_step_cost"] = single["decode_tok_s_routed"] / cell["decode_tok_s_routed"]
        if "ttft_ms_naive" in cell:
            cell["ttft_speedup"] = cell["ttft_ms_naive"] / cell["ttft_ms_routed"]
            cell["decode_speedup"] = cell["decode_tok_s_routed"] / cell["decode_tok_s_naive"]
        if "ttft_ms_modular" in cell:
            # The paper's form: how much lower the monolithic first-token latency is, as a fraction.
            cell["ttft_lower_than_modular"] = 1 - cell["ttft_ms_routed"] / cell["ttft_ms_modular"]
    return [cells[k] for k in sorted(cells)]


def speed_markdown(rows: Sequence[SpeedRow]) -> str:
    table = speed_table(rows)
    naive = any("ttft_ms_naive" in c for c in table)
    modular = any("ttft_ms_modular" in c for c in table)
    # (header, cell -> text); a baseline's columns appear only when it ran.
    cols = [("image tokens", lambda c: str(c["image_tokens"])), ("concurrency", lambda c: str(c["concurrency"])),
            ("TTFT routed (ms)" if naive or modular else "TTFT (ms)", lambda c: f"{c['ttft_ms_routed']:.0f}")]
    if naive:
        cols += [("TTFT naive (ms)", lambda c: f"{c['ttft_ms_naive']:.0f}"),
                 ("TTFT speed-up", lambda c: f"{c['ttft_speedup']:.2f}x")]
    if modular:
        cols += [("TTFT modular (ms)", lambda c: f"{c['ttft_ms_modular']:.0f}"),
                 ("TTFT lower than modular", lambda c: f"{100 * c['ttft_lower_than_modular']:.0f}%")]
    cols.append(("decode routed (tok/s)" if naive or modular else "decode (tok/s)",
                 lambda c: f"{c['decode_tok_s_routed']:.1f}"))
    if naive:
        cols += [("decode naive (tok/s)", lambda c: f"{c['decode_tok_s_naive']:.1f}"),
                 ("decode speed-up", lambda c: f"{c['decode_speedup']:.2f}x")]
    if modular:
        cols.append(("decode modular (tok/s)", lambda c: f"{c['decode_tok_s_modular']:.1f}"))
    cols.append(("batch step / c single steps",
                 lambda c: f"{c['batch_step_cost']:.2f}" if "batch_step_cost" in c else "-"))
    lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---:|" * len(cols)]
    lines += ["| " + " | ".join(f(c) for _, f in cols) + " |" for c in table]
    return "\n".join(lines) + "\n"


def _plot(rows: Sequence[SpeedRow], path: Path, title: str) -> None:
    # The object API with the Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax_t, ax_d = fig.subplots(1, 2)
    series: dict[tuple[int, str], list[SpeedRow]] = {}
    for r in rows:
        series.setdefault((r.concurrency, r.routing), []).append(r)
    # One colour per concurrency; solid = routed, dashed = naive, so pairs read side by side.
    colours = {c: f"C{i}" for i, c in enumerate(sorted({r.concurrency for r in rows}))}
    for (conc, routing), items in sorted(series.items(), key=lambda kv: (kv[0][0], kv[0][1] != "routed")):
        items = sorted(items, key=lambda r: r.image_tokens)
        xs = [r.image_tokens for r in items]
        style = {"routed": "-o", "naive": "--s"}.get(routing, ":^")
        label = f"{routing}, concurrency {conc}"
        ax_t.plot(xs, [r.ttft_s * 1e3 for r in items], style, color=colours[conc], label=label)
        ax_d.plot(xs, [r.decode_tokens_per_s for r in items], style, color=colours[conc], label=label)
    ax_t.set(xlabel="image tokens", ylabel="time to first token (ms)", title="TTFT")
    ax_d.set(xlabel="image tokens", ylabel="decode tokens/s (batch aggregate)", title="Decode throughput")
    for ax in (ax_t, ax_d):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)


def save_speed(rows: Sequence[SpeedRow], out_dir: str | os.PathLike, meta: dict[str, Any]) -> dict[str, Path]:
    """Write ``speed.json``, ``speed.md`` and ``speed.png`` to ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "speed.json", "markdown": out / "speed.md", "png": out / "speed.png"}
    payload = {"meta": meta, "rows": [asdict(r) for r in rows], "table": speed_table(rows)}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    header = (f"Model {meta.get('model')}, {meta.get('device')} {meta.get('dtype')}, "
              f"{meta.get('text_tokens')} text tokens, {meta.get('new_tokens')} new tokens.\n\n")
    paths["markdown"].write_text(header + speed_markdown(rows), encoding="utf-8")
    _plot(rows, paths["png"], f"{meta.get('model')} on {meta.get('device')}")
    return paths
