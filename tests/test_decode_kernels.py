"""The compiled CPU decode kernels against their PyTorch counterparts, and how they are built."""

from __future__ import annotations

import math

import pytest
import torch

from monovl.engine import decode_kernels
from monovl.engine.decode_kernels import TorchKernels

REF = TorchKernels(blocks=1)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rows", [1, 3, 8, 16])
@pytest.mark.parametrize("out", [4, 13, 130])  # whole blocks of 4 rows, a remainder, several threads' worth
@pytest.mark.parametrize("bias", [False, True])
def test_linear(native, rows, out, bias):
    x, w = randn(rows, 24), randn(out, 24, seed=1)
    b = randn(out, seed=2) if bias else None
    torch.testing.assert_close(native.linear(x, w, b), REF.linear(x, w, b), rtol=1e-5, atol=1e-5)
    acc = randn(rows, out, seed=3)
    expected = REF.linear(x, w, b, accumulate=acc.clone())
    got = native.linear(x, w, b, accumulate=acc)
    assert got.data_ptr() == acc.data_ptr()  # added in place: the residual stream
    torch.testing.assert_close(acc, expected, rtol=1e-5, atol=1e-5)


def test_a_rows_product_does_not_depend_on_the_batch_it_is_in(native):
    """The fp32 products sum each dot product in one order whatever the number of rows (the kernel
    takes several rows at a time where it can): a row alone and the same row in a batch of 16 give
    the same bits."""
    x, w = randn(16, 1000), randn(37, 1000, seed=1)  # 1000: a tail after the vector lanes
    batched = native.linear(x, w)
    for i in (0, 3, 7, 15):
        assert torch.equal(native.linear(x[i:i + 1], w)[0], batched[i])
    assert torch.equal(native.linear(x[5:10], w), batched[5:10])
    torch.testing.assert_close(batched, x @ w.t(), rtol=1e-5, atol=1e-4)


def test_linear_above_the_native_row_limit_uses_torch(native):
    x, w = randn(decode_kernels.NATIVE_MAX_ROWS + 1, 16), randn(9, 16, seed=1)
    torch.testing.assert_close(native.linear(x, w), x @ w.t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(native.swiglu(x, w, w), REF.swiglu(x, w, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 5, 16])
def test_swiglu(native, rows):
    x, w1, w3 = randn(rows, 32), randn(70, 32, seed=1), randn(70, 32, seed=2)
    torch.testing.assert_close(native.swiglu(x, w1, w3), REF.swiglu(x, w1, w3), rtol=1e-5, atol=1e-5)


def test_rms_norm(native):
    x, w = randn(3, 40) * 5, randn(40, seed=1)
    torch.testing.assert_close(native.rms_norm(x, w, 1e-6), REF.rms_norm(x, w, 1e-6), rtol=1e-5, atol=1e-5)


def packed_layer(batch, n_kv, groups, head_dim, capacity, seed=0):
    qkv = randn(batch, n_kv, groups + 2, head_dim, seed=seed)
    k, v = randn(batch, n_kv, capacity, head_dim, seed=seed + 1), randn(batch, n_kv, capacity, head_dim, seed=seed + 2)
    angle = randn(batch, head_dim // 2, seed=seed + 3)
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
    return qkv, k, v, cos, sin


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_rope_store(native, groups):
    qkv, k, v, cos, sin = packed_layer(2, 3, groups, 16, capacity=9)
    expected = [t.clone() for t in (qkv, k, v)]
    REF.rope_store(expected[0], cos, sin, expected[1], expected[2], 5)
    native.rope_store(qkv, cos, sin, k, v, 5)
    for got, want in zip((qkv, k, v), expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(v[:, :, 5], qkv[:, :, -1])  # the value is stored as projected: no rotary


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("length", [1, 3, 4, 37])  # shorter than the four key streams, exact, ragged
@pytest.mark.parametrize("masked", [False, True])
def test_attend(native, groups, length, masked):
    qkv, k, v, _, _ = packed_layer(2, 2, groups, 16, capacity=40)
    mask = None
    if masked:
        mask = torch.ones(2, length, dtype=torch.bool)
        mask[0, : length // 2] = False  # left padding of the first row; the last slot is always seen
    scale = 1 / math.sqrt(16)
    torch.testing.assert_close(native.attend(qkv, k, v, length, mask, scale),
                               REF.attend(qkv, k, v, length, mask, scale), rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_refused_with_the_reason(native):
    with pytest.raises(RuntimeError, match="contiguous fp32"):
        native.linear(randn(1, 8).double(), randn(4, 8))
    with pytest.raises(RuntimeError, match="contiguous fp32"):
        native.linear(randn(1, 8), randn(8, 4).t())
    with pytest.raises(RuntimeError, match=r"x must be \[B, in\]"):
        native.linear(randn(1, 8), randn(4, 6))
    with pytest.raises(RuntimeError, match=r"bias must be \[out\]"):
        native.linear(randn(1, 8), randn(4, 8), randn(3))
    with pytest.raises(RuntimeError, match=r"output must be \[B, out\]"):
        native.linear(randn(1, 8), randn(4, 8), accumulate=randn(1, 5))
    qkv, k, v, cos, sin = packed_layer(1, 2, 2, 8, capacity=4)
    with pytest.raises(RuntimeError, match="outside a cache of 4"):
        native.rope_store(qkv, cos, sin, k, v, 4)
    with pytest.raises(RuntimeError, match="outside a cache of 4"):
        native.attend(qkv, k, v, 5, None, 1.0)
    with pytest.raises(RuntimeError, match="qkv must be"):
        native.attend(qkv, k[:, :1].contiguous(), v[:, :1].contiguous(), 2, None, 1.0)


def test_build_directory_changes_with_the_source(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = decode_kernels.build_directory()
    assert first.is_relative_to(tmp_path / "monovl" / "kernels")
    edited = tmp_path / "edited.cpp"
    edited.write_text(decode_kernels.SOURCE.read_text() + "\n// edited\n")
    monkeypatch.setattr(decode_kernels, "SOURCE", edited)
    assert decode_kernels.build_directory() != first


def test_switched_off_or_failed_build_falls_back_to_torch(monkeypatch, tmp_path):
    monkeypatch.setenv("MONOVL_NATIVE_KERNELS", "0")
    assert decode_kernels.native_kernels.__wrapped__() is None
    monkeypatch.setenv("MONOVL_NATIVE_KERNELS", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing built there yet

    def broken(*args, **kwargs):
        raise RuntimeError("Error building extension: no compiler\ndetails")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", broken)
    with pytest.warns(RuntimeWarning, match="could not be built .Error building extension: no compiler.; "
                                            "decoding uses the slower PyTorch kernels"):
        assert decode_kernels.native_kernels.__wrapped__() is None


def test_build_directory_is_per_pytorch_installation(monkeypatch, tmp_path):
    # Two virtual environments with the same PyTorch version must not share a build: its files name
    # the installation's include paths, so they would rebuild it in turn (and race).
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = decode_kernels.build_directory()
    other = tmp_path / "other-venv" / "torch" / "__init__.py"
    monkeypatch.setattr(decode_kernels.torch, "__file__", str(other))
    assert decode_kernels.build_directory() != first
