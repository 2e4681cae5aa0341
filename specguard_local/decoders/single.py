"""Baselines: one model alone (target-only or draft-only), step by step. k > 1 samples k steps and keeps the
selector's choice, as the SpecGuard fallback does; k = 1 is plain decoding."""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from ..events import Step
from ..generation import PairRuntime
from .base import write_step
from .drivers import step_loop
from .options import Options


def single(rt: PairRuntime, role: str, prompt: list[int], opts: Options) -> Iterator[Step]:
    session = rt.session(role, n_seq=opts.k, hidden=opts.k > 1)
    session.sync(prompt)
    rng = np.random.default_rng(opts.seed)

    def write(tokens: list[int], budget: int) -> Step:
        start = time.perf_counter()
        cand, chosen = write_step(session, opts, rng, budget)
        return Step(index=0, text=session.ctx.model.detokenize(cand.tokens), tokens=cand.tokens, source=role,
                    verdict="generated", stop=cand.stop, chosen=chosen,
                    target_tokens=len(cand.tokens) if role == "target" else 0,
                    scores={"logprob_min": min(cand.logprobs), "logprob_mean": float(np.mean(cand.logprobs))},
                    timings={role: time.perf_counter() - start})

    yield from step_loop(prompt, opts, session.ctx.n_ctx_seq, write)


def target(rt: PairRuntime, prompt: list[int], opts: Options) -> Iterator[Step]:
    """Target-only decoding: the quality reference and the speed baseline."""
    return single(rt, "target", prompt, opts)


def draft(rt: PairRuntime, prompt: list[int], opts: Options) -> Iterator[Step]:
    """Draft-only decoding: the speed ceiling (and accuracy floor) of any draft-based method."""
    return single(rt, "draft", prompt, opts)
