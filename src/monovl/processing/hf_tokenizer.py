"""Tokenizers in the Hugging Face ``tokenizer.json`` format, and byte-level BPE from GGUF metadata.

:class:`HFTokenizer` has the interface of the sentencepiece :class:`~monovl.processing.tokenizer.Tokenizer`
(``encode``/``decode``/``token_to_id``/``id_to_token``/``len``/special ids/``add_tokens``/
``save_pretrained``/``from_pretrained``) and works with ``IncrementalDecoder``. It wraps the
``tokenizers`` library, which runs the normaliser, pre-tokeniser, model and decoder described by
``tokenizer.json`` exactly; this class only adds the conventions monovl needs:

* BOS is prepended by :meth:`HFTokenizer.encode` itself, and only when the tokenizer uses one
  (``add_bos_token`` in ``tokenizer_config.json``, else whatever the ``tokenizer.json``
  post-processor does). Qwen2 and SmolLM2 use none; Llama-3 does. EOS is never appended.
* Special tokens are the added tokens flagged ``special``; they are matched atomically in text and
  dropped by ``decode(..., skip_special_tokens=True)``.
* :meth:`HFTokenizer.add_tokens` appends new special tokens at ids ``len(self)``, ``len(self)+1``, ...

:meth:`HFTokenizer.from_gguf` builds the same object from a GGUF file's ``tokenizer.ggml.*`` metadata
(``gpt2`` model: vocabulary, merges, token types, bos/eos/pad/unk ids, ``add_bos_token``), with the
pre-tokeniser that llama.cpp selects from ``tokenizer.ggml.pre``. SmolLM2's (``smollm``) splits every
digit on its own and then applies the GPT-2 regex, as its original ``tokenizer.json`` does. (The
GGUF converter in transformers 5.x omits the digit split; the two differ only on a whitespace run
directly followed by a digit, see tests/test_hf_tokenizer.py.)
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

from tokenizers import AddedToken, Regex, decoders, pre_tokenizers
from tokenizers import Tokenizer as _RustTokenizer
from tokenizers.models import BPE

from .tokenizer import SpecialTokenIds, _read_json, _token_name

__all__ = ["HFTokenizer", "gpt2_byte_decoder"]

# GGUF token types (llama.cpp `llama_token_type`).
_GGUF_NORMAL, _GGUF_UNKNOWN, _GGUF_CONTROL, _GGUF_USER_DEFINED, _GGUF_UNUSED, _GGUF_BYTE = 1, 2, 3, 4, 5, 6

# The GPT-2 split regex (llama.cpp's default for BPE vocabularies).
_GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# Llama-3 ("llama-bpe"): case-insensitive contractions, numbers in groups of up to three.
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama.cpp pre-tokenizer names that mean "each digit alone, then the GPT-2 regex".
_DIGITS_THEN_GPT2 = {"smollm", "starcoder", "refact"}
_GPT2_ONLY = {"default", "gpt-2", "gpt2"}
_LLAMA3 = {"llama-bpe", "llama3", "smaug-bpe"}


@lru_cache(maxsize=1)
def gpt2_byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-printable-character map used by byte-level BPE.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, ...) are
    shifted to U+0100 onwards in byte order, so "Ġ" (U+0120) is the space byte 0x20.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping: dict[str, int] = {chr(b): b for b in keep}
    shifted = 0
    for b in range(256):
        if b not in keep:
            mapping[chr(256 + shifted)] = b
            shifted += 1
    return mapping


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _special(token: str) -> AddedToken:
    return AddedToken(token, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)


class HFTokenizer(SpecialTokenIds):
    """A ``tokenizers``-backed tokenizer with the monovl tokenizer interface."""

    def __init__(
        self,
        tokenizer: _RustTokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        add_bos_token: bool | None = None,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self._tk = tokenizer
        # monovl pads and truncates itself; a tokenizer.json that pads would corrupt encode().
        self._tk.no_padding()
        self._tk.no_truncation()

        def known(name: str | None) -> str | None:
            # Configs sometimes name a token the vocabulary lacks (e.g. unk "<unk>" for byte-level
            # BPE); transformers would invent a new id for it, we treat it as absent.
            return name if name is not None and self._tk.token_to_id(name) is not None else None

        self._bos_token, self._eos_token, self._unk_token = known(bos_token), known(eos_token), known(unk_token)
        # Engines always need a pad id: fall back to EOS, as InternLM2 does.
        self._pad_token = known(pad_token) if known(pad_token) is not None else self._eos_token
        self._extra_config = dict(extra_config or {})
        if add_bos_token is None:
            add_bos_token = self._post_processor_adds_bos()
        self._add_bos = bool(add_bos_token) and self.bos_token_id is not None
        self._special_ids: frozenset[int] | None = None
        self._len: int | None = None
        self._byte_level: bool | None = None

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "HFTokenizer":
        """Load ``tokenizer.json`` plus the optional ``tokenizer_config.json``,
        ``special_tokens_map.json`` and ``added_tokens.json`` of a Hugging Face directory."""
        root = Path(directory)
        path = root / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"no tokenizer.json in {str(root)!r}")
        try:
            tk = _RustTokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises its own exception type
            raise ValueError(f"cannot read {str(path)!r}: {exc}") from exc
        config = _read_json(root / "tokenizer_config.json") if (root / "tokenizer_config.json").is_file() else {}
        special_map = (_read_json(root / "special_tokens_map.json")
                       if (root / "special_tokens_map.json").is_file() else {})

        # Tokens transformers would add on top of tokenizer.json (usually already there).
        wanted: dict[str, tuple[int, bool]] = {}
        for key, entry in (config.get("added_tokens_decoder") or {}).items():
            name = _token_name(entry)
            special = entry.get("special", True) if isinstance(entry, dict) else True
            if name is not None:
                wanted[name] = (int(key), bool(special))
        if (root / "added_tokens.json").is_file():
            for name, idx in _read_json(root / "added_tokens.json").items():
                if not isinstance(idx, int):
                    raise ValueError(f"added_tokens.json: id of {name!r} is not an integer: {idx!r}")
                wanted.setdefault(name, (idx, True))
        for name, (idx, special) in sorted(wanted.items(), key=lambda kv: kv[1][0]):
            have = tk.token_to_id(name)
            if have == idx:
                continue
            if have is not None:
                raise ValueError(f"token {name!r} has id {have} in tokenizer.json but {idx} in the config files")
            size = max(tk.get_vocab(with_added_tokens=True).values(), default=-1) + 1
            if idx != size:
                raise ValueError(
                    f"added token {name!r} has id {idx}, but the next free id of the tokenizer is {size}"
                )
            tk.add_tokens([AddedToken(name, special=special, normalized=False)])

        def pick(key: str) -> str | None:
            if config.get(key) is not None:
                return _token_name(config[key])
            if special_map.get(key) is not None:
                return _token_name(special_map[key])
            return None

        known = {"bos_token", "eos_token", "pad_token", "unk_token", "added_tokens_decoder", "add_bos_token"}
        return cls(
            tk,
            bos_token=pick("bos_token"),
            eos_token=pick("eos_token"),
            pad_token=pick("pad_token"),
            unk_token=pick("unk_token"),
            add_bos_token=config.get("add_bos_token"),
            extra_config={k: v for k, v in config.items() if k not in known},
        )

    @classmethod
    def from_gguf(cls, source: str | os.PathLike | Any) -> "HFTokenizer":
        """Build the tokenizer stored in a GGUF file (a path or an open ``gguf.GGUFReader``).

        Only ``tokenizer.ggml.model == "gpt2"`` (byte-level BPE) is supported; sentencepiece-style
        (``llama``) vocabularies raise a clear error.
        """
        from gguf import GGUFReader  # imported lazily: only GGUF users need it

        reader = source if isinstance(source, GGUFReader) else GGUFReader(str(source))

        def field(name: str, default: Any = None) -> Any:
            f = reader.fields.get(name)
            return default if f is None else f.contents()

        where = getattr(reader, "data", None)
        where = getattr(where, "filename", None) or str(source)
        model = field("tokenizer.ggml.model")
        if model is None:
            raise ValueError(f"GGUF file {where} has no tokenizer metadata (tokenizer.ggml.model)")
        if model != "gpt2":
            raise ValueError(
                f"GGUF tokenizer model {model!r} in {where} is not supported: only byte-level BPE "
                "('gpt2', e.g. SmolLM2, Llama 3) can be built from GGUF metadata"
            )
        tokens: list[str] = list(field("tokenizer.ggml.tokens"))
        types: list[int] = [int(t) for t in field("tokenizer.ggml.token_type", [_GGUF_NORMAL] * len(tokens))]
        merges_raw: list[str] = list(field("tokenizer.ggml.merges", []))
        if len(types) != len(tokens):
            raise ValueError(f"GGUF file {where}: {len(tokens)} tokens but {len(types)} token types")
        vocab = {tok: i for i, tok in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise ValueError(f"GGUF file {where}: the token list has duplicates")
        merges = []
        for m in merges_raw:
            parts = m.split(" ")
            if len(parts) != 2:
                raise ValueError(f"GGUF file {where}: malformed merge {m!r}")
            merges.append((parts[0], parts[1]))
        tk = _RustTokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        pre = field("tokenizer.ggml.pre", "default")
        if pre in _DIGITS_THEN_GPT2:
            tk.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ])
        elif pre in _GPT2_ONLY:
            tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        elif pre in _LLAMA3:
            tk.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(_LLAMA3_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ])
        else:
            raise ValueError(f"GGUF pre-tokenizer {pre!r} in {where} is not supported")
        tk.decoder = decoders.ByteLevel()
        specials = [tok for tok, kind in zip(tokens, types)
                    if kind in (_GGUF_CONTROL, _GGUF_USER_DEFINED, _GGUF_UNKNOWN)]
        tk.add_special_tokens([_special(t) for t in specials])

        def name_of(key: str) -> str | None:
            idx = field(key)
            if idx is None:
                return None
            idx = int(idx)
            if not 0 <= idx < len(tokens):
                raise ValueError(f"GGUF file {where}: {key} = {idx} is outside the vocabulary")
            return tokens[idx]

        extra: dict[str, Any] = {"clean_up_tokenization_spaces": False, "tokenizer_class": "PreTrainedTokenizerFast"}
        template = field("tokenizer.chat_template")
        if template:
            extra["chat_template"] = template
        ctx = None
        arch = field("general.architecture")
        if arch is not None:
            ctx = field(f"{arch}.context_length")
        if ctx:
            extra["model_max_length"] = int(ctx)
        return cls(
            tk,
            bos_token=name_of("tokenizer.ggml.bos_token_id"),
            eos_token=name_of("tokenizer.ggml.eos_token_id"),
            pad_token=name_of("tokenizer.ggml.padding_token_id"),
            unk_token=name_of("tokenizer.ggml.unknown_token_id"),
            # llama.cpp's default for BPE vocabularies is no BOS.
            add_bos_token=bool(field("tokenizer.ggml.add_bos_token", False)),
            extra_config=extra,
        )

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and
        ``added_tokens.json`` (the tokens beyond the model's base vocabulary), readable by
        :meth:`from_pretrained` and by transformers' ``AutoTokenizer``."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        self._tk.save(str(root / "tokenizer.json"))
        added = self._tk.get_added_tokens_decoder()
        decoder = {
            str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                     "single_word": t.single_word, "special": t.special}
            for i, t in sorted(added.items())
        }
        names = {"bos_token": self._bos_token, "eos_token": self._eos_token,
                 "pad_token": self._pad_token, "unk_token": self._unk_token}  # fmt: skip
        config: dict[str, Any] = {"add_bos_token": self._add_bos, "add_eos_token": False}
        config.update(self._extra_config)
        config.update(names)
        config["added_tokens_decoder"] = decoder
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        _write_json(root / "tokenizer_config.json", config)
        _write_json(root / "special_tokens_map.json", {k: v for k, v in names.items() if v is not None})
        base = self.vocab_size
        _write_json(root / "added_tokens.json", {t.content: i for i, t in sorted(added.items()) if i >= base})

    # ----------------------------------------------------------- vocabulary
    def _post_processor_adds_bos(self) -> bool:
        bos = self.bos_token_id
        if bos is None:
            return False
        with_special = self._tk.encode("a", add_special_tokens=True).ids
        return bool(with_special) and with_special[0] == bos

    def _invalidate(self) -> None:
        self._special_ids = None
        self._len = None

    def add_tokens(self, tokens: Sequence[str]) -> int:
        """Make ``tokens`` atomic specials; new ones get ids ``len(self)``, ``len(self)+1``, ...

        A token already in the vocabulary keeps its id. Returns how many were new.
        """
        added = 0
        for token in tokens:
            if not token:
                raise ValueError("cannot add an empty token")
            if self.token_to_id(token) is not None:
                continue
            expected = len(self)
            self._tk.add_special_tokens([_special(token)])
            self._invalidate()
            got = self._tk.token_to_id(token)
            if got != expected:
                raise ValueError(f"token {token!r} was given id {got}, expected {expected}")
            added += 1
        return added

    def __len__(self) -> int:
        """Ids in use (base vocabulary and added tokens): the rows an embedding table must cover."""
        if self._len is None:
            self._len = max(self._tk.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        return self._len

    @property
    def vocab_size(self) -> int:
        """Size of the base model vocabulary, without added tokens (as in HF)."""
        return self._tk.get_vocab_size(with_added_tokens=False)

    @property
    def backend(self) -> _RustTokenizer:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tk

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template of ``tokenizer_config.json`` (or GGUF), if any, as one string."""
        value = self._extra_config.get("chat_template")
        if isinstance(value, list):  # [{"name": "default", "template": ...}, ...]
            for entry in value:
                if isinstance(entry, dict) and entry.get("name") == "default":
                    return entry.get("template")
            return value[0].get("template") if value and isinstance(value[0], dict) else None
        return value

    @property
    def add_bos_token(self) -> bool:
        return self._add_bos

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def id_to_token(self, idx: int) -> str:
        token = self._tk.id_to_token(int(idx)) if idx >= 0 else None
        if token is None:
            raise ValueError(f"token id {idx} is out of range for a vocabulary of {len(self)}")
        return token


    @property
    def all_special_ids(self) -> frozenset[int]:
        """Ids of the added tokens flagged special: matched atomically, skippable in decode."""
        if self._special_ids is None:
            self._special_ids = frozenset(i for i, t in self._tk.get_added_tokens_decoder().items() if t.special)
        return self._special_ids


    def token_bytes(self, idx: int) -> bytes | None:
        """The exact bytes token ``idx`` decodes to, or None where that is not a fixed byte string
        (special tokens, pieces of non-byte-level vocabularies). ``IncrementalDecoder`` uses it to
        hold back output while a multi-byte character is split across tokens."""
        if idx in self.all_special_ids:
            return None
        token = self._tk.id_to_token(int(idx))
        if token is None:
            return None
        if self._byte_level is None:
            decoder = json.loads(self._tk.to_str()).get("decoder") or {}
            self._byte_level = "ByteLevel" in json.dumps(decoder)
        if self._byte_level:
            table = gpt2_byte_decoder()
            try:
                return bytes(table[c] for c in token)
            except KeyError:
                return None
        m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", token)  # sentencepiece-style byte fallback
        return bytes([int(m.group(1), 16)]) if m else None

    # ------------------------------------------------------------ encode/decode
    def encode(self, text: str, add_bos: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``; BOS first when ``add_bos`` and the tokenizer uses one. Never EOS.

        ``parse_special=False`` encodes every special-token string as ordinary text (literal user text).
        """
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        self._tk.encode_special_tokens = not parse_special
        try:
            ids = self._tk.encode(text, add_special_tokens=False).ids
        finally:
            self._tk.encode_special_tokens = False
        if add_bos and self._add_bos:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        size = len(self)
        for idx in ids:
            if not 0 <= idx < size:
                raise ValueError(f"token id {idx} is out of range for a vocabulary of {size}")
        return self._tk.decode(ids, skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return (
            f"HFTokenizer(vocab={self.vocab_size}, total={len(self)}, bos={self.bos_token_id}, "
            f"eos={self.eos_token_id}, pad={self.pad_token_id}, add_bos={self._add_bos})"
        )
