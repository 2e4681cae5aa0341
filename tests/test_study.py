"""The step-signal study, the hidden-state probe and risk-calibrated thresholds.

Probe training and threshold choice on synthetic labelled data; `study` end to end on two problems with the tiny
test models (real llama.cpp); probe files checked like profiles.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from tiny_gguf import write_tiny_model

from specguard_local.errors import SpecGuardError
from specguard_local.study import math_content
from specguard_local.verify import probe as probes
from specguard_local.verify.calibration import risk_threshold


def synthetic(seed=0, problems=12, steps=8, dims=6):
    """Steps of `problems` problems; harmful when the first feature is high (plus noise)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(problems * steps, dims))
    y = (x[:, 0] + 0.5 * rng.normal(size=len(x)) > 1.0).astype(int)
    groups = np.repeat([f"p{i}" for i in range(problems)], steps)
    return x, y, groups


def test_grouped_folds_never_split_a_problem():
    _, _, groups = synthetic()
    folds = probes.grouped_folds(groups, 5)
    assert len(folds) == 5
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
    assert sorted(np.concatenate([test for _, test in folds])) == list(range(len(groups)))


def test_probe_training_is_reproducible_and_learns_the_signal(tmp_path):
    x, y, groups = synthetic()
    a = probes.train(x, y, groups, "draft", seed=3)
    b = probes.train(x, y, groups, "draft", seed=3)
    assert a == b
    assert a.training["cv_auroc_harmful"] > 0.8 and a.training["problems"] == 12
    assert np.argmax(np.abs(a.coef)) == 0  # the informative feature
    path = tmp_path / "probe.json"
    a.save(path)
    loaded = probes.Probe.load(path)
    assert loaded == a
    assert loaded.harm(np.array([3.0, 0, 0, 0, 0, 0])) > 0.5 > loaded.harm(np.array([-3.0, 0, 0, 0, 0, 0]))


def test_out_of_fold_scores_come_from_probes_that_never_saw_the_problem():
    x, y, groups = synthetic()
    scores = probes.cross_validated(x, y, groups, seed=0)
    assert scores.shape == y.shape and not np.isnan(scores).any()
    shuffled = probes.cross_validated(x, np.random.default_rng(1).permutation(y), groups, seed=0)
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(y, scores) > roc_auc_score(y, shuffled)


def test_probe_training_needs_both_labels():
    x, _, groups = synthetic()
    with pytest.raises(SpecGuardError, match="same label"):
        probes.train(x, np.zeros(len(x), int), groups, "draft")


@pytest.mark.parametrize("content, message", [("not json", "bad probe file"),
                                              ('{"format": "other"}', "bad probe file"),
                                              ('{"format": "specguard-local probe", "features": "draft"}',
                                               "bad probe file")])
def test_bad_probe_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "probe.json"
    path.write_text(content)
    with pytest.raises(SpecGuardError, match=message):
        probes.Probe.load(path)


def test_foreign_or_misshapen_probe_is_refused(tmp_path):
    path = tmp_path / "probe.json"
    probes.Probe("draft", [0.0] * 4, [1.0] * 4, [0.0] * 4, 0.0, draft="a", target="b").save(path)
    with pytest.raises(SpecGuardError, match="is for a → b"):
        probes.Probe.load(path, "x", "y")
    with pytest.raises(SpecGuardError, match="expects 4 features"):
        probes.Probe.load(path, "a", "b", {"draft": 8, "target": 16})


def test_risk_threshold_keeps_flips_within_the_bound():
    safe = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    harmful = np.array([False, False, True, False, True, False])
    groups = np.array(["a", "b", "c", "d", "e", "f"])
    assert risk_threshold(safe, harmful, groups, 100, 0.0)["tau"] == 0.8  # above the best-scored harmful step
    loose = risk_threshold(safe, harmful, groups, 100, 0.01)  # one problem in 100 may flip
    assert loose["tau"] == 0.6 and loose["flipped_problems"] == 1 and loose["accepted"] == pytest.approx(4 / 6)
    none = risk_threshold(np.array([0.5]), np.array([True]), np.array(["a"]), 10, 0.0)
    assert none["tau"] > 0.5 and none["accepted"] == 0.0


def test_math_content_normalises_numbers_and_operators():
    assert math_content("So 1,200 \\times 3 = 3600.") == math_content("so 1200*3=3600")
    assert math_content("48 / 2 = 24") != math_content("48 / 2 = 25")
    assert math_content("2.50 + 1.0") == ["2.5", "+", "1"]


def test_study_on_tiny_models_writes_rows_and_report(tmp_path):
    """Two problems, real llama.cpp on the tiny random pair: labelled steps, a report, resumable."""
    target = write_tiny_model(tmp_path / "target.gguf", seed=0)
    draft = write_tiny_model(tmp_path / "draft.gguf", seed=1)
    data = tmp_path / "two.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n"
                            for q, a in (("What is 1 + 2?", "3"), ("What is 2 + 2?", "4"))))
    out = tmp_path / "study"
    args = [sys.executable, "-m", "specguard_local.cli", "study", "--dataset", str(data), "--offset", "0",
            "--limit", "2", "--max-tokens", "24", "--max-step-tokens", "8", "--n-ctx", "256", "--draft", str(draft),
            "--target", str(target), "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [row["problem_id"] for row in rows] == ["two-0", "two-1"]
    for row in rows:
        assert row["n_boundaries"] == len(row["steps"]) >= 3  # 24 tokens in steps of at most 8
        for step in row["steps"]:
            assert step["label"] in ("harmful", "rescue", "neutral")
            assert 0.0 <= step["judge"] <= 1.0 and step["n_tokens"] >= 1
            assert probes.decode_vector(step["draft_hidden"]).shape == (64,)
            assert probes.decode_vector(step["target_hidden"]).shape == (64,)
    report = (out / "report.md").read_text()
    assert "AUROC harmful" in report and (out / "acceptance.png").stat().st_size > 0
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)  # resumes: nothing left to do
    assert again.returncode == 0 and len((out / "steps.jsonl").read_text().splitlines()) == 2
    other = subprocess.run(args[:-2] + ["--max-tokens", "32", "--out", str(out)], capture_output=True, text=True)
    assert other.returncode == 2 and "other options" in other.stderr
    # a random pair never answers right, so there is no harmful step to train a probe on: one clear line
    probe = subprocess.run(args + ["--train-probe"], capture_output=True, text=True, timeout=600)
    assert probe.returncode == 2 and probe.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "no harmful step" in probe.stderr


def synthetic_study(seed=0, problems=20, steps=6):
    """Study rows in the shape `study` writes: the judge separates harmful steps, the draft signals do not."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(problems):
        items = []
        for i in range(steps):
            harmful = p % 2 == 0 and i == 2
            hidden = rng.normal(size=4) + (2.0 if harmful else 0.0)
            items.append({"step": i, "sampled": False, "label": "harmful" if harmful else "neutral",
                          "identical": False, "says_same": not harmful, "n_tokens": 10,
                          "logprob_min": float(rng.uniform(-3, 0)), "grounding_min": float(rng.uniform(0.9, 1)),
                          "judge": float(rng.uniform(0.1, 0.5) if harmful else rng.uniform(0.4, 1.0)),
                          "draft_hidden": probes.encode_vector(hidden), "target_hidden": probes.encode_vector(hidden)})
        rows.append({"problem_id": f"p{p}", "target_correct": p % 2 == 0, "target_s_per_token": 0.05,
                     "steps": items})
    return rows


def test_thresholds_from_a_study_bound_the_flips_and_pick_the_best_verifier():
    from specguard_local.verify.calibration import bounds_from_study, thresholds_from_study
    from specguard_local.verify.signals import Profile

    rows = synthetic_study()
    steps = [step for row in rows for step in row["steps"]]
    profile = Profile(**bounds_from_study(steps, 5, 95), draft="a", target="b")
    taus, best, figures = thresholds_from_study(rows, profile, max_harm=0.0)
    assert set(taus) == {"signals", "target-judge"} and figures["harmful"] == 10
    assert all(f["flipped_problems"] == 0 for f in figures["verifiers"].values())
    assert best == "target-judge"  # it separates the harmful steps, so it can accept more within the bound
    assert figures["verifiers"]["target-judge"]["accepted"] > figures["verifiers"]["signals"]["accepted"]
    x, y, groups = probes.study_arrays(rows, "draft")
    probe = probes.train(x, y, groups, "draft", seed=0)
    taus, _, figures = thresholds_from_study(rows, profile, max_harm=0.0, probe=probe)
    assert "probe" in taus and figures["verifiers"]["probe"]["flipped_problems"] == 0
