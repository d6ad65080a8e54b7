"""`monovl train`: one EViP stage (or a custom trainable set) on a model directory."""

from __future__ import annotations

import argparse

from ..training.config import TrainConfig, load_mapping
from ..training.stages import STAGE_NAMES

# flag -> TrainConfig field; flags left unset keep the config file's (or the default) value
FLAGS = {
    "stage": str, "model": str, "data": str, "out": str, "max_steps": int, "save_every": int,
    "batch_size": int, "grad_accum": int, "lr": float, "warmup_steps": int, "seed": int, "max_length": int,
    "max_tiles": int, "pack_tokens": int, "keep_last": int, "weight_decay": float, "clip_grad": float,
    "diag_every": int,
}


def run(args: argparse.Namespace) -> int:
    from ..training.trainer import Trainer

    cfg = TrainConfig.from_dict(load_mapping(args.config), source=args.config) if args.config else TrainConfig()
    overrides = {k: getattr(args, k) for k in FLAGS}
    if args.pack:
        overrides["pack"] = True
    if args.activation_checkpointing:
        overrides["activation_checkpointing"] = True
    if args.trainable:
        overrides["trainable"] = args.trainable
    cfg = cfg.merged(overrides)
    missing = [k for k in ("model", "data") if not getattr(cfg, k)]
    if missing:
        raise ValueError(f"--{' and --'.join(missing)} required (or set them in --config)")
    Trainer(cfg, resume=args.resume).train()
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one EViP stage with delta tuning",
                       description="Train a model directory on image-text data. Stages: "
                                   + ", ".join(STAGE_NAMES) + ". Runs under torchrun for FSDP2.")
    p.add_argument("--config", help="YAML/JSON run config; flags override it")
    for flag, typ in FLAGS.items():
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, type=typ, default=None)
    p.add_argument("--trainable", nargs="+", help="parameter-name globs replacing the stage preset")
    p.add_argument("--pack", action="store_true", help="pack several samples per sequence")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.set_defaults(func=run)
