"""Cancellation: a stop is a flag honoured at the next decode boundary, never an exception raised inside C.

Two scopes, one rule. Per request (`specguard-local serve`: a client gone, a stop string, the server shutting down):
the request's own event, checked by its `batching.SlotContext` before each decode, which then raises `Cancelled`.
Per process (Ctrl-C in solve, bench, calibrate, study): below.

Python's default SIGINT handler raises KeyboardInterrupt at the next bytecode of the main thread. While SpecGuard
drafts, that bytecode is often inside the attention eval callback, which llama.cpp calls from C: ctypes then prints
"Exception ignored on calling ctypes callback function" and the decode goes on. So, inside `on_sigint()`, a SIGINT
that arrives during a `llama_decode` call only sets a flag, and `Context.decode` raises KeyboardInterrupt as soon as
that call returns; one that arrives anywhere else raises KeyboardInterrupt at once, as usual.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Cancelled(Exception):
    """A request's decoding was stopped from outside (client gone, stop string, server shutting down)."""


_requested = threading.Event()
_in_decode = threading.Event()


def request(*_signal_args) -> None:
    """Stop the run: at once outside llama.cpp, right after the running llama_decode call inside it."""
    _requested.set()
    if not _in_decode.is_set() and threading.current_thread() is threading.main_thread():
        check()


def check() -> None:
    """Raise KeyboardInterrupt if a stop was requested (and clear the request)."""
    if _requested.is_set():
        _requested.clear()
        raise KeyboardInterrupt


@contextmanager
def decoding():
    """Marks a llama_decode call: a stop requested meanwhile waits until it returns, then raises here."""
    _in_decode.set()
    try:
        yield
    finally:
        _in_decode.clear()
    check()


@contextmanager
def on_sigint():
    """While inside, SIGINT goes through `request` (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, request)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()
