"""Baselines: one model alone (target-only or draft-only), step by step. k > 1 samples k steps and keeps the
selector's choice, as the SpecGuard fallback does; k = 1 is plain decoding."""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from ..events import Step
from ..signals import select
from .base import finished, sample_steps
from .options import Options


def single(rt, role: str, prompt: list[int], opts: Options) -> Iterator[Step]:
    session = rt.session(role, n_seq=opts.k, hidden=opts.k > 1)
    session.sync(prompt)
    rng = np.random.default_rng(opts.seed)
    generated, index = 0, 0
    while True:
        start = time.perf_counter()
        cands = sample_steps(session, opts.k, opts.sampling, rng,
                             min(opts.max_step_tokens, opts.max_tokens - generated),
                             session.ctx.hook)
        chosen = select(np.stack([c.embedding for c in cands])) if opts.k > 1 else 0
        cand = cands[chosen]
        session.adopt(cand)
        generated += len(cand.tokens)
        yield Step(index=index, text=session.ctx.model.detokenize(cand.tokens), tokens=cand.tokens, source=role,
                   verdict="generated", stop=cand.stop, chosen=chosen,
                   scores={"logprob_min": min(cand.logprobs), "logprob_mean": float(np.mean(cand.logprobs))},
                   timings={role: time.perf_counter() - start})
        index += 1
        if finished(cand.stop, generated, len(session.tokens), opts, session.ctx.n_ctx_seq):
            return


def target(rt, prompt: list[int], opts: Options) -> Iterator[Step]:
    """Target-only decoding: the quality reference and the speed baseline."""
    return single(rt, "target", prompt, opts)


def draft(rt, prompt: list[int], opts: Options) -> Iterator[Step]:
    """Draft-only decoding: the speed ceiling (and accuracy floor) of any draft-based method."""
    return single(rt, "draft", prompt, opts)
