"""Token-level speculative decoding, cost-aware: the baseline SpecGuard is compared with.

Each round the draft proposes n tokens and the target checks them all in one batched decode (the pending token
plus the n proposals, logits for every position); rejected proposals are removed from both KV caches with
`seq_rm`, nothing is re-prefilled. Greedy: keep proposals while they equal the target's argmax, then emit the
target's own token. Sampled: the standard rejection rule (Leviathan et al. 2023) — keep d with probability
min(1, p(d)/q(d)), else resample from norm(max(0, p - q)) — so the output distribution is the target's
(temperature applies to both models; top-p is not used here, it would break that guarantee).

Cost-aware: on a 2-core CPU llama.cpp's own SD on our pair ran at 0.71× target-only (draft-max 3), so a fixed draft
length is a loss. We measure online the target's per-token decode time t, the draft's per-token time d, the extra
time per verified token v, and the per-token acceptance α, and pick n ∈ {0..draft_max} maximising expected tokens
per second, E(n) / cost(n) with E(n) = (1 - α^(n+1)) / (1 - α) and cost(n) = n·d + t + n·v; n = 0 is plain target
decoding. A probe round at `draft_max` every `PROBE_EVERY` rounds keeps α fresh after settling on 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from ..engine import Sampling, sample
from ..events import Step
from .base import StepCutter
from .options import Options

PROBE_EVERY = 24
EMA = 0.2


@dataclass
class CostModel:
    """Online estimates behind the draft-length choice."""

    draft_max: int
    target_s: float | None = None     # one plain target decode
    draft_s: float | None = None      # one draft decode
    verify_extra_s: float = 0.0       # extra target time per verified proposal
    acceptance: float = 0.5           # per-token acceptance probability
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    chosen: list[int] = field(default_factory=list)

    def choose(self) -> int:
        self.rounds += 1
        if self.target_s is None:
            return 0                   # first measure plain decoding
        if self.draft_s is None or self.rounds % PROBE_EVERY == 0:
            return self.draft_max      # then (and now and then) measure drafting
        best, best_rate = 0, 1.0 / self.target_s
        for n in range(1, self.draft_max + 1):
            a = min(self.acceptance, 0.999)
            expected = (1 - a ** (n + 1)) / (1 - a)
            rate = expected / (n * self.draft_s + self.target_s + n * self.verify_extra_s)
            if rate > best_rate:
                best, best_rate = n, rate
        return best

    def update(self, n: int, accepted: int, draft_s: float, verify_s: float) -> None:
        self.chosen.append(n)
        self.drafted, self.accepted = self.drafted + n, self.accepted + accepted
        if n == 0:
            self.target_s = _ema(self.target_s, verify_s)
            return
        self.draft_s = _ema(self.draft_s, draft_s / n)
        self.verify_extra_s = _ema(self.verify_extra_s, max(verify_s - (self.target_s or verify_s), 0.0) / n)
        # accepted < n means the first rejection came after `accepted` successes: a geometric-trial estimate.
        self.acceptance = _ema(self.acceptance, accepted / (accepted + (accepted < n)))


def _ema(old: float | None, new: float) -> float:
    return new if old is None else (1 - EMA) * old + EMA * new


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


def probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    scaled = np.exp((logits - logits.max()) / temperature).astype(np.float64)
    return scaled / scaled.sum()


def sd(rt, prompt: list[int], opts: Options) -> Iterator[Step]:
    target, draft = rt.session("target"), rt.session("draft")
    model, temperature = target.ctx.model, opts.sampling.temperature
    plain = Sampling(temperature=temperature, top_p=1.0)
    rng, cost = np.random.default_rng(opts.seed), CostModel(opts.draft_max)
    target.sync(prompt[:-1])
    tokens, pending = list(prompt[:-1]), prompt[-1]  # `tokens` are in the target's KV cache; `pending` is not yet
    generated, cutter, step_start, index = 0, StepCutter(model), time.perf_counter(), 0
    counted = (0, 0)  # cost.drafted, cost.accepted when the current step began
    while True:
        room = min(opts.max_tokens - generated, target.ctx.n_ctx_seq - len(tokens) - 1) - 1
        n = max(min(cost.choose(), room), 0)
        start = time.perf_counter()
        proposals, draft_logits = [], []
        if n:
            draft.sync(tokens + [pending])
            for _ in range(n):
                proposals.append(sample(draft.logits, plain, rng))
                draft_logits.append(draft.logits)
                draft.logits = draft.ctx.decode(proposals[-1:], [len(draft.tokens)], [draft.seq], [True])[0]
                draft.tokens.append(proposals[-1])
        draft_s, start = time.perf_counter() - start, time.perf_counter()
        batch = [pending] + proposals
        logits = target.ctx.decode(batch, list(range(len(tokens), len(tokens) + len(batch))),
                                   [target.seq] * len(batch), [True] * len(batch))
        accepted, correction = 0, None
        for i, token in enumerate(proposals):
            if temperature <= 0:
                best = int(np.argmax(logits[i]))
                correction = None if best == token else best
            else:
                correction = accept_or_resample(probs(logits[i], temperature), probs(draft_logits[i], temperature),
                                                token, rng)
            if correction is not None:
                break
            accepted += 1
        emitted = proposals[:accepted] + [correction if correction is not None else sample(logits[accepted], plain, rng)]
        target.ctx.truncate(target.seq, len(tokens) + 1 + accepted)  # drop rejected proposals from the KV cache
        cost.update(n, accepted, draft_s, time.perf_counter() - start)
        tokens += [pending] + proposals[:accepted]
        pending = emitted[-1]
        generated += len(emitted)
        full = generated >= opts.max_tokens or len(tokens) + 2 >= target.ctx.n_ctx_seq
        for position, token in enumerate(emitted):
            stop = cutter.push(token) or ("cap" if full and position == len(emitted) - 1 else "")
            if stop:
                step, text = cutter.take()
                yield Step(index=index, text=text, tokens=step, source="target", verdict="generated", stop=stop,
                           scores={"drafted": cost.drafted - counted[0], "accepted": cost.accepted - counted[1],
                                   "draft_len_mean": float(np.mean(cost.chosen)), "draft_len_last": cost.chosen[-1]},
                           timings={"sd": time.perf_counter() - step_start})
                if stop != "step":
                    return
                step_start, index, counted = time.perf_counter(), index + 1, (cost.drafted, cost.accepted)
