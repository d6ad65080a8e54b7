"""Tiny generated datasets (images, conversation JSONL, caption tar shards) for tests and smoke runs.

Everything is deterministic given the seed; nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

__all__ = ["image_bytes", "write_caption_jsonl", "write_caption_shards", "write_conversation_jsonl", "write_image"]

_WORDS = "a cat the dog red car two people small bird green bus blue sky river park table".split()


def _sentence(rng: random.Random, lo: int = 3, hi: int = 10) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."


def image_bytes(width: int, height: int, seed: int = 0, fmt: str = "JPEG") -> bytes:
    """An encoded random-noise image (JPEG or PNG)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: str | os.PathLike, width: int, height: int, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    path.write_bytes(image_bytes(width, height, seed, fmt))
    return path


def _size(rng: random.Random) -> tuple[int, int]:
    return rng.choice([(56, 56), (112, 56), (56, 112), (80, 60), (168, 56)])


def write_conversation_jsonl(
    path: str | os.PathLike,
    n: int,
    seed: int = 0,
    image_dir: str = "images",
    max_images: int = 2,
    max_turns: int = 3,
) -> Path:
    """``n`` conversation records (0..max_images images, 1..max_turns turns) with their images."""
    path = Path(path)
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        num_images = rng.randint(0, max_images)
        images = []
        for j in range(num_images):
            name = f"{image_dir}/{i:05d}_{j}.{'png' if (i + j) % 3 == 0 else 'jpg'}"
            write_image(path.parent / name, *_size(rng), seed=seed * 100003 + i * 7 + j)
            images.append(name)
        turns = []
        for t in range(rng.randint(1, max_turns)):
            question = _sentence(rng).rstrip(".") + "?"
            if t == 0 and num_images:
                if num_images == 1 and rng.random() < 0.5:
                    question = "<image>\n" + question
                elif num_images > 1:
                    question = "".join(f"Image-{k + 1}: <image>\n" for k in range(num_images)) + question
            turns += [{"from": "human", "value": question}, {"from": "gpt", "value": _sentence(rng)}]
        record: dict = {"id": i, "conversations": turns}
        if num_images == 1:
            record["image"] = images[0]
        elif num_images:
            record["image"] = images
        lines.append(json.dumps(record, ensure_ascii=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_caption_jsonl(path: str | os.PathLike, n: int, seed: int = 0, image_dir: str = "images") -> Path:
    """``n`` ``{"image", "caption"}`` records with their images."""
    path = Path(path)
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        name = f"{image_dir}/cap_{i:05d}.jpg"
        write_image(path.parent / name, *_size(rng), seed=seed * 100003 + i)
        lines.append(json.dumps({"image": name, "caption": _sentence(rng)}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_caption_shards(
    directory: str | os.PathLike,
    num_shards: int,
    per_shard: int,
    seed: int = 0,
    pattern: str = "shard-{:03d}.tar",
    json_every: int = 3,
) -> list[Path]:
    """WebDataset-layout tar shards: ``KEY.jpg`` + ``KEY.txt`` (every ``json_every``-th: ``KEY.json``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for s in range(num_shards):
        path = directory / pattern.format(s)
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"{s:03d}{i:05d}"
                caption = _sentence(rng)
                files: Sequence[tuple[str, bytes]] = [(f"{key}.jpg", image_bytes(*_size(rng), seed=seed + s * 1000 + i))]
                if json_every and i % json_every == 0:
                    files = [*files, (f"{key}.json", json.dumps({"caption": caption}).encode())]
                else:
                    files = [*files, (f"{key}.txt", caption.encode())]
                for name, data in files:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths
