"""`bench` on the tiny random model with real llama.cpp: rows, report, resuming after a rerun, a cut line or a kill."""

import json
import signal
import subprocess
import sys
import time

import pytest

from specguard_local.bench import run_bench
from specguard_local.datasets import load_problems
from specguard_local.decoders.options import Options
from specguard_local.errors import SpecGuardError
from specguard_local.runtime import Runtime, RuntimeConfig

METHODS = ["target", "draft"]
OPTS = Options(max_tokens=16)


@pytest.fixture(scope="module")
def tiny_runtime(tiny_path):
    with Runtime(RuntimeConfig(draft=str(tiny_path), target=str(tiny_path), n_ctx=512)) as rt:
        yield rt


@pytest.fixture
def problems_file(tmp_path):
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                            for i in range(6)))
    return path


def bench(rt, problems_file, out_dir, limit):
    problems = load_problems(str(problems_file), limit=limit)
    return run_bench(rt, problems, METHODS, out_dir, OPTS, {"dataset": "sums"}, progress=False)


def read_rows(out_dir):
    return [json.loads(line) for line in (out_dir / "rows.jsonl").read_text().splitlines()]


def done_pairs(rows):
    pairs = [(row["method"], row["problem_id"]) for row in rows]
    assert len(pairs) == len(set(pairs)), "duplicate rows"
    return set(pairs)


def test_bench_writes_rows_meta_and_report(tiny_runtime, problems_file, tmp_path):
    out = tmp_path / "run"
    rows_path = bench(tiny_runtime, problems_file, out, limit=2)
    rows = read_rows(out)
    assert rows_path == out / "rows.jsonl"
    assert [row["method"] for row in rows] == ["target", "draft", "target", "draft"]  # interleaved per problem
    assert set(rows[0]) == {"method", "dataset", "problem_id", "question", "gold", "answer", "correct", "wall_s",
                            "tokens", "tokens_per_s", "steps", "acceptance_rate", "target_call_fraction",
                            "draft_len_mean", "accepted_len_mean", "timings", "control", "kept", "seed"}
    assert rows[0]["dataset"] == "sums" and rows[0]["gold"] == "1" and 0 < rows[0]["tokens"] <= 16
    report = (out / "report.md").read_text()
    assert "| target |" in report and "| draft |" in report
    assert (out / "accuracy_latency.png").stat().st_size > 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dataset"] == "sums" and meta["options"]["max_tokens"] == 16
    assert meta["machine"]["cores"] and meta["models"]["draft"].endswith("tiny.gguf")


def test_rerun_with_a_larger_limit_adds_only_the_new_problems(tiny_runtime, problems_file, tmp_path):
    out = tmp_path / "run"
    bench(tiny_runtime, problems_file, out, limit=1)
    first = (out / "rows.jsonl").read_text()
    started = json.loads((out / "meta.json").read_text())["date"]
    bench(tiny_runtime, problems_file, out, limit=2)
    assert (out / "rows.jsonl").read_text().startswith(first)
    assert done_pairs(read_rows(out)) == {(m, f"sums-{i}") for m in METHODS for i in range(2)}
    meta = json.loads((out / "meta.json").read_text())  # where it was resumed stays on record
    assert meta["date"] == started and [r["rows_before"] for r in meta["resumed"]] == [len(METHODS)]
    assert meta["code"] == meta["resumed"][0]["code"] != "unknown"  # the commit each part ran on (this checkout's)


def test_a_cut_last_line_is_repaired_and_redone(tiny_runtime, problems_file, tmp_path):
    out = tmp_path / "run"
    bench(tiny_runtime, problems_file, out, limit=2)
    rows_path = out / "rows.jsonl"
    rows_path.write_bytes(rows_path.read_bytes()[:-25])
    bench(tiny_runtime, problems_file, out, limit=2)
    assert len(read_rows(out)) == 4 and len(done_pairs(read_rows(out))) == 4


def test_resuming_with_other_options_is_refused(tiny_runtime, problems_file, tmp_path):
    out = tmp_path / "run"
    bench(tiny_runtime, problems_file, out, limit=1)
    problems = load_problems(str(problems_file), limit=2)
    with pytest.raises(SpecGuardError, match="other options"):
        run_bench(tiny_runtime, problems, METHODS, out, Options(max_tokens=8), {"dataset": "sums"}, progress=False)


def test_a_run_from_before_an_option_existed_resumes_with_that_option_at_its_default(tiny_runtime, problems_file,
                                                                                      tmp_path):
    out = tmp_path / "run"
    bench(tiny_runtime, problems_file, out, limit=1)
    meta = json.loads((out / "meta.json").read_text())
    del meta["options"]["draft_fixed"]  # as written by a version without it
    (out / "meta.json").write_text(json.dumps(meta))
    bench(tiny_runtime, problems_file, out, limit=2)
    assert len(read_rows(out)) == 2 * len(METHODS)
    (out / "meta.json").write_text(json.dumps(meta))
    problems = load_problems(str(problems_file), limit=2)
    with pytest.raises(SpecGuardError, match="draft_fixed: False vs now True"):
        run_bench(tiny_runtime, problems, METHODS, out, Options(max_tokens=16, draft_fixed=True), {"dataset": "sums"},
                  progress=False)


def cli_args(tiny_path, problems_file, out, *extra):
    return [sys.executable, "-m", "specguard_local.cli", "bench", "--dataset", str(problems_file), "--out", str(out),
            "--methods", ",".join(METHODS), "--max-tokens", "16", "--n-ctx", "512", "--draft", str(tiny_path),
            "--target", str(tiny_path), *extra]


def test_killed_cli_run_resumes_to_exactly_one_row_per_pair(tiny_path, problems_file, tmp_path):
    out = tmp_path / "run"
    args = cli_args(tiny_path, problems_file, out, "--limit", "6", "--max-tokens", "64")
    running = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows_path = out / "rows.jsonl"
    deadline = time.monotonic() + 120
    while not (rows_path.exists() and rows_path.read_bytes().count(b"\n") >= 1) and time.monotonic() < deadline:
        time.sleep(0.02)
    running.send_signal(signal.SIGKILL)
    running.wait()
    assert rows_path.read_bytes().count(b"\n") < 12, "the run ended before the kill"
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"report: {out / 'report.md'}" in done.stdout and "| draft |" in done.stdout
    assert done_pairs(read_rows(out)) == {(m, f"sums-{i}") for m in METHODS for i in range(6)}
    assert len(read_rows(out)) == 12


def test_bad_methods_is_one_clean_error(tiny_path, problems_file, tmp_path):
    args = cli_args(tiny_path, problems_file, tmp_path / "run", "--methods", "target,bogus")
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'bogus'" in lines[0] and "specguard" in lines[0]
    assert not (tmp_path / "run").exists()


def test_method_variants_carry_typed_option_overrides():
    from specguard_local.bench import method_variant, parse_methods

    assert method_variant("specguard:verifier=signals+target-judge:tau=0.6:k=2") == \
        ("specguard", {"verifier": "signals+target-judge", "tau": 0.6, "k": 2})
    assert method_variant("sd:draft_fixed=true") == ("sd", {"draft_fixed": True})
    assert parse_methods("target, specguard:tau=0.5,target") == ["target", "specguard:tau=0.5"]
    for spec, message in (("specguard:nope=1", "bad option"), ("specguard:tau=", "bad option"),
                          ("magic:tau=1", "unknown method")):
        with pytest.raises(SpecGuardError, match=message):
            parse_methods(spec)


def test_variants_run_interleaved_as_their_own_rows(tiny_runtime, problems_file, tmp_path):
    problems = load_problems(str(problems_file), limit=2)
    methods = ["target", "target:max_step_tokens=4"]
    run_bench(tiny_runtime, problems, methods, tmp_path, OPTS, {"dataset": "sums"}, progress=False)
    rows = read_rows(tmp_path)
    assert [row["method"] for row in rows] == methods * 2
    short = [row for row in rows if row["method"] == methods[1]]
    assert all(row["steps"] >= 4 for row in short)  # 16 tokens in steps of at most 4
    assert "target:max_step_tokens=4" in (tmp_path / "report.md").read_text()


def test_a_grid_is_every_combination_of_its_values():
    from specguard_local.bench import grid_methods

    assert grid_methods(("tau=0.5,0.7", "k=1,4")) == ["specguard:tau=0.5:k=1", "specguard:tau=0.5:k=4",
                                                      "specguard:tau=0.7:k=1", "specguard:tau=0.7:k=4"]
    assert grid_methods(()) == []
    for axis, message in (("tau", "bad --grid"), ("tau=", "bad --grid"), ("magic=1,2", "bad option")):
        with pytest.raises(SpecGuardError, match=message):
            grid_methods((axis,))
