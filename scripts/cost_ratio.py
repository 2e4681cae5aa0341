"""SpecGuard's speed-up against the draft/target cost ratio: one table from several bench runs of the same problems,
one run per target (the default Q4_K_M target, the heavier F16 copy from `make_heavier_target.py`, …).

Each run must hold plain `target` and `draft` rows (their tokens/s in that run give the cost ratio, draft cost per
token over the target's) and the same specguard variants. Only the problems every run finished count, so each row
compares the same questions; speed-ups are taken within each run, never across runs.

    python scripts/cost_ratio.py scripts/results/gsm8k-pareto scripts/results/gsm8k-f16 [--methods specguard:...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from specguard_local.bench import read_rows
from specguard_local.report import cost_ratio, summarize


def load(run: Path) -> tuple[dict, list[dict]]:
    meta = json.loads((run / "meta.json").read_text())
    return meta, read_rows(run / "rows.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="bench output folders, one per target")
    parser.add_argument("--methods", help="comma-separated specguard variants [default: those in every run]")
    args = parser.parse_args()
    runs = [load(run) for run in args.runs]
    methods_per_run = [{row["method"] for row in rows} for _, rows in runs]
    shared = set.intersection(*methods_per_run)
    if not {"target", "draft"} <= shared:
        raise SystemExit("every run needs plain target and draft rows for the cost ratio")
    variants = args.methods.split(",") if args.methods else sorted(m for m in shared if m.startswith("specguard"))
    # a problem counts once every run has every method on it
    wanted = {"target", "draft", *variants}
    done = [{pid for pid in {r["problem_id"] for r in rows}
             if wanted <= {r["method"] for r in rows if r["problem_id"] == pid}} for _, rows in runs]
    problems = set.intersection(*done)
    if not problems:
        raise SystemExit("no problem has every method in every run yet")

    lines = [f"{len(problems)} problems ({', '.join(sorted(problems, key=lambda p: int(p.split('-')[-1])))})", "",
             "| target | draft/target cost per token | method | accuracy | speed vs target | steps accepted | "
             "time: draft | catch-up prefill | target | re-prefill | other |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for meta, rows in runs:
        summary = {e["method"]: e for e in summarize([r for r in rows if r["problem_id"] in problems])}
        ratio = cost_ratio(list(summary.values()))
        name = Path(meta["models"]["target"]).name
        for method in ["target", *variants]:
            entry = summary[method]
            split = entry["time_split"]
            drafting = sum(split.get(part, 0.0) for part in ("draft_prefill", "draft", "score", "judge"))
            cells = [name, f"{ratio:.2f}", method, f"{round(entry['accuracy'] * entry['n'])}/{entry['n']}",
                     f"{entry['speedup_vs_target']:.2f}×",
                     "–" if entry["mean_acceptance_rate"] is None else f"{entry['mean_acceptance_rate']:.0%}",
                     f"{drafting:.0%}",
                     *(f"{split.get(part, 0.0):.0%}" for part in ("target_prefill", "target", "draft_sync", "other"))]
            lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
