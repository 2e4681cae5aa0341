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
  arithmetic    the tutor's exact arithmetic (`specguard_local.arithmetic`): 1 when every computation the drafted
                text states is right, else 0 (a step that states none scores 1). Judges correctness, not agreement
                with the target, so it is lossy by design; offered to measure what that keeps.
  a+b           accept only when every part accepts (e.g. `signals+target-judge`). The parts run cheapest first
                (`PARTS`: the draft's signals, the probe, the target's judge) and the first that fails ends the
                check, so a part that needs the target's pass never runs for a step the draft's own signals reject.

Each part declares in `PARTS` what the stage needs to know: the key of its score, its cost rank, whether it reads
the target's pass, and whether its score can only fall as a step grows (then a draft may stop as soon as it fails:
early rejection).

`read_step` is the target's one pass over a drafted stretch: the judge's scores and, for salvage, the target's own
prediction at every position (`agreement`: token-level SD's rule). `check` runs a verifier's parts cheapest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..arithmetic import computations
from ..capture import HIDDEN
from ..engine import softmax, token_logprob
from ..errors import SpecGuardError
from ..generation import Candidate, Session
from .probe import Probe
from .signals import Profile

@dataclass(frozen=True)
class Part:
    score: str            # the key of its score in a step's scores ("higher is safer")
    cost_rank: int        # parts run in this order
    reads_target: bool    # needs the target's pass (a probe: only when its features include the target's)
    falls_only: bool      # its score can only fall as a step grows, so a draft may stop once it fails
    tau: float | None = None   # a yes/no score's fixed τ (no profile needed)


PARTS = {"arithmetic": Part("arithmetic", 0, False, False, 1.0),   # exact; a partial "48 / 2 = 2" is not yet wrong
         "signals": Part("r", 0, False, True),               # minima over tokens; causal grounding
         "probe": Part("probe_safe", 1, True, False),         # a dot product (+ the pass for target features)
         "target-judge": Part("judge", 2, True, False)}       # a mean: it may rise again
VERIFIERS = tuple(PARTS)


def accept_or_resample(target_probs: np.ndarray, draft_probs: np.ndarray, token: int,
                       rng: np.random.Generator) -> int | None:
    """The rejection rule: None keeps `token`; otherwise the replacement token sampled from norm(max(0, p - q))."""
    if rng.random() < min(1.0, target_probs[token] / max(draft_probs[token], 1e-30)):
        return None
    residual = np.maximum(target_probs - draft_probs, 0.0)
    total = residual.sum()
    if total <= 0:
        return int(rng.choice(len(target_probs), p=target_probs))
    return int(rng.choice(len(residual), p=residual / total))


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


@dataclass(frozen=True)
class Verifier:
    """A verifier or an AND-combination: its parts, cheapest first (`PARTS`), and one τ per part."""

    parts: tuple[str, ...]
    taus: tuple[float, ...]

    def early_rejection_tau(self) -> float | None:
        """The τ a partial step can already fail for good (the first part whose score only falls), if any."""
        return next((tau for part, tau in zip(self.parts, self.taus) if PARTS[part].falls_only), None)

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
    taus = {part: PARTS[part].tau for part in parts if PARTS[part].tau is not None} | profile.taus
    missing = [part for part in parts if part not in taus and tau is None]
    if missing:
        raise SpecGuardError(f"the calibration profile has no τ for {', '.join(missing)}; pass --tau or calibrate "
                             f"with `specguard-local calibrate --study DIR`")
    parts = tuple(sorted(parts, key=lambda part: PARTS[part].cost_rank))
    return Verifier(parts, tuple(tau if tau is not None else taus[part] for part in parts))


def needs_pass(part: str, probe: Probe | None) -> bool:
    """Whether a verifier part reads the target's pass over the step (the judge; a probe on target hidden states)."""
    return PARTS[part].reads_target and (part != "probe" or (probe is not None and probe.features != "draft"))


def probe_features(probe: Probe, step: Candidate, target_hidden: np.ndarray | None) -> np.ndarray:
    """The probe's input: the step's mean hidden state under the draft, the target, or both."""
    if probe.features == "draft":
        return step.embedding
    return target_hidden if probe.features == "target" else np.concatenate([step.embedding, target_hidden])


def check(verifier: Verifier, proposal: Candidate, scores: dict[str, float], read: Callable[[], TargetRead],
          probe: Probe | None = None) -> tuple[bool, TargetRead | None]:
    """Run `verifier`'s parts cheapest first on a drafted stretch whose draft-side `scores` are known, stopping at
    the first that fails; the target's pass (`read()`) runs only when a part needs it, and once. Adds each part's
    score to `scores`; returns (kept, the pass or None)."""
    target_read = None
    for part, tau in zip(verifier.parts, verifier.taus):
        if needs_pass(part, probe) and target_read is None:
            target_read = read()
            scores.update(target_read.scores)
        if part == "arithmetic":
            text = proposal.data.decode("utf-8", errors="replace")
            scores["arithmetic"] = float(all(c.right for c in computations(text)))
        if part == "probe":
            hidden = target_read.hidden if target_read is not None else None
            scores["probe_safe"] = 1.0 - probe.harm(probe_features(probe, proposal, hidden))
        if scores[PARTS[part].score] < tau:
            return False, target_read
    return True, target_read


def agreement(target_read: TargetRead, proposal: Candidate, temperature: float,
              rng: np.random.Generator) -> tuple[int, int | None]:
    """Token-level salvage: how many of the proposal's tokens the target keeps, and its own token at the first it
    refuses (None when it keeps them all). Greedy: the target's argmax equals the draft's token; sampled: the
    rejection rule above, with the draft's distributions kept while drafting (`Candidate.dists`)."""
    for i, token in enumerate(proposal.tokens):
        logits = target_read.logits_at(i)
        if temperature <= 0:
            best = int(np.argmax(logits))
            correction = None if best == token else best
        else:
            correction = accept_or_resample(softmax(logits, temperature), softmax(proposal.dists[i], temperature),
                                            token, rng)
        if correction is not None:
            return i, correction
    return len(proposal.tokens), None
