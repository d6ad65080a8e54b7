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


def read_rope(d: dict[str, Any], default_theta: float) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from an LLM config dict, in either vocabulary:

    - transformers 4 / official InternLM2: `rope_theta`, and `rope_scaling` {"type" or "rope_type", "factor"};
    - transformers 5: `rope_parameters` {"rope_type", "factor", "rope_theta"}.

    Precedence follows transformers 5 (`convert_rope_params_to_dict`): a `rope_scaling` dict wins over
    `rope_parameters`, and a `rope_theta` inside the chosen dict wins over the top-level one. Scaling
    comes back in the official two-key form {"type", "factor"}, or None for the default RoPE.
    ValueError for anything the decoder cannot compute (it has one RoPE, full-width, linear or dynamic).
    """
    legacy, params = d.get("rope_scaling"), d.get("rope_parameters")
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        raise ValueError(f"per-layer-type rope_parameters ({', '.join(params)}) are not supported: "
                         "monovl's decoder has one RoPE for all layers")
    chosen = legacy or params or {}
    if not isinstance(chosen, dict):
        raise ValueError(f"rope_scaling / rope_parameters must be a dict, got {chosen!r}")
    theta = chosen.get("rope_theta", d.get("rope_theta"))
    if theta is None and isinstance(params, dict):
        theta = params.get("rope_theta")  # rope_scaling held only the scaling, rope_parameters the base
    theta = float(default_theta if theta is None else theta)
    partial = float(chosen.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ValueError(f"partial_rotary_factor {partial} is not supported: the decoder rotates the whole head")
    kind = chosen.get("rope_type", chosen.get("type", "default"))
    if kind in (None, "default"):
        return theta, None
    if kind not in ("linear", "dynamic"):
        raise ValueError(f"RoPE scaling {kind!r} is not supported by monovl's decoder (only 'linear' and 'dynamic')")
    factor = chosen.get("factor")
    if not isinstance(factor, (int, float)) or factor < 1:
        # The same rule as the official InternLM2 config, which refuses a factor below 1.
        raise ValueError(f"RoPE scaling {kind!r} needs a factor >= 1, got {factor!r}")
    return theta, {"type": kind, "factor": float(factor)}


def write_rope(d: dict[str, Any], cfg: "LLMConfig") -> None:
    """Put our RoPE settings into a config dict `d`: always the official `rope_theta` + `rope_scaling`
    (what official code reads), and `rope_parameters` rewritten to agree when the file had one
    (what transformers 5 reads), so no stale value survives a save."""
    d["rope_theta"] = cfg.rope_theta
    d["rope_scaling"] = copy.deepcopy(cfg.rope_scaling)
    if isinstance(d.get("rope_parameters"), dict):
        kind = cfg.rope_scaling["type"] if cfg.rope_scaling else "default"
        d["rope_parameters"] = {"rope_type": kind, "rope_theta": cfg.rope_theta}
        if cfg.rope_scaling:
            d["rope_parameters"]["factor"] = cfg.rope_scaling["factor"]


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
    # {"type": "dynamic"|"linear", "factor": f}: the official two-key form, which official code
    # validates; {"rope_type": ...} is accepted and normalised to it (see `read_rope`).
    rope_scaling: dict | None = None
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
        self.rope_theta, self.rope_scaling = read_rope(
            {"rope_theta": self.rope_theta, "rope_scaling": self.rope_scaling}, self.rope_theta)

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
        rope = {"rope_theta", "rope_scaling"}
        llm = LLMConfig(**{f.name: ld[f.name] for f in fields(LLMConfig) if f.name in ld and f.name not in rope})
        # Either RoPE vocabulary (a transformers 5 save keeps them only in `rope_parameters`).
        llm.rope_theta, llm.rope_scaling = read_rope(ld, llm.rope_theta)
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
        write_rope(ld, self.llm)
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
