"""Does a request's greedy text depend on the other requests decoded beside it? Why `serve --deterministic` exists.

One context of 4 sequences holding 4 different prompts; sequence 0 decodes greedily for --tokens tokens, once alone
(one row per decode) and once merged with the other three (four rows per decode, as the server's batcher merges
requests). Compared: sequence 0's logits, bit for bit, and its text. Done twice: with llama.cpp's repacked CPU
weights (the default: Q4_K rows in groups of 4 take a GEMM kernel, a row alone a GEMV) and without them
(`use_extra_bufts = false`: every row the same dot products), with the decode speed of each: one sequence, four
merged, and a prompt prefill.

    python scripts/batch_invariance.py [--model PATH] [--tokens 40] [--out scripts/results/batch_invariance.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import llama_cpp as ll
import numpy as np

from specguard_local import models
from specguard_local.bench import machine
from specguard_local.engine import Context, Model

QUESTIONS = ["What is 17 * 23?", "Tom has 3 boxes with 12 apples each. He eats 5. How many are left?",
             "A train travels 60 km in 45 minutes. What is its speed in km/h?", "What is half of 48?"]


def load(path: str, repack: bool) -> Model:
    default_params = ll.llama_model_default_params

    def params():
        chosen = default_params()
        chosen.use_extra_bufts = repack
        return chosen

    ll.llama_model_default_params = params
    try:
        return Model(path)
    finally:
        ll.llama_model_default_params = default_params


def greedy(ctx: Context, prompts: list[list[int]], rows: int, n_tokens: int) -> tuple[np.ndarray, list[int], float]:
    """Sequence 0's logits and tokens over n_tokens greedy decodes, each holding `rows` sequences' tokens."""
    ctx.clear()
    last = [ctx.prefill(prompt, 0, seq) for seq, prompt in enumerate(prompts)]
    positions, tokens = [len(p) for p in prompts], [int(np.argmax(row)) for row in last]
    logits, text = [], []
    start = time.perf_counter()
    for _ in range(n_tokens):
        out = ctx.decode(tokens[:rows], positions[:rows], list(range(rows)), [True] * rows)
        logits.append(out[0])
        text.append(tokens[0])
        for seq in range(rows):
            positions[seq] += 1
            tokens[seq] = int(np.argmax(out[seq]))
    return np.stack(logits), text, time.perf_counter() - start


def measure(path: str, repack: bool, n_tokens: int) -> dict:
    model = load(path, repack)
    ctx = Context(model, n_seq=4, n_ctx_seq=1024)
    prompts = [model.tokenize(model.chat_prompt([("user", q)])) for q in QUESTIONS]
    greedy(ctx, prompts, 1, 4)  # warm-up
    alone, alone_text, alone_s = greedy(ctx, prompts, 1, n_tokens)
    merged, merged_text, merged_s = greedy(ctx, prompts, 4, n_tokens)
    ctx.clear()
    long_prompt = (prompts[1] * 20)[:400]
    start = time.perf_counter()
    ctx.prefill(long_prompt, 0, 0)
    prefill_s = time.perf_counter() - start
    first = next((i for i, (a, b) in enumerate(zip(alone_text, merged_text)) if a != b), None)
    result = {"repacked_weights": repack, "logits_bit_identical": bool(np.array_equal(alone, merged)),
              "max_abs_logit_diff": float(np.abs(alone - merged).max()), "first_token_that_differs": first,
              "decode_1_seq_tok_s": n_tokens / alone_s, "decode_4_merged_tok_s": 4 * n_tokens / merged_s,
              "prefill_tok_s": len(long_prompt) / prefill_s}
    ctx.close()
    model.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a GGUF model (default: the default target)")
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--out", default="scripts/results/batch_invariance.json")
    args = parser.parse_args()
    path = args.model or str(models.resolve(models.DEFAULT_TARGET, None))
    runs = [measure(path, repack, args.tokens) for repack in (True, False, True, False)]  # interleaved twice
    record = {"command": " ".join(["python", "scripts/batch_invariance.py", *sys.argv[1:]]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "model": Path(path).name, "runs": runs}
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    for run in runs:
        print(json.dumps(run))


if __name__ == "__main__":
    main()
