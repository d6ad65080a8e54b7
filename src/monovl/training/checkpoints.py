"""Training checkpoints: `OUT/step-N/` and `OUT/final/`, each a complete model directory that
`MonoInternVL.from_pretrained` and `monovl chat` read, plus what an exact resume needs.

    step-N/
      config.json, model.safetensors       the model, official layout
      tokenizer files                      copied from the starting model
      train_config.yaml                    the resolved run config
      trainer_state.pt                     step, optimizer (by parameter name), scheduler
      rank{r}.pt                           each process's RNG states and data position

A checkpoint is written into `step-N.tmp/` and renamed when complete, so a run killed mid-save
leaves the previous checkpoint intact and `--resume` never sees a half-written one.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ..model.mono_internvl import MonoInternVL
from .config import TrainConfig
from .distributed import DistEnv, full_state_dict, optimizer_state

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "generation_config.json", "vocab.json", "merges.txt")
STATE = "trainer_state.pt"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out: Path, name: str, model: MonoInternVL, env: DistEnv, cfg: TrainConfig,
                    source_dir: Path, trainer_state: dict | None, optimizer: torch.optim.Optimizer | None) -> Path:
    """Write `out/name` atomically. Every rank must call this (gathering is collective)."""
    final, tmp = out / name, out / f"{name}.tmp"
    weights = full_state_dict(model, env)
    optim = optimizer_state(model, optimizer, env) if optimizer is not None else None
    if env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, state_dict=weights)
        for f in TOKENIZER_FILES:
            if (source_dir / f).exists():
                shutil.copy(source_dir / f, tmp / f)
        cfg.save(tmp / "train_config.yaml")
    env.barrier()
    if trainer_state is not None:
        # Each process's own RNG and data position; the rest of the state is the same on every rank.
        torch.save({"rng": rng_state(), "data": trainer_state["data"]}, tmp / f"rank{env.rank}.pt")
    env.barrier()
    if env.is_main:
        if trainer_state is not None:
            shared = {k: v for k, v in trainer_state.items() if k != "data"}
            torch.save({**shared, "optimizer": optim, "world_size": env.world_size}, tmp / STATE)
        if final.exists():
            # Replacing a checkpoint (e.g. `final` of an earlier run): move it aside first so there is
            # always one complete copy on disk.
            old = out / f"{name}.old"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    env.barrier()
    return final


def step_checkpoints(out: Path) -> list[tuple[int, Path]]:
    found = []
    for d in out.glob("step-*"):
        m = re.fullmatch(r"step-(\d+)", d.name)
        if m and (d / STATE).exists():
            found.append((int(m.group(1)), d))
    return sorted(found)


def prune(out: Path, keep_last: int) -> None:
    if keep_last > 0:
        for _, d in step_checkpoints(out)[:-keep_last]:
            shutil.rmtree(d)


def load_trainer_state(directory: Path, env: DistEnv) -> dict:
    state = torch.load(directory / STATE, map_location="cpu", weights_only=False)
    if state.get("world_size") != env.world_size:
        # Data positions and RNG streams are per rank: they do not map onto another world size.
        raise ValueError(f"{directory} was written by {state.get('world_size')} processes; resume it with "
                         f"the same number (got {env.world_size})")
    own = torch.load(directory / f"rank{env.rank}.pt", map_location="cpu", weights_only=False)
    set_rng_state(own["rng"])
    return {**state, "data": own["data"]}
