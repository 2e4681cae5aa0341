"""Regression check for `specguard-local check`: flawed solutions built from the target's own correct solutions of
GSM8K test problems 1000+ (never the benchmark's 0–99), each with one step corrupted, beside the same solutions
unchanged. (Real students' solutions are `check_real_study.py`'s; this one only guards against losing what the
checker already did.)

Corruptions (one per flawed solution, chosen by a seeded generator among those the step allows):
    number      a number in a result (right of the last "=") changed by a small amount;
    operation   one arithmetic operator swapped (+ ↔ -, * or × ↔ /);
    dropped     one "+ term" / "- term" of an expression dropped.
Reported: how often the first doubtful step is exactly the corrupted one (by corruption kind and by the evidence
that flagged it), and the share of unchanged solutions with any doubtful step. Rows are appended to OUT/rows.jsonl
as problems finish (resumable).

    python scripts/check_study.py --offset 1000 --limit 40 --out scripts/results/check-corrupted
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from specguard_local import api
from specguard_local.bench import machine
from specguard_local.datasets import load_problems
from specguard_local.grading import is_correct
from specguard_local.runtime import Runtime, RuntimeConfig
from specguard_local.tutor.check import check_solution, split_steps
from specguard_local.verify.signals import pair_profile

NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")
OPERATORS = {"+": "-", "-": "+", "*": "/", "/": "*", "×": "÷", "÷": "×"}


def corrupt(step: str, rng: random.Random) -> tuple[str, str] | None:
    """(the corrupted step, its kind), or None when the step has nothing to corrupt."""
    options = []
    if "=" in step:
        tail_start = step.rindex("=")
        numbers = [m for m in NUMBER.finditer(step) if m.start() > tail_start]
        if numbers:
            options.append("number")
    if re.search(r"\d\s*[+\-*/×÷]\s*\d", step):
        options.append("operation")
    if re.search(r"\d\s*[+\-]\s*\d+(?:\.\d+)?\s*[+\-]\s*\d", step):
        options.append("dropped")
    if not options:
        return None
    kind = rng.choice(options)
    if kind == "number":
        match = rng.choice(numbers)
        value = float(match.group())
        new = value + rng.choice([-2, -1, 1, 2, 10]) if value >= 3 else value + rng.choice([1, 2])
        text = f"{new:g}" if "." in match.group() else str(int(new))
        return step[:match.start()] + text + step[match.end():], kind
    if kind == "operation":
        match = rng.choice(list(re.finditer(r"(?<=\d)(\s*)([+\-*/×÷])(\s*)(?=\d)", step)))
        return step[:match.start(2)] + OPERATORS[match.group(2)] + step[match.end(2):], kind
    match = rng.choice(list(re.finditer(r"\s*[+\-]\s*\d+(?:\.\d+)?(?=\s*[+\-]\s*\d)", step)))
    return step[:match.start()] + step[match.end():], kind


def figures(rows: list[dict]) -> dict:
    flawed = [r for r in rows if r["kind"] != "unchanged"]
    unchanged = [r for r in rows if r["kind"] == "unchanged"]
    by_kind = {kind: {"n": sum(r["kind"] == kind for r in flawed), "first_doubtful_is_corrupted": float(np.mean(
        [r["first_doubtful"] == r["corrupted"] for r in flawed if r["kind"] == kind]))}
        for kind in sorted({r["kind"] for r in flawed})}
    return {"flawed": len(flawed), "unchanged": len(unchanged),
            "first_doubtful_is_corrupted": float(np.mean([r["first_doubtful"] == r["corrupted"] for r in flawed]))
            if flawed else None, "by_kind": by_kind,
            "found_by": dict(Counter(r["evidence"][r["corrupted"]] for r in flawed
                                     if r["first_doubtful"] == r["corrupted"])),
            "false_alarm_share": float(np.mean([r["first_doubtful"] is not None for r in unchanged]))
            if unchanged else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--offset", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=200, help="problems the target tries (its right ones count)")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="scripts/results/check-corrupted")
    parser.add_argument("--report-only", action="store_true", help="report on the rows so far, solve nothing more")
    args = parser.parse_args()
    if args.offset < 1000:
        sys.exit("use GSM8K test problems 1000+ (0-99 are the benchmark's)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    rows = [json.loads(line) for line in rows_path.open()] if rows_path.exists() else []
    skipped_path = out / "skipped.jsonl"
    done = {row["problem_id"] for row in rows}
    if skipped_path.exists():
        done |= {json.loads(line)["problem_id"] for line in skipped_path.open()}
    problems = [] if args.report_only else load_problems("gsm8k", limit=args.offset + args.limit)[args.offset:]
    with Runtime(RuntimeConfig()) as rt:
        profile = pair_profile(None, rt.ids["draft"], rt.ids["target"])
        for problem in tqdm([p for p in problems if p.id not in done], desc="check study", unit="problem"):
            rng = random.Random(f"{args.seed}:{problem.id}")
            solved = api.solve(problem.question, "target", rt, max_tokens=args.max_tokens)
            steps = split_steps(solved.text)
            candidates = [i for i, step in enumerate(steps) if corrupt(step, random.Random(0))]
            if not is_correct(solved.answer, problem.gold) or not candidates or len(steps) < 2:
                with skipped_path.open("a") as skipped:
                    skipped.write(json.dumps({"problem_id": problem.id, "correct": is_correct(solved.answer,
                                                                                             problem.gold)}) + "\n")
                continue
            index = rng.choice(candidates)
            flawed_step, kind = corrupt(steps[index], rng)
            pair = []
            for name, solution, corrupted in (("unchanged", steps, None),
                                              (kind, steps[:index] + [flawed_step] + steps[index + 1:], index)):
                result = check_solution(rt, problem.question, solution, profile)
                pair.append({"problem_id": problem.id, "kind": name, "corrupted": corrupted, "n_steps": len(solution),
                             "first_doubtful": result.first_doubtful, "evidence": [s.evidence for s in result.steps],
                             "reason": [s.reason for s in result.steps], "seconds": result.seconds,
                             "original": steps[index] if corrupted is not None else None,
                             "flawed": flawed_step if corrupted is not None else None})
            rows += pair
            with rows_path.open("a") as f:  # both rows of a problem at once: a kill never leaves half a pair
                f.write("".join(json.dumps(row) + "\n" for row in pair))
    summary = {"command": " ".join(sys.argv), "machine": machine(), "date": datetime.now(timezone.utc).isoformat(),
               **figures(rows)}
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
