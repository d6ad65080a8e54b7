"""InternLM2-style sentencepiece tokenizer without transformers.

Reads and writes the Hugging Face InternLM2 tokenizer layout:

* ``tokenizer.model``: the sentencepiece model;
* ``added_tokens.json``: ``{token: id}`` for tokens beyond the sentencepiece
  vocabulary (Mono-InternVL adds ``<img>`` ... ``</box>`` at 92544..92552);
* ``tokenizer_config.json``: special token names and ``added_tokens_decoder``.
  The released InternLM2 model stores its chat tokens as sentencepiece pieces
  named ``[UNUSED_TOKEN_141]`` .. ``[UNUSED_TOKEN_146]`` and renames them to
  ``<|plugin|>`` .. ``<|im_start|>`` only through ``added_tokens_decoder``, so
  that map is honoured on load (an id below the sentencepiece size is renamed);
* ``special_tokens_map.json``: bos/eos/pad/unk names.

Encoding follows the slow HF tokenizer: the text is split on every special
string (longest match first), each plain chunk is encoded by sentencepiece on
its own, and BOS is prepended (never EOS).
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import sentencepiece as spm

if TYPE_CHECKING:
    from .hf_tokenizer import HFTokenizer

# Public names are re-exported by monovl.processing.

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# InternLM2's chat tokens in id order (92538..92543 in the released model).
INTERNLM2_CHAT_TOKENS: tuple[str, ...] = (
    "<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", IM_END, IM_START,
)  # fmt: skip

IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
QUAD_START = "<quad>"
QUAD_END = "</quad>"
REF_START = "<ref>"
REF_END = "</ref>"
BOX_START = "<box>"
BOX_END = "</box>"
# The order the official fine-tuning script adds them; ids = sp size + 0..8.
IMAGE_SPECIAL_TOKENS: tuple[str, ...] = (
    IMG_START, IMG_END, IMG_CONTEXT, QUAD_START, QUAD_END, REF_START, REF_END, BOX_START, BOX_END,
)  # fmt: skip

# Default sentencepiece size of the tiny test tokenizer. 498 makes the image
# tokens land on 498/499/500, the ids baked into tests/data/official-v1-tiny,
# so the tiny tokenizer and that checkpoint (vocab 512) fit together.
TINY_SP_VOCAB_SIZE = 498

# sentencepiece ModelProto.SentencePiece.Type values.
_PIECE_NORMAL, _PIECE_UNKNOWN, _PIECE_CONTROL, _PIECE_USER_DEFINED = 1, 2, 3, 4


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _iter_proto_fields(buf: bytes) -> Iterable[tuple[int, int, object]]:
    """Yield ``(field_number, wire_type, value)`` for one protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = struct.unpack("<f", buf[pos : pos + 4])[0], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} in tokenizer.model")
        yield field, wire, value


def _piece_types(model_proto: bytes) -> list[int]:
    """Piece types straight from the serialized model.

    The sentencepiece Python API has no ``is_user_defined``, and we need it to
    know which pieces are atomic specials; the protobuf package is not a
    dependency, so the two fields involved are read by hand.
    """
    types: list[int] = []
    for field, wire, value in _iter_proto_fields(model_proto):
        if field == 1 and wire == 2:  # repeated SentencePiece pieces
            kind = _PIECE_NORMAL
            for sub_field, sub_wire, sub_value in _iter_proto_fields(value):  # type: ignore[arg-type]
                if sub_field == 3 and sub_wire == 0:
                    kind = int(sub_value)  # type: ignore[arg-type]
            types.append(kind)
    return types


def _token_name(value: object) -> str | None:
    """HF configs store a special token either as a string or as an AddedToken dict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"cannot read a token name from {value!r}")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read tokenizer file {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object")
    return data


class SpecialTokenIds:
    """The special-token id properties both tokenizer backends share; they hold the token *names*
    (`_bos_token`, ...) and implement `token_to_id` and `all_special_ids`."""

    def _id_or_none(self, token: str | None) -> int | None:
        return None if token is None else self.token_to_id(token)

    @property
    def bos_token(self) -> str | None:
        return self._bos_token

    @property
    def eos_token(self) -> str | None:
        return self._eos_token

    @property
    def unk_token(self) -> str | None:
        return self._unk_token

    @property
    def all_special_tokens(self) -> list[str]:
        """Names of :attr:`all_special_ids`, in id order: the strings a chat template's markup is made of."""
        return [self.id_to_token(i) for i in sorted(self.all_special_ids)]

    @property
    def bos_token_id(self) -> int | None:
        return self._id_or_none(self._bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id_or_none(self._eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id_or_none(self._pad_token)

    @property
    def unk_token_id(self) -> int | None:
        return self._id_or_none(self._unk_token)

    def is_special(self, idx: int) -> bool:
        return idx in self.all_special_ids


class Tokenizer(SpecialTokenIds):
    """Sentencepiece model plus atomic special tokens, InternLM2 conventions.

    ``vocab_size`` is the sentencepiece size (HF semantics); ``len(tokenizer)``
    also counts added tokens and is what an embedding table must cover.
    """

    def __init__(
        self,
        model_proto: bytes,
        added_tokens: dict[str, int] | None = None,
        *,
        bos_token: str | None = BOS_TOKEN,
        eos_token: str | None = EOS_TOKEN,
        pad_token: str | None = None,
        unk_token: str | None = UNK_TOKEN,
        extra_config: dict | None = None,
    ) -> None:
        self._model_proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._model_proto)
        except Exception as exc:
            raise ValueError(f"not a valid sentencepiece model: {exc}") from exc
        self._base_size = self._sp.get_piece_size()
        self._types = _piece_types(self._model_proto)
        if len(self._types) != self._base_size:
            raise ValueError("sentencepiece model proto and processor disagree on the vocabulary size")
        # id -> display string for ids whose name differs from (or is not in) the sp vocab.
        self._id_to_added: dict[int, str] = {}
        # Every string that is matched atomically in text, and its id.
        self._atomic: dict[str, int] = {}
        for i, kind in enumerate(self._types):
            if kind in (_PIECE_UNKNOWN, _PIECE_CONTROL, _PIECE_USER_DEFINED):
                self._atomic[self._sp.id_to_piece(i)] = i
        self._extra_config = dict(extra_config or {})
        self._bos_token, self._eos_token = bos_token, eos_token
        self._unk_token = unk_token
        # InternLM2 pads with </s>; fall back to EOS so engines always get a pad id.
        self._pad_token = pad_token if pad_token is not None else eos_token
        self._pattern: re.Pattern[str] | None = None
        self._special_ids: frozenset[int] | None = None
        if added_tokens:
            for token, idx in sorted(added_tokens.items(), key=lambda kv: kv[1]):
                self._register(token, int(idx))
        self._check_contiguous()

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "Tokenizer":
        """Load ``tokenizer.model`` + optional JSON side files from a directory."""
        root = Path(directory)
        model_path = root / "tokenizer.model"
        if not model_path.is_file():
            raise ValueError(f"no tokenizer.model in {str(root)!r}")
        added: dict[str, int] = {}
        if (root / "added_tokens.json").is_file():
            for token, idx in _read_json(root / "added_tokens.json").items():
                if not isinstance(idx, int):
                    raise ValueError(f"added_tokens.json: id of {token!r} is not an integer: {idx!r}")
                added[token] = idx
        config: dict = {}
        if (root / "tokenizer_config.json").is_file():
            config = _read_json(root / "tokenizer_config.json")
        special_map: dict = {}
        if (root / "special_tokens_map.json").is_file():
            special_map = _read_json(root / "special_tokens_map.json")
        for key, entry in (config.get("added_tokens_decoder") or {}).items():
            name = _token_name(entry)
            if name is not None:
                added.setdefault(name, int(key))

        def pick(key: str, default: str | None) -> str | None:
            # tokenizer_config wins; special_tokens_map fills the gaps.
            if config.get(key) is not None:
                return _token_name(config[key])
            if special_map.get(key) is not None:
                return _token_name(special_map[key])
            return default

        known = {"bos_token", "eos_token", "pad_token", "unk_token", "added_tokens_decoder"}
        return cls(
            model_path.read_bytes(),
            added,
            bos_token=pick("bos_token", BOS_TOKEN),
            eos_token=pick("eos_token", EOS_TOKEN),
            pad_token=pick("pad_token", None),
            unk_token=pick("unk_token", UNK_TOKEN),
            extra_config={k: v for k, v in config.items() if k not in known},
        )

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the four HF InternLM2 tokenizer files."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        (root / "tokenizer.model").write_bytes(self._model_proto)
        beyond = {tok: i for i, tok in sorted(self._id_to_added.items()) if i >= self._base_size}
        _write_json(root / "added_tokens.json", beyond)
        flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
        decoder = {str(i): {"content": self.id_to_token(i), **flags} for i in sorted(self.all_special_ids)}
        names = {"bos_token": self._bos_token, "eos_token": self._eos_token,
                 "pad_token": self._pad_token, "unk_token": self._unk_token}  # fmt: skip
        additional = self._chat_special_tokens()
        # BOS yes, EOS never: what InternLM2Tokenizer does and the prompts rely on.
        config = {"add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False}
        config.update(self._extra_config)
        config.update(names)
        config["added_tokens_decoder"] = decoder
        config["additional_special_tokens"] = additional
        config["tokenizer_class"] = "InternLM2Tokenizer"
        _write_json(root / "tokenizer_config.json", config)
        special_map = {k: v for k, v in names.items() if v is not None}
        special_map["additional_special_tokens"] = additional
        _write_json(root / "special_tokens_map.json", special_map)

    # ----------------------------------------------------------- vocabulary
    def _register(self, token: str, idx: int) -> None:
        if not token:
            raise ValueError("cannot register an empty token")
        if idx < 0:
            raise ValueError(f"token {token!r} has a negative id {idx}")
        previous = self._atomic.get(token)
        if previous is not None and previous != idx:
            raise ValueError(f"token {token!r} maps to both {previous} and {idx}")
        self._atomic[token] = idx
        if idx >= self._base_size or self._sp.id_to_piece(idx) != token:
            self._id_to_added[idx] = token
        self._pattern = None
        self._special_ids = None

    def _check_contiguous(self) -> None:
        # A hole above the sp vocab would make len() lie about the embedding size.
        extra = sorted(i for i in self._id_to_added if i >= self._base_size)
        if extra != list(range(self._base_size, self._base_size + len(extra))):
            raise ValueError(
                f"added token ids must continue the sentencepiece vocabulary "
                f"({self._base_size}, {self._base_size + 1}, ...) without gaps; got {extra}"
            )

    def add_tokens(self, tokens: Sequence[str]) -> int:
        """Make ``tokens`` atomic specials; new ones get ids ``len(self)``, ``len(self)+1``, ...

        A token already in the vocabulary keeps its id. Returns how many were new.
        """
        added = 0
        for token in tokens:
            existing = self.token_to_id(token)
            if existing is None:
                self._register(token, len(self))
                added += 1
            else:
                self._register(token, existing)
        return added

    def __len__(self) -> int:
        extra = sum(1 for i in self._id_to_added if i >= self._base_size)
        return self._base_size + extra

    @property
    def vocab_size(self) -> int:
        """Sentencepiece vocabulary size, without added tokens (as in HF)."""
        return self._base_size

    @property
    def sp_model(self) -> spm.SentencePieceProcessor:
        return self._sp

    def token_to_id(self, token: str) -> int | None:
        """Id of ``token`` (special or ordinary piece), or ``None`` if unknown."""
        if token in self._atomic:
            return self._atomic[token]
        idx = self._sp.piece_to_id(token)
        if idx == self._sp.unk_id() and token != self._sp.id_to_piece(idx):
            return None
        if idx in self._id_to_added:  # renamed piece: only the new name is valid
            return None
        return idx

    def id_to_token(self, idx: int) -> str:
        if idx in self._id_to_added:
            return self._id_to_added[idx]
        if 0 <= idx < self._base_size:
            return self._sp.id_to_piece(idx)
        raise ValueError(f"token id {idx} is out of range for a vocabulary of {len(self)}")


    @property
    def all_special_ids(self) -> frozenset[int]:
        """Ids treated atomically: sp control/unknown/user-defined pieces and added tokens."""
        if self._special_ids is None:
            self._special_ids = frozenset(self._atomic.values())
        return self._special_ids


    def _chat_special_tokens(self) -> list[str]:
        """Names of the user-defined specials (InternLM2 chat tokens), in id order."""
        out = []
        for idx in sorted(set(self._atomic.values())):
            kind = self._types[idx] if idx < self._base_size else None
            if kind == _PIECE_USER_DEFINED:
                out.append(self.id_to_token(idx))
        return out

    # ------------------------------------------------------------ encode/decode
    def _special_pattern(self) -> re.Pattern[str]:
        if self._pattern is None:
            # Longest first: Python's alternation takes the first branch that
            # matches, so "<|im_start|>" must not lose to a shorter prefix token.
            names = sorted(self._atomic, key=lambda s: (-len(s), s))
            self._pattern = re.compile("|".join(re.escape(n) for n in names))
        return self._pattern

    def encode(self, text: str, add_bos: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``, BOS first when ``add_bos``; never EOS.

        ``parse_special=False`` encodes every special-token string as ordinary text (literal user text).
        """
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        ids: list[int] = []
        if add_bos:
            bos = self.bos_token_id
            if bos is None:
                raise ValueError("this tokenizer has no BOS token; call encode(..., add_bos=False)")
            ids.append(bos)
        if not parse_special:
            return ids + self._encode_plain(text)
        pos = 0
        for match in self._special_pattern().finditer(text):
            if match.start() > pos:
                ids.extend(self._sp.encode(text[pos : match.start()]))
            ids.append(self._atomic[match.group(0)])
            pos = match.end()
        if pos < len(text):
            ids.extend(self._sp.encode(text[pos:]))
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        """Sentencepiece ids of ``text`` with no special id in them.

        Sentencepiece itself always matches its user-defined pieces (InternLM2's chat tokens are such
        pieces), so each one it emits is spelt out again: one piece per character, or the character's
        byte-fallback pieces when it has none. Control pieces (``<s>``, ``</s>``) are never matched in text.
        """
        ids: list[int] = []
        for idx in self._sp.encode(text):
            if self._types[idx] != _PIECE_USER_DEFINED:
                ids.append(idx)
                continue
            for ch in self._sp.id_to_piece(idx):
                piece = self._sp.piece_to_id(ch)
                if self._types[piece] == _PIECE_NORMAL and self._sp.id_to_piece(piece) == ch:
                    ids.append(piece)
                else:
                    ids.extend(self._sp.piece_to_id(f"<0x{b:02X}>") for b in ch.encode("utf-8"))
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Specials are rendered by name (or dropped); ordinary runs go through sentencepiece.

        Each run between specials is decoded on its own, like the HF slow
        tokenizer, so sentencepiece strips the dummy-prefix space at run starts.
        """
        specials = self.all_special_ids
        size = len(self)
        parts: list[str] = []
        run: list[int] = []
        for raw in ids:
            idx = int(raw)
            if not 0 <= idx < size:
                raise ValueError(f"token id {idx} is out of range for a vocabulary of {size}")
            if idx in specials:
                if run:
                    parts.append(self._sp.decode(run))
                    run = []
                if not skip_special_tokens:
                    parts.append(self.id_to_token(idx))
            else:
                run.append(idx)
        if run:
            parts.append(self._sp.decode(run))
        return "".join(parts)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(sp_vocab={self._base_size}, total={len(self)}, "
            f"bos={self.bos_token_id}, eos={self.eos_token_id}, pad={self.pad_token_id})"
        )


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class IncrementalDecoder:
    """Turn a stream of token ids into printable text deltas.

    Two problems make per-token decoding wrong: byte-fallback pieces of one
    multi-byte character arrive as separate tokens, and sentencepiece drops the
    leading-space marker of the first piece it decodes. Both are solved by
    decoding a small window that starts one already-printed token back, and by
    holding output while the ids end in an unfinished UTF-8 sequence.
    It works with both backends: sentencepiece byte-fallback pieces (``<0xE4>``)
    and byte-level BPE tokens (``HFTokenizer.token_bytes``) both report their bytes.
    The concatenation of everything returned by :meth:`add` and :meth:`flush`
    equals ``tokenizer.decode(all_ids)``.
    """

    def __init__(self, tokenizer: "Tokenizer | HFTokenizer", skip_special_tokens: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.reset()

    def reset(self) -> None:
        self._ids: list[int] = []
        self._prefix_offset = 0  # window start: context for the leading-space rule
        self._read_offset = 0  # ids before this are already printed
        self._emitted: list[str] = []

    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    @property
    def text(self) -> str:
        """All text returned so far."""
        return "".join(self._emitted)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _token_bytes(self, idx: int) -> bytes | None:
        """Bytes of one token when it is a fixed byte string, else None (an ordinary piece or a special)."""
        tok = self.tokenizer
        token_bytes = getattr(tok, "token_bytes", None)
        if token_bytes is not None:
            return token_bytes(idx)
        if idx < tok.vocab_size and tok.sp_model.is_byte(idx):
            return bytes([int(tok.sp_model.id_to_piece(idx)[3:5], 16)])  # "<0xE4>" -> 0xE4
        return None

    def _ends_mid_character(self) -> bool:
        """True when the bytes of the unprinted tokens end in a valid but unfinished UTF-8 character.

        Exact rather than "output ends in U+FFFD": genuinely invalid bytes are
        released at once instead of being held for a completion that never comes.
        """
        tail = b""
        for idx in reversed(self._ids[self._read_offset :]):
            piece = self._token_bytes(idx)
            if piece is None:
                break
            tail = piece + tail
            if len(tail) >= 4:  # a UTF-8 character is at most 4 bytes long
                break
        return _unfinished_utf8(tail)

    def add(self, token_id: int) -> str:
        """Feed one id; return the newly printable text (possibly empty)."""
        self._ids.append(int(token_id))
        if self._ends_mid_character():
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if new_text.startswith(prefix_text):
            delta = new_text[len(prefix_text) :]
        else:
            # Not expected from sentencepiece; stay correct with a full re-decode.
            delta = self._decode(self._ids)[len(self.text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._emitted.append(delta)
        return delta

    def flush(self) -> str:
        """Release whatever is held back (a dangling partial character becomes U+FFFD)."""
        if self._read_offset == len(self._ids):
            return ""
        delta = self._decode(self._ids)[len(self.text) :]
        self._prefix_offset = self._read_offset = len(self._ids)
        self._emitted.append(delta)
        return delta


def _unfinished_utf8(data: bytes) -> bool:
    """True when ``data`` ends with the lead byte and some, but not all, continuation bytes of a character."""
    continuation = 0
    for value in reversed(data):
        if 0x80 <= value <= 0xBF:
            continuation += 1
            if continuation > 3:
                return False
            continue
        if 0xC2 <= value <= 0xDF:
            need = 1
        elif 0xE0 <= value <= 0xEF:
            need = 2
        elif 0xF0 <= value <= 0xF4:
            need = 3
        else:
            return False
        return continuation < need
    return False


def load_tokenizer(directory: str | os.PathLike) -> "Tokenizer | HFTokenizer":
    """The tokenizer of a checkpoint directory, by the files present.

    * ``tokenizer.model`` with an InternLM2 ``tokenizer_class`` (or no ``tokenizer.json``): the
      sentencepiece :class:`Tokenizer`;
    * ``tokenizer.json``: :class:`~monovl.processing.hf_tokenizer.HFTokenizer` (Llama, Qwen2,
      SmolLM2, ... and everything ``monovl upcycle`` writes for them).
    """
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"tokenizer directory {str(root)!r} does not exist")
    has_sp = (root / "tokenizer.model").is_file()
    has_json = (root / "tokenizer.json").is_file()
    if has_sp and has_json:
        config = _read_json(root / "tokenizer_config.json") if (root / "tokenizer_config.json").is_file() else {}
        has_json = "internlm" not in str(config.get("tokenizer_class", "")).lower()
    if has_json:
        from .hf_tokenizer import HFTokenizer  # lazy: needs the `tokenizers` package

        return HFTokenizer.from_pretrained(root)
    if has_sp:
        return Tokenizer.from_pretrained(root)
    raise ValueError(f"no tokenizer in {str(root)!r}: expected tokenizer.model (sentencepiece) or tokenizer.json")


# ---------------------------------------------------------------- tiny tokenizer
def default_tiny_corpus() -> list[str]:
    """A deterministic few-hundred-sentence English corpus (plus a little Chinese).

    Enough variety for a ~500-piece BPE model; generated rather than shipped so
    nothing is downloaded. Chinese outside these sentences falls back to bytes,
    which is exactly what the byte-fallback tests need.
    """
    from .prompt import INTERNLM2_SYSTEM_MESSAGE  # local import: prompt imports this module

    subjects = (
        "a cat|the dog|a red car|two people|an old man|a small bird|a young woman|"
        "three children|a white boat|the tall building|a brown horse|a green bus"
    ).split("|")
    actions = (
        "is sitting on|is standing near|is looking at|is walking toward|"
        "is parked beside|is flying over|is playing with|is waiting at"
    ).split("|")
    places = (
        "a wooden table|the green grass|a blue sky|the river bank|a busy street|the snowy mountain|"
        "a bowl of fruit|the train station|a quiet beach|the city park|a kitchen counter"
    ).split("|")
    nouns = "apple chair window person tree bottle book cloud sign".split()
    colors = "red blue green yellow black white orange purple".split()
    corpus: list[str] = []
    for k, (subject, action) in enumerate((s, a) for s in subjects for a in actions):
        corpus.append(f"The image shows {subject} {action} {places[k % len(places)]}.")
    for k, noun in enumerate(nouns):
        for n in range(2, 9):
            corpus.append(f"Question: How many {noun}s are in the picture?\nAnswer: There are {n + k} {noun}s.")
    for k, color in enumerate(colors):
        noun = nouns[k % len(nouns)]
        corpus.append(f"What color is the {noun}? The {noun} is {color}, the background {colors[k - 1]}.")
        corpus.append(f"Please describe the {color} {noun} in detail. It is about {10 * k + 7} cm tall.")
    corpus += [
        "user\nDescribe this image in detail.\nassistant\nThe picture shows a sunny day.",
        "system\nYou are a helpful assistant that answers questions about images.",
        "Read the text in the image and answer the question with a single word or phrase.",
        "The chart shows the sales of 2023 and 2024; the numbers increased by 15 percent.",
        "Where is the object located? It is located at the top left corner of the image.",
        "I cannot see any people in this photo, but there are several trees and a house.",
        INTERNLM2_SYSTEM_MESSAGE,
        "你好！我是一个多模态助手。",
        "请描述这张图片。图片中有一只猫。",
        "这是什么颜色？这是红色的。",
    ] * 2
    return corpus


def train_tiny_tokenizer(
    out_dir: str | os.PathLike,
    corpus: Sequence[str] | None = None,
    vocab_size: int = TINY_SP_VOCAB_SIZE,
    model_type: str = "bpe",
) -> Tokenizer:
    """Train a small InternLM2-convention sentencepiece model and save it to ``out_dir``.

    Conventions: ``<unk>``=0, ``<s>``=1, ``</s>``=2, the six InternLM2 chat
    tokens as user-defined pieces (3..8 here; the real model has them at the end
    of its vocabulary), byte fallback, no text normalisation (so decode(encode(x))
    == x), then the nine image tokens of :data:`IMAGE_SPECIAL_TOKENS` appended
    at ``vocab_size + 0..8`` as the released checkpoint does. Takes well under a second.
    """
    sentences = list(corpus) if corpus is not None else default_tiny_corpus()
    if not sentences or not all(isinstance(s, str) for s in sentences):
        raise ValueError("corpus must be a non-empty list of strings")
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=buffer,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            character_coverage=1.0,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,  # InternLM2 ids; pad reuses </s>
            unk_piece=UNK_TOKEN, bos_piece=BOS_TOKEN, eos_piece=EOS_TOKEN,
            user_defined_symbols=list(INTERNLM2_CHAT_TOKENS),
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            num_threads=1,  # deterministic piece order
            minloglevel=2,
        )  # fmt: skip
    except RuntimeError as exc:
        raise ValueError(
            f"sentencepiece could not train a {vocab_size}-piece {model_type} model on "
            f"{len(sentences)} sentences: {exc}"
        ) from exc
    tokenizer = Tokenizer(buffer.getvalue())
    tokenizer.add_tokens(IMAGE_SPECIAL_TOKENS)
    tokenizer.save_pretrained(out_dir)
    return tokenizer
