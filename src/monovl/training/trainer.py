"""The training loop: delta tuning by stage preset, single process or FSDP2, exact resume.

Loss: token-level mean cross-entropy over every supervised token of the optimizer step, across
micro-batches and processes (counted before the backward passes), so packing, batch size, gradient
accumulation and world size do not change what is averaged. Logits are computed only at the
positions whose next token is supervised (the [T, vocab] head is the largest GEMM otherwise).
"""

from __future__ import annotations

import fnmatch
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.packing import num_supervised, supervised_positions
from ..model.mono_internvl import MonoInternVL
from ..processing import IMAGE_SPECIAL_TOKENS, MonoProcessor
from .checkpoints import load_trainer_state, prune, save_checkpoint, step_checkpoints
from .config import TrainConfig
from .diagnostics import gradient_norms, plot_diagnostics, vision_probe
from .distributed import DistEnv, cleanup, init_distributed, load_optimizer_state, shard_model
from .stages import EMBEDDINGS, apply_stage, get_stage, parameter_summary

def lr_lambda(cfg: TrainConfig):
    """Linear warm-up, then cosine decay from lr to lr * min_lr_ratio at max_steps."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(cfg.max_steps - cfg.warmup_steps, 1)
        progress = min((step - cfg.warmup_steps) / span, 1.0)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms, biases and embeddings. For embeddings this is also what keeps
    frozen rows bit-identical: with zero gradients Adam's update is exactly 0, and decay would not be.
    `cfg.lr_scale` gives parameters matching a glob their own LR (the scheduler scales every group)."""
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.dim() < 2 or "norm" in n or "embedding" in n or n == "language_model.output.weight"
        scale = next((v for g, v in cfg.lr_scale.items() if fnmatch.fnmatchcase(n, g)), 1.0)
        groups.setdefault((0.0 if no_decay else cfg.weight_decay, scale), []).append(p)
    return torch.optim.AdamW([{"params": ps, "weight_decay": wd, "lr": cfg.lr * scale}
                              for (wd, scale), ps in groups.items()],
                             lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def frozen_row_mask(model: MonoInternVL, new_ids: list[int]) -> torch.Tensor | None:
    """[V, 1] mask that keeps gradients only on the rows of the added special tokens."""
    emb = model.language_model.model.tok_embeddings.weight
    if not emb.requires_grad or not new_ids:
        return None
    mask = torch.zeros(emb.shape[0], 1, dtype=torch.float32)
    mask[new_ids] = 1.0
    return mask


def _mask_embedding_grads(model: torch.nn.Module, mask: torch.Tensor) -> None:
    p = dict(model.named_parameters())[EMBEDDINGS]
    if p.grad is None:
        return
    full = mask.to(p.grad.dtype).expand(p.shape)
    if hasattr(p.grad, "placements"):  # DTensor under FSDP2: lay the mask out like the gradient
        from torch.distributed.tensor import distribute_tensor

        full = distribute_tensor(full.contiguous(), p.grad.device_mesh, p.grad.placements)
    else:
        full = full.to(p.grad.device)
    p.grad.mul_(full)


def batch_loss_sum(model: torch.nn.Module, batch: dict, device: torch.device, autocast) -> torch.Tensor:
    """Summed cross-entropy over the batch's supervised tokens."""
    labels = batch["labels"].to(device)
    keep, targets = supervised_positions(labels)
    kwargs = {k: batch[k].to(device) for k in ("attention_mask", "position_ids", "segment_ids") if batch.get(k) is not None}
    pixels = batch.get("pixel_values")
    with autocast:
        logits = model(batch["input_ids"].to(device), pixels.to(device) if pixels is not None else None,
                       batch.get("image_token_id"), logits_to_keep=keep, **kwargs).logits
    return F.cross_entropy(logits.float(), targets, reduction="sum")


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, data=None):
        self.cfg = cfg
        self.env = init_distributed()
        self.out = Path(cfg.out)
        self.resume_from: Path | None = None
        source = Path(cfg.model)
        if resume:
            found = step_checkpoints(self.out)
            if found:
                self.resume_from = found[-1][1]
            if (self.out / "final" / "trainer_state.pt").exists():
                self.resume_from = self.out / "final"  # a finished run: `train` then has nothing left to do
        start_dir = self.resume_from or source
        torch.manual_seed(cfg.seed)
        # Master weights stay fp32; on GPU the forward runs under bf16 autocast.
        self.model = MonoInternVL.from_pretrained(start_dir, dtype=torch.float32, device=self.env.device)
        self.model.train()
        self.processor = MonoProcessor.from_pretrained(start_dir)
        self.model.image_token_id = self.processor.image_token_id
        self.source_dir = start_dir
        self.stage = get_stage(cfg.stage, self.model.config.version, cfg.trainable)
        self.trainable = apply_stage(self.model, self.stage)
        new_ids = [i for t in IMAGE_SPECIAL_TOKENS if (i := self.processor.tokenizer.token_to_id(t)) is not None]
        fully_trained_embeddings = self.stage.matches(EMBEDDINGS)
        self.row_mask = None if fully_trained_embeddings else frozen_row_mask(self.model, new_ids)
        if self.env.is_main:
            print(self.stage.describe())
            print(parameter_summary(self.model, new_rows=len(new_ids) if self.row_mask is not None else 0))
        self.model.language_model.activation_checkpointing = cfg.activation_checkpointing
        self.model = shard_model(self.model, self.env)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.step = 0
        self.data = data if data is not None else self._build_data()
        if self.resume_from is not None:
            state = load_trainer_state(self.resume_from, self.env)
            load_optimizer_state(self.model, self.optimizer, state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.data.load_state_dict(state["data"])  # this rank's position
            self.step = state["step"]
        bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and self.env.device.type == "cuda")
        self.autocast = torch.autocast(self.env.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def _build_data(self) -> "TrainingData":
        return TrainingData(self.cfg, self.processor, self.env)

    # ---- loop ---------------------------------------------------------------------------------

    def train(self) -> Path:
        cfg, env = self.cfg, self.env
        metrics_path = self.out / "metrics.jsonl"
        if env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            _truncate_metrics(metrics_path, self.step)
            if self.resume_from is not None:
                print(f"resuming from {self.resume_from} at step {self.step}")
        batches = iter(self.data)
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not env.is_main, desc=f"train {cfg.stage}",
                   unit="step", dynamic_ncols=True)
        t_start, tokens_seen, diag_s = time.perf_counter(), 0, 0.0
        probe_batch = None
        while self.step < cfg.max_steps:
            micro = [next(batches) for _ in range(cfg.grad_accum)]
            if probe_batch is None:
                # The first batch is the fixed probe of the diagnostics, so their curves are comparable.
                probe_batch = micro[0]
            n_sup = env.all_reduce_sum(sum(num_supervised(b["labels"]) for b in micro))
            n_tok = env.all_reduce_sum(sum(_real_tokens(b) for b in micro))
            loss_total = 0.0
            for b in micro:
                loss_sum = batch_loss_sum(self.model, b, env.device, self.autocast)
                # FSDP averages gradients over ranks; scaling by world size turns that into the sum,
                # and dividing by the global supervised-token count makes it a token-level mean.
                (loss_sum * env.world_size / max(n_sup, 1)).backward()
                loss_total += loss_sum.item()
            if self.row_mask is not None:
                _mask_embedding_grads(self.model, self.row_mask)
            done = self.step + 1
            diag = cfg.diag_every > 0 and (done == 1 or done % cfg.diag_every == 0 or done == cfg.max_steps)
            diagnostics = gradient_norms(self.model) if diag else {}
            params = [p for p in self.model.parameters() if p.requires_grad]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad if cfg.clip_grad > 0 else float("inf"))
            grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            lr = cfg.lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)  # base LR, before lr_scale
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            loss = env.all_reduce_sum(loss_total) / max(n_sup, 1)
            tokens_seen += n_tok
            if diag:
                # Every rank runs the probe (its forward is collective under FSDP2); the main one writes.
                t = time.perf_counter()
                diagnostics.update(vision_probe(self.model, probe_batch, env.device, self.processor.image_token_id,
                                                self.autocast, agree=lambda flag: env.all_reduce_sum(int(flag))
                                                == env.world_size))
                diag_s += time.perf_counter() - t
            elapsed = time.perf_counter() - t_start - diag_s  # training time: the probes are not counted
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_seen / elapsed:.0f}")
            if env.is_main and (self.step % cfg.log_every == 0 or self.step == cfg.max_steps or diag):
                record = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                          "tokens": n_tok, "supervised_tokens": n_sup,
                          "tokens_per_s": tokens_seen / elapsed, "elapsed_s": elapsed, **diagnostics}
                with metrics_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.max_steps:
                self.save(f"step-{self.step}")
        bar.close()
        final = self.save("final")
        if env.is_main:
            plot_loss(metrics_path, self.out / "loss.png")
            plot_diagnostics(metrics_path, self.out / "vision.png")
            stats = getattr(self.data, "stats", None)
            if stats is not None:
                print(stats.report() if hasattr(stats, "report") else stats)
            print(f"saved {final}")
        cleanup(env)
        return final

    def save(self, name: str) -> Path:
        state = {"step": self.step, "scheduler": self.scheduler.state_dict(), "data": self.data.state_dict()}
        # `data` is this rank's position; checkpoints store it per rank next to the RNG state.
        path = save_checkpoint(self.out, name, self.model, self.env, self.cfg, self.source_dir, state, self.optimizer)
        if self.env.is_main:
            prune(self.out, self.cfg.keep_last)
            plot_loss(self.out / "metrics.jsonl", self.out / "loss.png")
            plot_diagnostics(self.out / "metrics.jsonl", self.out / "vision.png")
        return path


class TrainingData:
    """The data pipeline for one rank: records -> samples -> (packed) batches, resumable exactly."""

    def __init__(self, cfg: TrainConfig, processor: MonoProcessor, env: DistEnv):
        from ..data import DataStream, PackedBatcher, PaddedBatcher, SampleBuilder, open_source

        tok = processor.tokenizer
        builder = SampleBuilder(tok, processor.template, image_size=processor.image_size,
                                num_image_token=processor.num_image_token, max_tiles=cfg.max_tiles,
                                use_thumbnail=processor.use_thumbnail, max_length=cfg.max_length)
        if cfg.pack:
            batcher = PackedBatcher(max_tokens=max(cfg.pack_tokens, cfg.max_length), pad_id=tok.pad_token_id,
                                    rows=cfg.batch_size)
        else:
            batcher = PaddedBatcher(cfg.batch_size, pad_id=tok.pad_token_id)
        self.stream = DataStream(open_source(cfg.data, seed=cfg.seed), builder, batcher,
                                 rank=env.rank, world_size=env.world_size)
        self.num_workers = cfg.num_workers

    def __iter__(self):
        from torch.utils.data import DataLoader

        loader = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers)
        for batch in loader:
            yield self.stream.observe(batch)

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    @property
    def stats(self):
        return self.stream.stats


def _real_tokens(batch: dict) -> int:
    if batch.get("attention_mask") is not None:
        return int(batch["attention_mask"].sum())
    if batch.get("segment_ids") is not None:
        return int((batch["segment_ids"] > 0).sum())
    return batch["input_ids"].numel()


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records past the checkpoint so the log reads as one uninterrupted run."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def plot_loss(metrics: Path, png: Path) -> None:
    if not metrics.exists():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(png.parent.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
