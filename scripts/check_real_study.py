"""How well `specguard-local check` judges real students' solutions: MR-GSM8K's wrong step-by-step solutions with a
human-labelled first error step, and GSM8K's own human-written reference solutions as right ones
(`../shared/datasets/mr_gsm8k_steps_dev.jsonl`; ProcessBench's metric).

    wrong_exact   share of wrong solutions whose first flagged step is exactly the labelled one
    right_clean   share of right solutions with no flagged step
    f1            their harmonic mean

The model runs once per problem (the target's two solutions of the question and its reading of both the student's
and the reference steps; rows appended to OUT/rows.jsonl, resumable); every decision rule is then replayed from the
rows. The rule (`tutor.check.Rule`) is chosen by F1 in 5-fold cross-validation grouped by problem (a problem's wrong
and right solutions always in the same fold): each fold is judged by the rule chosen on the other four. Reported
beside it: each evidence source alone and added in turn (the fitted rule, in sample), the check before this one (the
target's surprise alone, min maths-token log-prob < -2.04), the check given the answer key (`check --answer`; its
own rule, cross-validated the same way), figures per error kind (from the annotator's reason) and where each
source of evidence fails whatever the rule.

    python scripts/check_real_study.py --out scripts/results/check-real
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from specguard_local.bench import append_row, machine, read_rows
from specguard_local.runtime import Runtime, RuntimeConfig
from specguard_local.arithmetic import computations, numbers
from specguard_local.tutor.check import Evidence, Rule, decide, read_steps, student_answer
from specguard_local.tutor.reference import Reference, answer_value, run_program, solve_as_program, solve_in_words
from specguard_local.grading import extract_answer

DEV = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mr_gsm8k_steps_dev.jsonl"
OLD_THRESHOLD = -2.04   # the shipped threshold of the check before this one
GRID = [Rule(consensus, logprob_min, provenance, locate) for consensus, logprob_min, provenance, locate in
        itertools.product((False, True), (None, -0.5, -1.0, -2.0, -3.0, -5.0), (False, True),
                          ("stray", "surprise"))]
KINDS = [("calculation", r"calculat|计算|arithmetic|comput"), ("comprehension", r"understand|理解|misread|题"),
         ("logic", r"logic|逻辑|reason|formula|thought|思路|方法")]
FOLDS = 5


def collect(rt: Runtime, item: dict) -> dict:
    """The model's part of one problem: the target's two solutions and its reading of both solutions' steps."""
    row = {"id": item["id"]}
    for solve in (solve_in_words, solve_as_program):
        start = time.perf_counter()
        reference = solve(rt, item["question"])
        row[reference.how] = {"text": reference.text, "tokens": reference.tokens,
                              "seconds": time.perf_counter() - start}
    for kind in ("student", "reference"):
        start = time.perf_counter()
        row[f"surprise_{kind}"] = read_steps(rt, item["question"], item[f"{kind}_steps"])
        row[f"read_seconds_{kind}"] = time.perf_counter() - start
    return row


def references(row: dict) -> list[Reference]:
    words, program = row["words"]["text"], row["program"]["text"]
    values, answer = run_program(program)
    return [Reference("words", words, frozenset(numbers(words)), answer_value(extract_answer(words) or ""),
                      row["words"]["tokens"]),
            Reference("program", program, frozenset(values.values()), answer, row["program"]["tokens"])]


def first_flags(item: dict, row: dict, rule: Rule, sources: frozenset[str], key: bool = False) -> dict[str, int | None]:
    """The first flagged step of the wrong and of the right solution under a rule, counting only `sources`."""
    refs = references(row)
    found = {}
    for kind in ("student", "reference"):
        evidence = Evidence(item["question"], item[f"{kind}_steps"], refs, row[f"surprise_{kind}"],
                            answer_value(item["answer"]) if key else None)
        result = decide(evidence, rule)
        found[kind] = next((s.index for s in result.steps if s.doubtful and s.evidence in sources), None)
    return found


def old_flags(row: dict) -> dict[str, int | None]:
    return {kind: next((i for i, s in enumerate(row[f"surprise_{kind}"]) if s < OLD_THRESHOLD), None)
            for kind in ("student", "reference")}


def figures(items: list[dict], flags: list[dict]) -> dict:
    wrong = float(np.mean([f["student"] == item["first_error"] for item, f in zip(items, flags)]))
    right = float(np.mean([f["reference"] is None for f in flags]))
    early = float(np.mean([f["student"] is not None and f["student"] < item["first_error"]
                           for item, f in zip(items, flags)]))
    missed = float(np.mean([f["student"] is None for f in flags]))
    return {"n": len(items), "wrong_exact": wrong, "right_clean": right,
            "f1": 2 * wrong * right / (wrong + right) if wrong + right else 0.0,
            "wrong_flagged_early": early, "wrong_unflagged": missed}


def error_kind(reason: str) -> str:
    """The annotator's reason, by the kind its first keyword names."""
    hits = [(m.start(), kind) for kind, pattern in KINDS for m in [re.search(pattern, reason, re.I)] if m]
    return min(hits)[1] if hits else "other"


def cross_validate(items: list[dict], rows: dict, sources: frozenset[str], key: bool = False
                   ) -> tuple[dict, list[dict]]:
    """Out-of-fold flags (each fold judged by the rule with the best F1 on the others) and the rule per fold."""
    table = {rule: [first_flags(item, rows[item["id"]], rule, sources, key) for item in items] for rule in GRID}
    fold_of = [i % FOLDS for i in range(len(items))]
    flags, chosen = [None] * len(items), []
    for fold in range(FOLDS):
        train = [i for i in range(len(items)) if fold_of[i] != fold]
        best = max(GRID, key=lambda rule: (figures([items[i] for i in train], [table[rule][i] for i in train])["f1"],
                                           -GRID.index(rule)))
        chosen.append(asdict(best))
        for i in range(len(items)):
            if fold_of[i] == fold:
                flags[i] = table[best][i]
    everywhere = max(GRID, key=lambda rule: (figures(items, table[rule])["f1"], -GRID.index(rule)))
    return {"out_of_fold": figures(items, flags), "folds": chosen, "fitted_on_all": asdict(everywhere),
            "fitted_on_all_figures": figures(items, table[everywhere])}, flags


def report(items: list[dict], rows: dict) -> dict:
    items = [item for item in items if item["id"] in rows]
    items.sort(key=lambda item: item["id"])   # folds by problem id: stable however the rows were collected
    every = frozenset({"arithmetic", "provenance", "target"})
    cv, flags = cross_validate(items, rows, every)
    keyed, _ = cross_validate(items, rows, every, key=True)
    rule = Rule(**cv["fitted_on_all"])
    ablation = {
        "check before (target surprise < -2.04)": figures(items, [old_flags(rows[i["id"]]) for i in items]),
        "arithmetic": figures(items, [first_flags(i, rows[i["id"]], rule, frozenset({"arithmetic"}))
                                      for i in items]),
        "arithmetic + provenance": figures(items, [first_flags(i, rows[i["id"]], replace(rule, provenance=True),
                                                               frozenset({"arithmetic", "provenance"}))
                                                   for i in items]),
        "target alone (fitted rule)": figures(items, [first_flags(i, rows[i["id"]], rule, frozenset({"target"}))
                                                      for i in items]),
        "all (fitted rule, cross-validated)": cv["out_of_fold"],
        "all, with the answer key (its fitted rule, cross-validated)": keyed["out_of_fold"],
    }
    kinds = {}
    for kind in sorted({error_kind(item["error_reason"]) for item in items}):
        chosen = [n for n, item in enumerate(items) if error_kind(item["error_reason"]) == kind]
        kinds[kind] = {"n": len(chosen), "wrong_exact": float(np.mean(
            [flags[n]["student"] == items[n]["first_error"] for n in chosen]))}
    refs = [references(rows[i["id"]]) for i in items]
    gold = [answer_value(i["answer"]) for i in items]
    target = {how: float(np.mean([r[n].answer is not None and r[n].answer == g for r, g in zip(refs, gold)]))
              for n, how in enumerate(("words", "program"))}
    wrong_answers = [student_answer(i["student_steps"])[1] for i in items]
    sources = {   # where each source of evidence fails, whatever the rule
        "target_right": target,
        "some_target_answer_is_the_right_one": float(np.mean([any(x.answer == g for x in r)
                                                               for r, g in zip(refs, gold)])),
        "some_target_answer_is_the_students_wrong_one": float(np.mean(
            [a is not None and a != g and any(x.answer == a for x in r)
             for r, a, g in zip(refs, wrong_answers, gold)])),
        "wrong_solutions_whose_final_answer_is_right": float(np.mean([a == g for a, g in zip(wrong_answers, gold)])),
        "labelled_step_has_a_false_computation": float(np.mean([any(not c.right for c in computations(
            i["student_steps"][i["first_error"]])) for i in items])),
        "labelled_step_states_no_computation": float(np.mean([not computations(i["student_steps"][i["first_error"]])
                                                              for i in items])),
        "right_solutions_with_a_false_computation": float(np.mean([any(not c.right for s in i["reference_steps"]
                                                                       for c in computations(s)) for i in items])),
    }
    return {"dev_file": "shared/datasets/mr_gsm8k_steps_dev.jsonl", "problems": len(items),
            "wrong_exact": cv["out_of_fold"]["wrong_exact"], "right_clean": cv["out_of_fold"]["right_clean"],
            "f1": cv["out_of_fold"]["f1"], "cross_validated": cv, "with_the_answer_key": keyed,
            "ablation": ablation, "by_error_kind": kinds,
            "evidence_sources": sources}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dev", default=str(DEV), help="the dev file")
    parser.add_argument("--limit", type=int, default=None, help="first N problems only")
    parser.add_argument("--out", default="scripts/results/check-real")
    parser.add_argument("--report-only", action="store_true", help="report on the rows so far, run no model")
    args = parser.parse_args()
    items = [json.loads(line) for line in Path(args.dev).open()][:args.limit]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    rows = {row["id"]: row for row in read_rows(rows_path)}
    todo = [item for item in items if item["id"] not in rows and not args.report_only]
    if todo:
        with Runtime(RuntimeConfig()) as rt, rows_path.open("a") as rows_file:
            for item in tqdm(todo, desc="check study", unit="problem"):
                rows[item["id"]] = collect(rt, item)
                append_row(rows_file, rows[item["id"]])
    summary = {"command": " ".join(sys.argv), "machine": machine(), "date": datetime.now(timezone.utc).isoformat(),
               **report(items, rows)}
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("problems", "wrong_exact", "right_clean", "f1")}, indent=2))
    for name, row in summary["ablation"].items():
        print(f"{name:45s} wrong_exact {row['wrong_exact']:.2f} right_clean {row['right_clean']:.2f} "
              f"f1 {row['f1']:.2f}")


if __name__ == "__main__":
    main()
