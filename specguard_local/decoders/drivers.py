"""The two loops every decoder runs in, so that the budget, the step index, the timing and the end of an answer
are decided in one place (as mlx-lm's `stream_generate` wraps every generator).

- `step_loop`: step-level methods (target, draft, specguard and its presets) supply only how the next step is
  written, `write(tokens, budget) -> Step`;
- `token_loop`: token-level methods (sd, trispec) supply rounds of emitted tokens, `next_round(room)`; the loop
  cuts them into steps at the same boundaries as `base.sample_steps` ("\\n\\n" or end of generation).

One rule ends every answer, and the last step's `stop` says which:
    eos      the model ended it;
    budget   --max-tokens tokens were generated;
    context  prompt + answer fill the sequence's context (--n-ctx): the answer is cut, and the CLI says so.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

from ..events import Step
from ..generation import STEP_BOUNDARY
from .options import Options

ENDS = ("eos", "budget", "context")
COUNTERS = ("drafted", "accepted", "target_tokens")


def room(opts: Options, n_generated: int, n_context: int, n_ctx_seq: int) -> int:
    """Tokens the answer may still grow by: its budget or the context, whichever is tighter."""
    return min(opts.max_tokens - n_generated, n_ctx_seq - n_context)


def end_reason(stop: str, opts: Options, n_generated: int, n_context: int, n_ctx_seq: int) -> str:
    """Why the answer ends here (one of `ENDS`), or "" when it goes on."""
    if stop == "eos":
        return "eos"
    if n_generated >= opts.max_tokens:
        return "budget"
    return "context" if n_context >= n_ctx_seq else ""


def step_loop(prompt: list[int], opts: Options, n_ctx_seq: int,
              write: Callable[[list[int], int], Step]) -> Iterator[Step]:
    """Steps until the answer ends: `write(tokens, budget)` writes the step after `tokens` (prompt + answer so far)
    in at most `budget` tokens; the loop numbers it and sets its final `stop`."""
    tokens = list(prompt)
    for index in range(opts.max_tokens):
        budget = min(opts.max_step_tokens, room(opts, len(tokens) - len(prompt), len(tokens), n_ctx_seq))
        step = write(tokens, budget)
        tokens += step.tokens
        end = end_reason(step.stop, opts, len(tokens) - len(prompt), len(tokens), n_ctx_seq)
        step.index, step.stop = index, end or step.stop
        yield step
        if end:
            return


def token_loop(model, prompt: list[int], opts: Options, n_ctx_seq: int, name: str,
               next_round: Callable[[int], tuple[list[int], dict, dict]]) -> Iterator[Step]:
    """Steps cut from rounds of tokens. `next_round(room)` emits 1..room tokens and returns (tokens, counts,
    scores): counts (`COUNTERS` and any other) add up over a step, scores are the latest. A step's source is the
    target when any of its tokens needed it."""
    generated, index, cut, data, counts, start = 0, 0, [], b"", {}, time.perf_counter()
    while True:
        emitted, round_counts, scores = next_round(room(opts, generated, len(prompt) + generated, n_ctx_seq))
        for key, value in round_counts.items():
            counts[key] = counts.get(key, 0) + value
        for token in emitted:
            generated += 1
            cut.append(token)
            data += model.piece(token)
            stop = "eos" if model.is_eog(token) else "step" if STEP_BOUNDARY in data.lstrip() else ""
            end = end_reason(stop, opts, generated, len(prompt) + generated, n_ctx_seq)
            if not (stop or end):
                continue
            fields = {key: counts.pop(key, 0) for key in COUNTERS}
            yield Step(index=index, text=model.detokenize(cut), tokens=cut, source="target" if fields["target_tokens"]
                       else "draft", verdict="generated", stop=end or stop, scores={**counts, **scores},
                       timings={name: time.perf_counter() - start}, **fields)
            if end:
                return
            index, cut, data, counts, start = index + 1, [], b"", {}, time.perf_counter()
