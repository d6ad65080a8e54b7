"""Reading and writing weights in the Hugging Face layout: `model.safetensors`, or shards listed in
`model.safetensors.index.json`. Errors name the file and the tensors involved, because a half-copied
multi-GB checkpoint is a common way for a run to fail.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint directory is missing, truncated, or does not match the model."""


def weight_files(directory: str | Path) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint directory {d} does not exist")
    if (d / INDEX).exists():
        try:
            index = json.loads((d / INDEX).read_text())
            names = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{d / INDEX} is not a valid safetensors index: {e}") from None
        missing = [n for n in names if not (d / n).exists()]
        if missing:
            raise CheckpointError(f"{d / INDEX} lists shards that are not in {d}: {', '.join(missing)}")
        return [d / n for n in names]
    if (d / SINGLE).exists():
        return [d / SINGLE]
    raise CheckpointError(f"no {SINGLE} or {INDEX} in {d}")


def iter_tensors(directory: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) for every tensor of the checkpoint, one shard open at a time."""
    for path in weight_files(directory):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error type for bad headers/truncation
            raise CheckpointError(f"cannot read {path} (truncated or corrupt safetensors file?): {e}") from None


def tensor_shapes(directory: str | Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes from the headers only (no tensor data read)."""
    out: dict[str, tuple[int, ...]] = {}
    for path in weight_files(directory):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    out[name] = tuple(f.get_slice(name).get_shape())
        except Exception as e:
            raise CheckpointError(f"cannot read {path} (truncated or corrupt safetensors file?): {e}") from None
    return out


def check_against(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]],
                  where: str, optional: set[str] = frozenset()) -> None:
    """Raise one error listing every missing, unexpected and wrongly shaped tensor."""
    missing = sorted(k for k in expected if k not in found and k not in optional)
    unexpected = sorted(k for k in found if k not in expected)
    wrong = sorted(
        f"{k}: checkpoint {list(found[k])} vs model {list(expected[k])}"
        for k in expected if k in found and tuple(found[k]) != tuple(expected[k])
    )
    if missing or unexpected or wrong:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
                parts.append(f"{title} ({len(items)}): " + "; ".join(shown))
        raise CheckpointError(f"checkpoint {where} does not match the model config:\n  " + "\n  ".join(parts))


def save_tensors(tensors: Mapping[str, torch.Tensor], directory: str | Path,
                 max_shard_bytes: int = 5 * 1024**3) -> list[Path]:
    """Write `tensors` as one file or as shards plus an index, each file written atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        # safetensors refuses views that share storage (tied weights); give it owned, contiguous copies.
        shards[-1][name] = t.detach().contiguous().clone() if not t.is_contiguous() else t.detach()
        size += nbytes
    # Remove a stale layout first, so a directory never holds both a single file and an index.
    for stale in [d / SINGLE, d / INDEX, *d.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)
    names = [SINGLE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))
    ]
    for name, shard in zip(names, shards):
        _atomic(d / name, lambda tmp, s=shard: save_file(s, str(tmp), metadata={"format": "pt"}))
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
            "weight_map": {k: n for n, s in zip(names, shards) for k in s},
        }
        _atomic(d / INDEX, lambda tmp: tmp.write_text(json.dumps(index, indent=2) + "\n"))
    return [d / n for n in names]


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
