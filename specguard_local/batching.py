"""Requests decoded together: every request's decoder runs unchanged, on its own sequences of shared contexts, and
the `Batcher` merges the decode calls of all running requests into one `llama_decode` per context.

Each request owns a slot: sequences [slot·n, slot·n + n) of every shared context. Its decoder sees a `SlotContext`,
which looks like a `Context` of n sequences (local sequence ids, its own capture rows) and sends every decode to the
batcher. Every request runs on the batcher's one decoding thread, as a greenlet of its own: it runs until it asks
for a decode, then hands the thread to the next request; once every running request waits on a decode, the round
runs (python work between decodes is serialised by the GIL anyway):
  - calls of one token per sequence with all logits wanted (a drafting or decoding tick of `sample_steps`) are
    merged per context into one batch, ordered by sequence, which is also the order the attention hook sees their
    rows in — each call gets back its own logits and captured rows;
  - any other call (a prompt prefill, a verifier reading a whole step) runs alone, still in the same round.
A request that joins later simply takes part in the next round. With `merge=False` (`serve --deterministic`) every
call runs alone, still in rounds: then each request's answer is bit for bit the one it gets alone, because
llama.cpp's CPU kernels for repacked Q4_K weights compute a row differently in a batch of several rows (groups of 4
rows take a GEMM, the rest a GEMV); turning the repacking off would make merged rows bit-identical but slows a
lone request, so it stays on (measured: `scripts/batch_invariance.py`, docs/measurements.md).

Why one thread runs everything: llama.cpp's CPU backend spreads a decode over an OpenMP team that belongs to the
calling thread and spins for a while after the decode ends, so decodes from several threads meant several teams
competing for the cores (in a process whose main thread had decoded first, a second thread's decodes took 20–35%
longer on 2 cores). With every request a greenlet of one thread there is one team, nothing is handed between
threads per token, and a request alone runs exactly as in-process decoding does: its python and its decodes on one
thread. `serve` decodes nowhere else.

A request's own clock (`RequestClock`) is wall time less what it spent waiting for other requests: the time
between asking for a decode and getting it back, less its share (by tokens) of the decode it took part in.
SpecGuard's cost-aware controller reads it, so inside the server it compares its own decoding costs, not the
rounds it shared.

Cancellation: each request has a `stop` event (client gone, stop string seen, server shutting down); its next decode
raises `Cancelled` instead of running, and the slot's sequences are then free for the next request.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from greenlet import greenlet

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
    own_s: float = 0.0                         # this call's share (by tokens) of the decode it took part in

    @property
    def mergeable(self) -> bool:
        return all(self.outputs) and len(set(self.seqs)) == len(self.seqs)


class Batcher:
    """Runs requests as greenlets of its one decoding thread (started with the first request, gone when none is
    left), and their pending decode calls together once every one of them is waiting."""

    def __init__(self, merge: bool = True):
        self.merge = merge
        self._arrived = threading.Condition()
        self._inbox: list[Callable[[], None]] = []
        self._worker: threading.Thread | None = None

    def run(self, *works: Callable[[], None]) -> None:
        """Start each `work()` (one request; it must handle its own exceptions) on the decoding thread; their decodes
        (`decode`) join the rounds of the requests already running. Works given together start in the same round."""
        with self._arrived:
            self._inbox.extend(works)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="specguard-decode", daemon=True)
                self._worker.start()
            self._arrived.notify()

    def decode(self, call: _Call) -> _Call:
        """From inside a request: wait for the round that runs `call` (the thread meanwhile runs the others)."""
        decoding_thread = greenlet.getcurrent().parent
        if decoding_thread is None:
            raise RuntimeError("a slot decodes only inside Batcher.run")
        decoding_thread.switch(call)
        if call.error is not None:
            raise call.error
        return call

    def _work(self) -> None:
        waiting: list[tuple[greenlet, _Call]] = []
        while True:
            with self._arrived:
                if not self._inbox and not waiting:
                    self._worker = None
                    return
                arrived, self._inbox = self._inbox, []
            turns = [request for request, _ in waiting] + [greenlet(work) for work in arrived]
            waiting = []
            for request in turns:  # each runs until it asks for a decode (switches back here) or ends
                try:
                    call = request.switch()
                except Exception:  # a request's own fault, which it should have handled: it ends, the rest go on
                    traceback.print_exc()
                    continue
                if not request.dead:
                    waiting.append((request, call))
            if waiting:
                _run_round([call for _, call in waiting], self.merge)


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
        self.shared.truncate(self.base + seq, n_keep)

    def fork(self, src: int, dsts) -> None:
        self.shared.fork(self.base + src, [self.base + d for d in dsts])

    def clear(self) -> None:
        for seq in range(self.n_seq):
            self.truncate(seq, 0)

    def close(self) -> None:
        """The shared context belongs to the runtime."""
