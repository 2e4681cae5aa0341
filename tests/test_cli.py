"""`specguard-local` end to end, as a user runs it: real models, real processes, real exit codes."""

import json
import subprocess
import sys

import pytest

from conftest import NATALIA
from tiny_gguf import write_tiny_model

pytestmark = pytest.mark.real


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "specguard_local.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_target_solves_natalia():
    done = cli("solve", "--method", "target", "--max-tokens", "400", NATALIA)
    assert done.returncode == 0, done.stderr
    assert "[1 target]" in done.stdout and "Answer: 72" in done.stdout
    assert "tok/s" in done.stderr


@pytest.mark.parametrize("method", ["draft", "specguard", "sd", "trispec", "rsd"])
def test_each_method_runs_with_json_and_trace(method, tmp_path):
    trace = tmp_path / "trace.jsonl"
    done = cli("solve", "--method", method, "--max-tokens", "120", "--json", "--trace", str(trace),
               "What is 7 times 6?")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["method"] == method and result["steps"] and result["stats"]["tokens"] > 0
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert len(lines) == len(result["steps"])
    if method == "specguard":
        assert {"r", "logprob_min", "grounding_min"} <= set(lines[0]["scores"])
        assert lines[0]["candidates"] and lines[0]["verdict"] in ("accepted", "rejected")


def assert_clean_error(done, *needles):
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0]


def test_sd_reports_its_draft_lengths_fixed_or_chosen():
    fixed = json.loads(cli("solve", "--method", "sd", "--draft-fixed", "--max-tokens", "60", "--json",
                           "What is 7 times 6?").stdout)["stats"]
    adaptive = json.loads(cli("solve", "--method", "sd", "--max-tokens", "60", "--json",
                              "What is 7 times 6?").stdout)["stats"]
    assert fixed["draft_len_mean"] > 3 and fixed["accepted_len_mean"] > 0  # --draft-max 4 nearly every round
    assert adaptive["draft_len_mean"] < fixed["draft_len_mean"]           # the cost model starts plain and probes


def test_missing_model(tmp_path):
    assert_clean_error(cli("solve", "--draft", str(tmp_path / "nope.gguf"), "hi"), "nope.gguf")


def test_corrupt_and_truncated_models(tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf at all" * 100)
    assert_clean_error(cli("solve", "--draft", str(garbage), "hi"), "garbage.gguf")
    truncated = tmp_path / "truncated.gguf"
    whole = write_tiny_model(tmp_path / "whole.gguf").read_bytes()
    truncated.write_bytes(whole[: len(whole) - 1000])
    assert_clean_error(cli("solve", "--draft", str(truncated), "hi"), "truncated.gguf")


def test_vocabulary_mismatch_names_both_models(tmp_path):
    a = write_tiny_model(tmp_path / "a.gguf", vocab_variant=0)
    b = write_tiny_model(tmp_path / "b.gguf", vocab_variant=1)
    assert_clean_error(cli("solve", "--draft", str(a), "--target", str(b), "hi"), "a.gguf", "b.gguf")


def test_rollout_depth_outside_the_drafts_layers():
    assert_clean_error(cli("solve", "--layers", "2", "hi"), "--layers", "not 2")
    assert_clean_error(cli("solve", "--layers", "99", "hi"), "--layers", "not 99")


def test_empty_question():
    assert_clean_error(cli("solve", "   "), "empty")


def test_question_longer_than_the_context():
    assert_clean_error(cli("solve", "--n-ctx", "256", "Add these numbers: " + " + ".join(["12"] * 400)),
                       "context")


def test_an_answer_cut_by_the_context_says_so():
    done = cli("solve", "--method", "target", "--n-ctx", "128", NATALIA)  # the prompt alone is about 100 tokens
    assert done.returncode == 0, done.stderr
    assert "context is full" in done.stderr and "--n-ctx" in done.stderr


def test_models_list_and_path():
    listed = cli("models", "list", "--json")
    assert listed.returncode == 0
    names = {row["name"] for row in json.loads(listed.stdout)}
    assert {"qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"} <= names
    path = cli("models", "path", "qwen2.5-coder-0.5b")
    assert path.returncode == 0 and path.stdout.strip().endswith(".gguf")
    assert_clean_error(cli("models", "path", "no-such-model"), "no-such-model")


def test_calibrate_writes_a_profile_solve_accepts(tmp_path):
    from specguard_local.verify.signals import Profile

    out = tmp_path / "profile.json"
    done = cli("calibrate", "--limit", "2", "--max-tokens", "96", "--out", str(out))
    assert done.returncode == 0, done.stderr
    profile = Profile.load(out)
    assert profile.logprob_lo < profile.logprob_hi and profile.grounding_lo < profile.grounding_hi
    assert (profile.draft, profile.target) == ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
    solved = cli("solve", "--profile", str(out), "--max-tokens", "32", "--json", "What is 2 + 2?")
    assert solved.returncode == 0, solved.stderr


def test_profile_for_another_pair_is_refused(tmp_path):
    from specguard_local.verify.signals import Profile

    out = tmp_path / "other.json"
    Profile(logprob_lo=-2, logprob_hi=0, grounding_lo=0.9, grounding_hi=1.0, draft="x", target="y").save(out)
    assert_clean_error(cli("solve", "--profile", str(out), "hi"), "calibration profile")


def test_one_sigint_stops_a_default_solve_mid_draft():
    """Ctrl-C while SpecGuard drafts (inside llama.cpp, attention callback running) ends the run: exit 130, one
    line, no traceback and no ignored exception from a ctypes callback."""
    import os
    import signal
    import time

    process = subprocess.Popen([sys.executable, "-m", "specguard_local.cli", "solve", NATALIA],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    first_step = process.stdout.readline()  # the first step is out: the draft is writing the second
    assert first_step.startswith("[1 ")
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=5)
    finally:
        process.kill()
    assert process.returncode == 130
    assert stderr.strip() == "interrupted"
