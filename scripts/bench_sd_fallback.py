"""Cost-aware `sd` with a draft that always disagrees: does it fall back to plain target decoding at target speed?

Target and draft are two tiny random GGUFs with the same vocabulary and unrelated weights (written with the test
fixture), so almost no drafted token is accepted. Target-only and sd runs are interleaved; the script prints the
tokens/s ratio sd / target and the draft lengths the cost model chose.

    python scripts/bench_sd_fallback.py [--repeats 5] [--tokens 400] [--layers 12]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tiny_gguf import write_tiny_model  # noqa: E402

from specguard_local import api  # noqa: E402
from specguard_local.decoders.options import Options  # noqa: E402
from specguard_local.runtime import Runtime, RuntimeConfig  # noqa: E402


def tokens_per_second(rt, method, opts):
    start = time.perf_counter()
    steps = list(api.stream(rt, "hello there, tell me a story", method, opts))
    return sum(len(s.tokens) for s in steps) / (time.perf_counter() - start), steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--layers", type=int, default=12, help="layers of the tiny target (more = slower target)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        target = write_tiny_model(Path(tmp) / "target.gguf", seed=0, n_layer=args.layers)
        draft = write_tiny_model(Path(tmp) / "draft.gguf", seed=1, n_layer=3)
        opts = Options(max_tokens=args.tokens, draft_max=4)
        with Runtime(RuntimeConfig(draft=str(draft), target=str(target), n_ctx=1024)) as rt:
            tokens_per_second(rt, "target", opts), tokens_per_second(rt, "sd", opts)  # warm-up
            rates = {"target": [], "sd": []}
            for _ in range(args.repeats):
                for method in rates:
                    rate, steps = tokens_per_second(rt, method, opts)
                    rates[method].append(rate)
    target_rate, sd_rate = statistics.median(rates["target"]), statistics.median(rates["sd"])
    accepted = sum(s.accepted for s in steps)
    drafted = sum(s.drafted for s in steps)
    ratios = [s / t for s, t in zip(rates["sd"], rates["target"])]
    print(f"target {target_rate:.0f} tok/s, sd {sd_rate:.0f} tok/s: ratio of medians {sd_rate / target_rate:.3f} "
          f"(per-repeat ratios {', '.join(f'{r:.3f}' for r in ratios)}); last sd run: {sum(len(s.tokens) for s in steps)} "
          f"tokens (the tiny models stop early: --tokens is a cap), drafted {drafted}, "
          f"accepted {accepted}, mean draft length {steps[-1].scores['draft_len_mean']:.3f}")


if __name__ == "__main__":
    main()
