"""Admission: up to `parallel` requests decode together (see `batching`), up to `queue` more wait for a slot, beyond
that a request is refused with 503.

Each admitted request runs its decoder on the batcher's decoding thread, on its slot's sequences, and hands every
step to the event loop as it is produced. A request stops early when its `stop` event is set: by the handler
(client gone, stop string), or by `close` (server shutting down); its next decode then raises `Cancelled` and the
slot is free again.
"""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..batching import Batcher
from ..cancel import Cancelled
from ..errors import SpecGuardError
from ..runtime import Runtime, SlotRuntime
from .chat import RequestError


@dataclass(eq=False)
class Job:
    """One admitted request: `work(rt)` yields what it produces (a chat answer's steps; a check's one result) on the
    request's slot of the shared runtime."""

    work: Callable[[SlotRuntime], Iterable]
    stop: threading.Event = field(default_factory=threading.Event)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # ("step", item) … then ("end" | "cancelled" | "error", …)
    done: threading.Event = field(default_factory=threading.Event)  # its decoder has ended


class Scheduler:
    def __init__(self, rt: Runtime, parallel: int, queue: int, max_k: int, merge: bool = True):
        self.rt, self.parallel, self.queue, self.max_k = rt, parallel, queue, max_k
        self.batcher = Batcher(merge)
        self.slots: asyncio.Queue[int] = asyncio.Queue()
        for slot in range(parallel):
            self.slots.put_nowait(slot)
        self.waiting = 0
        self.running: set[Job] = set()
        self.closing = False

    async def start(self, job: Job) -> None:
        """Admit `job` (waiting for a slot if all are busy) and start decoding it; 503 when full or closing."""
        if self.closing:
            raise RequestError(503, "the server is shutting down", "server_error", code="shutting_down")
        if self.slots.empty() and self.waiting >= self.queue:
            raise RequestError(503, f"all {self.parallel} slots are busy and {self.waiting} requests wait; retry "
                                    f"later (or start the server with a larger --parallel / --queue)",
                               "server_error", code="server_busy")
        self.waiting += 1
        try:
            slot = await self.slots.get()
        finally:
            self.waiting -= 1
        if self.closing:
            self.slots.put_nowait(slot)
            raise RequestError(503, "the server is shutting down", "server_error", code="shutting_down")
        self.running.add(job)
        loop = asyncio.get_running_loop()
        self.batcher.run(lambda: self._decode(job, slot, loop))

    def _decode(self, job: Job, slot: int, loop: asyncio.AbstractEventLoop) -> None:
        def put(kind, value=None):
            try:
                loop.call_soon_threadsafe(job.events.put_nowait, (kind, value))
            except RuntimeError:  # the event loop is gone (server stopped)
                pass

        rt = SlotRuntime(self.rt, self.batcher, slot, self.parallel, self.max_k, job.stop)
        try:
            for item in job.work(rt):
                put("step", item)
            put("end")
        except Cancelled:
            put("cancelled")
        except SpecGuardError as exc:
            put("error", RequestError(400, str(exc)))
        except Exception as exc:  # a fault in decoding: this request fails, the server goes on
            traceback.print_exc()
            put("error", RequestError(500, f"decoding failed: {exc}", "server_error"))
        finally:
            job.done.set()
            try:
                loop.call_soon_threadsafe(self._release, job, slot)
            except RuntimeError:
                pass

    def _release(self, job: Job, slot: int) -> None:
        self.running.discard(job)
        self.slots.put_nowait(slot)

    def close(self) -> None:
        """Stop admitting, and stop every running request at its next decode."""
        self.closing = True
        for job in list(self.running):
            job.stop.set()

    def join(self, timeout: float) -> bool:
        """Wait for the running requests' decoders to end; True when all did."""
        deadline = time.monotonic() + timeout
        return all(job.done.wait(max(deadline - time.monotonic(), 0.0)) for job in list(self.running))
