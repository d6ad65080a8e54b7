"""Shared pytest fixtures.

Session-scoped fixtures build small artefacts once (nothing is downloaded).
Treat the objects they return as read-only; a test that needs to mutate one
(e.g. ``Tokenizer.add_tokens``) should load its own copy from the directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"
OFFICIAL_TINY_DIR = DATA_DIR / "official-v1-tiny"


# --------------------------------------------------------------------- data
@pytest.fixture(scope="session")
def official_tiny_dir() -> Path:
    """The shipped tiny checkpoint in the official HF layout (no tokenizer)."""
    return OFFICIAL_TINY_DIR


# --------------------------------------------------------------- tokenizer
@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly trained tiny InternLM2-style tokenizer (498 sp pieces + 9 image tokens)."""
    from monovl.processing import train_tiny_tokenizer

    out = tmp_path_factory.mktemp("tiny_tokenizer")
    train_tiny_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir: Path):
    """The tiny tokenizer loaded from disk. Do not mutate it."""
    from monovl.processing import Tokenizer

    return Tokenizer.from_pretrained(tiny_tokenizer_dir)


# --------------------------------------------------------------- processor
@pytest.fixture(scope="session")
def tiny_processor_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """official-v1-tiny's config.json next to the tiny tokenizer files (no weights)."""
    out = tmp_path_factory.mktemp("tiny_processor")
    shutil.copy(OFFICIAL_TINY_DIR / "config.json", out / "config.json")
    for item in tiny_tokenizer_dir.iterdir():
        shutil.copy(item, out / item.name)
    return out


# ------------------------------------------------------------------- model
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """A tiny random v1 model (56-px tiles, vocab 512) saved with the tiny tokenizer. Read-only."""
    from tiny import tiny_model

    out = tmp_path_factory.mktemp("tiny_model")
    tiny_model(seed=11).save_pretrained(out)
    for item in tiny_tokenizer_dir.iterdir():
        shutil.copy(item, out / item.name)
    return out


# ------------------------------------------------------------ decode kernels
@pytest.fixture(scope="session")
def native():
    """The compiled CPU decode kernels. Where a C++ compiler exists they must build: a silent fallback
    would leave the fast path untested."""
    from monovl.engine.decode_kernels import native_kernels

    kernels = native_kernels()
    if kernels is None:
        if shutil.which("c++") or shutil.which("g++"):
            pytest.fail("a C++ compiler is installed but the native decode kernels did not build (see the warning)")
        pytest.skip("no C++ compiler: the native decode kernels cannot be built here")
    return kernels
