"""What SpecGuard's verification machinery costs on top of plain drafting, measured side by side in one run.

For k = 1 and k = 4 candidates of up to 40 tokens on the real draft model it times, interleaved over repeats:
  plain    — the draft context with no eval hook (flash attention on auto): pure drafting;
  guarded  — the SpecGuard draft context: attention capture of the last 3 layers (+ hidden states for k > 1) and
             the per-token scoring of early rejection (with a threshold nothing falls below, so both variants
             draft the same tokens);
  scoring  — the final log-prob + grounding scores of every candidate and the selector;
  rescore  — the alternative the issue asked to compare (k = 1): draft without the hook, then one scoring pass
             that re-decodes the step's tokens in a hooked context already holding the prefix (KV reused).
Overhead = (guarded − plain + scoring) / plain, per drafted token. Also prints the k=4 / k=1 batch cost.

    python scripts/bench_overhead.py [--repeats 3] [--tokens 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np

from specguard_local.decoders.options import Options
from specguard_local.decoders.specguard import load_profile
from specguard_local.generation import sample_steps
from specguard_local.runtime import Runtime, RuntimeConfig
from specguard_local.verify.signals import Grounding, select

QUESTION = ("A bakery sells muffins for $3 each and cookies for $2 each. On Monday it sold 45 muffins and 60 cookies, "
            "and on Tuesday it sold twice as many muffins and 15 fewer cookies. How much money did it make?")


def draft_step(rt, prompt, k, guarded, tokens, seed):
    """Draft one k-candidate step of up to `tokens` tokens; return (seconds, scoring seconds, decode calls, tokens
    of the first candidate)."""
    opts = Options(k=k, max_step_tokens=tokens)
    session = rt.session("draft", n_seq=k, layers=3 if guarded else 0, hidden=guarded and k > 1)
    session.sync(prompt)
    capture = session.ctx.hook
    grounding = Grounding.start(capture) if guarded else None
    if guarded:
        grounding.absorb_prefill()
    profile = load_profile(opts, rt.ids["draft"], rt.ids["target"])
    hopeless = None if not guarded else (
        lambda c: grounding.running_r(c, profile, opts.use_logprob, opts.use_grounding) < -1.0)
    start = time.perf_counter()
    cands = sample_steps(session, k, opts.sampling, np.random.default_rng(seed), tokens, capture, hopeless)
    drafted = time.perf_counter() - start
    scoring = 0.0
    if guarded:
        start = time.perf_counter()
        if k > 1:
            select(np.stack([c.embedding for c in cands]))
        for cand in cands:
            grounding.signals(cand, profile, opts.use_logprob, opts.use_grounding)
        scoring = time.perf_counter() - start
    return drafted, scoring, max(len(c.tokens) for c in cands), cands[0].tokens


def rescore_pass(rt, prompt, step_tokens):
    """Seconds to capture a drafted step's attention afterwards: one batched decode of its tokens after the prefix."""
    session = rt.session("draft", n_seq=1, layers=3)
    session.sync(prompt)
    start = time.perf_counter()
    session.sync(prompt + step_tokens)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    with Runtime(RuntimeConfig()) as rt:
        prompt = rt.prompt_tokens(QUESTION)
        results = {}
        for k in (1, 4):
            for guarded in (False, True):  # warm-up: build both contexts once
                draft_step(rt, prompt, k, guarded, 4, 0)
            runs = {"plain": [], "guarded": [], "scoring": [], "rescore": []}
            for rep in range(args.repeats):
                for guarded in (False, True):
                    drafted, scoring, n, step_tokens = draft_step(rt, prompt, k, guarded, args.tokens, rep)
                    runs["guarded" if guarded else "plain"].append(drafted / n)
                    if guarded:
                        runs["scoring"].append(scoring / n)
                    elif k == 1:
                        runs["rescore"].append((drafted + rescore_pass(rt, prompt, step_tokens)) / n)
            runs = {name: v for name, v in runs.items() if v}
            med = {name: statistics.median(v) for name, v in runs.items()}
            results[k] = {**{f"{name}_ms_per_token": 1000 * v for name, v in med.items()},
                          "capture_overhead": med["guarded"] / med["plain"] - 1,
                          "scoring_overhead": med["scoring"] / med["plain"],
                          "total_overhead": (med["guarded"] - med["plain"] + med["scoring"]) / med["plain"]}
            if "rescore" in med:
                results[k]["rescore_overhead"] = (med["rescore"] - med["plain"] + med["scoring"]) / med["plain"]
        results["k4_over_k1_plain"] = results[4]["plain_ms_per_token"] / results[1]["plain_ms_per_token"]
        results["machine"] = f"{platform.processor() or platform.machine()}, {rt.config.n_threads or 'all'} threads"
    for k in (1, 4):
        r = results[k]
        print(f"k={k}: plain {r['plain_ms_per_token']:.1f} ms/token, guarded {r['guarded_ms_per_token']:.1f}, "
              f"scoring {r['scoring_ms_per_token']:.2f} → capture +{r['capture_overhead']:.1%}, "
              f"scoring +{r['scoring_overhead']:.1%}, total +{r['total_overhead']:.1%}"
              + (f"; a separate scoring pass instead: +{r['rescore_overhead']:.1%}" if "rescore_overhead" in r else ""))
    print(f"a batch of 4 candidates costs {results['k4_over_k1_plain']:.2f}× one sequence per token")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
