"""Benchmark runner: methods interleaved per problem on one loaded pair, one resumable JSON line per solve,
then report.md and the accuracy-latency plot."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

from tqdm import tqdm

from .api import stream, summarize
from .datasets import Problem
from .decoders import METHODS
from .decoders.options import SCHEMA, Options, parse_text
from .errors import SpecGuardError
from .grading import is_correct
from .report import write_report
from .runtime import Runtime

ROWS_FILE = "rows.jsonl"
META_FILE = "meta.json"
WARMUP_QUESTION = "What is 2 + 3?"
WARMUP_MAX_TOKENS = 32
STAT_KEYS = ("wall_s", "tokens", "tokens_per_s", "steps", "acceptance_rate", "target_call_fraction", "draft_len_mean",
             "accepted_len_mean", "timings", "control", "kept")
# A run may only be resumed with these unchanged, or its rows would mix settings.
RESUME_KEYS = ("dataset", "models", "options")
# What the meta keeps from a run's first start; each resumption lists its own (it may run newer code, fewer methods).
FIRST_START = ("date", "machine", "code", "methods")


def parse_methods(spec: str) -> list[str]:
    """Methods from a comma list ("target,draft,specguard:verifier=target-judge"), in order, without repeats. A
    method may carry option overrides after ':' (`name:field=value:field=value`, fields of `Options`), so variants
    of one method run interleaved in one bench; unknown names or fields are an error."""
    names = list(dict.fromkeys(name.strip() for name in spec.split(",") if name.strip()))
    if not names:
        raise SpecGuardError(f"no method given in --methods; choose from {', '.join(METHODS)}")
    for name in names:
        method_variant(name)
    return names


def grid_methods(grid: tuple[str, ...], method: str = "specguard") -> list[str]:
    """Variants of `method` for every combination of the grid's values: ("tau=0.5,0.7", "k=1,4") gives
    specguard:tau=0.5:k=1, specguard:tau=0.5:k=4, specguard:tau=0.7:k=1, specguard:tau=0.7:k=4."""
    variants = [method]
    for axis in grid:
        key, _, values = axis.partition("=")
        choices = [value.strip() for value in values.split(",") if value.strip()]
        if not key or not choices:
            raise SpecGuardError(f"bad --grid {axis!r}; write field=value,value (e.g. tau=0.5,0.7)")
        variants = [f"{variant}:{key.strip()}={value}" for variant in variants for value in choices]
    for variant in variants:
        method_variant(variant)
    return variants if grid else []


def method_variant(spec: str) -> tuple[str, dict]:
    """("specguard", {"verifier": "probe", "tau": 0.5}) from "specguard:verifier=probe:tau=0.5"."""
    name, *assignments = spec.split(":")
    if name not in METHODS:
        raise SpecGuardError(f"unknown method {name!r} in --methods; choose from {', '.join(METHODS)}")
    overrides = {}
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        if key not in SCHEMA or not value:
            raise SpecGuardError(f"bad option {assignment!r} in method {spec!r}; write field=value with a field of "
                                 f"{', '.join(SCHEMA)}")
        try:
            overrides[key] = parse_text(key, value)
        except SpecGuardError as exc:
            raise SpecGuardError(f"bad option {assignment!r} in method {spec!r}: {exc}") from None
    return name, overrides


def run_bench(rt: Runtime, problems: list[Problem], methods: list[str], out_dir: Path, opts: Options, meta: dict,
              progress: bool = True) -> Path:
    """Solve every problem with every method (interleaved per problem), appending one row per solve to
    out_dir/rows.jsonl and skipping the pairs already there; write meta.json, report.md and the plot.
    `meta["dataset"]` is stored in each row. Returns the rows path."""
    rows_path, rows, meta = open_run(rt, Path(out_dir) / ROWS_FILE, opts, meta)
    done = {(row["method"], row["problem_id"]) for row in rows}
    todo = [(problem, method) for problem in problems for method in methods if (method, problem.id) not in done]
    try:
        if todo:
            warm_up(rt, list(dict.fromkeys(method for _, method in todo)), opts)
        with rows_path.open("a", encoding="utf-8") as rows_file, \
                tqdm(total=len(todo), desc="bench", unit="solve", disable=not progress) as bar:
            for problem, method in todo:
                row = solve_row(rt, problem, method, opts, meta.get("dataset"))
                append_row(rows_file, row)
                rows.append(row)
                bar.set_postfix(running_accuracy(rows, methods), refresh=False)
                bar.update()
    finally:
        if rows:
            write_report(rows, out_dir, f"specguard-local bench: {meta.get('dataset')}", readable(meta))
    return rows_path


def open_run(rt: Runtime, rows_path: Path, opts, meta: dict) -> tuple[Path, list[dict], dict]:
    """Start or resume a run whose rows go to `rows_path`: (rows_path, the rows already there, the run's meta).
    A run with rows may only go on with the same dataset, models and options (`opts`, any options dataclass); its
    meta keeps the first start's `FIRST_START` fields and lists every resumption with its own and the rows already
    there."""
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    rows = read_rows(rows_path)
    meta = run_meta(rt, opts, meta)
    meta_path = rows_path.parent / META_FILE
    if rows:
        stored = check_same_setup(meta_path, meta, type(opts))
        resumed = {key: meta[key] for key in FIRST_START if key in meta} | {"rows_before": len(rows)}
        first = {key: stored[key] for key in FIRST_START if key in stored}
        meta = {**meta, "code": "unknown", **first,  # "unknown": a run begun before the code was recorded
                "resumed": [*stored.get("resumed", []), resumed]}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return rows_path, rows, meta


def read_rows(path: Path) -> list[dict]:
    """The rows already in `path`; a partial last line (left by a killed run) is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        os.truncate(path, len(complete))
    rows = []
    for line_no, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise SpecGuardError(f"{path}:{line_no}: bad JSON ({error.msg}); delete that line to resume") from None
    return rows


def run_meta(rt: Runtime, opts: Options, meta: dict) -> dict:
    """What describes this run (command, machine, code, date, models, options), merged with `meta`, as plain JSON."""
    described = {"command": shlex.join(sys.argv), "machine": machine(), "code": code_version(),
                 "date": datetime.now().astimezone().isoformat(timespec="seconds"),
                 "models": {role: str(path) for role, path in rt.paths.items()}, "options": asdict(opts), **meta}
    return json.loads(json.dumps(described, default=str))


def machine() -> dict:
    """Platform, CPU model and core count: timings mean nothing without them."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu_names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return {"platform": platform.platform(), "cpu": cpu_names[0] if cpu_names else platform.processor() or "unknown",
            "cores": os.cpu_count()}


def code_version() -> str:
    """The commit of the package's own checkout ("+changes" when tracked files differ from it), or "unknown" for an
    installed package: a run resumed across sessions may run on newer code, and its meta says so."""
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / ".git").exists():
        return "unknown"
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        changed = bool(git("status", "--porcelain", "--untracked-files=no"))
        return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+changes" if changed else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_same_setup(meta_path: Path, meta: dict, options_type=Options) -> dict:
    """Refuse to resume a run whose dataset, models or options differ from this one's (an option added to
    `options_type` after the run began counts as its default there); return the stored meta."""
    stored = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    if "options" in stored:
        stored["options"] = {**json.loads(json.dumps(asdict(options_type()))), **stored["options"]}
    for key in RESUME_KEYS:
        if key in stored and stored[key] != meta.get(key):
            raise SpecGuardError(f"{meta_path.parent} holds a run with other {key} "
                                 f"({differences(stored[key], meta.get(key))}); resume it with the same settings "
                                 f"or use another --out")
    return stored


def differences(old, new) -> str:
    """'field: old vs now new' for each field that changed (or the two whole values when not dicts)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return f"{old} vs now {new}"
    changed = [key for key in dict.fromkeys([*old, *new]) if old.get(key) != new.get(key)]
    return ", ".join(f"{key}: {old.get(key)} vs now {new.get(key)}" for key in changed)


def warm_up(rt: Runtime, methods: list[str], opts: Options) -> None:
    """One short untimed solve per method, so model loading and context creation stay out of the timings."""
    warm_opts = replace(opts, max_tokens=min(opts.max_tokens, WARMUP_MAX_TOKENS))
    for method in methods:
        name, overrides = method_variant(method)
        list(stream(rt, WARMUP_QUESTION, name, replace(warm_opts, **overrides)))


def solve_row(rt: Runtime, problem: Problem, method: str, opts: Options, dataset: str | None) -> dict:
    """Solve one problem with one method, timed, and grade it: one row of rows.jsonl."""
    name, overrides = method_variant(method)
    start = time.perf_counter()
    steps = list(stream(rt, problem.question, name, replace(opts, **overrides)))
    result = summarize(name, problem.question, steps, time.perf_counter() - start)
    return {"method": method, "dataset": dataset, "problem_id": problem.id, "question": problem.question,
            "gold": problem.gold, "answer": result.answer, "correct": is_correct(result.answer, problem.gold),
            **{key: result.stats[key] for key in STAT_KEYS}, "seed": opts.seed}


def append_row(rows_file, row: dict) -> None:
    """Write one row and force it to disk, so a kill loses at most the solve in progress."""
    rows_file.write(json.dumps(row) + "\n")
    rows_file.flush()
    os.fsync(rows_file.fileno())


def running_accuracy(rows: list[dict], methods: list[str]) -> dict[str, str]:
    """Accuracy so far of each method that has rows, for the progress bar."""
    accuracy = {}
    for method in methods:
        graded = [bool(row["correct"]) for row in rows if row["method"] == method]
        if graded:
            accuracy[method] = f"{sum(graded) / len(graded):.0%}"
    return accuracy


def readable(meta: dict) -> dict:
    """`meta` with nested dicts and lists flattened into one line each, for the report's bullet list."""
    return {key: ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict)
            else ", ".join(map(str, value)) if isinstance(value, list) else value
            for key, value in meta.items()}
