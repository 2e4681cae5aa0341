"""How well `specguard-local check` finds a corrupted step: flawed solutions built from the target's own correct
solutions of GSM8K test problems 1000+ (never the benchmark's 0–99), each with one step corrupted, beside the same
solutions unchanged.

Corruptions (one per flawed solution, chosen by a seeded generator among those the step allows):
    number      a number in a result (right of the last "=") changed by a small amount;
    operation   one arithmetic operator swapped (+ ↔ -, * or × ↔ /);
    dropped     one "+ term" / "- term" of an expression dropped.
Reported: the AUROC of the step score (the target's min log-prob over the step's maths tokens, lower = more
doubtful; `verify.solution`) for "this step is
the corrupted one" over every step of the flawed solutions; how often the first doubtful step is exactly the
corrupted one (by corruption kind); the share of unchanged solutions with any false alarm; and, for the threshold
chosen in the middle of the range whose first doubtful step is most often the corrupted one while its false-alarm
share on unchanged solutions stays within --max-false-alarms, the same figures at that threshold, and held out
(chosen on every other problem, measured on the rest, both ways round). Rows are appended to OUT/rows.jsonl as problems finish (resumable).

    python scripts/check_study.py --offset 1000 --limit 200 --out scripts/results/check-study
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from specguard_local import api
from specguard_local.bench import machine
from specguard_local.datasets import load_problems
from specguard_local.grading import is_correct
from specguard_local.runtime import Runtime, RuntimeConfig
from specguard_local.verify.signals import pair_profile
from specguard_local.verify.solution import check_solution, split_steps

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


def auroc(positive: list[float], negative: list[float]) -> float:
    """P(a positive scores above a negative), ties half (scores: higher = more doubtful)."""
    if not positive or not negative:
        return float("nan")
    pos, neg = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def figures(rows: list[dict], threshold: float) -> dict:
    flawed = [r for r in rows if r["kind"] != "unchanged"]
    unchanged = [r for r in rows if r["kind"] == "unchanged"]

    def first_doubtful(row):
        return next((i for i, s in enumerate(row["scores"]) if s < threshold), None)

    by_kind = {}
    for kind in sorted({r["kind"] for r in flawed}):
        group = [r for r in flawed if r["kind"] == kind]
        by_kind[kind] = {"n": len(group), "first_doubtful_is_corrupted": float(np.mean(
            [first_doubtful(r) == r["corrupted"] for r in group]))}
    return {"threshold": threshold, "flawed": len(flawed), "unchanged": len(unchanged),
            "first_doubtful_is_corrupted": float(np.mean([first_doubtful(r) == r["corrupted"] for r in flawed]))
            if flawed else None, "by_kind": by_kind,
            "false_alarm_share": float(np.mean([first_doubtful(r) is not None for r in unchanged]))
            if unchanged else None}


def choose_threshold(rows: list[dict], max_false_alarms: float) -> float:
    """The middle of the range of thresholds whose first doubtful step is most often the corrupted one, among those
    whose false alarms on unchanged solutions stay within the bound (away from both edges of the data)."""
    candidates = sorted({score for row in rows for score in row["scores"]} | {0.0})
    hits = {t: figures(rows, t) for t in candidates}
    allowed = [t for t in candidates if (hits[t]["false_alarm_share"] or 0.0) <= max_false_alarms]
    best = max((hits[t]["first_doubtful_is_corrupted"] or 0.0 for t in allowed), default=0.0)
    tied = [t for t in allowed if (hits[t]["first_doubtful_is_corrupted"] or 0.0) == best] or candidates[:1]
    return (min(tied) + max(tied)) / 2


def report(rows: list[dict], max_false_alarms: float) -> dict:
    """Figures at the threshold chosen on all rows, and held out: chosen on every other problem, measured on the
    rest (both ways round), so the shipped threshold's figures are not only the ones it was fitted to."""
    flawed = [r for r in rows if r["kind"] != "unchanged"]
    positive = [-r["scores"][r["corrupted"]] for r in flawed]
    negative = [-s for r in flawed for i, s in enumerate(r["scores"]) if i != r["corrupted"]]
    problems = sorted({r["problem_id"] for r in rows})
    halves = [[r for r in rows if problems.index(r["problem_id"]) % 2 == side] for side in (0, 1)]
    held_out = [figures(halves[1 - side], choose_threshold(halves[side], max_false_alarms)) for side in (0, 1)
                if halves[0] and halves[1]]
    return {"auroc_corrupted_step": auroc(positive, negative),
            "chosen": figures(rows, choose_threshold(rows, max_false_alarms)), "held_out": held_out,
            "profile_default": figures(rows, rows[0]["profile_threshold"]) if rows else None,
            "max_false_alarms": max_false_alarms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--offset", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=200, help="problems the target tries (its right ones count)")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--max-false-alarms", type=float, default=0.10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="scripts/results/check-study")
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
            prompt, pair = rt.prompt_tokens(problem.question), []
            for name, solution, corrupted in (("unchanged", steps, None),
                                              (kind, steps[:index] + [flawed_step] + steps[index + 1:], index)):
                result = check_solution(rt, prompt, solution, profile, hint=False)
                pair.append({"problem_id": problem.id, "kind": name, "corrupted": corrupted, "n_steps": len(solution),
                             "scores": [s.scores["maths_logprob_min"] for s in result.steps],
                             "all_tokens": [s.scores["target_logprob_min"] for s in result.steps],
                             "r": [s.scores["r"] for s in result.steps], "profile_threshold": result.threshold,
                             "original": steps[index] if corrupted is not None else None,
                             "flawed": flawed_step if corrupted is not None else None})
            rows += pair
            with rows_path.open("a") as f:  # both rows of a problem at once: a kill never leaves half a pair
                f.write("".join(json.dumps(row) + "\n" for row in pair))
    summary = {"command": " ".join(sys.argv), "machine": machine(), "date": datetime.now(timezone.utc).isoformat(),
               **report(rows, args.max_false_alarms)}
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
