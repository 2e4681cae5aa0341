"""Step scores and the self-consistency selector (SpecGuard, arXiv 2604.15244, §3).

- LPBV: a step's log-probability score is the minimum token log-prob under the draft's raw distribution.
- ABGV: a step's grounding score is the minimum per-token attention grounding (see `grounding`).
- Decision: both are min-max normalised to [0, 1] and combined, r = β·l̃ + (1-β)·g̃; accept iff r ≥ τ.
- `Grounding`: the draft-side state ABGV needs across steps (the capture hook and the prefix mass of I), shared by
  the SpecGuard loop and the study; `draft_signals` computes every draft-side signal the study measures.
- Selector: cosine similarities S of the k candidates' embeddings, row softmax, keep the candidate with the
  smallest diagonal entry (the one most similar to the others).

The paper leaves the normalisation bounds open. We make them explicit per model pair in a `Profile`: the 5th and
95th percentiles of each raw score over draft steps on a dev slice (`specguard-local calibrate`), so l̃ and g̃ are
"where this step falls among typical draft steps". Scores outside the bounds clip to 0 or 1.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ..capture import Capture
from ..engine import softmax
from ..errors import SpecGuardError
from ..generation import Candidate
from .grounding import PrefixMass, extend_prefix, extend_step, step_grounding


@dataclass(frozen=True)
class Profile:
    """Normalisation bounds and decision constants for one draft/target pair: the bounds of l̃ and g̃, β, the τ of
    each verifier (`decoders.verifiers`) and which verifier SpecGuard uses by default."""

    logprob_lo: float
    logprob_hi: float
    grounding_lo: float
    grounding_hi: float
    beta: float = 0.3
    taus: dict = field(default_factory=lambda: {"signals": 0.7})
    verifier: str = "signals"       # the paper's loop's default verifier (the study's choice)
    salvage_verifier: str = "target-judge"  # with salvage: every kept stretch is read by the target (see
                                            # docs/measurements.md: stretches the draft's signals kept unread
                                            # lost 2 of 8 answers on the F16 target)
    draft_p_min: float = 0.7        # salvage: the draft stops once its own odds of the whole stretch fall below this
    check: dict = field(default_factory=dict)  # the tutor's check: `tutor.check.Rule` fields, without_key / with_key
    draft: str = ""
    target: str = ""
    notes: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @staticmethod
    def load(path: str | Path) -> "Profile":
        try:
            data = json.loads(Path(path).read_text())
            if "tau" in data:  # profiles from before verifiers had one τ, the signals'
                data["taus"] = {**data.get("taus", {}), "signals": data.pop("tau")}
            data.pop("check_logprob_min", None)  # the tutor's check before it judged correctness
            profile = Profile(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise SpecGuardError(f"bad calibration profile {path}: {exc}") from None
        if not (profile.logprob_lo < profile.logprob_hi and profile.grounding_lo < profile.grounding_hi):
            raise SpecGuardError(f"bad calibration profile {path}: each lower bound must be below its upper bound")
        return profile


DEFAULT_PROFILE = "qwen2.5-coder-0.5b__qwen2.5-coder-1.5b.json"


def default_profile() -> Profile:
    """The shipped profile for the default pair (written by `specguard-local calibrate`)."""
    return Profile.load(resources.files("specguard_local") / "data" / DEFAULT_PROFILE)


def pair_profile(path: str | Path | None, draft: str, target: str) -> Profile:
    """The profile at `path` (default: the shipped one), checked to be for this draft/target pair. Bounds
    calibrated on another pair would make r meaningless, so a mismatch is an error, not a silent default."""
    profile = Profile.load(path) if path else default_profile()
    if (profile.draft, profile.target) != (draft, target):
        raise SpecGuardError(f"the calibration profile is for {profile.draft} → {profile.target}, not {draft} → "
                             f"{target}; run `specguard-local calibrate --draft {draft} --target {target} --out "
                             f"profile.json` and pass --profile profile.json")
    return profile


def normalise(value: float, lo: float, hi: float) -> float:
    return float(np.clip((value - lo) / (hi - lo), 0.0, 1.0))


def decision_score(logprob_min: float, grounding_min: float, profile: Profile,
                   use_logprob: bool = True, use_grounding: bool = True) -> tuple[float, float, float]:
    """(l̃, g̃, r) with r = β·l̃ + (1-β)·g̃; with one signal switched off, r is the other one alone."""
    l_norm = normalise(logprob_min, profile.logprob_lo, profile.logprob_hi)
    g_norm = normalise(grounding_min, profile.grounding_lo, profile.grounding_hi)
    if use_logprob and use_grounding:
        r = profile.beta * l_norm + (1 - profile.beta) * g_norm
    elif use_logprob:
        r = l_norm
    elif use_grounding:
        r = g_norm
    else:
        raise SpecGuardError("at least one of the log-prob and grounding signals must be on")
    return l_norm, g_norm, r


def select(embeddings: np.ndarray) -> int:
    """Index of the most representative candidate: smallest diagonal of the row-softmaxed cosine matrix."""
    if len(embeddings) == 1:
        return 0
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    soft = softmax(sims)
    return int(np.argmin(np.diag(soft)))


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
