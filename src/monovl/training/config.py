"""One typed description of a training run, loadable from YAML/JSON and saved next to every checkpoint.

Precedence: dataclass defaults < `--config FILE` < explicit command-line flags. The resolved config
is what `monovl train --config OUT/step-N/train_config.yaml` needs to reproduce the run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..processing.image import check_tile_budget


@dataclass
class TrainConfig:
    # what
    stage: str = "s1.1"
    model: str = ""  # checkpoint directory (official layout or monovl's)
    data: str = ""  # meta JSON, conversation JSONL, caption JSONL, or WebDataset tar pattern
    out: str = "runs/train"
    trainable: list[str] | None = None  # globs replacing the stage preset's list
    # schedule
    max_steps: int = 100
    batch_size: int = 4  # samples (or packed rows) per micro-batch per process
    grad_accum: int = 1
    lr: float = 1e-4
    # glob -> LR multiplier, first match wins (e.g. {"vision_model.*": 10}): new, randomly initialised
    # parameters can take a larger step than the ones copied from the pretrained LLM
    lr_scale: dict[str, float] = field(default_factory=dict)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad: float = 1.0
    seed: int = 0
    # data shape
    max_length: int = 2048
    max_tiles: int = 6
    pack: bool = False
    pack_tokens: int = 4096  # token budget of one packed row
    # runtime
    activation_checkpointing: bool = False
    dtype: str = "auto"  # auto: fp32 on CPU, bf16 autocast on GPU; fp32 or bf16 to choose (weights stay fp32)
    save_every: int = 0  # 0: only at the end
    keep_last: int = 0  # 0: keep every step checkpoint
    log_every: int = 1
    # every this many steps (and at step 1 and max_steps), log whether vision is being learned:
    # per-group gradient norms, image vs text embedding scale, attention on image tokens, and how
    # much the answers change when the image is swapped (monovl.training.diagnostics); 0: off
    diag_every: int = 10
    num_workers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "max_length", "max_tiles", "pack_tokens", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_tile_budget(self.max_tiles, "max_tiles")  # refused now, not at the first image
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.diag_every < 0:
            raise ValueError(f"diag_every must be >= 0, got {self.diag_every}")
        if self.save_every < 0:
            raise ValueError(f"save_every must be >= 0, got {self.save_every}")
        self.betas = tuple(self.betas)
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ValueError(f"dtype must be auto, fp32 or bf16, got {self.dtype!r}")
        bad = {g: v for g, v in self.lr_scale.items() if not v > 0}
        if bad:
            raise ValueError(f"lr_scale multipliers must be > 0, got {bad}")

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(load_mapping(path), source=str(path))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown training config keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    def merged(self, overrides: dict[str, Any]) -> "TrainConfig":
        d = asdict(self)
        d.update({k: v for k, v in overrides.items() if v is not None})
        return TrainConfig.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    try:
        d = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"cannot parse {path}: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} must hold a mapping of config keys")
    return d
