"""SpecGuard (arXiv 2604.15244): step-level verification from the draft's own signals, target only on doubt.

Per step, with I = prompt + accepted steps:
  1. the draft samples k candidate steps in one batched decode per token (sequences share I's KV cells);
  2. the self-consistency selector keeps the most representative candidate (k > 1);
  3. LPBV l = min token log-prob; ABGV g = min token attention grounding on I (rollout over the last 3 layers);
  4. r = β·l̃ + (1-β)·g̃ after normalising with the pair's calibration profile; accept iff r ≥ τ;
  5. otherwise the target writes the step (k samples + the same selector), after a lazy catch-up prefill of
     every step it has not seen yet; the draft then prefills the target's step and drafting resumes.

Choices where the paper is silent: the attention and the hidden states are the *draft's* (the target never runs
on accepted steps, which is where the speed comes from); normalisation bounds are per-pair percentiles
(`signals.Profile`); a step's last token ("\\n\\n" or end-of-generation) is scored like any other.

Early rejection: both scores are minima over tokens, and a token's grounding depends only on the tokens before it,
so r can only fall as a step grows. Scoring the partial candidates after every token and stopping the draft as soon
as every candidate's r < τ therefore changes no decision; it only saves drafting a step the target will rewrite.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator

import numpy as np

from ..attention import PrefixMass, extend_prefix, step_grounding
from ..errors import SpecGuardError
from ..events import Step
from ..signals import Profile, decision_score, default_profile, select
from .base import Candidate, finished, sample_steps
from .options import Options


def specguard(rt, prompt: list[int], opts: Options) -> Iterator[Step]:
    profile = load_profile(opts, rt.ids["draft"], rt.ids["target"])
    draft = rt.session("draft", n_seq=opts.k, layers=opts.layers, hidden=opts.k > 1)
    target = rt.session("target", n_seq=opts.k, hidden=opts.k > 1)
    capture, rng = draft.ctx.hook, np.random.default_rng(opts.seed)
    layers = capture.layers  # the rollout's layers, first to last
    timings: dict[str, float] = {}
    with clock(timings, "draft_prefill"):
        draft.sync(prompt)
        mass = extend_prefix(PrefixMass.empty(len(layers)), *map(capture.rows, layers[:-1]))
    tokens, index = list(prompt), 0
    while True:
        budget = min(opts.max_step_tokens, opts.max_tokens - (len(tokens) - len(prompt)))
        with clock(timings, "draft"):
            cands = sample_steps(draft, opts.k, opts.sampling, rng, budget, capture,
                                 hopeless=lambda c: score_step(c, mass, layers, profile, opts)["r"] < profile.tau)
        with clock(timings, "score"):
            chosen = select(np.stack([c.embedding for c in cands])) if opts.k > 1 else 0
            scores = [score_step(c, mass, layers, profile, opts) for c in cands]
        if scores[chosen]["r"] >= profile.tau:
            step, source, verdict = cands[chosen], "draft", "accepted"
            draft.adopt(step)
            mass = extend_prefix(mass, *map(step.attention, layers[:-1]))
        else:
            with clock(timings, "target_prefill"):
                target.sync(tokens)
            with clock(timings, "target"):
                target_cands = sample_steps(target, opts.k, opts.sampling, rng, budget, target.ctx.hook)
                step = target_cands[select(np.stack([c.embedding for c in target_cands])) if opts.k > 1 else 0]
                target.adopt(step)
            with clock(timings, "draft_sync"):
                draft.sync(tokens + step.tokens)
                mass = extend_prefix(mass, *map(capture.rows, layers[:-1]))
            source, verdict = "target", "rejected"
        tokens += step.tokens
        yield Step(index=index, text=draft.ctx.model.detokenize(step.tokens), tokens=step.tokens, source=source,
                   verdict=verdict, stop=step.stop, scores=scores[chosen], chosen=chosen, timings=timings,
                   candidates=[dict(text=draft.ctx.model.detokenize(c.tokens), n_tokens=len(c.tokens), stop=c.stop,
                                    **s) for c, s in zip(cands, scores)])
        index, timings = index + 1, {}
        if finished(step.stop, len(tokens) - len(prompt), len(tokens), opts, draft.ctx.n_ctx_seq):
            return


def score_step(cand: Candidate, mass: PrefixMass, layers: list[int], profile: Profile,
               opts: Options) -> dict[str, float]:
    """Raw and normalised LPBV / ABGV scores of one candidate step and its decision score r."""
    grounding = step_grounding(mass, *(cand.attention(layer) for layer in layers))
    logprob_min, grounding_min = min(cand.logprobs), float(grounding.min())
    l_norm, g_norm, r = decision_score(logprob_min, grounding_min, profile, opts.use_logprob, opts.use_grounding)
    return {"logprob_min": logprob_min, "logprob_mean": float(np.mean(cand.logprobs)),
            "grounding_min": grounding_min, "grounding_mean": float(grounding.mean()),
            "logprob_norm": l_norm, "grounding_norm": g_norm, "r": r}


def load_profile(opts: Options, draft: str, target: str) -> Profile:
    """The calibration profile for this pair, with --beta / --tau overrides. Bounds calibrated on another pair
    would make r meaningless, so a mismatch is an error, not a silent default."""
    profile = Profile.load(opts.profile) if opts.profile else default_profile()
    if opts.beta is not None and not 0.0 <= opts.beta <= 1.0:
        raise SpecGuardError("--beta must lie in [0, 1]")
    if (profile.draft, profile.target) != (draft, target):
        raise SpecGuardError(f"the calibration profile is for {profile.draft} → {profile.target}, not {draft} → "
                             f"{target}; run `specguard-local calibrate --draft {draft} --target {target} --out "
                             f"profile.json` and pass --profile profile.json")
    return replace(profile, beta=profile.beta if opts.beta is None else opts.beta,
                   tau=profile.tau if opts.tau is None else opts.tau)


@contextmanager
def clock(timings: dict[str, float], name: str):
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
