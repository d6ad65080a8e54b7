"""Typed configuration of a Mono-InternVL model, and its mapping to the official config.json.

The official checkpoint stores an `InternVLChatConfig` (model_type "internvl_chat") with a nested
`vision_config` (model_type "intern_vit_patch") and `llm_config` (model_type "internlm2",
architectures ["InternLM2VEForCausalLM"]). We keep the raw dict we read so that `save_pretrained`
writes back every field the official code may look at, with our typed values laid on top.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class VisionConfig:
    """The patch embedding that replaces a vision encoder (no ViT blocks)."""

    hidden_size: int = 1024  # Dv; the released 2B model uses 1024 (reference 1.7)
    patch_size: int = 14
    image_size: int = 448
    num_channels: int = 3

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class LLMConfig:
    """An InternLM2-style decoder with visual experts."""

    vocab_size: int = 92553
    hidden_size: int = 2048
    intermediate_size: int = 8192
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    rope_scaling: dict | None = None  # {"type": "dynamic"|"linear", "factor": f}
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    # v1.5: separate wqkv/wo for image tokens (reference 9.2, our layout).
    attention_experts: bool = False
    bias: bool = False  # InternLM2's `bias`: biases on wqkv and wo (False in released models)
    qkv_bias: bool = False  # a bias on wqkv only (Qwen2 family)
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 2

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))
            if kind not in ("dynamic", "linear"):
                raise ValueError(f"rope_scaling type must be 'dynamic' or 'linear', got {kind!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class MonoConfig:
    """Top-level model configuration (the fields of InternVLChatConfig that matter)."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    downsample_ratio: float = 0.5
    ps_version: str = "v2"
    template: str = "internlm2-chat"
    max_dynamic_patch: int = 12
    min_dynamic_patch: int = 1
    use_thumbnail: bool = True
    dynamic_image_size: bool = True
    # Fields we did not model, kept verbatim so a save writes them back.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.ps_version not in ("v1", "v2"):
            raise ValueError(f"ps_version must be 'v1' or 'v2', got {self.ps_version!r}")
        scale = round(1 / self.downsample_ratio)
        if abs(scale * self.downsample_ratio - 1) > 1e-9 or self.vision.grid % scale:
            raise ValueError(
                f"downsample_ratio {self.downsample_ratio} must be 1/k with k dividing the patch grid {self.vision.grid}"
            )

    @property
    def num_image_token(self) -> int:
        """LLM tokens per tile: (448/14)^2 * 0.5^2 = 256 for the released model."""
        return int(self.vision.grid**2 * self.downsample_ratio**2)

    @property
    def version(self) -> str:
        return "v1.5" if self.llm.attention_experts else "v1"

    # ---- official config.json ---------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MonoConfig":
        d = copy.deepcopy(d)
        vd = d.get("vision_config", {})
        ld = d.get("llm_config", {})
        if d.get("select_layer", -1) != -1:
            # Any other value indexes hidden states the patch model does not have (reference 1.2).
            raise ValueError(f"select_layer must be -1 for a patch-embedding model, got {d['select_layer']}")
        if vd.get("model_type", "intern_vit_patch") != "intern_vit_patch":
            raise ValueError(
                f"vision_config.model_type is {vd.get('model_type')!r}: this is a modular InternVL checkpoint "
                "with a ViT, not a monolithic Mono-InternVL one"
            )
        vision = VisionConfig(**{f.name: vd[f.name] for f in fields(VisionConfig) if f.name in vd})
        if "force_image_size" in d and d["force_image_size"]:
            vision.image_size = d["force_image_size"]
        llm = LLMConfig(**{f.name: ld[f.name] for f in fields(LLMConfig) if f.name in ld})
        known = {f.name for f in fields(cls)} - {"vision", "llm", "extra"}
        top = {k: d[k] for k in known if k in d}
        return cls(vision=vision, llm=llm, extra=d, **top)

    def to_dict(self) -> dict[str, Any]:
        """A config.json the official code can read: the kept raw fields with ours on top."""
        d = copy.deepcopy(self.extra)
        d.setdefault("architectures", ["InternVLChatModel"])
        d["model_type"] = "internvl_chat"
        for k in ("downsample_ratio", "ps_version", "template", "max_dynamic_patch",
                  "min_dynamic_patch", "use_thumbnail", "dynamic_image_size"):
            d[k] = getattr(self, k)
        d["force_image_size"] = self.vision.image_size
        d["select_layer"] = -1
        d.setdefault("pad2square", False)
        d.setdefault("use_backbone_lora", 0)
        d.setdefault("use_llm_lora", 0)
        vd = d.setdefault("vision_config", {})
        vd.update(asdict(self.vision))
        vd["model_type"] = "intern_vit_patch"
        vd.setdefault("architectures", ["InternVisionPatchModel"])
        ld = d.setdefault("llm_config", {})
        ld.update(asdict(self.llm))
        if not self.llm.attention_experts:
            ld.pop("attention_experts")  # keep v1 files exactly in the official vocabulary
        ld["model_type"] = "internlm2"
        ld["architectures"] = ["InternLM2VEForCausalLM"]
        ld["hidden_act"] = "silu"
        ld.setdefault("attn_implementation", "eager")
        return d

    @classmethod
    def from_json(cls, path: str | Path) -> "MonoConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no config.json at {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")


def preset(name: str, **llm_overrides: Any) -> MonoConfig:
    """Named model shapes. `2b` is the released Mono-InternVL-2B; `cpu-420m` is the CPU benchmark
    size; `tiny` is for tests (56 px tiles, 4 image tokens per tile, runs in milliseconds)."""
    presets = {
        "2b": (VisionConfig(hidden_size=1024), LLMConfig()),
        "cpu-420m": (VisionConfig(hidden_size=1024),
                     LLMConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
                               num_attention_heads=8, num_key_value_heads=4)),
        "tiny": (VisionConfig(hidden_size=32, image_size=56),
                 LLMConfig(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2,
                           rope_scaling={"type": "dynamic", "factor": 2.0})),
    }
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(presets)}")
    vision, llm = presets[name]
    for k, v in llm_overrides.items():
        if not hasattr(llm, k):
            raise ValueError(f"LLMConfig has no field {k!r}")
        setattr(llm, k, v)
    llm.__post_init__()
    return MonoConfig(vision=vision, llm=llm)
