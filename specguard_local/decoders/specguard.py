"""SpecGuard (arXiv 2604.15244): step-level verification, target only on doubt; with token-level salvage.

Per step, with I = prompt + accepted steps:
  1. the draft samples k candidate steps in one batched decode per token (sequences share I's KV cells);
  2. the self-consistency selector keeps the most representative candidate (k > 1);
  3. a verifier (`verifiers`) scores it: by default the paper's r = β·l̃ + (1-β)·g̃ from the draft's own LPBV
     (min log-prob) and ABGV (min attention grounding on I); or the target's judge score from one batched prefill
     of the step; or a hidden-state probe; or an AND of these, cheapest part first; keep iff every part's score ≥
     its τ;
  4. a step the verifier does not keep is handled one of two ways (`Options.salvage`):
     - salvage (the default): the target reads the drafted tokens in one batched pass — the same pass the judge
       scores — and keeps the longest prefix it agrees with (greedy: its argmax equals the draft's token; sampled:
       the rejection rule of token-level SD) plus its own token at the first disagreement; both KV caches roll back
       to there (`seq_rm`, nothing re-prefilled) and the draft goes on drafting the rest of the step. A rejected
       step never loses a prefix the target agrees with, and the target never rewrites it token by token.
     - the paper's loop (`salvage=False`): the target rewrites the whole step (k samples + the same selector;
       greedy when k = 1), after a lazy catch-up prefill of every step it has not seen yet; the draft then prefills
       the target's step.

The draft's own signals also steer how much is drafted before the target looks (salvage only): drafting stops once
the draft's own probability of the whole stretch, Π p(token), falls below `draft_p_min` (a cumulative form of
llama.cpp's per-token `--draft-p-min`: one more token pays while the odds that everything before it is kept exceed
its cost, its draft decode plus its share of the pass, over what a kept token saves), so the target verifies short
drafts where the draft is unsure and whole steps where it is sure. A stretch is also capped at `chunk_cap` tokens,
doubled after a stretch kept whole and cut back to twice the agreed prefix after a refusal. A whole step the
draft-only verifier keeps needs no target pass at all; a stretch cut short of its step is always read. Greedy
salvage is lossless up to llama.cpp's batch-shape numerics: what is kept without the verifier's word is exactly what
the target would have written.

Choices where the paper is silent: the attention and the hidden states are the *draft's* (the target never runs
on steps the draft-only signals keep); normalisation bounds are per-pair percentiles (`signals.Profile`); a step's
last token ("\\n\\n" or end-of-generation) is scored like any other. A pass that reads a step leaves what it kept in
the target's KV cache (no later catch-up) and rewinds the rest with the logits it saved (`Session.rewind`).

Early rejection (the paper's loop): both signal scores are minima over tokens, and a token's grounding depends only
on the tokens before it, so r can only fall as a step grows. Scoring the partial candidates after every token and
stopping the draft as soon as every candidate's r < τ therefore changes no decision; it only saves drafting a step
the target will rewrite. It applies to any verifier that includes `signals` (an AND fails when one part fails).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import numpy as np

from ..engine import Sampling, sample
from ..errors import SpecGuardError
from ..events import Step
from ..generation import STEP_BOUNDARY, Candidate, PairRuntime, Session, sample_steps
from ..verify.probe import Probe, default_probe_path
from ..verify.signals import Grounding, Profile, pair_profile, select
from ..verify.stage import TargetRead, Verifier, agreement, check, parse_verifier, read_step
from .base import write_step
from .controller import Controller
from .drivers import step_loop
from .options import Options

CHUNK_START, CHUNK_MIN = 64, 4  # salvage's stretch cap: its first value and the least it falls back to


def specguard(rt: PairRuntime, prompt: list[int], opts: Options) -> Iterator[Step]:
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
    clock: Callable[[], float]    # the request's own clock (`PairRuntime.clock`): what the controller times with
    chunk_cap: int                # salvage: the longest stretch drafted before the target's next pass

    @staticmethod
    def start(rt: PairRuntime, opts: Options) -> "SpecGuard":
        profile = load_profile(opts, rt.ids["draft"], rt.ids["target"])
        verifier = parse_verifier(opts.verifier or default_verifier(profile, opts.salvage), profile, opts.tau)
        probe = load_probe(opts, rt) if "probe" in verifier.parts else None
        draft = rt.session("draft", n_seq=opts.k, layers=opts.layers,
                           hidden=opts.k > 1 or (probe is not None and probe.features != "target"))
        target = rt.session("target", n_seq=opts.k,
                            hidden=opts.k > 1 or (probe is not None and probe.features != "draft"))
        memory_key = ("specguard", verifier, opts.probe, opts.k, opts.layers, opts.sampling, opts.use_logprob,
                      opts.use_grounding, opts.salvage, opts.draft_p_min)
        previous = rt.memory.get(memory_key)
        control = previous.next_answer() if previous is not None and opts.adapt else Controller(enabled=opts.adapt)
        if opts.adapt:  # what this answer measures carries over to the next one on this pair
            rt.memory[memory_key] = control
        # the draft reads the prompt just before its first drafted step
        return SpecGuard(opts, profile, verifier, probe, draft, target, Grounding.start(draft.ctx.hook), control,
                         np.random.default_rng(opts.seed), rt.clock, CHUNK_START)

    @property
    def draft_p_min(self) -> float:
        return self.opts.draft_p_min if self.opts.draft_p_min is not None else self.profile.draft_p_min

    def signals(self, cand: Candidate) -> dict[str, float]:
        return self.grounding.signals(cand, self.profile, self.opts.use_logprob, self.opts.use_grounding)

    def write(self, tokens: list[int], budget: int) -> Step:
        """The next step after `tokens`: drafted and verified (kept, salvaged or rewritten), or written by the target
        alone when the controller found that drafting does not pay here."""
        if not self.control.speculate():
            return self.target_alone(tokens, budget)
        return self.salvage(tokens, budget) if self.opts.salvage else self.speculate(tokens, budget)

    def target_alone(self, tokens: list[int], budget: int) -> Step:
        timings: dict[str, float] = {}
        with self.timed(timings, "target_prefill"):
            caught_up = self.target.sync(tokens)
        with self.timed(timings, "target"):
            step, _ = write_step(self.target, self.opts, self.rng, budget)
        self.control.record_target(timings["target"], len(step.tokens), timings["target_prefill"], caught_up)
        return self.event(step.tokens, step.stop, "target", "generated", {}, [], [], 0, timings,
                          target_tokens=len(step.tokens))

    def draft_catch_up(self, tokens: list[int], timings: dict[str, float]) -> float:
        """Make the draft hold `tokens` (the prompt, or steps the target wrote alone); returns the seconds spent."""
        if len(self.draft.tokens) == len(tokens):
            return 0.0
        name = "draft_prefill" if not self.draft.tokens else "draft_sync"
        with self.timed(timings, name):
            self.draft.sync(tokens)
            self.grounding.absorb_prefill()
        return timings[name]

    def draft_step(self, budget: int, timings: dict[str, float], hopeless=None,
                   keep_logits: bool = False) -> tuple[list[Candidate], list[dict], int]:
        """k candidates after the draft's tokens, their signals and the selector's choice."""
        opts = self.opts
        with self.timed(timings, "draft"):
            cands = sample_steps(self.draft, opts.k, self.sampling, self.rng, budget, self.grounding.capture,
                                 hopeless, keep_logits)
        with self.timed(timings, "score"):
            chosen = select(np.stack([c.embedding for c in cands])) if opts.k > 1 else 0
            scores = [self.signals(c) for c in cands]
        return cands, scores, chosen

    @property
    def sampling(self) -> Sampling:
        """Drafting's sampling: salvage's rejection rule needs the distribution a token came from, so it samples
        with temperature only (as `sd`); the paper's loop uses the options' top-p too."""
        sampling = self.opts.sampling
        return replace(sampling, top_p=1.0) if self.opts.salvage else sampling

    def read(self, tokens: list[int], proposal: Candidate, timings: dict[str, float]) -> TargetRead:
        """The target's one pass over `proposal` after `tokens` (what it has not read yet rides in the same batch)."""
        with self.timed(timings, "verify"):
            return read_step(self.target, tokens, proposal.tokens)[0]

    def verify(self, tokens: list[int], proposal: Candidate, scores: dict[str, float],
               timings: dict[str, float]) -> tuple[bool, TargetRead | None]:
        """The verifier's verdict on `proposal` after `tokens` (`verify.stage.check`: parts cheapest first, the
        target's pass only when a part needs it). Returns (kept, the target's pass or None)."""
        return check(self.verifier, proposal, scores, lambda: self.read(tokens, proposal, timings), self.probe)

    def salvage(self, tokens: list[int], budget: int) -> Step:
        """Draft → verify → keep, or salvage the agreed prefix and draft on, until the step ends. Only a stretch
        that ends its step may be kept without the target's pass (the draft-only verifiers judge whole steps)."""
        draft, target, timings, start = self.draft, self.target, {}, self.clock()
        one_off_s = self.draft_catch_up(tokens, timings)
        if not target.tokens:  # the target reads the prompt once, as target-only decoding does (not counted in S)
            with self.timed(timings, "target_prefill"):
                target.sync(tokens)
            one_off_s += timings["target_prefill"]
        log_p_min = math.log(self.draft_p_min) if self.draft_p_min > 0 else -math.inf
        unsure = lambda c: sum(c.logprobs) < log_p_min  # noqa: E731 — the draft's own odds of the whole stretch
        sampled = self.sampling.temperature > 0
        written: list[int] = []
        chunks: list[dict] = []
        counts = {"kept_whole": 0, "salvaged": 0, "corrections": 0, "bonus": 0, "passes": 0, "unchecked": 0}
        scores, drafted = {}, 0
        while True:
            context = tokens + written
            room = budget - len(written)
            cands, all_scores, chosen = self.draft_step(min(room, self.chunk_cap), timings, unsure, sampled)
            proposal, scores = cands[chosen], all_scores[chosen]
            drafted += len(proposal.tokens)
            ends_step = proposal.stop in ("eos", "step") or len(proposal.tokens) >= room
            kept, read = self.verify(context, proposal, scores, timings)
            if kept and (read is not None or ends_step):
                n_kept = len(proposal.tokens)
                counts["kept_whole"] += n_kept
                counts["unchecked"] += n_kept if read is None else 0
                extra = self.bonus(read) if read is not None and not ends_step else []
            else:
                if read is None:
                    read = self.read(context, proposal, timings)
                    scores.update(read.scores)
                n_kept, correction = agreement(read, proposal, self.sampling.temperature, self.rng)
                extra = [correction] if correction is not None else [] if ends_step else self.bonus(read)
                counts["salvaged"] += n_kept
            counts["passes"] += read is not None
            counts["corrections" if n_kept < len(proposal.tokens) else "bonus"] += len(extra)
            # a stretch kept whole doubles the next one's cap; a refused one starts again from what was agreed
            self.chunk_cap = (min(2 * self.chunk_cap, self.opts.max_step_tokens) if n_kept == len(proposal.tokens)
                              else max(CHUNK_MIN, 2 * n_kept))
            draft.adopt(proposal)
            self.grounding.absorb(proposal, n_kept)
            if read is not None and n_kept < len(proposal.tokens):
                target.rewind(len(context) + n_kept, read.logits_at(n_kept))
            written += proposal.tokens[:n_kept] + extra
            if n_kept < len(proposal.tokens) or extra:
                with self.timed(timings, "draft_sync"):  # drop what the target refused, decode its own token
                    draft.sync(tokens + written)
                    self.grounding.absorb_prefill()
            chunks.append(dict(text=draft.ctx.model.detokenize(proposal.tokens), n_tokens=len(proposal.tokens),
                               stop=proposal.stop, kept=n_kept, target_token=bool(extra),
                               checked=read is not None, **scores))
            stop = step_end(draft.ctx.model, written, budget)
            if stop:
                break
        unread = max(len(tokens) + len(written) - len(target.tokens), 0)
        self.control.record_speculative(self.clock() - start, len(written), 0.0, 0, 0.0, 0, one_off_s, unread)
        all_kept = counts["kept_whole"] + counts["salvaged"]
        verdict = "accepted" if all_kept == drafted else "salvaged"  # salvaged: the target refused a drafted token
        return self.event(written, stop, "draft" if verdict == "accepted" else "target", verdict,
                          {**scores, **counts, "chunks": len(chunks)}, [], [], 0, timings, chunks=chunks,
                          drafted=drafted, accepted=all_kept, target_tokens=len(written) - counts["unchecked"])

    def bonus(self, read: TargetRead) -> list[int]:
        """The target's own next token after a stretch it read whole and kept (free: its logits came with the
        pass); only where the stretch did not end the step."""
        return [sample(read.logits_at(len(read.rows)), self.sampling, self.rng)]

    def speculate(self, tokens: list[int], budget: int) -> Step:
        """The paper's loop: draft a step, verify it, keep it or let the target rewrite it."""
        draft, target, opts, timings, start = self.draft, self.target, self.opts, {}, self.clock()
        draft_sync_s = self.draft_catch_up(tokens, timings)
        tau = self.verifier.early_rejection_tau()
        hopeless = None if tau is None else (
            lambda c: self.grounding.running_r(c, self.profile, opts.use_logprob, opts.use_grounding) < tau)
        cands, scores, chosen = self.draft_step(budget, timings, hopeless)
        proposal, verdict = cands[chosen], scores[chosen]
        accepted, read = self.verify(tokens, proposal, verdict, timings)
        step, caught_up = proposal, 0
        if accepted:
            draft.adopt(proposal)
            self.grounding.absorb(proposal)  # a judged step is in the target's KV cache already
        else:
            if read is not None:
                target.rewind(len(tokens), read.before)  # drop the judged draft step
            with self.timed(timings, "target_prefill"):
                caught_up += target.sync(tokens)  # catches up on the steps it has not seen
            with self.timed(timings, "target"):
                step, _ = write_step(target, opts, self.rng, budget)
            with self.timed(timings, "draft_sync"):
                draft.sync(tokens + step.tokens)
                self.grounding.absorb_prefill()
        unread = max(len(tokens) + len(step.tokens) - len(target.tokens), 0)
        self.control.record_speculative(self.clock() - start, len(step.tokens),
                                        0.0 if accepted else timings["target"], 0 if accepted else len(step.tokens),
                                        timings.get("target_prefill", 0.0), caught_up, draft_sync_s, unread)
        return self.event(step.tokens, step.stop, "draft" if accepted else "target",
                          "accepted" if accepted else "rejected", verdict, cands, scores, chosen, timings,
                          drafted=len(proposal.tokens), accepted=len(proposal.tokens) if accepted else 0,
                          target_tokens=0 if accepted else len(step.tokens))

    @contextmanager
    def timed(self, timings: dict[str, float], name: str):
        """Add the seconds spent inside to `timings[name]`, on the request's own clock."""
        start = self.clock()
        yield
        timings[name] = timings.get(name, 0.0) + self.clock() - start

    def event(self, tokens: list[int], stop: str, source: str, verdict: str, scores: dict, cands: list[Candidate],
              all_scores: list[dict], chosen: int, timings: dict, chunks: list[dict] | None = None,
              **counters) -> Step:
        detokenize = self.draft.ctx.model.detokenize
        candidates = chunks if chunks is not None else [
            dict(text=detokenize(c.tokens), n_tokens=len(c.tokens), stop=c.stop, **s)
            for c, s in zip(cands, all_scores)]
        return Step(index=0, text=detokenize(tokens), tokens=tokens, source=source, verdict=verdict, stop=stop,
                    scores=scores, chosen=chosen, timings=timings, candidates=candidates,
                    control={**self.control.report(), "verifier": self.verifier.describe(),
                             "salvage": self.opts.salvage}, **counters)


def step_end(model, written: list[int], budget: int) -> str:
    """Why a step being written ends after `written` ("eos", "step", "cap"), or "" while it goes on: the rule of
    `base.sample_steps`, applied to the whole step."""
    if written and model.is_eog(written[-1]):
        return "eos"
    if STEP_BOUNDARY in b"".join(model.piece(t) for t in written).lstrip():
        return "step"
    return "cap" if len(written) >= budget else ""


def default_verifier(profile: Profile, salvage: bool) -> str:
    """The profile's verifier for this loop: with salvage its `salvage_verifier` when the profile has a τ for every
    part of it, else (and in the paper's loop) its `verifier`."""
    wanted = profile.salvage_verifier if salvage else profile.verifier
    return wanted if all(part in profile.taus for part in wanted.split("+")) else profile.verifier


def rsd(rt: PairRuntime, prompt: list[int], opts: Options) -> Iterator[Step]:
    """Reward-guided SD (RSD), step level: SpecGuard's paper loop with the target-judge verifier at τ = δ. RSD's
    judge is a process reward model; we ship none, so the judge is the target's own geometric-mean probability of
    the step. As a baseline it runs as published, without the cost-aware controller or salvage."""
    return specguard(rt, prompt, replace(opts, verifier="target-judge", tau=opts.delta, adapt=False,
                                            salvage=False))


def load_probe(opts: Options, rt: PairRuntime) -> Probe:
    path = opts.probe or default_probe_path()
    if not opts.probe and not path.exists():
        raise SpecGuardError("no probe is shipped for this pair; train one with `specguard-local study --train-probe` "
                             "and pass --probe FILE")
    return Probe.load(path, rt.ids["draft"], rt.ids["target"],
                      {role: rt.model(role).n_embd for role in ("draft", "target")})


def load_profile(opts: Options, draft: str, target: str) -> Profile:
    """The calibration profile for this pair (`signals.pair_profile`), with the --beta override."""
    profile = pair_profile(opts.profile, draft, target)
    return profile if opts.beta is None else replace(profile, beta=opts.beta)
