"""Token-level speculative decoding, cost-aware: the baseline SpecGuard is compared with.

Each round the draft proposes n tokens and the target checks them all in one batched decode (the pending token
plus the n proposals, logits for every position); rejected proposals are removed from both KV caches with
`seq_rm`, nothing is re-prefilled. Greedy: keep proposals while they equal the target's argmax, then emit the
target's own token. Sampled: the standard rejection rule (Leviathan et al. 2023) — keep d with probability
min(1, p(d)/q(d)), else resample from norm(max(0, p - q)) — so the output distribution is the target's
(temperature applies to both models; top-p is not used here, it would break that guarantee).

Cost-aware: on a 2-core CPU llama.cpp's own SD on our pair ran at 0.71× target-only (draft-max 3), so a fixed draft
length is a loss. We pick n ∈ {0..draft_max} maximising expected tokens per second, E(n) / R(n), from online
estimates of whole-round wall times (Python included):

    E(n) = (1 - α^(n+1)) / (1 - α)          tokens emitted per round; α = accepted / (accepted + rejections)
    R(0) = t                                 a plain target round
    R(n) = t + s + n·c                       s: the draft catching up on the previous round's last token;
                                             c: one draft decode plus one more verified position

`--draft-fixed` skips all this and always drafts `draft_max` tokens. Otherwise decoding starts plain (n = 0). Every `PROBE_EVERY` rounds while n = 0 wins (or nothing is known yet), a probe
drafts one token, the cheapest round that measures s, c and one acceptance trial; after `PROBES_LOST` probes in a
row leave n = 0 the best, the answer finishes with plain decoding. (A probe's draft must first prefill every token
since its last round — on the default pair ≈ 0.13 target decodes per token — so probing all along would tax the
fallback by about that much.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from ..engine import Sampling, sample, softmax
from ..events import Step
from ..generation import PairRuntime
from ..verify.stage import accept_or_resample
from .drivers import token_loop
from .options import Options

PROBE_EVERY = 16
PROBES_LOST = 2
EMA = 0.2


@dataclass
class CostModel:
    """Online estimates behind the draft-length choice (the module docstring's E(n) / R(n))."""

    draft_max: int
    round_s: float | None = None      # t: one plain target round
    sync_s: float | None = None       # s: the draft's catch-up decode of the pending token
    per_token_s: float | None = None  # c: one drafted and verified token
    since_probe: int = 0              # rounds since the last probe while n = 0 wins
    probes_lost: int = 0              # probes in a row after which n = 0 still won
    drafted: int = 0
    accepted: int = 0
    rejected: int = 0                 # rounds whose draft was cut short by a rejection
    chosen: list[int] = field(default_factory=list)

    @property
    def accepted_len_mean(self) -> float:
        """Proposals accepted per round that drafted (0 when none did)."""
        drafting_rounds = sum(n > 0 for n in self.chosen)
        return self.accepted / drafting_rounds if drafting_rounds else 0.0

    @property
    def acceptance(self) -> float:
        """α: accepted proposals over accepted plus rejections (the geometric-trial estimate), prior 1:1."""
        return (self.accepted + 1) / (self.accepted + self.rejected + 2)

    def best(self) -> int:
        """The draft length with the highest expected tokens per second under the current estimates."""
        a = min(self.acceptance, 0.999)
        rates = [1.0 / self.round_s] + [(1 - a ** (n + 1)) / (1 - a) /
                                        (self.round_s + self.sync_s + n * self.per_token_s)
                                        for n in range(1, self.draft_max + 1)]
        return int(np.argmax(rates))

    def choose(self) -> int:
        n = self.best() if self.per_token_s is not None else 0
        if n or self.probes_lost >= PROBES_LOST:
            return n
        self.since_probe += 1
        if self.since_probe < PROBE_EVERY:
            return 0
        self.since_probe = 0
        return 1  # a probe

    def update(self, n: int, accepted: int, round_s: float, sync_s: float, caught_up: int, draft_s: float) -> None:
        """Fold in one round: draft length, accepted proposals, wall time, and the draft's catch-up (`caught_up`
        tokens in `sync_s`; only a one-token catch-up is the steady-state s) and its n decodes (`draft_s`)."""
        was_probe = bool(n) and (self.per_token_s is None or self.best() == 0)
        self.chosen.append(n)
        self.drafted, self.accepted = self.drafted + n, self.accepted + accepted
        if n == 0:
            self.round_s = _ema(self.round_s, round_s)
            return
        if caught_up == 1:
            self.sync_s = _ema(self.sync_s, sync_s)
        elif self.sync_s is None:
            self.sync_s = draft_s / n  # until measured: one draft decode
        if self.round_s is not None:  # (with --draft-fixed there is no plain round to compare with)
            self.per_token_s = _ema(self.per_token_s, max(round_s - sync_s - self.round_s, 0.0) / n)
        self.rejected += accepted < n
        if was_probe and self.per_token_s is not None:
            self.probes_lost = self.probes_lost + 1 if self.best() == 0 else 0


def _ema(old: float | None, new: float) -> float:
    return new if old is None else (1 - EMA) * old + EMA * new


def sd(rt: PairRuntime, prompt: list[int], opts: Options) -> Iterator[Step]:
    target, draft = rt.session("target"), rt.session("draft")
    temperature = opts.sampling.temperature
    plain = Sampling(temperature=temperature, top_p=1.0)
    rng, cost = np.random.default_rng(opts.seed), CostModel(opts.draft_max)
    target.sync(prompt[:-1])
    pending = prompt[-1]  # the target's KV cache holds everything before `pending`, which it reads next round

    def next_round(room: int) -> tuple[list[int], dict, dict]:
        nonlocal pending
        n = max(min(opts.draft_max if opts.draft_fixed else cost.choose(), room - 1), 0)
        start = time.perf_counter()
        proposals, draft_logits, caught_up, synced = [], [], 0, start
        if n:
            caught_up = draft.sync(target.tokens + [pending])
            synced = time.perf_counter()
            for _ in range(n):
                proposals.append(sample(draft.logits, plain, rng))
                draft_logits.append(draft.logits)
                draft.extend(proposals[-1:])
        drafted = time.perf_counter()
        n_before = len(target.tokens)
        logits = target.extend([pending] + proposals)  # the pending token and every proposal, one batch
        accepted, correction = 0, None
        for i, token in enumerate(proposals):
            if temperature <= 0:
                best = int(np.argmax(logits[i]))
                correction = None if best == token else best
            else:
                correction = accept_or_resample(softmax(logits[i], temperature), softmax(draft_logits[i], temperature),
                                                token, rng)
            if correction is not None:
                break
            accepted += 1
        emitted = proposals[:accepted] + [correction if correction is not None else sample(logits[accepted], plain, rng)]
        target.rewind(n_before + 1 + accepted, logits[accepted])  # drop the rejected proposals from the KV cache
        cost.update(n, accepted, time.perf_counter() - start, synced - start, caught_up, drafted - synced)
        pending = emitted[-1]
        return emitted, {"drafted": n, "accepted": accepted, "target_tokens": len(emitted)}, {
            "draft_len_mean": float(np.mean(cost.chosen)), "draft_len_last": cost.chosen[-1],
            "accepted_len_mean": cost.accepted_len_mean}

    yield from token_loop(target.ctx.model, prompt, opts, target.ctx.n_ctx_seq, "sd", next_round)
