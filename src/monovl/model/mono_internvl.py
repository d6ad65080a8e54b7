"""MonoInternVL: patch embedding + `mlp1` + the expert decoder, and the public API around them.

    model = MonoInternVL.from_pretrained(path)
    out = model(input_ids, pixel_values=None, image_token_id=None)   # out.logits [B, T, vocab], fp32
    new = model.generate(input_ids, pixel_values=None, max_new_tokens=16)
    model.save_pretrained(path)

Image features replace the embeddings at `<IMG_CONTEXT>` positions, in order (all tiles, row-major);
those positions, and only those, form the visual-token mask that routes tokens to the visual experts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoint.safetensors_io import CheckpointError, check_against, iter_tensors, save_tensors, tensor_shapes
from ..processing.processor import checkpoint_stop_token_ids
from .config import MonoConfig
from .decoder import LanguageModel
from .kv_cache import KVCache
from .vision import Projector, VisionModel, image_features

IMG_CONTEXT = "<IMG_CONTEXT>"


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [B, T, vocab] fp32 (or the last `logits_to_keep` positions)


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """fp32 on CPU, bf16 on GPU by default; fp16 is refused (the model overflows in fp16)."""
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                 "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
        if dtype not in names:
            raise ValueError(f"unknown dtype {dtype!r}; use float32 or bfloat16")
        dtype = names[dtype]
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype == torch.float16:
        raise ValueError(
            "float16 is not supported: Mono-InternVL activations overflow in fp16 (the official "
            "LMDeploy port refuses it too). Use bfloat16 on GPU or float32 on CPU."
        )
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"unsupported dtype {dtype}; use float32 or bfloat16")
    return dtype


class MonoInternVL(nn.Module):
    def __init__(self, config: MonoConfig):
        super().__init__()
        self.config = config
        v, llm = config.vision, config.llm
        self.vision_model = VisionModel(v)
        self.mlp1 = Projector.after_pixel_shuffle(v.hidden_size, config.downsample_ratio, llm.hidden_size)
        self.language_model = LanguageModel(llm)
        # `<IMG_CONTEXT>` id; set from the checkpoint's tokenizer by from_pretrained.
        self.image_token_id: int | None = None
        # generate()'s default stop set: the checkpoint template's end of turn and EOS ids, set by
        # from_pretrained (None: the config's EOS only, e.g. a checkpoint without a tokenizer).
        self.stop_token_ids: list[int] | None = None

    @property
    def num_image_token(self) -> int:
        return self.config.num_image_token

    @property
    def device(self) -> torch.device:
        return self.language_model.output.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.output.weight.dtype

    # ---- initialisation -----------------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> "MonoInternVL":
        """Random weights for tests and new models (normal(0, std) matrices, unit norms)."""
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or name.startswith("mlp1.0.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * std)
        return self

    # ---- forward ------------------------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
              image_token_id: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token embeddings with image features spliced in, and the visual-token mask [B, T] (or None)."""
        embeds = self.language_model.model.tok_embeddings(input_ids)
        image_token_id = self.image_token_id if image_token_id is None else image_token_id
        n_slots = int((input_ids == image_token_id).sum()) if image_token_id is not None else 0
        if pixel_values is None:
            if n_slots:
                raise ValueError(
                    f"input_ids contain {n_slots} <IMG_CONTEXT> tokens (id {image_token_id}) but no pixel_values were given"
                )
            if not (self.training and torch.is_grad_enabled()):
                return embeds, None
            # Training on a text-only batch: run the image path on zero tiles, which costs nothing but
            # puts the patch embedding and mlp1 in the graph (zero gradients), so every process of a
            # sharded run reduces the same gradients. The official code feeds a dummy white tile.
            size = self.config.vision.image_size
            pixel_values = embeds.new_zeros(0, self.config.vision.num_channels, size, size)
            image_token_id = -1 if image_token_id is None else image_token_id
        if image_token_id is None:
            raise ValueError("pixel_values given but image_token_id is unknown: pass image_token_id= "
                             "(the <IMG_CONTEXT> token id) or load a checkpoint that has a tokenizer")
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be [tiles, 3, H, W], got shape {list(pixel_values.shape)}")
        n_feats = pixel_values.shape[0] * self.num_image_token
        if n_slots != n_feats:
            raise ValueError(
                f"image token count mismatch: input_ids have {n_slots} <IMG_CONTEXT> tokens but "
                f"{pixel_values.shape[0]} tiles give {n_feats} image features ({self.num_image_token} per tile)"
            )
        feats = image_features(self.vision_model, self.mlp1, pixel_values.to(self.device, self.dtype), self.config)
        mask = input_ids == image_token_id
        embeds = embeds.masked_scatter(mask[..., None], feats.to(embeds.dtype))
        return embeds, mask

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                image_token_id: int | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                logits_to_keep: int | torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None) -> ModelOutput:
        """Logits for `input_ids` [B, T].

        `attention_mask` [B, past+T] (1 = real token) supports padded batches; positions are then
        `cumsum(mask) - 1` as in the official code. `segment_ids` [B, T] packs several samples per
        row (0 = padding, 1..k = sample): attention stays inside each sample, and `position_ids`
        must then restart per sample. With a `cache`, the new tokens attend to everything stored
        before, and image tokens among them still use the visual experts. `logits_to_keep`: the
        last k positions (an int) or a bool mask [B, T] (logits come back flattened, [N, vocab]).
        """
        embeds, visual_mask = self.embed(input_ids, pixel_values, image_token_id)
        past = cache.length if cache is not None else 0
        if segment_ids is not None and (position_ids is None or cache is not None):
            raise ValueError("segment_ids (packed samples) need position_ids and no KV cache")
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, past, input_ids.shape[1], input_ids.device,
                                               input_ids.shape[0])
        segments = segment_ids if segment_ids is not None else attention_mask
        logits = self.language_model(embeds, position_ids, visual_mask, segments, cache, logits_to_keep)
        return ModelOutput(logits=logits)

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                 image_token_id: int | None = None, max_new_tokens: int = 16, do_sample: bool = False,
                 stop_token_ids: list[int] | None = None, **kwargs) -> torch.LongTensor:
        """New tokens only, [B, n]. `stop_token_ids=None` stops where a turn ends: the checkpoint's
        template stop tokens and EOS ids (`MonoProcessor.stop_token_ids`), or the config's EOS when the
        checkpoint has no tokenizer; `[]` means no stop token.

        Extra keyword arguments (temperature, top_p, top_k, repetition_penalty, seed, attention_mask)
        go to `monovl.engine.Engine.generate`.
        """
        from ..engine.generate import Engine, SamplingParams

        sampling_keys = {"temperature", "top_p", "top_k", "repetition_penalty", "seed"}
        sampling = SamplingParams(do_sample=do_sample, **{k: kwargs.pop(k) for k in list(kwargs) if k in sampling_keys})
        if stop_token_ids is None:
            stop_token_ids = self.stop_token_ids or [self.config.llm.eos_token_id]
        return Engine(self).generate(input_ids, pixel_values=pixel_values, image_token_id=image_token_id,
                                     max_new_tokens=max_new_tokens, sampling=sampling,
                                     stop_token_ids=stop_token_ids, **kwargs)

    # ---- checkpoints --------------------------------------------------------------------------

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.state_dict().items() if k not in self._tied_keys()}

    def _tied_keys(self) -> set[str]:
        return {"language_model.output.weight"} if self.config.llm.tie_word_embeddings else set()

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | str | None = None,
                        device: torch.device | str | None = None, quantize: str | None = None) -> "MonoInternVL":
        """Load an official Hugging Face layout directory (or one saved by monovl); no remote code runs.

        `quantize="int8"`: weight-only int8 for the decoder and the head, one scale per output
        channel (monovl.model.quantize); the CPU decode kernels then read int8. Raises ValueError
        for any other value."""
        from .quantize import QUANTIZE_CHOICES, quantize_int8_

        if quantize is not None and quantize not in QUANTIZE_CHOICES:
            raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES} or None, got {quantize!r}")
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"checkpoint directory {path} does not exist")
        device = torch.device(device if device is not None else "cpu")
        dtype = resolve_dtype(dtype, device)
        config = MonoConfig.from_json(path / "config.json")
        with torch.device("meta"):
            model = cls(config)
        expected = model.expected_shapes()
        check_against(expected, tensor_shapes(path), str(path))
        state = {name: t.to(device=device, dtype=dtype) for name, t in iter_tensors(path)}
        model.load_state_dict(state, strict=not model._tied_keys(), assign=True)
        if config.llm.tie_word_embeddings:
            model.language_model.output.weight = model.language_model.model.tok_embeddings.weight
        model.image_token_id = _image_token_id(path, config)
        model.stop_token_ids = checkpoint_stop_token_ids(path)
        if quantize == "int8":
            quantize_int8_(model)
        return model.eval()

    def save_pretrained(self, path: str | Path, max_shard_bytes: int = 5 * 1024**3,
                        state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write config.json and safetensors weights in the official layout (same keys and shapes).

        `state_dict` replaces the module's own, e.g. full tensors gathered from a sharded model.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = state_dict if state_dict is not None else self.state_dict()
        state = {k: v for k, v in state.items() if k not in self._tied_keys()}
        save_tensors(state, path, max_shard_bytes)
        config = self.config.to_dict()
        config["torch_dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
        if self.image_token_id is not None:
            config["img_context_token_id"] = self.image_token_id
        tmp = path / "config.json.tmp"
        tmp.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        tmp.replace(path / "config.json")


def positions_from_mask(attention_mask: torch.Tensor | None, past: int, t: int, device: torch.device,
                        batch: int) -> torch.Tensor:
    """1D positions [B, t]: consecutive after `past`, or cumsum(mask) - 1 with pads at 1 (official rule)."""
    if attention_mask is None:
        return torch.arange(past, past + t, device=device).expand(batch, t)
    pos = attention_mask.long().cumsum(-1) - 1
    pos = pos.masked_fill(attention_mask == 0, 1)
    return pos[:, -t:]


def _image_token_id(path: Path, config: MonoConfig) -> int | None:
    added = path / "added_tokens.json"
    if added.exists():
        try:
            tokens = json.loads(added.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{added} is not valid JSON: {e}") from None
        if IMG_CONTEXT in tokens:
            return int(tokens[IMG_CONTEXT])
    value = config.extra.get("img_context_token_id")
    return int(value) if value is not None else None
