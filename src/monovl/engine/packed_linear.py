"""fp32 prefill GEMMs on weights packed once for oneDNN: PyTorch's own kernels, applied from outside.

`F.linear` on a CPU hands oneDNN (or MKL) a plain [out, in] weight on every call, and the kernel
re-lays it out each time. PyTorch also has the packed path that `torch.compile` with freezing and
vLLM's CPU backend use: `torch.ops.mkldnn._reorder_linear_weight` lays a weight out once, and
`torch.ops.mkldnn._linear_pointwise` multiplies by it. On prefill shapes it runs at 204-220 GFLOP/s
against 86-187 for `F.linear` on the 2-core dev CPU (`benchmarks/bench_prefill_gemm.py`), and the
results agree to fp32 rounding (max |diff| <= 6e-6 there): the sums are the same, in another order.

`PackedLinears(model)` packs the weight of every `nn.Linear` of the model (for `MonoInternVL`: the
decoder's text and visual experts, the head and `mlp1`), and, used as a context manager, sends the `F.linear` calls of those
weights with at least `min_rows` rows to the packed kernel; everything else (decode steps, the
patch embedding's convolution) runs as before. The model is not modified: the
dispatch is a `TorchFunctionMode` active only inside the `with` block, so the state dict, training
and the decode kernels see the same parameters. Memory: one more copy of the decoder's weights.
A weight changed in place after packing (a training step, `load_state_dict`) is packed again on its
next use (checked by the tensor's version counter), so a stale copy is never read.

Only fp32 on CPU with oneDNN: `PackedLinears.supported(model)` says whether it applies.
`prefill_mode(model)` is what the engine and the server use: the model's packer, built on first use
and kept while the model lives, or a no-op where packing does not apply or is switched off.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

# Below this many rows a prefill GEMM is a few decode-like rows, where F.linear is as fast.
MIN_ROWS = 16
# The row count oneDNN lays the weight out for; any row count may use it afterwards.
_PACK_ROWS = 512


class PackedLinears(TorchFunctionMode):
    """Context manager: inside it, `F.linear(x, W, b)` with a packed `W` and >= `min_rows` rows of
    x runs `torch.ops.mkldnn._linear_pointwise` on W's packed copy. x: [..., in] fp32 on CPU."""

    def __init__(self, model: nn.Module, min_rows: int = MIN_ROWS):
        super().__init__()
        self.require(model)
        self.min_rows = min_rows
        # id(weight) -> (weight, its stamp when packed, packed copy); a tied head packs once
        self._packed: dict[int, tuple[torch.Tensor, tuple, torch.Tensor]] = {}
        for module in model.modules():
            if isinstance(module, nn.Linear):
                self._pack(module.weight)

    @staticmethod
    def supported(model: nn.Module) -> bool:
        p = next(model.parameters())
        return (p.device.type == "cpu" and p.dtype == torch.float32 and torch.backends.mkldnn.is_available()
                and hasattr(torch.ops.mkldnn, "_linear_pointwise"))

    @classmethod
    def require(cls, model: nn.Module) -> None:
        """ValueError, saying what the model is, unless `supported(model)`."""
        if not cls.supported(model):
            p = next(model.parameters())
            raise ValueError(f"packed prefill needs an fp32 model on CPU and PyTorch built with oneDNN (mkldnn), "
                             f"got {p.dtype} on {p.device}")

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _PACK_ROWS)
        self._packed[id(weight)] = (weight, self._stamp(weight), packed)
        return packed

    @staticmethod
    def _stamp(weight: torch.Tensor) -> tuple[int, int, torch.dtype]:
        # In-place updates bump the version; `.data` swaps (`model.to`) change the storage or dtype.
        # A weight created under inference_mode keeps no version (nor can autograd update it).
        return -1 if weight.is_inference() else weight._version, weight.data_ptr(), weight.dtype

    def packed_weight(self, weight: torch.Tensor) -> torch.Tensor | None:
        """The packed copy of `weight`, re-packed if the weight changed since; None if not packed."""
        entry = self._packed.get(id(weight))
        if entry is None or entry[0] is not weight:
            return None
        return entry[2] if entry[1] == self._stamp(weight) else self._pack(weight)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """`F.linear(x, weight, bias)` on weight's packed copy (F.linear itself if weight is not one of
        the model's). x [..., in] fp32 -> [..., out]; no autograd."""
        packed = self.packed_weight(weight)
        if packed is None:
            return F.linear(x, weight, bias)
        out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), packed, bias, "none", [], "")
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear or func is torch._C._nn.linear:
            x, weight = args[0], args[1] if len(args) > 1 else kwargs.get("weight")
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if x.dtype == torch.float32 and x.numel() >= self.min_rows * x.shape[-1] and not (
                    torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
                return self.linear(x, weight, bias)  # inside a mode's handler the mode is off: no recursion
        return func(*args, **kwargs)


_PACKERS: "weakref.WeakKeyDictionary[nn.Module, PackedLinears]" = weakref.WeakKeyDictionary()


def prefill_mode(model: nn.Module, enabled: bool | None = None) -> contextlib.AbstractContextManager:
    """The context to run a prefill of `model` in: its `PackedLinears` (built once per model, on the
    first call) when `enabled` is True, or None and the model is fp32 on CPU with oneDNN; otherwise a
    no-op. Raises ValueError for `enabled=True` on a model that cannot be packed."""
    if enabled is False:
        return contextlib.nullcontext()
    if not PackedLinears.supported(model):  # checked per call: the model may have moved since it was packed
        if enabled:
            PackedLinears.require(model)  # raises, saying what the model is
        return contextlib.nullcontext()
    return model_packer(model)


def model_packer(model: nn.Module) -> PackedLinears:
    """The model's `PackedLinears`, built (one more copy of its linear weights) on the first call and
    kept while the model lives; shared by prefill (`prefill_mode`) and batched CPU decode steps
    (`cpu_decode.CPUDecoder`). Raises ValueError unless `PackedLinears.supported(model)`."""
    packer = _PACKERS.get(model)
    if packer is None:
        packer = _PACKERS[model] = PackedLinears(model)
    return packer
