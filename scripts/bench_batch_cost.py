"""What one decode of n sequences costs against one sequence: the ceiling of batching on this machine.

Serving n requests together (`batching`), or drafting k candidates in one batch, pays one `llama_decode` of n
sequences per token instead of n decodes of one. If that decode costs c(n) times a one-sequence decode, n
requests together can gain at most n / c(n) in tokens/s. For the draft and the target of the default pair, on a
context with 4 sequences that each hold the same GSM8K prompt, it times one-token decodes of 1, 2 and 4 sequences,
interleaved over repeats, and prints c(n) and n / c(n).

    python scripts/bench_batch_cost.py [--repeats 5] [--ticks 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from specguard_local.datasets import load_problems
from specguard_local.runtime import Runtime, RuntimeConfig

SIZES = (1, 2, 4)


def tick_seconds(ctx, n_prompt: int, n: int, ticks: int) -> float:
    """Seconds per decode of one token in each of the first n sequences (the KV cells written are dropped after)."""
    start = time.perf_counter()
    for t in range(ticks):
        ctx.decode([0] * n, [n_prompt + t] * n, list(range(n)), [True] * n)
    seconds = (time.perf_counter() - start) / ticks
    for seq in range(n):
        ctx.truncate(seq, n_prompt)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ticks", type=int, default=30, help="decodes per measurement")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = {}
    with Runtime(RuntimeConfig()) as rt:
        prompt = rt.prompt_tokens(load_problems("gsm8k", limit=1)[0].question)
        for role in ("draft", "target"):
            ctx = rt.context(role, n_seq=max(SIZES))
            ctx.clear()
            ctx.prefill(prompt, 0)
            ctx.fork(0, list(range(max(SIZES))))
            tick_seconds(ctx, len(prompt), max(SIZES), 3)  # warm-up
            runs = {n: [] for n in SIZES}
            for _ in range(args.repeats):
                for n in SIZES:
                    runs[n].append(tick_seconds(ctx, len(prompt), n, args.ticks))
            ms = {n: 1000 * statistics.median(v) for n, v in runs.items()}
            results[role] = {f"{n}_seq_ms": ms[n] for n in SIZES}
            results[role].update({f"cost_{n}_over_1": ms[n] / ms[1] for n in SIZES[1:]})
            print(f"{role}: " + ", ".join(f"{n} seq {ms[n]:.1f} ms" for n in SIZES) + " per decode → "
                  + ", ".join(f"{n} together gain at most {n * ms[1] / ms[n]:.2f}×" for n in SIZES[1:]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
