"""TriSpec-style ternary cascade (seed 002) on our pair: a free drafter, the small model as proxy verifier, and the
target only for the tokens the proxy is unsure of. Greedy.

Per round:
  1. drafter: prompt lookup — the longest of the last 3/2/1 tokens seen earlier in prompt + output proposes the
     tokens that followed it there (up to `draft_max`); costs nothing;
  2. proxy: the draft model reads the proposals in one batch. Position i is *trusted* when the proxy's top-1 minus
     top-2 probability is ≥ λ; there the proxy's argmax is final (it accepts the proposal, or replaces it and ends
     the round). With no proposal the proxy's trusted argmax is emitted, so confident stretches never reach the
     target;
  3. target: from the first untrusted position, the target catches up on the trusted tokens (one lazy batched
     prefill) and verifies the remaining proposals in the same pass, emitting its own token at the first mismatch.
`target_tokens` counts the tokens whose emission needed the target (the paper's target-invocation measure).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..engine import softmax
from ..events import Step
from ..generation import PairRuntime
from .drivers import token_loop
from .options import Options


def lookup(tokens: list[int], n_max: int, ngram_max: int = 3) -> list[int]:
    """Prompt-lookup drafting: continue the most recent earlier occurrence of the longest matching suffix n-gram."""
    for n in range(min(ngram_max, len(tokens) - 1), 0, -1):
        suffix = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start:start + n] == suffix:
                return tokens[start + n:start + n + n_max]
    return []


def margin(logits: np.ndarray) -> tuple[int, float]:
    """(argmax, top-1 minus top-2 probability) of a logits row."""
    top2 = np.argpartition(logits, -2)[-2:]
    probs = softmax(logits)
    first, second = sorted(top2, key=lambda t: -probs[t])
    return int(first), float(probs[first] - probs[second])


def trispec(rt: PairRuntime, prompt: list[int], opts: Options) -> Iterator[Step]:
    proxy, target = rt.session("draft"), rt.session("target")
    tokens = list(prompt)

    def next_round(room: int) -> tuple[list[int], dict, dict]:
        proposals = lookup(tokens, max(min(opts.draft_max, room - 1), 0))
        proxy.sync(tokens)
        before = [proxy.logits, *proxy.extend(proposals)[:-1]] if proposals else [proxy.logits]
        emitted, untrusted_at = [], None
        for i, row in enumerate(before):
            token, confidence = margin(row)
            if confidence < opts.lam:
                untrusted_at = i
                break
            emitted.append(token)
            if i >= len(proposals) or token != proposals[i]:
                break
        n_proxy = len(emitted)
        if untrusted_at is not None:
            rest = proposals[untrusted_at:]
            target.sync(tokens + emitted)
            preds = [target.logits, *target.extend(rest)] if rest else [target.logits]
            for j, row in enumerate(preds):
                emitted.append(int(np.argmax(row)))
                if j >= len(rest) or emitted[-1] != rest[j]:
                    break
        counts = {"target_tokens": len(emitted) - n_proxy, "proxy_tokens": n_proxy}
        tokens.extend(emitted[:room])
        return emitted[:room], counts, {}

    yield from token_loop(proxy.ctx.model, prompt, opts, proxy.ctx.n_ctx_seq, "trispec", next_round)
