"""Step verifiers: what decides whether a drafted step is kept (SpecGuard's step 4, as one interface).

Every verifier turns the evidence of one drafted step into a score on a "higher is safer" scale and accepts the
step iff score ≥ its τ:

  signals       the paper's LPBV + ABGV, r = β·l̃ + (1-β)·g̃ (the draft's own min log-prob and attention grounding,
                normalised with the pair's profile). Draft-only, so early rejection applies.
  target-judge  the target reads the drafted step in one batched prefill; score = exp(mean log p_target(step)), the
                per-token geometric-mean probability (the judge of RSD without a reward model, and SpecReason's
                one-prefill score). The prefill also leaves an accepted step in the target's KV cache.
  probe         a logistic probe on mean final hidden states (SemanticSpec, arXiv 2602.03708) trained on outcome
                labels from `specguard-local study`; score = 1 - P(harmful). See `probe`.
  a+b           accept only when every part accepts (e.g. `signals+target-judge`). The parts run cheapest first
                (`COST_RANK`: the draft's signals, the probe, the target's judge) and the first that fails ends the
                check, so a part that needs the target's pass never runs for a step the draft's own signals reject.

`draft_signals` and `read_step` compute every signal the study measures; a verifier uses some of them. `Grounding`
is the draft-side verification state across steps (the capture hook and the prefix mass of I), shared by the
SpecGuard loop and the study.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..attention import HIDDEN, Capture, PrefixMass, extend_prefix, extend_step, step_grounding
from ..engine import token_logprob
from ..errors import SpecGuardError
from ..signals import Profile, decision_score
from .base import Candidate, Session

VERIFIERS = ("signals", "target-judge", "probe")
SCORE_KEYS = {"signals": "r", "target-judge": "judge", "probe": "probe_safe"}
COST_RANK = {"signals": 0, "probe": 1, "target-judge": 2}  # draft-only < a dot product (+ maybe the pass) < the pass


def draft_signals(cand: Candidate, mass: PrefixMass, layers: list[int]) -> dict[str, float]:
    """The draft's own raw signals of one (possibly unfinished) step: LPBV and ABGV (min and mean) and the token
    entropies of the distributions the step was drawn from."""
    grounding = step_grounding(mass, *(cand.attention(layer) for layer in layers))
    return {"logprob_min": min(cand.logprobs), "logprob_mean": float(np.mean(cand.logprobs)),
            "grounding_min": float(grounding.min()), "grounding_mean": float(grounding.mean()),
            "entropy_max": float(max(cand.entropies)), "entropy_mean": float(np.mean(cand.entropies))}


def with_decision(signals: dict[str, float], profile: Profile, use_logprob: bool = True,
                  use_grounding: bool = True) -> dict[str, float]:
    """`signals` plus SpecGuard's normalised scores l̃, g̃ and r = β·l̃ + (1-β)·g̃ under `profile`."""
    l_norm, g_norm, r = decision_score(signals["logprob_min"], signals["grounding_min"], profile, use_logprob,
                                       use_grounding)
    return {**signals, "logprob_norm": l_norm, "grounding_norm": g_norm, "r": r}


@dataclass
class TargetRead:
    """The target's one pass over a drafted step: the logits before its first token, after each of its tokens, the
    judge's scores and (when captured) the target's mean hidden state over the step."""

    before: np.ndarray
    rows: np.ndarray
    scores: dict[str, float]
    hidden: np.ndarray | None

    def logits_at(self, i: int) -> np.ndarray:
        """The target's logits for the step's token i (i = len(step): the token after the step)."""
        return self.before if i == 0 else self.rows[i - 1]


def read_step(target: Session, context: list[int], step: list[int]) -> tuple[TargetRead, int]:
    """The target reads `step` after `context` in one batched pass: its log-probs of the step's tokens (min, mean,
    geometric-mean probability = the judge score) and, when its context captures hidden states, their mean over the
    step. Tokens of `context` the target has not read yet go in the same batch (a correction it made last pass,
    draft steps kept without it), so catching up costs no decode of its own. Afterwards the target's session holds
    context + step. Returns the read and the number of tokens caught up on."""
    held, caught_up = len(target.tokens), 0
    if not (held and target.logits is not None and context[:held] == target.tokens):
        caught_up = target.sync(context)  # an empty or diverged cache
    unread = context[len(target.tokens):]
    before = target.logits
    rows = target.extend(unread + step, quiet=max(len(unread) - 1, 0))
    if unread:
        before, rows = rows[0], rows[1:]
    logprobs = [token_logprob(row, token) for row, token in zip([before, *rows[:-1]], step)]
    hook = target.ctx.hook
    hidden = hook.rows(HIDDEN)[-len(step):].mean(axis=0) if hook is not None and HIDDEN in hook.parts else None
    return TargetRead(before, rows, {"target_logprob_min": float(min(logprobs)),
                                     "target_logprob_mean": float(np.mean(logprobs)),
                                     "judge": float(np.exp(np.mean(logprobs)))}, hidden), caught_up + len(unread)


@dataclass
class Grounding:
    """What ABGV needs across steps: the draft's capture hook and the prefix mass of I = prompt + accepted steps."""

    capture: Capture
    mass: PrefixMass

    @staticmethod
    def start(capture: Capture) -> "Grounding":
        """Nothing in I yet: the draft's prompt prefill is its first `absorb_prefill`."""
        return Grounding(capture, PrefixMass.empty(len(capture.layers)))

    def absorb_prefill(self) -> None:
        """Add the tokens the draft has just prefilled (the prompt, or steps the target wrote) to I."""
        self.mass = extend_prefix(self.mass, *map(self.capture.rows, self.capture.layers[:-1]))

    def absorb(self, step: Candidate, n_kept: int | None = None) -> None:
        """Add an accepted draft step (or its first `n_kept` tokens) to I, from the rows captured while drafting it."""
        n_kept = len(step.tokens) if n_kept is None else n_kept
        if n_kept:
            self.mass = extend_prefix(self.mass, *(step.attention(layer)[:n_kept]
                                                   for layer in self.capture.layers[:-1]))

    def signals(self, cand: Candidate, profile: Profile | None = None, use_logprob: bool = True,
                use_grounding: bool = True) -> dict[str, float]:
        """The draft's signals of `cand` against I (`draft_signals`), with l̃, g̃ and r when given a profile."""
        raw = draft_signals(cand, self.mass, self.capture.layers)
        return raw if profile is None else with_decision(raw, profile, use_logprob, use_grounding)

    def running_r(self, cand: Candidate, profile: Profile, use_logprob: bool = True,
                  use_grounding: bool = True) -> float:
        """r of `cand` so far, for early rejection after every drafted token: the tokens not scored yet join the
        candidate's running grounding levels (O(context) each, `extend_step`) instead of rescoring the whole step."""
        if not cand.levels:
            cand.levels = [[] for _ in self.capture.layers]
        for i in range(len(cand.levels[0]), len(cand.tokens)):
            extend_step(self.mass, cand.levels, *(cand.rows[layer][i] for layer in self.capture.layers))
        return decision_score(min(cand.logprobs), min(cand.levels[-1]), profile, use_logprob, use_grounding)[2]


@dataclass(frozen=True)
class Verifier:
    """A verifier or an AND-combination: its parts, cheapest first (`COST_RANK`), and one τ per part."""

    parts: tuple[str, ...]
    taus: tuple[float, ...]

    def describe(self) -> str:
        return "+".join(f"{part}≥{tau:g}" for part, tau in zip(self.parts, self.taus))


def parse_verifier(spec: str, profile: Profile, tau: float | None = None) -> Verifier:
    """`signals`, `target-judge`, `probe` or a `+`-joined combination (its parts put cheapest first); τ per part
    from the profile unless `tau` (one verifier only) overrides it."""
    parts = tuple(part.strip() for part in spec.split("+") if part.strip())
    unknown = [part for part in parts if part not in VERIFIERS]
    if unknown or not parts or len(set(parts)) != len(parts):
        raise SpecGuardError(f"bad --verifier {spec!r}; use one of {', '.join(VERIFIERS)} or a combination joined "
                             f"with '+' (e.g. signals+target-judge)")
    if tau is not None and len(parts) > 1:
        raise SpecGuardError("--tau sets the threshold of a single verifier; a combination takes each part's τ from "
                             "the profile (`specguard-local calibrate --study`)")
    missing = [part for part in parts if part not in profile.taus and tau is None]
    if missing:
        raise SpecGuardError(f"the calibration profile has no τ for {', '.join(missing)}; pass --tau or calibrate "
                             f"with `specguard-local calibrate --study DIR`")
    parts = tuple(sorted(parts, key=COST_RANK.__getitem__))
    return Verifier(parts, tuple(tau if tau is not None else profile.taus[part] for part in parts))
