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
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np

from ..errors import SpecGuardError
from ..events import Step
from ..probe import Probe, default_probe_path
from ..signals import Profile, pair_profile, select
from .base import Candidate, Session, sample_steps, write_step
from .controller import Controller
from .drivers import step_loop
from .options import Options
from .verifiers import Grounding, Verifier, parse_verifier, read_step


def specguard(rt, prompt: list[int], opts: Options) -> Iterator[Step]:
    run = SpecGuard.start(rt, opts)
    yield from step_loop(prompt, opts, run.draft.ctx.n_ctx_seq, run.write)


@dataclass
class SpecGuard:
    """One answer's run state (llama2.c's one struct): both sessions, the verifier with everything it reads (the
    profile, the probe, the draft-side `Grounding`), the cost-aware controller and the sampler's generator.
    `write` is SpecGuard's decision for the next step; `drivers.step_loop` does the rest."""

    opts: Options
    profile: Profile
    verifier: Verifier
    probe: Probe | None
    draft: Session
    target: Session
    grounding: Grounding
    control: Controller
    rng: np.random.Generator

    @staticmethod
    def start(rt, opts: Options) -> "SpecGuard":
        profile = load_profile(opts, rt.ids["draft"], rt.ids["target"])
        verifier = parse_verifier(opts.verifier or profile.verifier, profile, opts.tau)
        probe = load_probe(opts, rt) if "probe" in verifier.parts else None
        draft = rt.session("draft", n_seq=opts.k, layers=opts.layers,
                           hidden=opts.k > 1 or (probe is not None and probe.features != "target"))
        target = rt.session("target", n_seq=opts.k,
                            hidden=opts.k > 1 or (probe is not None and probe.features != "draft"))
        memory_key = ("specguard", verifier, opts.probe, opts.k, opts.layers, opts.sampling, opts.use_logprob,
                      opts.use_grounding)
        previous = rt.memory.get(memory_key)
        control = previous.next_answer() if previous is not None and opts.adapt else Controller(enabled=opts.adapt)
        if opts.adapt:  # what this answer measures carries over to the next one on this pair
            rt.memory[memory_key] = control
        # the draft reads the prompt just before its first drafted step
        return SpecGuard(opts, profile, verifier, probe, draft, target, Grounding.start(draft.ctx.hook), control,
                         np.random.default_rng(opts.seed))

    @property
    def tau_signals(self) -> float | None:
        return dict(zip(self.verifier.parts, self.verifier.taus)).get("signals")

    @property
    def judged(self) -> bool:
        """Whether the target reads every draft step that passes the draft-only signals."""
        return "target-judge" in self.verifier.parts or (self.probe is not None and self.probe.features != "draft")

    def signals(self, cand: Candidate) -> dict[str, float]:
        return self.grounding.signals(cand, self.profile, self.opts.use_logprob, self.opts.use_grounding)

    def write(self, tokens: list[int], budget: int) -> Step:
        """The next step after `tokens`: drafted and verified, or written by the target (after a rejection, or
        alone when the controller found that drafting does not pay here)."""
        if self.control.speculate():
            return self.speculate(tokens, budget)
        timings: dict[str, float] = {}
        with clock(timings, "target_prefill"):
            caught_up = self.target.sync(tokens)
        with clock(timings, "target"):
            step, _ = write_step(self.target, self.opts, self.rng, budget)
        self.control.record_target(timings["target"], len(step.tokens), timings["target_prefill"], caught_up)
        return self.event(step, "target", "generated", {}, [], [], 0, timings, target_tokens=len(step.tokens))

    def speculate(self, tokens: list[int], budget: int) -> Step:
        draft, target, opts, timings, start = self.draft, self.target, self.opts, {}, time.perf_counter()
        if len(draft.tokens) != len(tokens):  # the prompt, or steps the target wrote alone meanwhile
            with clock(timings, "draft_prefill" if not draft.tokens else "draft_sync"):
                draft.sync(tokens)
                self.grounding.absorb_prefill()
        draft_sync_s = timings.get("draft_prefill", 0.0) + timings.get("draft_sync", 0.0)
        tau = self.tau_signals
        hopeless = None if tau is None else (
            lambda c: self.grounding.running_r(c, self.profile, opts.use_logprob, opts.use_grounding) < tau)
        with clock(timings, "draft"):
            cands = sample_steps(draft, opts.k, opts.sampling, self.rng, budget, self.grounding.capture, hopeless)
        with clock(timings, "score"):
            chosen = select(np.stack([c.embedding for c in cands])) if opts.k > 1 else 0
            scores = [self.signals(c) for c in cands]
        proposal, verdict, caught_up, before_judge = cands[chosen], scores[chosen], 0, None
        if self.judged and (tau is None or verdict["r"] >= tau):
            with clock(timings, "target_prefill"):
                caught_up += target.sync(tokens)
            before_judge = target.logits
            with clock(timings, "judge"):
                judge, target_hidden = read_step(target, proposal.tokens)
                verdict.update(judge)
                if self.probe is not None:
                    verdict["probe_safe"] = 1.0 - self.probe.harm(probe_features(self.probe, proposal,
                                                                                 target_hidden))
        elif self.probe is not None:
            verdict["probe_safe"] = 1.0 - self.probe.harm(probe_features(self.probe, proposal, None))
        accepted = self.verifier.accepts(verdict)
        step = proposal
        if accepted:
            draft.adopt(proposal)
            self.grounding.absorb(proposal)  # a judged step is in the target's KV cache already
        else:
            if before_judge is not None:
                target.rewind(len(tokens), before_judge)  # drop the judged draft step
            with clock(timings, "target_prefill"):
                caught_up += target.sync(tokens)  # catches up on the steps it has not seen
            with clock(timings, "target"):
                step, _ = write_step(target, opts, self.rng, budget)
            with clock(timings, "draft_sync"):
                draft.sync(tokens + step.tokens)
                self.grounding.absorb_prefill()
        self.control.record_speculative(time.perf_counter() - start, len(step.tokens), accepted,
                                        before_judge is not None, 0.0 if accepted else timings["target"],
                                        0 if accepted else len(step.tokens), timings.get("target_prefill", 0.0),
                                        caught_up, draft_sync_s)
        return self.event(step, "draft" if accepted else "target", "accepted" if accepted else "rejected", verdict,
                          cands, scores, chosen, timings, drafted=len(proposal.tokens),
                          accepted=len(proposal.tokens) if accepted else 0,
                          target_tokens=0 if accepted else len(step.tokens))

    def event(self, step: Candidate, source: str, verdict: str, scores: dict, cands: list[Candidate],
              all_scores: list[dict], chosen: int, timings: dict, **counters) -> Step:
        detokenize = self.draft.ctx.model.detokenize
        return Step(index=0, text=detokenize(step.tokens), tokens=step.tokens, source=source, verdict=verdict,
                    stop=step.stop, scores=scores, chosen=chosen, timings=timings,
                    candidates=[dict(text=detokenize(c.tokens), n_tokens=len(c.tokens), stop=c.stop, **s)
                                for c, s in zip(cands, all_scores)], control=self.control.report(), **counters)


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
