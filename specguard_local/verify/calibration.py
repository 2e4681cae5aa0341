"""Calibration: what SpecGuard's decision needs per model pair (the paper gives neither).

Normalisation bounds: greedy draft steps are scored on a dev slice with every step accepted (τ = 0, the dev run is
`study.calibrate_bounds`), and each raw score's bounds are percentiles over those steps: l̃ = 0 at the `low`
percentile of min log-probs, 1 at the `high` one; same for g̃. From a study (`specguard-local study`) the same
bounds come from its greedy draft steps.


Risk-calibrated thresholds (from a study): for each verifier, τ is the lowest threshold at which accepting every
draft step scoring ≥ τ flips at most `max_harm` of the dev problems from right to wrong (a problem flips when any
accepted step in it is harmful). The probe is scored out-of-fold, so its τ is not fitted on its own training
problems. The default verifier is the cheapest of those that accept within `ACCEPT_SLACK` of the most draft steps
within that risk (a difference smaller than that is noise at a few hundred steps): signals (free, and its early
rejection stops a doomed draft after a few tokens), then a probe on draft hidden states, then the verifiers that
need a target prefill of every drafted step.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import SpecGuardError
from .signals import Profile, decision_score, pair_profile

ACCEPT_SLACK = 0.02  # share of draft steps


def bounds_from_study(steps: list[dict], low: float, high: float) -> dict[str, float]:
    """The four normalisation bounds from the greedy draft steps of a study."""
    greedy = [step for step in steps if not step["sampled"]]
    lo_l, hi_l = np.percentile([s["logprob_min"] for s in greedy], [low, high])
    lo_g, hi_g = np.percentile([s["grounding_min"] for s in greedy], [low, high])
    if not (lo_l < hi_l and lo_g < hi_g):
        raise SpecGuardError(f"{len(greedy)} draft steps are too few to tell the score bounds apart; study more "
                             f"problems")
    return {"logprob_lo": float(lo_l), "logprob_hi": float(hi_l), "grounding_lo": float(lo_g),
            "grounding_hi": float(hi_g)}


def risk_threshold(safe: np.ndarray, harmful: np.ndarray, groups: np.ndarray, n_problems: int,
                   max_harm: float) -> dict:
    """The lowest τ (a score value, or just above the highest) at which accepting steps with score ≥ τ flips at most `max_harm` of
    `n_problems`; with the share of steps it accepts and the problems it flips."""
    for tau in [*np.unique(safe), np.nextafter(safe.max(), np.inf)]:
        accepted = safe >= tau
        flipped = len(np.unique(groups[accepted & harmful]))
        if flipped <= max_harm * n_problems:
            return {"tau": float(tau), "accepted": float(accepted.mean()), "flipped_problems": flipped,
                    "harmful_accepted": int((accepted & harmful).sum())}
    raise AssertionError("accepting nothing flips nothing")


def study_table(problems: list[dict]) -> tuple[list[dict], dict]:
    """Flatten the problem rows into steps with their problem's fields, and count labels."""
    steps = [{**step, "problem_id": row["problem_id"], "target_correct": row["target_correct"],
              "target_s_per_token": row["target_s_per_token"]} for row in problems for step in row["steps"]]
    labels = [s["label"] for s in steps]
    counts = {"problems": len(problems), "target_right": sum(r["target_correct"] for r in problems),
              "steps": len(steps), "harmful": labels.count("harmful"), "rescue": labels.count("rescue"),
              "neutral": labels.count("neutral"), "identical": sum(s["identical"] for s in steps),
              "says_same": sum(s["says_same"] for s in steps)}
    return steps, counts


def thresholds_from_study(problems: list[dict], profile: Profile, max_harm: float, probe=None,
                          seed: int = 0) -> tuple[dict[str, float], str, dict]:
    """τ per verifier for `max_harm`, the default verifier, and the dev-slice figures behind them."""
    from . import probe as probes

    steps, counts = study_table(problems)
    steps = [step for step in steps if not step["sampled"]]
    harmful = np.array([step["label"] == "harmful" for step in steps])
    groups = np.array([step["problem_id"] for step in steps])
    safe = {"signals": np.array([decision_score(s["logprob_min"], s["grounding_min"], profile)[2] for s in steps]),
            "target-judge": np.array([s["judge"] for s in steps])}
    if probe is not None:
        features, labels, _ = probes.study_arrays(problems, probe.features, probe.training.get("label", "harmful"))
        safe["probe"] = 1.0 - probes.cross_validated(features, labels, groups, seed)
    figures = {name: risk_threshold(score, harmful, groups, counts["problems"], max_harm)
               for name, score in safe.items()}
    most = max(figure["accepted"] for figure in figures.values())
    cheapest = ("signals", "probe", "target-judge") if probe is None or probe.features == "draft" else \
        ("signals", "target-judge", "probe")
    best = next(name for name in cheapest if name in figures and figures[name]["accepted"] >= most - ACCEPT_SLACK)
    taus = {name: figure["tau"] for name, figure in figures.items()}
    return taus, best, {"max_harm": max_harm, "problems": counts["problems"], "steps": len(steps),
                        "harmful": int(harmful.sum()), "verifiers": figures}


def study_profile(problems: list[dict], path: str | None, draft: str, target: str) -> Profile:
    """The profile r is computed under: the one given or shipped for this pair, else bounds from the study's own
    draft steps (5th / 95th percentiles, as `calibrate` takes them)."""
    try:
        return pair_profile(path, draft, target)
    except SpecGuardError:
        if path:
            raise
        steps = [step for row in problems for step in row["steps"]]
        return Profile(**bounds_from_study(steps, 5.0, 95.0), draft=draft, target=target)


def profile_from_study(problems: list[dict], low: float, high: float, max_harm: float, probe, draft: str,
                       target: str, notes: dict) -> Profile:
    """A pair's whole profile from a study: the bounds from its draft steps, each verifier's risk-calibrated τ and
    the default verifier (`thresholds_from_study`), with what they were computed from in `notes`."""
    steps = [step for row in problems for step in row["steps"]]
    profile = Profile(**bounds_from_study(steps, low, high), draft=draft, target=target)
    taus, verifier, figures = thresholds_from_study(problems, profile, max_harm, probe)
    return replace(profile, taus=taus, verifier=verifier, notes={**notes, "percentiles": [low, high], **figures})
