"""SpecGuard (arXiv 2604.15244): step-level verification, target only on doubt.

Per step, with I = prompt + accepted steps:
  1. the draft samples k candidate steps in one batched decode per token (sequences share I's KV cells);
  2. the self-consistency selector keeps the most representative candidate (k > 1);
  3. a verifier (`verifiers`) scores it: by default the paper's r = β·l̃ + (1-β)·g̃ from the draft's own LPBV
     (min log-prob) and ABGV (min attention grounding on I); or the target's judge score from one batched prefill
     of the step; or a hidden-state probe; or an AND of these; accept iff every part's score ≥ its τ;
  4. otherwise the target writes the step (k samples + the same selector; greedy when k = 1), after a lazy
     catch-up prefill of every step it has not seen yet; the draft then prefills the target's step.

Choices where the paper is silent: the attention and the hidden states are the *draft's* (the target never runs
on accepted steps unless the verifier asks it to, which is where the speed comes from); normalisation bounds are
per-pair percentiles (`signals.Profile`); a step's last token ("\\n\\n" or end-of-generation) is scored like any
other. A verifier that reads the step with the target leaves an accepted step in the target's KV cache (no later
catch-up) and rewinds a rejected one with the logits saved before it (`Session.rewind`).

Early rejection: both signal scores are minima over tokens, and a token's grounding depends only on the tokens
before it, so r can only fall as a step grows. Scoring the partial candidates after every token and stopping the
draft as soon as every candidate's r < τ therefore changes no decision; it only saves drafting a step the target
will rewrite. It applies to any verifier that includes `signals` (an AND fails when one part fails).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator

import numpy as np

from ..errors import SpecGuardError
from ..events import Step
from ..probe import Probe, default_probe_path
from ..signals import Profile, pair_profile, select
from .base import Candidate, Session, finished, sample_steps
from .controller import Controller
from .options import Options
from .verifiers import Grounding, parse_verifier, read_step


def specguard(rt, prompt: list[int], opts: Options) -> Iterator[Step]:
    profile = load_profile(opts, rt.ids["draft"], rt.ids["target"])
    verifier = parse_verifier(opts.verifier or profile.verifier, profile, opts.tau)
    probe = load_probe(opts, rt) if "probe" in verifier.parts else None
    draft = rt.session("draft", n_seq=opts.k, layers=opts.layers,
                       hidden=opts.k > 1 or (probe is not None and probe.features != "target"))
    target = rt.session("target", n_seq=opts.k, hidden=opts.k > 1 or (probe is not None and probe.features != "draft"))
    judged = "target-judge" in verifier.parts or (probe is not None and probe.features != "draft")
    memory_key = ("specguard", verifier, opts.probe, opts.k, opts.layers, opts.sampling, opts.use_logprob,
                  opts.use_grounding)
    previous = rt.memory.get(memory_key)
    control = previous.next_answer() if previous is not None and opts.adapt else Controller(enabled=opts.adapt)
    rng, timings = np.random.default_rng(opts.seed), {}
    tau_signals = dict(zip(verifier.parts, verifier.taus)).get("signals")
    grounding = Grounding.start(draft.ctx.hook)  # the draft reads the prompt just before its first drafted step
    hopeless = (lambda c: grounding.signals(c, profile, opts.use_logprob, opts.use_grounding)["r"] < tau_signals) if tau_signals is not None else None
    tokens, index = list(prompt), 0
    while True:
        budget = min(opts.max_step_tokens, opts.max_tokens - (len(tokens) - len(prompt)))
        start, cands, scores, chosen = time.perf_counter(), [], [{}], 0
        if not control.speculate():  # the controller found that drafting does not pay here: the target alone
            with clock(timings, "target_prefill"):
                caught_up = target.sync(tokens)
            with clock(timings, "target"):
                step = write_step(target, opts, rng, budget)
            control.record_target(timings["target"], len(step.tokens), timings["target_prefill"], caught_up)
            source, verdict_name = "target", "generated"
        else:
            if len(draft.tokens) != len(tokens):  # the prompt, or steps the target wrote alone meanwhile
                with clock(timings, "draft_prefill" if not draft.tokens else "draft_sync"):
                    draft.sync(tokens)
                    grounding.absorb_prefill()
            draft_sync_s = timings.get("draft_prefill", 0.0) + timings.get("draft_sync", 0.0)
            caught_up, before_judge = 0, None
            with clock(timings, "draft"):
                cands = sample_steps(draft, opts.k, opts.sampling, rng, budget, grounding.capture, hopeless)
            with clock(timings, "score"):
                chosen = select(np.stack([c.embedding for c in cands])) if opts.k > 1 else 0
                scores = [grounding.signals(c, profile, opts.use_logprob, opts.use_grounding) for c in cands]
            step, verdict = cands[chosen], scores[chosen]
            if judged and (tau_signals is None or verdict["r"] >= tau_signals):
                with clock(timings, "target_prefill"):
                    caught_up += target.sync(tokens)
                before_judge = target.logits
                with clock(timings, "judge"):
                    judge, target_hidden = read_step(target, step.tokens)
                    verdict.update(judge)
                    if probe is not None:
                        verdict["probe_safe"] = 1.0 - probe.harm(probe_features(probe, step, target_hidden))
            elif probe is not None:
                verdict["probe_safe"] = 1.0 - probe.harm(probe_features(probe, step, None))
            accepted = verifier.accepts(verdict)
            if accepted:
                source, verdict_name = "draft", "accepted"
                draft.adopt(step)
                grounding.absorb(step)  # a judged step is in the target's KV cache already
            else:
                if before_judge is not None:
                    target.rewind(len(tokens), before_judge)  # drop the judged draft step
                with clock(timings, "target_prefill"):
                    caught_up += target.sync(tokens)  # catches up on the steps it has not seen
                with clock(timings, "target"):
                    step = write_step(target, opts, rng, budget)
                with clock(timings, "draft_sync"):
                    draft.sync(tokens + step.tokens)
                    grounding.absorb_prefill()
                source, verdict_name = "target", "rejected"
            control.record_speculative(time.perf_counter() - start, len(step.tokens), accepted,
                                       before_judge is not None, 0.0 if accepted else timings["target"],
                                       0 if accepted else len(step.tokens), timings.get("target_prefill", 0.0),
                                       caught_up, draft_sync_s)
        tokens += step.tokens
        yield Step(index=index, text=draft.ctx.model.detokenize(step.tokens), tokens=step.tokens, source=source,
                   verdict=verdict_name, stop=step.stop, scores=scores[chosen], chosen=chosen, timings=timings,
                   candidates=[dict(text=draft.ctx.model.detokenize(c.tokens), n_tokens=len(c.tokens), stop=c.stop,
                                    **s) for c, s in zip(cands, scores)], control=control.report())
        index, timings = index + 1, {}
        if opts.adapt:
            rt.memory[memory_key] = control
        if finished(step.stop, len(tokens) - len(prompt), len(tokens), opts, draft.ctx.n_ctx_seq):
            return


def write_step(target: Session, opts: Options, rng: np.random.Generator, budget: int) -> Candidate:
    """The target writes the next step itself (k samples and the selector's choice; greedy when k = 1)."""
    cands = sample_steps(target, opts.k, opts.sampling, rng, budget, target.ctx.hook)
    step = cands[select(np.stack([c.embedding for c in cands])) if opts.k > 1 else 0]
    target.adopt(step)
    return step


def rsd(rt, prompt: list[int], opts: Options) -> Iterator[Step]:
    """Reward-guided SD (RSD), step level: SpecGuard with the target-judge verifier at τ = δ. RSD's judge is a
    process reward model; we ship none, so the judge is the target's own geometric-mean probability of the step.
    As a baseline it runs as published, without the cost-aware controller."""
    return specguard(rt, prompt, replace(opts, verifier="target-judge", tau=opts.delta, adapt=False))


def probe_features(probe: Probe, step: Candidate, target_hidden: np.ndarray | None) -> np.ndarray:
    """The probe's input: the step's mean hidden state under the draft, the target, or both."""
    if probe.features == "draft":
        return step.embedding
    return target_hidden if probe.features == "target" else np.concatenate([step.embedding, target_hidden])


def load_probe(opts: Options, rt) -> Probe:
    path = opts.probe or default_probe_path()
    if not opts.probe and not path.exists():
        raise SpecGuardError("no probe is shipped for this pair; train one with `specguard-local study --train-probe` "
                             "and pass --probe FILE")
    return Probe.load(path, rt.ids["draft"], rt.ids["target"],
                      {role: rt.model(role).n_embd for role in ("draft", "target")})


def load_profile(opts: Options, draft: str, target: str) -> Profile:
    """The calibration profile for this pair (`signals.pair_profile`), with the --beta override."""
    profile = pair_profile(opts.profile, draft, target)
    if opts.beta is not None and not 0.0 <= opts.beta <= 1.0:
        raise SpecGuardError("--beta must lie in [0, 1]")
    return profile if opts.beta is None else replace(profile, beta=opts.beta)


@contextmanager
def clock(timings: dict[str, float], name: str):
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
