"""`solve`: run one method on one question and collect its steps, answer and statistics."""

from __future__ import annotations

import time
from typing import Iterator

from .decoders import METHODS
from .decoders.options import Options, validate
from .errors import SpecGuardError
from .events import Result, Step
from .grading import extract_answer
from .runtime import Runtime, RuntimeConfig


def stream(rt: Runtime, question: str, method: str = "specguard", opts: Options = Options()) -> Iterator[Step]:
    """Yield the steps of `method` on `question` as they are produced."""
    check(method, opts)
    return METHODS[method](rt, rt.prompt_tokens(question), opts)


def generate(rt: Runtime, prompt: list[int], method: str = "specguard", opts: Options = Options()) -> Iterator[Step]:
    """Yield the steps of `method` after a prompt already rendered to tokens (a chat of several messages)."""
    check(method, opts)
    return METHODS[method](rt, prompt, opts)


def check(method: str, opts: Options) -> None:
    """Reject an unknown method or option values no decoder can run with (`decoders.options.SCHEMA`), before any
    decoding."""
    if method not in METHODS:
        raise SpecGuardError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    validate(opts)


def summarize(method: str, question: str, steps: list[Step], wall_s: float) -> Result:
    """The answer and the run's statistics: tokens, speed, acceptance, target-call fraction, time split."""
    text = "".join(s.text for s in steps)
    n_tokens = sum(len(s.tokens) for s in steps)
    timings: dict[str, float] = {}
    for step in steps:
        for name, seconds in step.timings.items():
            timings[name] = timings.get(name, 0.0) + seconds
    judged = [s for s in steps if s.verdict in ("accepted", "rejected", "salvaged")]  # step level: a verdict per step
    drafted = sum(s.drafted for s in steps)  # token level: drafted tokens, some accepted
    stats = {"tokens": n_tokens, "steps": len(steps), "wall_s": wall_s,
             "tokens_per_s": n_tokens / wall_s if wall_s > 0 else 0.0,
             "acceptance_rate": (sum(s.verdict == "accepted" for s in judged) / len(judged) if judged else
                                 sum(s.accepted for s in steps) / drafted if drafted else None),
             # share of the answer's tokens the target wrote or had to check
             "target_call_fraction": sum(s.target_tokens for s in steps) / n_tokens if n_tokens else 0.0,
             # token-level SD: the draft length it chose and the proposals accepted per drafting round
             "draft_len_mean": steps[-1].scores.get("draft_len_mean") if steps else None,
             "accepted_len_mean": steps[-1].scores.get("accepted_len_mean") if steps else None,
             "timings": timings,
             # salvage: drafted tokens kept by the verifier's word, kept as the target's agreed prefix, and the
             # target's own tokens (corrections and free tokens after a stretch it read whole)
             "kept": {"drafted": sum(s.drafted for s in steps),
                      **{key: sum(int(s.scores.get(key, 0)) for s in steps)
                         for key in ("kept_whole", "salvaged", "corrections", "bonus", "passes")}}
             if any(s.verdict == "salvaged" or "passes" in s.scores for s in steps) else None,
             # step-level speculation: what the cost-aware controller measured and chose (decoders/controller.py)
             "control": steps[-1].control if steps and steps[-1].control else None,
             "ended": steps[-1].stop if steps else None}  # eos, budget or context (decoders/drivers.py)
    return Result(question=question, method=method, text=text, answer=extract_answer(text), steps=steps,
                  stats=stats)


def solve(question: str, method: str = "specguard", runtime: Runtime | None = None, **options) -> Result:
    """Solve `question` with `method` (a name in `decoders.METHODS`). Options are `decoders.options.Options`
    fields (k, temperature, tau, …); without `runtime`, the default pair is loaded (and freed afterwards)."""
    rt = runtime or Runtime(RuntimeConfig())
    try:
        start = time.perf_counter()
        steps = list(stream(rt, question, method, Options(**options)))
        return summarize(method, question, steps, time.perf_counter() - start)
    finally:
        if runtime is None:
            rt.close()
