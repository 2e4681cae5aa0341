"""Calibration: the per-pair normalisation bounds SpecGuard's decision needs (the paper does not give them).

Greedy draft steps are scored on a dev slice with every step accepted (τ = 0), and each raw score's bounds are
percentiles over those steps: l̃ = 0 at the `low` percentile of min log-probs, 1 at the `high` one; same for g̃.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from .api import stream
from .datasets import load_problems
from .decoders.options import Options
from .errors import SpecGuardError
from .signals import Profile


def calibrate(rt, dataset: str, offset: int, limit: int, max_tokens: int, low: float, high: float, layers: int,
              draft_name: str, target_name: str) -> Profile:
    problems = load_problems(dataset)[offset:offset + limit]
    if not problems:
        raise SpecGuardError(f"the dev slice {offset}..{offset + limit} of {dataset} is empty")
    logprobs, groundings = [], []
    for problem in tqdm(problems, desc="calibrating", unit="problem"):
        for step in stream(rt, problem.question, "specguard", Options(max_tokens=max_tokens, tau=0.0, layers=layers)):
            logprobs.append(step.scores["logprob_min"])
            groundings.append(step.scores["grounding_min"])
    lo_l, hi_l = np.percentile(logprobs, [low, high])
    lo_g, hi_g = np.percentile(groundings, [low, high])
    if not (lo_l < hi_l and lo_g < hi_g):
        raise SpecGuardError(f"{len(logprobs)} draft steps are too few to tell the score bounds apart; "
                             "raise --limit or --max-tokens")
    return Profile(logprob_lo=float(lo_l), logprob_hi=float(hi_l), grounding_lo=float(lo_g),
                   grounding_hi=float(hi_g), draft=draft_name, target=target_name,
                   notes={"dataset": dataset, "problems": f"{offset}..{offset + len(problems) - 1}",
                          "steps": len(logprobs), "percentiles": [low, high], "layers": layers})
