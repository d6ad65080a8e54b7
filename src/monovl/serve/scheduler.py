"""Continuous batching: one thread owns the model and interleaves prefill chunks with decode steps.

Each turn of the loop (`Scheduler._turn`):
1. drops cancelled requests (a client went away; a stop string matched) from the queue, the
   prefill list and the running batch, so their KV memory is free before any more work;
2. admits queued requests while the number of sequences is under `max_num_seqs` and the KV budget
   holds the cache the batch would need with them (`RunningBatch.footprint`);
3. prefills at most `prefill_chunk` prompt tokens, oldest admitted request first (whole prompts
   share a turn while they fit; a prompt is only cut where it is longer than a chunk); a request
   whose prompt is done samples its first token and joins the running batch;
4. runs one decode step for every running sequence.
So a running stream waits at most one chunk of prefill between two of its tokens, however long
the prompt that arrived. Requests beyond the queue limit are refused (`QueueFull`, HTTP 503).

Tokens go back to each request's asyncio queue through `loop.call_soon_threadsafe`; the HTTP side
turns them into text. The scheduler knows token ids only, like the engine.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field

import torch

from ..engine.decode_kernels import NativeKernels, TorchKernels
from ..engine.generate import SamplingParams, next_tokens
from ..model.mono_internvl import MonoInternVL
from .batch import ChunkedPrefill, Row, RunningBatch

log = logging.getLogger("monovl.serve")


class QueueFull(RuntimeError):
    """The waiting queue is at its limit; the client should retry later (HTTP 503 + Retry-After)."""


class ShuttingDown(RuntimeError):
    """The server is stopping and takes no new requests (HTTP 503)."""


@dataclass
class GenerationRequest:
    """What the scheduler runs: prompt ids [T], tiles [n, 3, S, S] or None, and how to generate."""

    input_ids: torch.Tensor
    pixel_values: torch.Tensor | None
    image_token_id: int | None
    max_tokens: int
    sampling: SamplingParams
    stop_token_ids: frozenset[int] = frozenset()


@dataclass
class Token:
    id: int


@dataclass
class Finished:
    """The sequence ended: `reason` is "stop" (a stop token), "length" (max_tokens) or "abort"."""

    reason: str
    completion_tokens: int


@dataclass
class Failed:
    message: str


@dataclass(eq=False)
class Handle:
    """One submitted request, shared by the HTTP side (reads `events`) and the scheduler thread."""

    id: int
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    arrival: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    # Scheduler-thread state.
    prefill: ChunkedPrefill | None = None
    generator: torch.Generator | None = None
    generated: int = 0
    first_token_at: float | None = None
    done: bool = False

    @property
    def prompt_tokens(self) -> int:
        return int(self.request.input_ids.numel())

    def _emit(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


class Scheduler:
    """Owns the model on a background thread; `submit` requests from any thread.

    `kv_budget_tokens` bounds the KV cache, in token slots (bytes / `kv_bytes_per_token`), of the
    running batch plus the prompts being prefilled; `prefill_chunk` is the most prompt tokens one
    turn prefills. `on_first_token(handle, seconds)` and `on_finish(handle, event)` are metric hooks,
    called on the scheduler thread.
    """

    def __init__(self, model: MonoInternVL, *, max_num_seqs: int = 16, max_queue: int = 256,
                 kv_budget_tokens: int, prefill_chunk: int = 512, cpu_decode: bool | None = None,
                 kernels: NativeKernels | TorchKernels | None = None, on_first_token=None, on_finish=None,
                 trace: bool = False):
        if max_num_seqs < 1 or max_queue < 0 or kv_budget_tokens < 1 or prefill_chunk < 1:
            raise ValueError("max_num_seqs, kv_budget_tokens and prefill_chunk must be >= 1, max_queue >= 0")
        self.model = model
        self.max_num_seqs, self.max_queue = max_num_seqs, max_queue
        self.kv_budget_tokens, self.prefill_chunk = kv_budget_tokens, prefill_chunk
        self.batch = RunningBatch(model, cpu_decode, kernels, max_rows=max_num_seqs)
        self.on_first_token, self.on_finish = on_first_token, on_finish
        self._waiting: collections.deque[Handle] = collections.deque()
        self._prefilling: list[Handle] = []
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._abort_all = False
        # Observability for tests and /metrics: the largest batch seen, and (with `trace`) the work of
        # each turn in order, ("prefill", tokens, running rows) and ("decode", rows, rows).
        self.max_batch_seen = 0
        self.trace: collections.deque | None = collections.deque(maxlen=10_000) if trace else None

    # ---- public API (any thread) -----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="monovl-scheduler", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown: no new requests; queued ones fail at once; running ones get `timeout`
        seconds to finish, then end with a `Failed` event. Returns when the thread has exited."""
        with self._cond:
            self._stopping = True
            for h in self._waiting:
                h.done = True
                h._emit(Failed("the server is shutting down"))
            self._waiting.clear()
            self._cond.notify_all()
        if self._thread is None:
            return
        self._thread.join(timeout)
        with self._cond:
            self._abort_all = True
            self._cond.notify_all()
        self._thread.join()
        self._thread = None

    def submit(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop | None = None) -> Handle:
        """Queue a request; its events arrive on `handle.events` of `loop` (default: the running loop).

        Raises QueueFull when `max_queue` requests already wait, ShuttingDown after `stop`, and
        ValueError when the request alone can never fit the KV budget."""
        need = RunningBatch.footprint([request.input_ids.numel()], [request.max_tokens])
        if need > self.kv_budget_tokens:
            raise ValueError(f"the request needs {need} KV cache tokens (prompt {request.input_ids.numel()} + "
                             f"max_tokens {request.max_tokens}) but the server's KV budget is "
                             f"{self.kv_budget_tokens}; lower max_tokens or send a shorter prompt")
        loop = loop or asyncio.get_running_loop()
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (the limit is {self.max_queue})")
            handle = Handle(next(self._ids), request, loop, asyncio.Queue())
            self._waiting.append(handle)
            self._cond.notify_all()
        return handle

    def cancel(self, handle: Handle) -> None:
        """Free the request's slot before the next step (idempotent; a finished request is left alone)."""
        with self._cond:
            handle.cancelled = True
            self._cond.notify_all()

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        """Sequences holding KV memory: being prefilled or decoding."""
        return len(self._prefilling) + len(self._running)

    @property
    def _running(self) -> list[Handle]:
        """The decoding requests, in the order of the batch's rows (a rebuild may reorder them)."""
        return [row.key for row in self.batch.rows]

    def kv_tokens_reserved(self) -> int:
        return self._footprint()

    # ---- scheduler thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while not (self._waiting or self._prefilling or self._running or self._stopping):
                    self._cond.wait()
                if self._stopping and not (self._prefilling or self._running):
                    return
                if self._abort_all:
                    for h in self._prefilling + self._running:
                        self._finish(h, Failed("the server shut down before this request finished"))
                    self._prefilling = []
                    self.batch.rebuild([])
                    return
                self._drop_cancelled()
                self._admit()
            try:
                self._turn()
            except Exception as exc:  # a model fault must not kill the thread: fail what was running
                log.exception("scheduler step failed")
                for h in self._prefilling + self._running:
                    self._finish(h, Failed(f"internal error: {type(exc).__name__}: {exc}"))
                self._prefilling = []
                self.batch.rebuild([])

    def _footprint(self, extra: list[Handle] = ()) -> int:
        """KV tokens the batch needs once the prompts being prefilled, and `extra`, have joined it."""
        pending = self._prefilling + list(extra)
        rows = self.batch.rows
        return RunningBatch.footprint([h.prompt_tokens for h in pending] + [r.length for r in rows],
                                      [h.request.max_tokens for h in pending] + [r.remaining for r in rows])

    def _room(self) -> int:
        """KV token slots the running batch's cache may take: the budget less the prompts being prefilled."""
        pending = self._prefilling
        return self.kv_budget_tokens - RunningBatch.footprint([h.prompt_tokens for h in pending],
                                                              [h.request.max_tokens for h in pending])

    def _drop_cancelled(self) -> None:
        for h in [h for h in self._waiting if h.cancelled]:
            self._waiting.remove(h)
            self._finish(h, Finished("abort", 0))
        for h in [h for h in self._prefilling if h.cancelled]:
            self._prefilling.remove(h)
            self._finish(h, Finished("abort", h.generated))
        gone = {i: h for i, h in enumerate(self._running) if h.cancelled}
        if gone:
            for h in gone.values():
                self._finish(h, Finished("abort", h.generated))
            self._remove_rows(set(gone))

    def _admit(self) -> None:
        while self._waiting and len(self._prefilling) + len(self._running) < self.max_num_seqs:
            h = self._waiting[0]
            if self._footprint([h]) > self.kv_budget_tokens:
                break  # first come, first served: a big request is not overtaken by smaller ones
            self._waiting.popleft()
            try:
                h.prefill = ChunkedPrefill(self.model, h.request.input_ids, h.request.pixel_values,
                                           h.request.image_token_id, self.prefill_chunk)
            except ValueError as exc:
                self._finish(h, Failed(str(exc)))
                continue
            h.generator = _generator(h.request.sampling, self.model.device)
            self._prefilling.append(h)

    def _turn(self) -> None:
        # Prefill: up to `prefill_chunk` prompt tokens in all, oldest request first. Prompts that fit
        # the turn's budget whole share it; one that does not waits for the next turn, which starts
        # with it and cuts it only where it is longer than a chunk. (Cutting a prompt that would fit
        # a turn makes it slower for nothing: a 360-token cpu-420m prompt took 0.39 s in two pieces
        # against 0.335 s whole, 2-core Intel Xeon.)
        budget, running_before = self.prefill_chunk, len(self._running)
        while self._prefilling and budget > 0:
            h = self._prefilling[0]
            if budget < self.prefill_chunk and h.prefill.length - h.prefill.pos > budget:
                break
            before = h.prefill.pos
            try:
                logits = h.prefill.step(budget)
            except Exception as exc:  # this prompt's fault (or its memory): fail it alone
                log.exception("prefill failed")
                self._prefilling.pop(0)
                self._finish(h, Failed(f"prefill failed: {type(exc).__name__}: {exc}"))
                continue
            budget -= h.prefill.pos - before
            if logits is None:
                continue
            self._prefilling.pop(0)
            token = self._sample(h, logits)
            cache, h.prefill = h.prefill.cache, None
            if self._accept(h, token):
                self.batch.rebuild(list(range(len(self.batch))),
                                   [(Row(h, cache.length, h.request.max_tokens - h.generated, token), cache)],
                                   self._room())
        if budget < self.prefill_chunk:
            self._note("prefill", self.prefill_chunk - budget, running_before)
        if self._running:
            self.max_batch_seen = max(self.max_batch_seen, len(self._running))
            logits = self.batch.step()
            self._note("decode", len(self._running), len(self._running))
            finished = set()
            for i, h in enumerate(self._running):
                token = self._sample(h, logits[i:i + 1])
                if self._accept(h, token):
                    self.batch.rows[i].token = token
                else:
                    finished.add(i)
            if finished:
                self._remove_rows(finished)

    def _remove_rows(self, indices: set[int]) -> None:
        self.batch.rebuild([i for i in range(len(self.batch)) if i not in indices], room=self._room())

    def _sample(self, h: Handle, logits: torch.Tensor) -> int:
        return int(next_tokens(logits, h.request.sampling, None, h.generator)[0])

    def _accept(self, h: Handle, token: int) -> bool:
        """Count and deliver `token`; False when the sequence is finished (stop token, max_tokens, cancelled)."""
        h.generated += 1
        if h.first_token_at is None:
            h.first_token_at = time.monotonic()
            if self.on_first_token:
                self.on_first_token(h, h.first_token_at - h.arrival)
        if token in h.request.stop_token_ids:
            self._finish(h, Finished("stop", h.generated))
            return False
        h._emit(Token(token))
        if h.generated >= h.request.max_tokens:
            self._finish(h, Finished("length", h.generated))
            return False
        if h.cancelled:
            self._finish(h, Finished("abort", h.generated))
            return False
        return True

    def _finish(self, h: Handle, event) -> None:
        if h.done:
            return
        h.done = True
        h.prefill = None
        h._emit(event)
        if self.on_finish:
            self.on_finish(h, event)

    def _note(self, kind: str, amount: int, running: int) -> None:
        if self.trace is not None:
            self.trace.append((kind, amount, running))


def _generator(p: SamplingParams, device: torch.device) -> torch.Generator | None:
    """A per-request generator seeded like `Engine._generator`, so a seeded request samples what it
    samples alone through the engine."""
    if not p.do_sample:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(p.seed if p.seed is not None else torch.seed())
    return g
