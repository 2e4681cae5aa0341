"""Requests decoded together: every decoder runs unchanged in its own thread, on its own sequences of shared
contexts, and the `Batcher` merges the decode calls of all running requests into one `llama_decode` per context.

Each request owns a slot: sequences [slot·n, slot·n + n) of every shared context. Its decoder sees a `SlotContext`,
which looks like a `Context` of n sequences (local sequence ids, its own capture rows) and sends every decode to the
batcher. The batcher's one decoding thread waits until every running request is waiting on a decode (Python work
between decodes is serialised by the GIL anyway), then runs them:
  - calls of one token per sequence with all logits wanted (a drafting or decoding tick of `sample_steps`) are
    merged per context into one batch, ordered by sequence, which is also the order the attention hook sees their
    rows in — each call gets back its own logits and captured rows;
  - any other call (a prompt prefill, a verifier reading a whole step) runs alone, still in the same round.
A request that joins later simply takes part in the next round. With `merge=False` (`serve --deterministic`) every
call runs alone, still in rounds: then each request's answer is bit for bit the one it gets alone, because
llama.cpp's CPU kernels for repacked Q4_K weights compute a row differently in a batch of several rows (groups of 4
rows take a GEMM, the rest a GEMV); turning the repacking off would make merged rows bit-identical but slows a
lone request, so it stays on (measured: `scripts/batch_invariance.py`, docs/measurements.md). Every llama.cpp call
on a shared context (decode, KV roll-back, fork, context creation) happens under the batcher's one lock, so none runs beside a decode.

Why one thread runs every decode: llama.cpp's CPU backend spreads a decode over an OpenMP team that belongs to the
calling thread and spins for a while after the decode ends. When each round ran on whichever request thread came
last, up to one spinning team per request competed with the next round's decode. Measured in one process on 2 cores
(4 GSM8K questions x 100 target tokens): one after another 7.9 tok/s; together, rounds on the request threads 10.9
(1.31x); the same with OMP_WAIT_POLICY=PASSIVE, where idle teams sleep, 12.1 (1.60x, but one request alone then
decodes 9% slower); rounds on this one decoding thread 12.0 (1.51x). So the spin stays on and the teams go down to
one. It must stay one: in a process whose main thread had decoded first, the decoding thread's decodes took 20-35% longer (measured
2026-12-02, 2 cores; a fresh process: no difference from in-process decoding), so `serve` decodes nowhere else.

A request's own clock (`RequestClock`) is wall time less what it spent waiting for other requests: the time
between handing a decode to the batcher and getting it back, less its share (by tokens) of the decode it took part
in. SpecGuard's cost-aware controller reads it, so inside the server it compares its own decoding costs, not the
rounds it shared.

Cancellation: each request has a `stop` event (client gone, stop string seen, server shutting down); its next decode
raises `Cancelled` instead of running, and the slot's sequences are then free for the next request.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .cancel import Cancelled
from .engine import Context


@dataclass
class _Call:
    ctx: Context
    tokens: list[int]
    positions: list[int]
    seqs: list[int]
    outputs: list[bool]
    logits: np.ndarray | None = None
    rows: dict = field(default_factory=dict)   # capture key -> this call's rows of the last decode
    error: BaseException | None = None
    done: bool = False
    own_s: float = 0.0                         # this call's share (by tokens) of the decode it took part in

    @property
    def mergeable(self) -> bool:
        return all(self.outputs) and len(set(self.seqs)) == len(self.seqs)


class Batcher:
    """Runs the pending decode calls of all running requests, once every one of them is waiting, on its one decoding
    thread (started with the first request, gone when none is left)."""

    def __init__(self, merge: bool = True):
        self.merge = merge
        self.lock = threading.Condition(threading.RLock())
        self._running = 0
        self._pending: list[_Call] = []
        self._worker: threading.Thread | None = None

    @contextmanager
    def request(self):
        """A request is running (its decodes are awaited before each round) while inside."""
        with self.lock:
            self._running += 1
            self._start_worker()
        try:
            yield
        finally:
            with self.lock:
                self._running -= 1
                self.lock.notify_all()

    def decode(self, call: _Call) -> _Call:
        with self.lock:
            self._pending.append(call)
            self._start_worker()
            self.lock.notify_all()
            while not call.done:
                self.lock.wait()
        if call.error is not None:
            raise call.error
        return call

    def _start_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="specguard-decode", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        with self.lock:
            while self._running or self._pending:
                if not self._pending or len(self._pending) < self._running:
                    self.lock.wait()
                    continue
                calls, self._pending = self._pending, []
                try:
                    _run_round(calls, self.merge)
                finally:
                    for call in calls:
                        call.done = True
                    self.lock.notify_all()
            self._worker = None


def _run_round(calls: list[_Call], merge: bool) -> None:
    """Per context: the mergeable calls in batches of up to n_batch tokens, then every other call alone."""
    for ctx in {id(c.ctx): c.ctx for c in calls}.values():
        group = [c for c in calls if c.ctx is ctx]
        merged = sorted((c for c in group if merge and c.mergeable), key=lambda c: min(c.seqs))
        for chunk in _chunks(merged, ctx.n_batch):
            _decode_together(ctx, chunk)
        for call in group:
            if not (merge and call.mergeable):
                _decode_together(ctx, [call])


def _chunks(calls: list[_Call], n_batch: int) -> list[list[_Call]]:
    chunks, size = [], n_batch
    for call in calls:
        if size + len(call.tokens) > n_batch:
            chunks.append([])
            size = 0
        chunks[-1].append(call)
        size += len(call.tokens)
    return chunks


def _decode_together(ctx: Context, calls: list[_Call]) -> None:
    """One decode for `calls` (merged ones hold one token per sequence: rows come back in sequence order)."""
    owner = [(i, j) for i, call in enumerate(calls) for j in range(len(call.tokens))]
    if len(calls) > 1:
        owner.sort(key=lambda ij: calls[ij[0]].seqs[ij[1]])
    start = time.perf_counter()
    try:
        logits = ctx.decode(*([getattr(calls[i], name)[j] for i, j in owner]
                              for name in ("tokens", "positions", "seqs", "outputs")))
        rows = {key: ctx.hook.rows(key) for key in ctx.hook.parts} if ctx.hook is not None else {}
    except BaseException as exc:  # handed to the callers; the round goes on for the other contexts
        for call in calls:
            call.error = exc
        return
    seconds = time.perf_counter() - start
    for call in calls:
        call.own_s = seconds * len(call.tokens) / len(owner)
    if len(calls) == 1:
        calls[0].logits, calls[0].rows = logits, rows
        return
    for n, call in enumerate(calls):  # merged calls want every logit: row k of each array is token owner[k]
        mine = [k for k, (i, _) in enumerate(owner) if i == n]
        call.logits = logits[mine]
        call.rows = {key: value[mine] for key, value in rows.items()}


class RequestClock:
    """Wall time less the time this request waited on other requests' decodes (see the module docstring)."""

    def __init__(self):
        self.waited = 0.0

    def __call__(self) -> float:
        return time.perf_counter() - self.waited


class SlotCapture:
    """What a request's decoder reads of the shared context's capture hook: its own rows of the last decode."""

    def __init__(self, capture):
        self.layers = capture.layers
        self.parts = {key: None for key in capture.parts}
        self._rows: dict = {}

    def rows(self, key) -> np.ndarray:
        return self._rows.get(key, np.zeros((0, 0), np.float32))


class SlotContext(Context):
    """Sequences [base, base + n_seq) of a shared context, seen as a context of n_seq sequences whose decodes go
    through the batcher. Everything else (prefill, check_room) is `Context`'s own code."""

    def __init__(self, shared: Context, batcher: Batcher, base: int, n_seq: int, stop: threading.Event,
                 clock: RequestClock):
        self.shared, self.batcher, self.base, self.stop, self.clock = shared, batcher, base, stop, clock
        self.model, self.n_seq, self.n_ctx_seq, self.n_batch = shared.model, n_seq, shared.n_ctx_seq, shared.n_batch
        self.hook = SlotCapture(shared.hook) if shared.hook is not None else None

    def decode(self, tokens: list[int], positions: list[int], seqs: list[int], outputs: list[bool]) -> np.ndarray:
        if self.stop.is_set():
            raise Cancelled
        start = time.perf_counter()
        call = self.batcher.decode(_Call(self.shared, list(tokens), list(positions), [self.base + s for s in seqs],
                                         list(outputs)))
        self.clock.waited += max(time.perf_counter() - start - call.own_s, 0.0)
        if self.hook is not None:
            self.hook._rows = call.rows
        return call.logits

    def truncate(self, seq: int, n_keep: int) -> None:
        with self.batcher.lock:
            self.shared.truncate(self.base + seq, n_keep)

    def fork(self, src: int, dsts) -> None:
        with self.batcher.lock:
            self.shared.fork(self.base + src, [self.base + d for d in dsts])

    def clear(self) -> None:
        for seq in range(self.n_seq):
            self.truncate(seq, 0)

    def close(self) -> None:
        """The shared context belongs to the runtime."""
