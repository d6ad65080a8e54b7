"""An `internvl_chat` config.json read without remote code, for vLLM.

Official Mono-InternVL checkpoints ship `configuration_internvl_chat.py` as remote code; monovl reads
the same config.json itself (`monovl.model.config.MonoConfig`). This class wraps that reader in the
`PretrainedConfig` interface vLLM expects: a `text_config` (the InternLM2 decoder with visual
experts) and a `vision_config` (the patch embedding), plus the InternVL fields at the top level.

A monolithic checkpoint (vision model_type `intern_vit_patch`) gets the architecture
`MonoInternVLChatModel`, which `monovl.vllm.register()` maps to our model. A modular InternVL
checkpoint (a ViT) is refused with a clear error: serve it with vLLM's own InternVL and
`--trust-remote-code`, which loads its remote config instead of this one.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from transformers import PretrainedConfig

from monovl.model.config import MonoConfig

from . import ARCHITECTURE


def attention_head_size(head_dim: int) -> int:
    """The head size the attention kernels run at: `head_dim`, or on CPU the next size vLLM's CPU
    attention supports (it has kernels for 32-512 only). The model pads q, k and v with zeros up to
    it, which leaves q.k and the first `head_dim` outputs unchanged (see `model.MonoAttention`)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return head_dim
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    sizes = sorted(CPUAttentionBackend.get_supported_head_sizes())
    for size in sizes:
        if size >= head_dim:
            return size
    raise ValueError(f"head_dim {head_dim} is larger than vLLM's CPU attention supports ({sizes[-1]})")


class MonoInternVLChatConfig(PretrainedConfig):
    """config.json of a Mono-InternVL checkpoint (official v1, monovl v1.5, or `monovl upcycle`)."""

    model_type = "internvl_chat"

    def __init__(self, vision_config: dict | None = None, llm_config: dict | None = None, **kwargs: Any):
        # config.json's own fields; transformers adds loading state (name_or_path, _commit_hash, ...).
        raw = {k: v for k, v in kwargs.items()
               if not k.startswith("_") and k not in ("name_or_path", "trust_remote_code")}
        super().__init__(**kwargs)
        if vision_config is None and llm_config is None:
            return  # transformers builds a default instance to diff against on save
        vision_config = dict(vision_config or {})
        llm_config = dict(llm_config or {})
        if vision_config.get("model_type", "intern_vit_patch") != "intern_vit_patch":
            raise ValueError(
                f"vision_config.model_type is {vision_config.get('model_type')!r}: this is a modular InternVL "
                "checkpoint, not a monolithic Mono-InternVL one. Serve it with vLLM's own InternVL "
                "(--trust-remote-code), or uninstall monovl's vLLM plugin."
            )
        raw.pop("architectures", None)
        mono = MonoConfig.from_dict({**raw, "vision_config": vision_config, "llm_config": llm_config})
        # Kept as the official dict, not the dataclass: transformers serialises every attribute.
        self.mono_config = mono.to_dict()
        self.architectures = [ARCHITECTURE]
        self.vision_config = PretrainedConfig(**{**vision_config, "image_size": mono.vision.image_size})
        llm = mono.llm
        if llm.rope_scaling and llm.rope_scaling["type"] == "linear":
            rope = {"rope_type": "linear", "factor": llm.rope_scaling["factor"], "rope_theta": llm.rope_theta}
        else:
            # InternLM2's dynamic NTK only changes the base for sequences longer than
            # max_position_embeddings; vLLM's "dynamic" rope would change it for every length. So up
            # to that bound, the model length vLLM derives from it, the plain rope is exact.
            rope = {"rope_type": "default", "rope_theta": llm.rope_theta}
        fields = asdict(llm)  # vocab_size, hidden_size, ..., attention_experts, bias, qkv_bias, token ids
        del fields["rope_theta"], fields["rope_scaling"]
        # A list of EOS ids (transformers 5 saves) is kept as it is.
        fields["eos_token_id"] = llm_config.get("eos_token_id", llm.eos_token_id)
        self.text_config = PretrainedConfig(
            model_type="internlm2",
            architectures=["InternLM2VEForCausalLM"],
            # What vLLM sizes the KV cache and picks the attention backend by; the decoder's own
            # head size is hidden_size / num_attention_heads (`real_head_dim`).
            head_dim=attention_head_size(llm.head_dim),
            real_head_dim=llm.head_dim,
            rope_parameters=rope,
            hidden_act="silu",
            **fields,
        )
        self.tie_word_embeddings = llm.tie_word_embeddings

    @property
    def mono(self) -> MonoConfig:
        """monovl's typed view of this config."""
        return MonoConfig.from_dict(self.mono_config)
