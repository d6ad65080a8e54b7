"""Serve Mono-InternVL checkpoints with vLLM: an out-of-tree model plugin.

vLLM removed its Mono-InternVL path (`InternLM2VEForCausalLM`, last in v0.23). This package puts it
back through vLLM's plugin system, without forking vLLM:

- `register()` is the `vllm.general_plugins` entry point (see pyproject.toml). vLLM calls it in every
  process before it reads a config. It teaches transformers to read an `internvl_chat` config.json
  with no remote code (`config.MonoInternVLChatConfig`), which names a monolithic checkpoint's
  architecture `MonoInternVLChatModel`, and registers that architecture (`model.MonoInternVLForVLLM`).
- The model reuses monovl's patch embedding and `mlp1` (`monovl.model.vision`) and builds the decoder
  from vLLM's tensor-parallel layers, routing every token to exactly one expert by the image-token
  mask, in every chunk of a chunked prefill.
- The multimodal processor (`processing.py`) tiles images with monovl's own preprocessing, so a
  prompt has the same tokens and pixels as in monovl's `MonoProcessor`.
- `InternLM2Tokenizer` (tokenizer.py) encodes official checkpoints' sentencepiece prompts as the
  official remote-code tokenizer does.
- The chat template comes from the checkpoint's tokenizer files, as vLLM reads them. Official
  checkpoints only name theirs in config.json (`"template": "internlm2-chat"`); for those,
  `named_chat_template` gives vLLM monovl's template as jinja (`ChatTemplate.to_jinja`).

Nothing here is imported by the rest of monovl; it needs vLLM (`make vllm-env`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

ARCHITECTURE = "MonoInternVLChatModel"


def named_chat_template(model_dir: str) -> Path | None:
    """vLLM's chat-template fallback for `internvl_chat` checkpoints without a template of their own:
    the jinja of the monovl template that config.json names, written once to a temp file (vLLM wants a
    path). None when config.json names none that monovl knows (vLLM then reports the missing template)."""
    from monovl.processing.prompt import available_templates, get_template

    config = Path(model_dir) / "config.json"
    try:
        name = json.loads(config.read_text()).get("template")
    except (OSError, ValueError):
        return None
    if name not in available_templates():
        return None
    path = Path(tempfile.gettempdir()) / f"monovl-chat-template-{name}.jinja"
    text = get_template(name).to_jinja()
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def register() -> None:
    """Register the config class and the model with transformers and vLLM (idempotent, cheap:
    the model module is imported lazily by vLLM)."""
    from transformers import AutoConfig, AutoTokenizer
    from vllm import ModelRegistry
    from vllm.transformers_utils.chat_templates.registry import register_chat_template_fallback_path

    from .config import MonoInternVLChatConfig
    from .tokenizer import InternLM2Tokenizer

    # exist_ok: vLLM calls plugins once per process, and tests may call register() again.
    AutoConfig.register("internvl_chat", MonoInternVLChatConfig, exist_ok=True)
    # transformers finds a tokenizer_config.json's "tokenizer_class" among registered classes by name.
    AutoTokenizer.register(MonoInternVLChatConfig, fast_tokenizer_class=InternLM2Tokenizer, exist_ok=True)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "monovl.vllm.model:MonoInternVLForVLLM")
        register_chat_template_fallback_path("internvl_chat", named_chat_template)
