"""Checking a student's own solution step by step, with what checks a drafted step (the offline tutor's check).

The student's steps (one per paragraph) are read the way SpecGuard reads a drafted stretch, after the question's chat
prompt:
  - the target reads the whole solution in one batched pass, with logits at every position: per step its min and
    mean token log-prob and the judge's geometric-mean probability (the scores of `stage.read_step`);
  - the draft reads it the same way with its attention captured: per step the paper's LPBV, ABGV and r (`signals`).
A step is *doubtful* when the target's min log-prob over the step's *maths tokens* (those holding a digit or one
of = + - * / × ÷ ^ %) falls below the profile's `check_logprob_min`: a changed number or operation is a token the
target would not have written, while a student's own wording is not an error (over all tokens, "In April, Natalia
sold 48 clips." was doubtful only because the target opens otherwise). A step without maths tokens is not judged. The first doubtful step is named, and the hint is the target's own
next step, written greedily from the last step before it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..capture import last_layers
from ..engine import Sampling, logprob_and_entropy, token_logprob
from ..errors import SpecGuardError
from ..generation import Candidate, PairRuntime, sample_steps
from .signals import Grounding, Profile

MAX_STEPS = 64
HINT_TOKENS = 160
MATHS = set("0123456789=+-*/×÷^%")


@dataclass
class StepCheck:
    index: int
    text: str
    doubtful: bool
    scores: dict[str, float]


@dataclass
class SolutionCheck:
    steps: list[StepCheck]
    first_doubtful: int | None     # index of the first doubtful step (None: every step looks right)
    hint: str | None               # the target's own next step after the last trusted one (None: nothing doubtful)
    threshold: float               # the min-log-prob threshold that decided

    def to_dict(self) -> dict:
        return asdict(self)


def split_steps(solution: str) -> list[str]:
    """A solution's steps: its paragraphs (separated by blank lines), stripped, empty ones dropped."""
    return [part.strip() for part in solution.replace("\r\n", "\n").split("\n\n") if part.strip()]


def check_solution(rt: PairRuntime, prompt: list[int], steps: list[str], profile: Profile,
                   threshold: float | None = None, hint: bool = True) -> SolutionCheck:
    """Score every step of a solution to the question rendered in `prompt` (see the module docstring); `threshold`
    overrides the profile's `check_logprob_min`; `hint=False` skips writing the hint."""
    steps = [step.strip() for step in steps]
    if not steps or not all(steps):
        raise SpecGuardError("the solution needs at least one step, and no step may be empty")
    if len(steps) > MAX_STEPS:
        raise SpecGuardError(f"the solution has {len(steps)} steps; at most {MAX_STEPS} are checked at once")
    threshold = profile.check_logprob_min if threshold is None else threshold
    model = rt.model("target")
    pieces = [model.tokenize(step + ("\n\n" if i < len(steps) - 1 else ""), special=False)
              for i, step in enumerate(steps)]
    solution = [token for piece in pieces for token in piece]

    target = rt.session("target")
    target.sync(prompt)
    target_logits = np.concatenate([target.logits[None], target.extend(solution)])
    draft = rt.session("draft", layers=3)
    grounding = Grounding.start(draft.ctx.hook)
    draft.sync(prompt)
    grounding.absorb_prefill()
    draft_logits = np.concatenate([draft.logits[None], draft.extend(solution)])
    layers = last_layers(rt.model("draft").n_layer)
    rows = {layer: draft.ctx.hook.rows(layer) for layer in layers}

    checks, start = [], 0
    for index, (text, piece) in enumerate(zip(steps, pieces)):
        end = start + len(piece)
        target_lp = [token_logprob(target_logits[i], token) for i, token in zip(range(start, end), piece)]
        maths_lp = [lp for lp, token in zip(target_lp, piece) if MATHS & set(model.detokenize([token]))]
        drawn = [logprob_and_entropy(draft_logits[i], token) for i, token in zip(range(start, end), piece)]
        step = Candidate(seq=0, tokens=piece, logprobs=[lp for lp, _ in drawn], entropies=[h for _, h in drawn],
                         rows={layer: list(rows[layer][start:end]) for layer in layers})
        scores = {"maths_logprob_min": float(min(maths_lp, default=0.0)),
                  "target_logprob_min": float(min(target_lp)), "target_logprob_mean": float(np.mean(target_lp)),
                  "judge": float(np.exp(np.mean(target_lp))), **grounding.signals(step, profile)}
        grounding.absorb(step)
        checks.append(StepCheck(index, text, scores["maths_logprob_min"] < threshold, scores))
        start = end

    first = next((check.index for check in checks if check.doubtful), None)
    written_hint = None
    if first is not None and hint:
        trusted = sum(len(piece) for piece in pieces[:first])
        target.rewind(len(prompt) + trusted, target_logits[trusted])
        written = sample_steps(target, 1, Sampling(), np.random.default_rng(0), HINT_TOKENS)[0]
        written_hint = model.detokenize(written.tokens).strip()
    return SolutionCheck(checks, first, written_hint, threshold)
