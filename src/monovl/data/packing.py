"""Batching, packing, the training loss, and the resumable DataLoader stream.

Batch contracts (all tensors on CPU; ``pixel_values`` float32):

padded batch (:func:`collate_padded`)::

    input_ids       LongTensor [B, T]   right-padded with pad_id
    labels          LongTensor [B, T]   -100 on padding
    attention_mask  LongTensor [B, T]   1 = real token
    pixel_values    FloatTensor [N, 3, S, S] tiles of row 0, then row 1, ...; or None
    num_tiles       LongTensor [B]
    num_samples     int

packed batch (:func:`collate_packed`)::

    input_ids       LongTensor [B, T]   samples concatenated per row, then pad_id
    labels          LongTensor [B, T]   -100 on padding (and on every sample's first token)
    position_ids    LongTensor [B, T]   0, 1, ... restarting at every sample; 0 on padding
    segment_ids     LongTensor [B, T]   1..k for the k samples of a row, 0 on padding
    pixel_values    FloatTensor [N, 3, S, S] in the order the image tokens appear (row-major); or None
    num_tiles       LongTensor [B]      tiles per row
    num_samples     int

Feed a packed batch as ``model(input_ids, pixel_values, position_ids=...,
segment_ids=...)`` and a padded one with ``attention_mask=...``; the loss of
either is :func:`lm_loss` (token-level mean cross-entropy over all supervised
tokens of the batch). Since every sample's first label is -100, the prediction
made at the last token of one packed sample for the first token of the next is
never trained, and the packed loss equals the unpacked one.
"""

from __future__ import annotations

import copy
from collections import deque
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset, get_worker_info

from .records import DataStats, IndexedJsonlSource, ShardStreamSource, Skipped
from .samples import IGNORE_INDEX, SampleBuilder, SampleError

__all__ = [
    "DataStream",
    "PackedBatcher",
    "PaddedBatcher",
    "collate_packed",
    "collate_padded",
    "lm_loss",
    "num_supervised",
    "supervised_positions",
]

_META_KEYS = ("data_state", "data_stats")


# --------------------------------------------------------------------------- loss
def lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy: ``logits[:, :-1]`` against ``labels[:, 1:]``, ignoring -100.

    ``reduction="mean"``: sum over all supervised tokens of the batch divided by
    their count (0 with a graph when there are none); ``"sum"``: the sum, to be
    divided by a count gathered over micro-batches/ranks (see :func:`num_supervised`).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on [B, T]")
    shift_logits = logits[:, :-1].flatten(0, 1).float()
    shift_labels = labels[:, 1:].flatten().to(logits.device)
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    if reduction == "sum":
        return total
    return total / (shift_labels != IGNORE_INDEX).sum().clamp(min=1)


def num_supervised(labels: torch.Tensor) -> int:
    """Number of tokens :func:`lm_loss` averages over."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def supervised_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] bool of the positions whose *next* token is supervised, and those tokens [N] (the shift
    of :func:`lm_loss`): the logits worth computing, and their targets."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep, labels[:, 1:][labels[:, 1:] != IGNORE_INDEX]


# ---------------------------------------------------------------------- collation
def _cat_pixels(samples: Sequence[dict]) -> torch.Tensor | None:
    tiles = [s["pixel_values"] for s in samples if s.get("pixel_values") is not None]
    return torch.cat(tiles, dim=0) if tiles else None


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def collate_padded(samples: Sequence[dict], pad_id: int, pad_to_multiple_of: int = 1) -> dict[str, Any]:
    """Right-padded batch of samples, one per row (contract in the module docstring)."""
    if not samples:
        raise ValueError("collate_padded needs at least one sample")
    lengths = [int(s["input_ids"].numel()) for s in samples]
    width = _round_up(max(lengths), pad_to_multiple_of)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, (sample, n) in enumerate(zip(samples, lengths)):
        input_ids[row, :n] = sample["input_ids"]
        labels[row, :n] = sample["labels"]
        attention_mask[row, :n] = 1
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "pixel_values": _cat_pixels(samples),
        "num_tiles": torch.tensor([int(s["num_tiles"]) for s in samples], dtype=torch.long),
        "num_samples": len(samples),
    }


def collate_packed(
    rows: Sequence[Sequence[dict]], pad_id: int, pad_to_multiple_of: int = 1, width: int | None = None
) -> dict[str, Any]:
    """Packed batch: row r holds the samples ``rows[r]`` back to back (module docstring).

    ``width`` fixes T (e.g. the token budget, for static shapes); default: the
    longest row rounded up to ``pad_to_multiple_of``.
    """
    if not rows or any(not row for row in rows):
        raise ValueError("collate_packed needs at least one row and no empty rows")
    row_lengths = [sum(int(s["input_ids"].numel()) for s in row) for row in rows]
    if width is None:
        width = _round_up(max(row_lengths), pad_to_multiple_of)
    elif width < max(row_lengths):
        raise ValueError(f"a row has {max(row_lengths)} tokens, more than width={width}")
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segment_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (row, n) in enumerate(zip(rows, row_lengths)):
        lengths = [int(s["input_ids"].numel()) for s in row]
        input_ids[r, :n] = torch.cat([s["input_ids"] for s in row])
        labels[r, :n] = torch.cat([s["labels"] for s in row])
        position_ids[r, :n] = torch.cat([torch.arange(m) for m in lengths])
        segment_ids[r, :n] = torch.cat([torch.full((m,), j, dtype=torch.long) for j, m in enumerate(lengths, 1)])
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "pixel_values": _cat_pixels([s for row in rows for s in row]),
        "num_tiles": torch.tensor([sum(int(s["num_tiles"]) for s in row) for row in rows], dtype=torch.long),
        "num_samples": sum(len(row) for row in rows),
    }


# ----------------------------------------------------------------------- batchers
class PaddedBatcher:
    """Groups samples, in order, into padded batches of ``batch_size`` rows.

    ``max_tiles`` (optional) caps the image tiles of a batch: a batch is closed
    early when the next sample would exceed it.
    """

    def __init__(self, batch_size: int, pad_id: int, max_tiles: int | None = None, pad_to_multiple_of: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.max_tiles = max_tiles
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_tokens: int | None = None
        self._pending: list[dict] = []
        self._tiles = 0

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def accepts(self, sample: dict) -> bool:
        """Whether the sample can ever be batched (its tiles fit an empty batch)."""
        return self.max_tiles is None or int(sample["num_tiles"]) <= self.max_tiles

    def add(self, sample: dict) -> dict | None:
        """Add a sample; return a finished batch (without this sample if it did not fit) or None."""
        if not self.accepts(sample):
            raise ValueError(f"a sample with {sample['num_tiles']} tiles exceeds max_tiles={self.max_tiles}")
        out = None
        tiles = int(sample["num_tiles"])
        if self._pending and self.max_tiles is not None and self._tiles + tiles > self.max_tiles:
            out = self.flush()
        self._pending.append(sample)
        self._tiles += tiles
        if len(self._pending) == self.batch_size:
            assert out is None
            out = self.flush()
        return out

    def flush(self) -> dict | None:
        if not self._pending:
            return None
        batch = collate_padded(self._pending, self.pad_id, self.pad_to_multiple_of)
        self._pending, self._tiles = [], 0
        return batch


class PackedBatcher:
    """Greedy in-order packing of samples into ``rows`` rows of at most ``max_tokens`` tokens.

    A sample goes into the current row if it fits, else into a new row; when the
    batch has ``rows`` rows (or the batch's image tiles would exceed
    ``max_tiles``) the batch is emitted and the sample starts the next one.
    Samples are never split or reordered, which makes the resume position a
    single stream position. ``fixed_width=True`` pads every row to ``max_tokens``.
    """

    def __init__(
        self,
        max_tokens: int,
        pad_id: int,
        rows: int = 1,
        max_tiles: int | None = None,
        pad_to_multiple_of: int = 1,
        fixed_width: bool = False,
    ):
        if max_tokens < 2 or rows < 1:
            raise ValueError(f"need max_tokens >= 2 and rows >= 1, got {max_tokens} and {rows}")
        self.max_tokens = max_tokens
        self.pad_id = pad_id
        self.rows = rows
        self.max_tiles = max_tiles
        self.pad_to_multiple_of = pad_to_multiple_of
        self.fixed_width = fixed_width
        self._rows: list[list[dict]] = []
        self._row_tokens = 0
        self._tiles = 0
        self._count = 0

    @property
    def num_pending(self) -> int:
        return self._count

    def accepts(self, sample: dict) -> bool:
        return int(sample["input_ids"].numel()) <= self.max_tokens and (
            self.max_tiles is None or int(sample["num_tiles"]) <= self.max_tiles
        )

    def add(self, sample: dict) -> dict | None:
        if not self.accepts(sample):
            raise ValueError(
                f"a sample of {sample['input_ids'].numel()} tokens / {sample['num_tiles']} tiles does not fit "
                f"max_tokens={self.max_tokens} / max_tiles={self.max_tiles}"
            )
        n, tiles = int(sample["input_ids"].numel()), int(sample["num_tiles"])
        out = None
        tiles_fit = self.max_tiles is None or self._tiles + tiles <= self.max_tiles
        if self._rows and tiles_fit and self._row_tokens + n <= self.max_tokens:
            self._rows[-1].append(sample)
            self._row_tokens += n
        else:
            if self._rows and (not tiles_fit or len(self._rows) == self.rows):
                out = self.flush()
            self._rows.append([sample])
            self._row_tokens = n
        self._tiles += tiles
        self._count += 1
        return out

    def flush(self) -> dict | None:
        if not self._rows:
            return None
        width = self.max_tokens if self.fixed_width else None
        batch = collate_packed(self._rows, self.pad_id, self.pad_to_multiple_of, width=width)
        self._rows, self._row_tokens, self._tiles, self._count = [], 0, 0, 0
        return batch


Batcher = PaddedBatcher | PackedBatcher
Source = IndexedJsonlSource | ShardStreamSource


# ------------------------------------------------------------------------- stream
class _torch_threads:
    """Temporarily set torch's intra-op thread count."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        self.saved = torch.get_num_threads()
        if self.saved != self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        if torch.get_num_threads() != self.saved:
            torch.set_num_threads(self.saved)


class DataStream(IterableDataset):
    """Records -> samples -> batches, sharded over ranks and DataLoader workers, resumable.

    Use with ``DataLoader(stream, batch_size=None, num_workers=W)``; the stream
    yields whole batches. Sharding: the ``world_size * W`` (rank, worker) pairs
    are *consumers*; consumer ``rank * W + role`` reads only its share of the
    records (see ``records``), builds samples and batches on its own, in order.

    Exact resume: every batch carries the position (in its consumer's share of
    the source) of the first record not in that or an earlier batch, so the
    samples still held by the batcher are re-read after a resume. Call
    :meth:`observe` on each batch the training loop takes (it removes that
    metadata and remembers it); :meth:`state_dict` is then the state after the
    last observed batch, per rank (save every rank's). A DataLoader takes
    batches from its workers round-robin, so the state also records which
    worker comes next, and after :meth:`load_state_dict` worker w plays the role
    of the old worker ``(w + next) % W``: the batch sequence continues exactly.
    Resume needs the same source, settings, ``world_size`` and ``num_workers``.
    A new iterator (a new ``iter(loader)``) also starts from the tracked position,
    not from the beginning. Exactness assumes every worker's stream is endless
    (``epochs=None``, the default) or that none has run dry yet.

    Each batch's samples are skipped/counted in :class:`DataStats` by their
    worker; :attr:`stats` merges what the observed batches reported.
    """

    def __init__(
        self,
        source: Source,
        builder: SampleBuilder,
        batcher: Batcher,
        rank: int = 0,
        world_size: int = 1,
        max_examples: int = 5,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {rank} and {world_size}")
        if batcher.max_tokens is not None and builder.max_length > batcher.max_tokens:
            raise ValueError(
                f"samples may have max_length={builder.max_length} tokens but a packed row holds "
                f"max_tokens={batcher.max_tokens}"
            )
        self.source = source
        self.builder = builder
        self.batcher = batcher
        self.rank = rank
        self.world_size = world_size
        self.max_examples = max_examples
        self._observed: dict[int, dict] = {}  # role -> latest data_state
        self._stats: dict[int, dict] = {}  # role -> latest cumulative stats
        self._num_workers: int | None = None
        self._next_role = 0

    # ----------------------------------------------------------- main process
    def _fingerprint(self) -> dict:
        return {"source": self.source.kind, "seed": self.source.seed}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict` (before creating the DataLoader iterator)."""
        if state.get("rank") != self.rank or state.get("world_size") != self.world_size:
            raise ValueError(
                f"data state is for rank {state.get('rank')}/{state.get('world_size')}, "
                f"this stream is rank {self.rank}/{self.world_size}"
            )
        if state.get("fingerprint") != self._fingerprint():
            raise ValueError(f"data state is for {state.get('fingerprint')}, this stream is {self._fingerprint()}")
        self._num_workers = state["num_workers"]
        self._next_role = int(state["next_role"])
        self._observed = {int(r): {"role": int(r), "source": copy.deepcopy(s)} for r, s in state["roles"].items()}
        self._stats = {}

    def observe(self, batch: dict) -> dict:
        """Record that the training loop took ``batch``; returns it without the metadata."""
        meta = batch.get("data_state")
        if meta is None:
            raise ValueError("this batch carries no data_state (observed twice, or not from a DataStream)")
        role, workers = int(meta["role"]), int(meta["num_workers"])
        self._num_workers = workers
        self._observed[role] = meta
        self._stats[role] = batch.get("data_stats") or {}
        self._next_role = (role + 1) % workers
        return {k: v for k, v in batch.items() if k not in _META_KEYS}

    def state_dict(self) -> dict:
        """JSON-serialisable position after the last observed batch (this rank)."""
        return {
            "version": 1,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_workers": self._num_workers,
            "next_role": self._next_role,
            "roles": {str(r): m["source"] for r, m in sorted(self._observed.items())},
            "fingerprint": self._fingerprint(),
        }

    @property
    def stats(self) -> DataStats:
        """Skips and notes reported by the observed batches of this run (all workers)."""
        total = DataStats(self.max_examples)
        for data in self._stats.values():
            total.merge(DataStats.from_dict(data, self.max_examples))
        return total

    # ---------------------------------------------------------------- workers
    def __iter__(self) -> Iterator[dict]:
        # Starts from the current tracked position: the loaded state plus every
        # observed batch, so a new DataLoader iterator also continues exactly.
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        if self._num_workers is not None and self._num_workers != workers:
            raise ValueError(
                f"the data position was recorded with {self._num_workers} DataLoader workers; "
                f"resuming needs the same number, got {workers}"
            )
        role = (worker + self._next_role) % workers
        observed = self._observed.get(role)
        start = copy.deepcopy(observed["source"]) if observed is not None else None
        batches = self._batches(start, role, workers, self.rank * workers + role, self.world_size * workers)
        if info is not None:  # a DataLoader worker: torch already runs it single-threaded
            yield from batches
            return
        # In the training process (num_workers=0), build batches single-threaded: the ops are
        # small, and waking the intra-op thread pool for each costs more than it saves.
        while True:
            with _torch_threads(1):
                batch = next(batches, None)
            if batch is None:
                return
            yield batch

    def _batches(self, start: dict | None, role: int, workers: int, consumer: int, num_consumers: int):
        stats = DataStats(self.max_examples)
        batcher = copy.deepcopy(self.batcher)
        last = dict(start) if start is not None else self.source.initial_state()
        pending: deque[dict] = deque()  # state before each sample the batcher holds

        def finish(batch: dict, resume: dict) -> dict:
            batch["data_state"] = {"role": role, "num_workers": workers, "consumer": consumer, "source": resume}
            batch["data_stats"] = stats.to_dict()
            return batch

        epoch, fresh, accepted = int(last["epoch"]), start is None, 0
        for item, after in self.source.iterate(start, consumer, num_consumers):
            before, last = last, after
            if after["epoch"] != epoch:  # a new epoch: was the last one entirely unusable?
                if fresh and not accepted:
                    raise ValueError(
                        f"a whole epoch gave no usable sample (consumer {consumer} of {num_consumers}):\n"
                        + stats.report()
                    )
                epoch, fresh, accepted = int(after["epoch"]), True, 0
            if isinstance(item, Skipped):
                stats.skip(item.reason, item.source, item.detail)
                continue
            try:
                sample = self.builder(item, stats)
            except SampleError as exc:
                stats.skip(exc.reason, item.source, exc.detail)
                continue
            if not batcher.accepts(sample):
                stats.skip("too_many_tiles", item.source, f"{sample['num_tiles']} tiles > max_tiles")
                continue
            stats.accept()
            accepted += 1
            pending.append(before)
            batch = batcher.add(sample)
            if batch is not None:
                while len(pending) > batcher.num_pending:
                    pending.popleft()
                yield finish(batch, pending[0] if pending else last)
        batch = batcher.flush()
        if batch is not None:
            yield finish(batch, last)
