"""Training data sources: streamed, deterministic, resumable record readers.

Two kinds of source, both yielding :class:`Record` objects (or :class:`Skipped`
markers for bad input) together with a small JSON-serialisable *state after
this item*; re-opening a source with that state continues with the next item,
exactly.

:class:`IndexedJsonlSource` (random access; conversation data, SFT scale)
    One JSONL file, or one LLaVA-style ``.json`` array of records (image root =
    the file's folder for both), or a meta JSON ``{name: {"root",
    "annotation", "repeat_time", "length"}}`` mixing several (relative paths are
    taken from the meta file's folder, else from the working directory as in
    InternVL; ``length`` is informational, the line count is used). Each file is indexed once
    (8 bytes per line, the byte offset of each line start; 16 bytes per record
    of a JSON array, its byte span; the records are not kept). ``repeat_time``
    r expands a dataset of L lines (records) to ``int(L * r)`` virtual records: ``floor(r)`` full copies plus a fixed seeded subset of the
    lines for the fractional part (r < 1 is a fixed subsample, as in InternVL).
    All virtual records of all datasets are visited in one seeded pseudo-random
    order per epoch (a Feistel-network permutation, O(1) memory), so datasets
    are mixed in proportion to their sizes. State: ``{"epoch", "k"}`` (next
    position in the epoch's order).

:class:`ShardStreamSource` (sequential; web-scale caption data)
    Tar shards in the WebDataset layout (``000123.jpg`` + ``000123.txt``/``.json``
    grouped by key) read with ``tarfile`` in streaming mode ``r|*``, or JSONL
    shards read line by line. Shards may be paths, FIFOs or ``pipe:COMMAND``
    (the command's stdout is read), so the data can be larger than memory and
    than one disk. Per epoch the shard order is a seeded permutation; inside a
    shard a seeded shuffle buffer mixes nearby samples. State:
    ``{"epoch", "shard", "emitted"}``; resuming replays the one current shard
    up to ``emitted`` items without decoding them.

Both split the stream between *consumers* (``num_consumers`` = distributed
ranks x DataLoader workers): consumer c takes positions ``k % C == c`` of the
epoch order (indexed source), or shards ``j % C == c`` (shard source; if there
are fewer shards than consumers, every consumer reads every shard and takes
groups ``g % C == c``).

Record formats (one JSON object per line or per tar ``.json``):

* conversation: ``{"image": "a.jpg" | ["a.jpg", "b.jpg"] (optional),
  "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt",
  "value": "..."}, ...]}``; an optional first ``{"from": "system"}`` turn sets
  the system message; ``user``/``assistant`` are accepted for the roles.
  Values are ``.strip()``-ed as in the official preprocessing.
* caption pair (stages s1.1/s1.2): ``{"image": path, "caption": text}``, or a
  tar group with an image and a ``.txt`` (or ``.json`` with ``"caption"``). It
  becomes the one-turn conversation user: ``<image>\\n`` + an instruction from
  :data:`CAPTION_PROMPTS` (picked by a seeded hash of the record's id, so it is
  stable across epochs, workers and resumes), assistant: the caption.

Only images are supported: a record with a video, audio or other media field
(``{"video": "clip.mp4", ...}``, any value naming a video or audio file) and
a tar group with such a member are skipped as ``unsupported_media``, never
trained as text only.

Bad input never stops a stream: it is yielded as :class:`Skipped` with a reason
and a location (``file:line``, ``file.json[i]`` for the i-th record of a JSON
array, or ``shard.tar:key``) and counted in :class:`DataStats`.
"""

from __future__ import annotations

import bisect
import glob
import json
import math
import os
import random
import re
import stat
import subprocess
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, Union

import numpy as np

from ..processing.prompt import IMAGE_PLACEHOLDER
from ..processing.tokenizer import IM_END, IM_START, IMG_CONTEXT, IMG_END, IMG_START

__all__ = [
    "CAPTION_PROMPTS",
    "DataStats",
    "caption_prompt",
    "IMAGE_EXTENSIONS",
    "OTHER_MEDIA_EXTENSIONS",
    "IndexedJsonlSource",
    "Record",
    "ShardStreamSource",
    "Skipped",
    "SeededPermutation",
    "expand_shards",
    "open_source",
    "parse_record",
]

# Instructions a caption pair is trained with (one per record, seeded).
CAPTION_PROMPTS: tuple[str, ...] = (
    "Describe the image briefly.",
    "Write a short caption for the image.",
    "Summarize the image in one sentence.",
    "What does the image show? Answer briefly.",
    "Give a brief description of the image.",
)

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
# Media we cannot train on: a record naming one is skipped, not trained as text.
OTHER_MEDIA_EXTENSIONS: tuple[str, ...] = (
    "mp4", "avi", "mov", "mkv", "webm", "flv", "wmv", "m4v", "mpg", "mpeg", "3gp",  # video
    "wav", "mp3", "flac", "ogg", "m4a", "aac", "opus",  # audio
    "ply", "pcd",  # point clouds
)  # fmt: skip
# Words that make a record key a media field ("video", "audios", "video_path", "speech_file").
_MEDIA_KEY_WORDS = frozenset({
    "video", "videos", "audio", "audios", "speech", "sound", "sounds", "voice", "frames", "pointcloud",
})  # fmt: skip
_MEDIA_FILE = re.compile(r"\.(" + "|".join(OTHER_MEDIA_EXTENSIONS) + r")$", re.IGNORECASE)

# Strings that must not occur in data text: they would forge image blocks or turns.
RESERVED_STRINGS: tuple[str, ...] = (IMG_CONTEXT, IMG_START, IMG_END, IM_START, IM_END)

_USER_ROLES = frozenset({"human", "user"})
_ASSISTANT_ROLES = frozenset({"gpt", "assistant"})

ImageRef = Union[str, bytes]  # an absolute path, or the encoded bytes of a tar member


# ----------------------------------------------------------------------- records
@dataclass
class Record:
    """One training conversation before tokenisation."""

    turns: list[tuple[str, str]]  # (user, assistant) pairs, stripped, placeholders intact
    images: list[ImageRef] = field(default_factory=list)
    system: str | None = None  # None: the template's default system message
    source: str = ""  # "file:line" or "shard.tar:key", for error reports


@dataclass
class Skipped:
    """A bad item: what was wrong and where."""

    reason: str
    source: str
    detail: str = ""


class RecordError(ValueError):
    """Raised by :func:`parse_record` for an unusable record; ``reason`` is a stats key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _hash32(*parts: object) -> int:
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode("utf-8"))


def caption_prompt(seed: int, key: str) -> str:
    """The instruction used for the caption pair identified by ``key``."""
    return CAPTION_PROMPTS[_hash32("caption", seed, key) % len(CAPTION_PROMPTS)]


def parse_record(
    obj: Any,
    images: Sequence[ImageRef] | None = None,
    *,
    root: str | os.PathLike | None = None,
    source: str = "",
    seed: int = 0,
    key: str | None = None,
) -> Record:
    """Validate one JSON record and turn it into a :class:`Record`.

    ``images`` overrides the record's ``"image"`` field (tar groups carry their
    image bytes); otherwise relative image paths are resolved against ``root``.
    ``key`` identifies a caption pair for :func:`caption_prompt` (default: the
    image path). Raises :class:`RecordError` with a stats reason.
    """
    if not isinstance(obj, dict):
        raise RecordError("bad_record", f"expected a JSON object, got {type(obj).__name__}")
    media = _unsupported_media(obj)
    if media is not None:
        raise RecordError("unsupported_media", f"{media!r} field: only images are supported")
    if images is None:
        raw = obj.get("image", obj.get("images"))
        if raw is None or raw == []:
            paths: list[str] = []
        elif isinstance(raw, str):
            paths = [raw]
        elif isinstance(raw, list) and all(isinstance(p, str) for p in raw):
            paths = list(raw)
        else:
            raise RecordError("bad_record", f"'image' must be a path or a list of paths, got {raw!r:.80}")
        if any(not p for p in paths):
            raise RecordError("bad_record", "empty image path")
        base = Path(root) if root is not None else Path(".")
        resolved: list[ImageRef] = [str(base / p) for p in paths]
        default_key = "|".join(paths)
    else:
        resolved = list(images)
        default_key = key or source

    if "conversations" in obj:
        system, turns = _parse_conversations(obj["conversations"])
    elif "caption" in obj:
        caption = obj["caption"]
        if not isinstance(caption, str) or not caption.strip():
            raise RecordError("bad_record", "'caption' must be a non-empty string")
        if len(resolved) != 1:
            raise RecordError("image_placeholders", f"a caption pair needs exactly one image, got {len(resolved)}")
        prompt = caption_prompt(seed, key if key is not None else default_key)
        system, turns = None, [(IMAGE_PLACEHOLDER + "\n" + prompt, caption.strip())]
    else:
        raise RecordError("bad_record", "the record has neither 'conversations' nor 'caption'")

    for k, (question, _) in enumerate(turns):
        # An empty question is only usable as the first turn of an image record
        # (the image block then is the whole question).
        if not question and (k or not resolved):
            raise RecordError("bad_conversation", f"turn {k} has an empty question")
    texts = [t for pair in turns for t in pair] + ([system] if system else [])
    for reserved in RESERVED_STRINGS:
        if any(reserved in t for t in texts):
            raise RecordError("reserved_token", f"the text contains the reserved string {reserved!r}")
    if system and IMAGE_PLACEHOLDER in system:
        raise RecordError("image_placeholders", f"{IMAGE_PLACEHOLDER!r} in the system message")
    if any(IMAGE_PLACEHOLDER in answer for _, answer in turns):
        raise RecordError("image_placeholders", f"{IMAGE_PLACEHOLDER!r} in an assistant answer")
    placeholders = sum(user.count(IMAGE_PLACEHOLDER) for user, _ in turns)
    if placeholders and placeholders != len(resolved):
        raise RecordError(
            "image_placeholders",
            f"{placeholders} {IMAGE_PLACEHOLDER!r} placeholder(s) for {len(resolved)} image(s)",
        )
    return Record(turns=turns, images=resolved, system=system, source=source)


def _unsupported_media(obj: dict) -> str | None:
    """The first key of ``obj`` holding non-image media, or None.

    A key is media if its name has a media word (``video``, ``audio_path``...)
    and a non-empty value, or if its value (a string or a list of strings)
    names a video, audio or point-cloud file.
    """
    for key, value in obj.items():
        if key in ("image", "images", "conversations", "caption"):
            continue
        words = set(re.split(r"[^a-z0-9]+", str(key).lower()))
        if words & _MEDIA_KEY_WORDS and isinstance(value, (str, list, dict)) and value:
            return key
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and _MEDIA_FILE.search(v.strip()) for v in values):
            return key
    return None


def _parse_conversations(conv: Any) -> tuple[str | None, list[tuple[str, str]]]:
    if not isinstance(conv, list) or not conv:
        raise RecordError("bad_conversation", "'conversations' must be a non-empty list")
    for k, turn in enumerate(conv):
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or not isinstance(turn.get("value"), str):
            raise RecordError("bad_conversation", f"turn {k} must be {{'from': str, 'value': str}}")
    system = None
    start = 0
    if conv[0]["from"] == "system":
        system = conv[0]["value"].strip()
        start = 1
    body = conv[start:]
    if not body or len(body) % 2:
        raise RecordError("bad_conversation", f"expected alternating user/assistant turns, got {len(body)} turn(s)")
    turns = []
    for k in range(0, len(body), 2):
        user, assistant = body[k], body[k + 1]
        if user["from"] not in _USER_ROLES or assistant["from"] not in _ASSISTANT_ROLES:
            raise RecordError(
                "bad_conversation",
                f"turns {start + k},{start + k + 1} have roles {user['from']!r},{assistant['from']!r}; "
                "expected human then gpt",
            )
        question, answer = user["value"].strip(), assistant["value"].strip()
        if not answer:
            raise RecordError("bad_conversation", f"turn {start + k + 1} has an empty answer")
        turns.append((question, answer))
    return system, turns


# ------------------------------------------------------------------------- stats
class DataStats:
    """Counts of accepted and skipped items by reason, with a few examples each.

    ``notes`` count non-fatal events (e.g. ``truncated``). Mergeable and
    JSON-serialisable, so DataLoader workers can report to the main process.
    """

    def __init__(self, max_examples: int = 5) -> None:
        self.max_examples = max_examples
        self.accepted = 0
        self.skipped: Counter[str] = Counter()
        self.notes: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def accept(self) -> None:
        self.accepted += 1

    def _example(self, reason: str, where: str, detail: str) -> None:
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < self.max_examples:
            bucket.append(f"{where}: {detail}" if detail else where)

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        self._example(reason, where, detail)

    def note(self, reason: str, where: str = "", detail: str = "") -> None:
        self.notes[reason] += 1
        self._example(reason, where, detail)

    def merge(self, other: "DataStats") -> "DataStats":
        self.accepted += other.accepted
        self.skipped.update(other.skipped)
        self.notes.update(other.notes)
        for reason, items in other.examples.items():
            bucket = self.examples.setdefault(reason, [])
            bucket.extend(items[: max(0, self.max_examples - len(bucket))])
        return self

    def to_dict(self) -> dict:
        return {
            "accepted": self.accepted,
            "skipped": dict(self.skipped),
            "notes": dict(self.notes),
            "examples": {k: list(v) for k, v in self.examples.items()},
        }

    @classmethod
    def from_dict(cls, data: dict, max_examples: int = 5) -> "DataStats":
        stats = cls(max_examples)
        stats.accepted = int(data.get("accepted", 0))
        stats.skipped.update(data.get("skipped", {}))
        stats.notes.update(data.get("notes", {}))
        stats.examples = {k: list(v) for k, v in data.get("examples", {}).items()}
        return stats

    def report(self) -> str:
        lines = [f"data: {self.accepted} samples used, {self.total_skipped} skipped"]
        for title, counter in (("skipped", self.skipped), ("note", self.notes)):
            for reason, count in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {title} {reason}: {count}")
                lines.extend(f"      e.g. {ex}" for ex in self.examples.get(reason, []))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"DataStats(accepted={self.accepted}, skipped={dict(self.skipped)}, notes={dict(self.notes)})"


# ------------------------------------------------------------ seeded permutation
_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


class SeededPermutation:
    """A pseudo-random bijection of ``range(n)`` evaluated one index at a time.

    A 4-round Feistel network on the smallest even-bit power of two >= n, with
    cycle walking to stay inside ``range(n)``: O(1) memory, ~10 us a lookup,
    fully determined by ``(n, key)``.
    """

    ROUNDS = 4

    def __init__(self, n: int, key: int) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n = n
        bits = max(2, (max(n, 1) - 1).bit_length())
        bits += bits % 2
        self._half = bits // 2
        self._mask = (1 << self._half) - 1
        self._keys = [_splitmix64((key & _M64) ^ _splitmix64(r + 1)) for r in range(self.ROUNDS)]

    def __len__(self) -> int:
        return self.n

    def __call__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for a permutation of {self.n}")
        half, mask = self._half, self._mask
        x = i
        while True:
            left, right = x >> half, x & mask
            for k in self._keys:
                left, right = right, left ^ (_splitmix64(right ^ k) & mask)
            x = (left << half) | right
            if x < self.n:
                return x


def _derive_key(*parts: object) -> int:
    key = 0
    for part in parts:
        key = _splitmix64(key ^ (_hash32(part) if not isinstance(part, int) else part & _M64))
    return key


# -------------------------------------------------------------- indexed source
def _line_offsets(path: str, chunk: int = 1 << 24) -> np.ndarray:
    """Byte offsets of every line start (int64), found with numpy, reading in chunks."""
    starts = [np.zeros(1, dtype=np.int64)]
    pos = 0
    with open(path, "rb") as f:
        while True:
            buf = f.read(chunk)
            if not buf:
                break
            newlines = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == 10).astype(np.int64)
            starts.append(newlines + (pos + 1))
            pos += len(buf)
    offsets = np.concatenate(starts)
    return offsets[offsets < pos]  # drop the "line" after a final newline (or of an empty file)


_NON_SPACE = re.compile(r"\S")
_UTF8_BOM = "\xef\xbb\xbf"  # as latin-1 text


def _starts_json_array(path: str) -> bool:
    """True if the file's first non-space character (after a UTF-8 BOM) is ``[``."""
    with open(path, "rb") as f:
        head = f.read(4096).decode("latin-1").removeprefix(_UTF8_BOM).lstrip()
    return head.startswith("[")


def _json_array_spans(path: str, chunk: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """Byte spans ``[start, end)`` of the elements of a JSON array file (int64 arrays).

    The file is scanned in chunks with ``JSONDecoder.raw_decode``, so memory
    stays about one chunk plus the largest record. The bytes are read as
    latin-1 (one character per byte, so positions are byte offsets): UTF-8
    multi-byte characters never contain the ASCII bytes of JSON syntax, so the
    element ends found are exact. Raises ``ValueError`` with the byte position
    if the file is not one JSON array.
    """
    decoder = json.JSONDecoder()
    starts: list[int] = []
    ends: list[int] = []
    with open(path, "rb") as f:
        buf, base = "", 0  # buf holds the file's bytes from offset base on

        def fill() -> bool:  # append the next chunk; False at the end of the file
            nonlocal buf
            data = f.read(chunk)
            buf += data.decode("latin-1")
            return bool(data)

        def skip_space(pos: int) -> int:  # next non-space position, len(buf) at the end of the file
            while True:
                match = _NON_SPACE.search(buf, pos)
                if match:
                    return match.start()
                pos = len(buf)
                if not fill():
                    return pos

        def fail(pos: int, what: str) -> ValueError:
            return ValueError(f"{path!r} is not a JSON array of records: {what} at byte {base + pos}")

        fill()
        pos = skip_space(len(_UTF8_BOM) if buf.startswith(_UTF8_BOM) else 0)
        if buf[pos : pos + 1] != "[":
            raise fail(pos, "no '['")
        pos = skip_space(pos + 1)
        closed = buf[pos : pos + 1] == "]"
        while not closed:
            while True:  # an element cut by the chunk end decodes only after more is read
                try:
                    _, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as exc:
                    if fill():
                        continue
                    raise fail(exc.pos, exc.msg) from None
                if end < len(buf) or not fill():  # a number at the very end may go on
                    break
            starts.append(base + pos)
            ends.append(base + end)
            pos = skip_space(end)
            sep = buf[pos : pos + 1]
            if sep not in (",", "]"):
                raise fail(pos, "expected ',' or ']'")
            closed = sep == "]"
            pos = skip_space(pos + 1) if not closed else pos
            if pos > chunk:  # forget what is parsed, keep about one chunk in memory
                buf, base, pos = buf[pos:], base + pos, 0
        if skip_space(pos + 1) < len(buf):
            raise fail(skip_space(pos + 1), "data after the closing ']'")
    return np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)


@dataclass
class _Dataset:
    name: str
    path: str
    root: str
    repeat_time: float
    offsets: np.ndarray  # start of each record (line, or element of a JSON array)
    ends: np.ndarray | None = None  # end of each element of a JSON array; None for JSONL
    size: int = 0
    n_eff: int = 0
    subset: SeededPermutation | None = None


class IndexedJsonlSource:
    """Random-access JSONL records mixed by size, one seeded order per epoch.

    ``epochs=None`` repeats forever (epoch e uses its own order). See the module
    docstring for the meaning of the state.
    """

    kind = "indexed-jsonl"

    def __init__(
        self,
        datasets: Sequence[dict] | str | os.PathLike,
        seed: int = 0,
        shuffle: bool = True,
        epochs: int | None = None,
    ) -> None:
        if isinstance(datasets, (str, os.PathLike)):
            datasets = _datasets_from_spec(str(datasets))
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epochs = epochs
        self.datasets: list[_Dataset] = []
        for k, spec in enumerate(datasets):
            path = str(spec["annotation"])
            if not os.path.isfile(path):
                raise ValueError(f"dataset {spec.get('name', k)!r}: annotation {path!r} is not a regular file")
            repeat = float(spec.get("repeat_time", 1.0))
            if not repeat > 0 or not math.isfinite(repeat):
                raise ValueError(f"dataset {spec.get('name', k)!r}: repeat_time must be > 0, got {repeat}")
            # LLaVA-style annotations: one JSON array of records instead of JSONL.
            array = not path.endswith(".jsonl") and _starts_json_array(path)
            offsets, ends = _json_array_spans(path) if array else (_line_offsets(path), None)
            ds = _Dataset(
                name=str(spec.get("name", Path(path).stem)),
                path=path,
                root=str(spec.get("root", os.path.dirname(os.path.abspath(path)))),
                repeat_time=repeat,
                offsets=offsets,
                ends=ends,
                size=os.path.getsize(path),
            )
            lines = len(ds.offsets)
            ds.n_eff = int(lines * repeat)
            if ds.n_eff % max(lines, 1) or ds.n_eff < lines:
                ds.subset = SeededPermutation(lines, _derive_key("subset", self.seed, ds.name))
            self.datasets.append(ds)
        self._starts = np.cumsum([0] + [d.n_eff for d in self.datasets]).tolist()
        self.length = int(self._starts[-1])  # virtual records per epoch
        self._handles: dict[str, int] = {}  # path -> file descriptor

    def __len__(self) -> int:
        return self.length

    def initial_state(self) -> dict:
        return {"epoch": 0, "k": 0}

    def _order(self, epoch: int) -> SeededPermutation | None:
        if not self.shuffle:
            return None
        return SeededPermutation(self.length, _derive_key("epoch", self.seed, epoch))

    def locate(self, epoch: int, k: int, order: SeededPermutation | None = None) -> tuple[_Dataset, int]:
        """(dataset, line index) of position ``k`` of ``epoch``."""
        g = k if order is None else order(k)
        d = bisect.bisect_right(self._starts, g) - 1
        ds = self.datasets[d]
        v = g - self._starts[d]
        lines = len(ds.offsets)
        full = int(ds.repeat_time) * lines if ds.n_eff >= lines else 0
        if v < full:
            return ds, v % lines
        assert ds.subset is not None
        return ds, ds.subset(v - full)

    def _read_line(self, ds: _Dataset, line: int) -> bytes:
        # pread has no file position, so a descriptor inherited by forked
        # DataLoader workers cannot be moved under another process's feet.
        fd = self._handles.get(ds.path)
        if fd is None:
            fd = self._handles[ds.path] = os.open(ds.path, os.O_RDONLY)
        start = int(ds.offsets[line])
        if ds.ends is not None:
            end = int(ds.ends[line])
        else:
            end = int(ds.offsets[line + 1]) if line + 1 < len(ds.offsets) else ds.size
        return os.pread(fd, end - start, start)

    def read(self, ds: _Dataset, line: int) -> Record | Skipped:
        where = f"{ds.path}[{line}]" if ds.ends is not None else f"{ds.path}:{line + 1}"
        raw = self._read_line(ds, line)
        if not raw.strip():
            return Skipped("bad_json", where, "empty line")
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return Skipped("bad_json", where, str(exc))
        try:
            return parse_record(obj, root=ds.root, source=where, seed=self.seed)
        except RecordError as exc:
            return Skipped(exc.reason, where, exc.detail)

    def iterate(
        self, state: dict | None = None, consumer: int = 0, num_consumers: int = 1
    ) -> Iterator[tuple[Record | Skipped, dict]]:
        """Yield ``(item, state_after)`` for positions ``k % num_consumers == consumer``."""
        _check_consumer(consumer, num_consumers)
        state = dict(state or self.initial_state())
        epoch, k = int(state["epoch"]), int(state["k"])
        if self.length == 0:
            return
        while self.epochs is None or epoch < self.epochs:
            order = self._order(epoch)
            fresh, count = k == 0, 0
            # First position >= k that belongs to this consumer.
            k += (consumer - k) % num_consumers
            while k < self.length:
                ds, line = self.locate(epoch, k, order)
                item = self.read(ds, line)
                k += num_consumers
                count += 1
                yield item, {"epoch": epoch, "k": k}
            _check_progress(fresh, count, epoch, consumer, num_consumers)
            epoch, k = epoch + 1, 0

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        for fd in self._handles.values():
            os.close(fd)
        self._handles.clear()

    def __getstate__(self) -> dict:  # picklable for DataLoader workers: reopen files lazily
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state


def _datasets_from_spec(spec: str) -> list[dict]:
    """``x.jsonl`` or a LLaVA-style ``x.json`` array (root = its folder), or a meta JSON of several files."""
    if spec.endswith(".jsonl") or (os.path.isfile(spec) and _starts_json_array(spec)):
        return [{"name": Path(spec).stem, "annotation": spec, "root": os.path.dirname(os.path.abspath(spec))}]
    try:
        meta = json.loads(Path(spec).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the data meta file {spec!r}: {exc}") from exc
    if not isinstance(meta, dict) or not meta:
        raise ValueError(
            f"{spec!r} must hold a non-empty JSON object {{name: {{root, annotation, ...}}}} (a meta file) "
            "or a JSON array of records (LLaVA style)"
        )
    base = os.path.dirname(os.path.abspath(spec))

    def resolve(path: str) -> str:
        # Relative to the meta file's folder; official InternVL metas use paths
        # relative to the working directory, so fall back to that if it exists.
        near = os.path.join(base, path)
        return near if os.path.exists(near) or not os.path.exists(path) else os.path.abspath(path)

    out = []
    for name, entry in meta.items():
        if not isinstance(entry, dict) or "annotation" not in entry:
            raise ValueError(f"{spec!r}: entry {name!r} needs an 'annotation' path")
        annotation = resolve(entry["annotation"])
        root = resolve(entry["root"]) if entry.get("root") is not None else os.path.dirname(annotation)
        out.append({
            "name": name, "annotation": annotation, "root": root,
            "repeat_time": entry.get("repeat_time", 1.0),
        })  # fmt: skip
    return out


def _check_progress(fresh: bool, count: int, epoch: int, consumer: int, num_consumers: int) -> None:
    """A whole epoch without a single item would make an endless stream spin forever."""
    if fresh and count == 0:
        raise ValueError(
            f"epoch {epoch} gave consumer {consumer} of {num_consumers} no data at all "
            "(fewer records or shards than ranks x DataLoader workers?)"
        )


def _check_consumer(consumer: int, num_consumers: int) -> None:
    if num_consumers < 1 or not 0 <= consumer < num_consumers:
        raise ValueError(f"need 0 <= consumer < num_consumers, got {consumer} and {num_consumers}")


# ---------------------------------------------------------------- shard source
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard list from a brace pattern (``a-{000..009}.tar``, ``{x,y}``), a glob, or a list.

    ``pipe:COMMAND`` entries are kept as they are (no expansion inside the command).
    """
    if isinstance(spec, (list, tuple)):
        return [s for item in spec for s in expand_shards(item)]
    spec = str(spec)
    if spec.startswith("pipe:"):
        return [spec]
    match = _BRACE.search(spec)
    if match:
        body = match.group(1)
        head, tail = spec[: match.start()], spec[match.end() :]
        ranged = re.fullmatch(r"(\d+)\.\.(\d+)", body)
        if ranged:
            lo, hi = ranged.groups()
            width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
            options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
        else:
            options = body.split(",")
        return [s for opt in options for s in expand_shards(head + opt + tail)]
    if any(ch in spec for ch in "*?["):
        found = sorted(glob.glob(spec))
        if not found:
            raise ValueError(f"no shard matches {spec!r}")
        return found
    return [spec]


class _Pipe:
    """stdout of a shell command as a readable binary stream."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.stream = self.proc.stdout

    def close(self) -> None:
        self.stream.close()
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait()


def _open_stream(shard: str):
    if shard.startswith("pipe:"):
        pipe = _Pipe(shard[5:])
        return pipe.stream, pipe.close
    handle = open(shard, "rb")
    return handle, handle.close


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the basename."""
    directory, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (os.path.join(directory, stem) if directory else stem), ext.lower()


# A raw item of a shard: (key, payload). Tar: {ext: bytes}; JSONL: the line bytes.
RawItem = tuple[str, Any]


def _iter_tar_groups(stream, shard: str) -> Iterator[RawItem | Skipped]:
    group: dict[str, bytes] = {}
    key: str | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = _split_key(member.name)
                if k != key:
                    if group:
                        yield key, group  # type: ignore[misc]
                    group, key = {}, k
                handle = tar.extractfile(member)
                group[ext] = handle.read() if handle is not None else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        if group:
            yield key, group  # type: ignore[misc]
            group = {}
        yield Skipped("tar_error", shard, f"{type(exc).__name__}: {exc}; rest of the shard skipped")
    if group:
        yield key, group  # type: ignore[misc]


def _iter_jsonl_lines(stream, shard: str) -> Iterator[RawItem | Skipped]:
    try:
        for number, line in enumerate(stream, start=1):
            yield str(number), line
    except OSError as exc:
        yield Skipped("read_error", shard, f"{type(exc).__name__}: {exc}; rest of the shard skipped")


class ShardStreamSource:
    """Sequentially read shards (tar or JSONL), shuffled by shard order and a buffer.

    ``shuffle_buffer`` items (decoded lazily, so raw bytes only) are held per
    consumer; 0 disables the in-shard shuffle. ``format`` is ``"tar"``,
    ``"jsonl"`` or ``"auto"`` (by each shard's name).
    """

    kind = "shard-stream"

    def __init__(
        self,
        shards: str | Sequence[str],
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 256,
        epochs: int | None = None,
        root: str | os.PathLike | None = None,
        format: str = "auto",
    ) -> None:
        self.shards = expand_shards(shards)
        if not self.shards:
            raise ValueError("no shards given")
        if format not in ("auto", "tar", "jsonl"):
            raise ValueError(f"format must be 'auto', 'tar' or 'jsonl', got {format!r}")
        self.seed = int(seed)
        self.shuffle = shuffle
        self.shuffle_buffer = max(0, int(shuffle_buffer))
        self.epochs = epochs
        self.root = str(root) if root is not None else None
        self.format = format

    def initial_state(self) -> dict:
        return {"epoch": 0, "shard": 0, "emitted": 0}

    def _shard_format(self, shard: str) -> str:
        if self.format != "auto":
            return self.format
        name = shard.split()[-1] if shard.startswith("pipe:") else shard
        return "jsonl" if re.search(r"\.jsonl(\.|$)", name) else "tar"

    def shard_order(self, epoch: int) -> list[str]:
        if not self.shuffle:
            return list(self.shards)
        order = list(self.shards)
        random.Random(_derive_key("shards", self.seed, epoch)).shuffle(order)
        return order

    def _raw_items(self, shard: str) -> Iterator[RawItem | Skipped]:
        try:
            stream, close = _open_stream(shard)
        except OSError as exc:
            yield Skipped("read_error", shard, f"{type(exc).__name__}: {exc}")
            return
        try:
            reader = _iter_jsonl_lines if self._shard_format(shard) == "jsonl" else _iter_tar_groups
            yield from reader(stream, shard)
        finally:
            close()

    def _shuffled(self, items: Iterable[Any], rng: random.Random) -> Iterator[Any]:
        if self.shuffle_buffer <= 1 or not self.shuffle:
            yield from items
            return
        buffer: list[Any] = []
        for item in items:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            i = rng.randrange(len(buffer))
            buffer[i], item = item, buffer[i]
            yield item
        rng.shuffle(buffer)
        yield from buffer

    def _decode(self, shard: str, raw: RawItem | Skipped) -> Record | Skipped:
        if isinstance(raw, Skipped):
            return raw
        key, payload = raw
        where = f"{shard}:{key}"
        if isinstance(payload, bytes):  # a JSONL line
            if not payload.strip():
                return Skipped("bad_json", where, "empty line")
            try:
                obj = json.loads(payload)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                return Skipped("bad_json", where, str(exc))
            try:
                return parse_record(obj, root=self.root or _shard_dir(shard), source=where, seed=self.seed)
            except RecordError as exc:
                return Skipped(exc.reason, where, exc.detail)
        return _decode_group(payload, where, key, self.seed)

    def iterate(
        self, state: dict | None = None, consumer: int = 0, num_consumers: int = 1
    ) -> Iterator[tuple[Record | Skipped, dict]]:
        """Yield ``(item, state_after)``; see the class and module docstrings."""
        _check_consumer(consumer, num_consumers)
        state = dict(state or self.initial_state())
        epoch, pos, emitted = int(state["epoch"]), int(state["shard"]), int(state["emitted"])
        by_shard = len(self.shards) >= num_consumers
        while self.epochs is None or epoch < self.epochs:
            order = self.shard_order(epoch)
            fresh, total = pos == 0 and emitted == 0, 0
            if by_shard:
                pos += (consumer - pos) % num_consumers
            while pos < len(order):
                shard = order[pos]
                raw: Iterable[Any] = self._raw_items(shard)
                if not by_shard:  # every consumer reads the shard and takes every C-th group
                    raw = (item for g, item in enumerate(raw) if g % num_consumers == consumer)
                rng = random.Random(_derive_key("buffer", self.seed, epoch, pos, consumer))
                count = 0
                for item in self._shuffled(raw, rng):
                    count += 1
                    if count <= emitted:  # replaying the shard after a resume: no decoding
                        continue
                    total += 1
                    yield self._decode(shard, item), {"epoch": epoch, "shard": pos, "emitted": count}
                pos += num_consumers if by_shard else 1
                emitted = 0
            _check_progress(fresh, total, epoch, consumer, num_consumers)
            epoch, pos = epoch + 1, 0


def _shard_dir(shard: str) -> str:
    return "." if shard.startswith("pipe:") else os.path.dirname(os.path.abspath(shard))


def _decode_group(group: dict[str, bytes], where: str, key: str, seed: int) -> Record | Skipped:
    media = sorted(ext for ext in group if ext in OTHER_MEDIA_EXTENSIONS)
    if media:
        return Skipped("unsupported_media", where, f"{media} member(s): only images are supported")
    image_exts = [ext for ext in group if ext in IMAGE_EXTENSIONS]
    if len(image_exts) != 1:
        return Skipped("incomplete_sample", where, f"expected one image, got {sorted(group)}")
    image = group[image_exts[0]]
    try:
        if "json" in group:
            obj = json.loads(group["json"])
            if isinstance(obj, dict) and "conversations" not in obj and "caption" not in obj and "txt" in group:
                obj = dict(obj, caption=group["txt"].decode("utf-8"))
        elif "txt" in group:
            obj = {"caption": group["txt"].decode("utf-8")}
        else:
            return Skipped("incomplete_sample", where, f"no .txt or .json next to the image ({sorted(group)})")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return Skipped("bad_json", where, str(exc))
    try:
        return parse_record(obj, images=[image], source=where, seed=seed, key=key)
    except RecordError as exc:
        return Skipped(exc.reason, where, exc.detail)


# ---------------------------------------------------------------------- factory
Source = Union[IndexedJsonlSource, ShardStreamSource]


def _is_regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def open_source(
    spec: str | os.PathLike | Sequence[str],
    seed: int = 0,
    shuffle: bool = True,
    epochs: int | None = None,
    shuffle_buffer: int = 256,
    streaming: bool | None = None,
) -> Source:
    """Pick the source for a ``--data`` value.

    * a meta ``.json``, a LLaVA-style ``.json`` array or a regular ``.jsonl``
      file: :class:`IndexedJsonlSource`;
    * tar shards (``.tar`` names, brace patterns, globs, lists, ``pipe:``) or a
      JSONL that is not a regular file (FIFO, ``pipe:``): :class:`ShardStreamSource`.

    ``streaming=True`` forces the shard reader (e.g. for a JSONL too big to index).
    """
    if isinstance(spec, os.PathLike):
        spec = str(spec)
    if isinstance(spec, str):
        single = spec
        indexable = (single.endswith(".json") or single.endswith(".jsonl")) and _is_regular_file(single)
        if streaming is None:
            streaming = not indexable
        if not streaming:
            return IndexedJsonlSource(single, seed=seed, shuffle=shuffle, epochs=epochs)
    elif streaming is False:
        raise ValueError("a list of shards can only be read as a stream")
    return ShardStreamSource(spec, seed=seed, shuffle=shuffle, shuffle_buffer=shuffle_buffer, epochs=epochs)
