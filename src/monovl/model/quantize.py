"""Weight-only int8 for the decoder's linear layers and the head, one scale per output channel.

A decode step streams every text-path weight once per token, so on a CPU its speed is set by memory
bandwidth; int8 weights read a quarter of the bytes of fp32. PyTorch's own int8 weight-only matmul
(`_weight_int8pack_mm`) was 3.2x *slower* than fp32 at batch 1 on the 2-core dev CPUs, so the decode
kernels read the int8 weights themselves (engine/csrc/decode_kernels.cpp, `linear_int8`).

`quantize_int8_(model)` rounds each weight W [out, in] of the decoder (text and visual experts) and
of the output head to

    scale[o] = max_i |W[o, i]| / 127,   q[o, i] = round(W[o, i] / scale[o])  (int8, in [-127, 127])

and then *replaces* W by q * scale in place: prefill, training-free evaluation and the NLL all run
on exactly the values the int8 decode kernels read, so every path of the model is the same int8
model. Each quantized `nn.Linear` keeps `weight_int8` [out, in] and `weight_scale` [out] as
non-persistent buffers (the state dict stays fp32, the official layout). Quantizing is idempotent:
a saved quantized model, quantized again on load, gives back the same int8 values.

Where the head is tied to the token embeddings (SmolLM2), the shared matrix is quantized once, so
the embeddings take the int8 values too. Memory: fp32 plus int8 copies, 1.25x the fp32 decoder.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["QUANTIZE_CHOICES", "quantize_rows", "quantize_int8_", "is_quantized", "int8_weight"]

QUANTIZE_CHOICES = ("int8",)
QUANTIZE_HELP = ("weight-only int8 for the decoder and the head, one scale per output channel; on CPU the "
                 "decode kernels read int8 (faster decode, NLL within about 1%%; README, Performance)")


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32/bf16 [out, in] -> (int8 [out, in], fp32 scale [out]); all-zero rows get scale 1."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_int8_(model: nn.Module) -> nn.Module:
    """Quantize, in place, every `nn.Linear` under `model.language_model` (decoder layers and head).

    The patch embedding and `mlp1` stay as they are (prefill runs them once per tile; they are a few
    MB). Returns the model. Raises ValueError on a meta-device model (load the weights first).
    """
    lm = model.language_model
    done: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for module in lm.modules():
        if not isinstance(module, nn.Linear):
            continue
        w = module.weight
        if w.is_meta:
            raise ValueError("cannot quantize a model on the meta device: load its weights first")
        key = id(w)
        if key not in done:  # a tied weight is quantized once and shared
            q, scale = quantize_rows(w)
            with torch.no_grad():
                w.copy_((q.float() * scale[:, None]).to(w.dtype))
            done[key] = (q, scale)
        q, scale = done[key]
        module.register_buffer("weight_int8", q.to(w.device), persistent=False)
        module.register_buffer("weight_scale", scale.to(w.device), persistent=False)
    model.quantization = "int8"
    return model


def is_quantized(model: nn.Module) -> bool:
    return getattr(model, "quantization", None) == "int8"


def int8_weight(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(int8 [out, in], fp32 scale [out]) of a quantized linear layer, or None if it is not quantized.

    The int8 values must still match the weight (a training step or a `load_state_dict` after
    quantizing would change the fp32 weight and leave stale int8 copies): checked on one row."""
    q, scale = getattr(linear, "weight_int8", None), getattr(linear, "weight_scale", None)
    if q is None or scale is None:
        return None
    if not torch.equal((q[0].float() * scale[0]).to(linear.weight.dtype), linear.weight[0].detach()):
        raise RuntimeError("the int8 copy of a quantized weight no longer matches it (the weight changed after "
                           "quantize_int8_): quantize again")
    return q, scale
