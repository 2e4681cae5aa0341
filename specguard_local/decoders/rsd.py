"""Reward-guided speculative decoding (RSD), step level: a judge scores each draft step; below δ the target writes it.

RSD uses a process reward model as the judge. We ship none, so the judge here is the *target's own step score*:
the target reads the draft step in one batched pass and the score is its per-token geometric-mean probability,
exp(mean log p_target(step)) ∈ [0, 1] — labelled `judge: target-likelihood` in every step. That pass also
leaves an accepted step in the target's KV cache, so no later catch-up is needed. Unlike SpecGuard, the target
runs on every step (a prefill, cheaper per token than generating).
"""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from ..engine import token_logprob
from ..events import Step
from .base import finished, sample_steps
from .options import Options
from .specguard import clock

JUDGE = "target-likelihood"


def rsd(rt, prompt: list[int], opts: Options) -> Iterator[Step]:
    draft, target = rt.session("draft"), rt.session("target")
    rng, tokens, index = np.random.default_rng(opts.seed), list(prompt), 0
    draft.sync(prompt)
    while True:
        timings: dict[str, float] = {}
        budget = min(opts.max_step_tokens, opts.max_tokens - (len(tokens) - len(prompt)))
        with clock(timings, "draft"):
            step = sample_steps(draft, 1, opts.sampling, rng, budget)[0]
        with clock(timings, "judge"):
            target.sync(tokens)
            target.ctx.truncate(target.seq, len(tokens))
            logits = target.ctx.decode(step.tokens, list(range(len(tokens), len(tokens) + len(step.tokens))),
                                       [target.seq] * len(step.tokens), [True] * len(step.tokens))
            before = [target.logits, *logits[:-1]]
            judge = float(np.exp(np.mean([token_logprob(row, t) for row, t in zip(before, step.tokens)])))
        if judge >= opts.delta:
            source, verdict = "draft", "accepted"
            draft.adopt(step)
            target.tokens, target.logits = tokens + step.tokens, logits[-1]
        else:
            source, verdict = "target", "rejected"
            with clock(timings, "target"):
                target.sync(tokens)  # drops the judged draft step from the target's KV cache
                step = sample_steps(target, 1, opts.sampling, rng, budget)[0]
                target.adopt(step)
            with clock(timings, "draft_sync"):
                draft.sync(tokens + step.tokens)
        tokens += step.tokens
        yield Step(index=index, text=draft.ctx.model.detokenize(step.tokens), tokens=step.tokens, source=source,
                   verdict=verdict, stop=step.stop, scores={"judge": judge}, timings=timings,
                   candidates=[{"judge_model": JUDGE}])
        index += 1
        if finished(step.stop, len(tokens) - len(prompt), len(tokens), opts, draft.ctx.n_ctx_seq):
            return
