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
  a+b           accept only when every part accepts (e.g. `signals+target-judge`).

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


def read_step(target: Session, step: list[int]) -> tuple[dict[str, float], np.ndarray | None]:
    """The target reads `step` after its tokens in one batched prefill: its log-probs of the step's tokens (min,
    mean, geometric-mean probability = the judge score) and, when its context captures hidden states, their mean
    over the step. Afterwards the target's session holds the step."""
    before = target.logits
    rows = target.extend(step)
    logprobs = [token_logprob(row, token) for row, token in zip([before, *rows[:-1]], step)]
    hook = target.ctx.hook
    hidden = hook.rows(HIDDEN).mean(axis=0) if hook is not None and HIDDEN in hook.parts else None
    return {"target_logprob_min": float(min(logprobs)), "target_logprob_mean": float(np.mean(logprobs)),
            "judge": float(np.exp(np.mean(logprobs)))}, hidden


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

    def absorb(self, step: Candidate) -> None:
        """Add an accepted draft step to I, from the rows captured while drafting it."""
        self.mass = extend_prefix(self.mass, *map(step.attention, self.capture.layers[:-1]))

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
    """A verifier or an AND-combination: its parts and one τ per part."""

    parts: tuple[str, ...]
    taus: tuple[float, ...]

    @property
    def needs_target(self) -> bool:
        return "target-judge" in self.parts or "probe" in self.parts

    @property
    def draft_only(self) -> bool:
        return self.parts == ("signals",)

    def accepts(self, scores: dict[str, float]) -> bool:
        return all(scores[SCORE_KEYS[part]] >= tau for part, tau in zip(self.parts, self.taus))

    def describe(self) -> str:
        return "+".join(f"{part}≥{tau:g}" for part, tau in zip(self.parts, self.taus))


def parse_verifier(spec: str, profile: Profile, tau: float | None = None) -> Verifier:
    """`signals`, `target-judge`, `probe` or a `+`-joined combination; τ per part from the profile unless `tau`
    (one verifier only) overrides it."""
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
    return Verifier(parts, tuple(tau if tau is not None else profile.taus[part] for part in parts))
