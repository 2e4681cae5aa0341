"""Benchmark summary statistics and report files."""

import pytest

from specguard_local import report
from specguard_local.report import summarize, wilson_interval, write_report


def make_row(method, problem_id, correct, wall_s, tokens=100, acceptance_rate=None, target_call_fraction=None):
    return {
        "method": method,
        "problem_id": problem_id,
        "dataset": "gsm8k",
        "correct": correct,
        "answer": "1",
        "gold": "1",
        "wall_s": wall_s,
        "tokens": tokens,
        "acceptance_rate": acceptance_rate,
        "target_call_fraction": target_call_fraction,
    }


ROWS = [
    make_row("target", "p0", True, 4.0),
    make_row("target", "p1", True, 6.0),
    make_row("specguard", "p0", True, 2.0, acceptance_rate=0.8, target_call_fraction=0.25),
    make_row("specguard", "p1", False, 3.0, acceptance_rate=0.6, target_call_fraction=None),
    make_row("specguard", "p2", True, 100.0, acceptance_rate=None, target_call_fraction=0.75),
    make_row("draft", "p0", False, 1.0, tokens=50),
]


def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)


def test_wilson_interval_rejects_empty_sample():
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_summarize():
    summary = {entry["method"]: entry for entry in summarize(ROWS)}
    assert [entry["method"] for entry in summarize(ROWS)] == ["target", "draft", "specguard"]

    specguard = summary["specguard"]
    assert specguard["n"] == 3
    assert specguard["accuracy"] == pytest.approx(2 / 3)
    assert (specguard["ci_lo"], specguard["ci_hi"]) == wilson_interval(2, 3)
    assert specguard["mean_latency_s"] == pytest.approx(35.0)
    assert specguard["median_latency_s"] == pytest.approx(3.0)
    assert specguard["tokens_per_s"] == pytest.approx(300 / 105)
    # Over p0 and p1 only: target 10 s, specguard 5 s.
    assert specguard["speedup_vs_target"] == pytest.approx(2.0)
    assert specguard["mean_acceptance_rate"] == pytest.approx(0.7)
    assert specguard["mean_target_call_fraction"] == pytest.approx(0.5)

    assert summary["target"]["speedup_vs_target"] == pytest.approx(1.0)
    assert summary["draft"]["speedup_vs_target"] == pytest.approx(4.0)
    assert summary["draft"]["mean_acceptance_rate"] is None


def test_summarize_without_target_and_with_repeats():
    rows = [make_row("sd", "p0", False, 9.0), make_row("sd", "p0", True, 1.0)]
    (entry,) = summarize(rows)
    assert entry["n"] == 1 and entry["accuracy"] == 1.0
    assert entry["speedup_vs_target"] is None


def test_write_report(tmp_path):
    meta = {"command": "specguard-local bench --limit 3", "machine": "test box", "date": "2025-01-01"}
    markdown_path, plot_path = write_report(ROWS, tmp_path / "out", "GSM8K smoke", meta)
    assert markdown_path == tmp_path / "out" / "report.md"
    assert plot_path == tmp_path / "out" / "accuracy_latency.png"
    assert plot_path.read_bytes().startswith(b"\x89PNG")
    markdown = markdown_path.read_text(encoding="utf-8")
    assert markdown.startswith("# GSM8K smoke\n")
    for text in ("target", "draft", "specguard", "specguard-local bench --limit 3", "test box", "2.00x", "gsm8k"):
        assert text in markdown
    assert "paper reference" in markdown and "+3.6%" in markdown  # the shipped, clearly labelled reference


def test_paper_reference_rows_are_rendered(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "PAPER_REFERENCE", ({"dataset": "gsm8k", "method": "specguard", "accuracy": 0.5},))
    markdown_path, _ = write_report(ROWS, tmp_path, "with reference", {})
    markdown = markdown_path.read_text(encoding="utf-8")
    assert "paper reference" in markdown
    assert "| gsm8k | specguard | 0.500 |" in markdown


def test_pareto_front_keeps_only_undominated_points():
    points = [(1.0, 0.5), (1.2, 0.5), (0.9, 0.6), (1.1, 0.4), (1.2, 0.45)]
    assert report.pareto_front(points) == [1, 2]


def test_a_sweep_report_draws_its_pareto_plot(tmp_path):
    rows = ROWS + [make_row("specguard:tau=0.5", "p0", True, 1.5), make_row("specguard:tau=0.5", "p1", True, 5.0)]
    write_report(rows, tmp_path, "sweep", {})
    assert (tmp_path / "pareto.png").read_bytes().startswith(b"\x89PNG")
    write_report(ROWS, tmp_path / "plain", "no sweep", {})
    assert not (tmp_path / "plain" / "pareto.png").exists()


def test_the_report_says_where_the_time_goes_and_what_a_draft_token_costs(tmp_path):
    rows = [{**make_row("target", "p0", True, 10.0, tokens=100), "timings": {"target": 9.0}},
            {**make_row("draft", "p0", False, 4.0, tokens=100), "timings": {"draft": 4.0}},
            {**make_row("specguard", "p0", True, 8.0), "timings": {"draft": 2.0, "target_prefill": 1.0,
                                                                   "target": 4.0}},
            {**make_row("specguard", "p1", True, 12.0), "timings": {"draft": 3.0, "draft_sync": 1.0,
                                                                    "target": 7.0, "score": 0.5}}]
    split = {entry["method"]: entry["time_split"] for entry in summarize(rows)}
    assert split["specguard"] == pytest.approx({"draft": 0.25, "target_prefill": 0.05, "target": 0.55,
                                                "draft_sync": 0.05, "score": 0.025, "other": 0.075})
    assert split["target"] == pytest.approx({"target": 0.9, "other": 0.1})
    assert report.cost_ratio(summarize(rows)) == pytest.approx(0.4)  # 10 vs 25 tokens/s
    markdown = write_report(rows, tmp_path, "split", {})[0].read_text(encoding="utf-8")
    assert "Where the time goes" in markdown and "**0.40**" in markdown
    assert "| method | draft | score | target prefill | target | draft sync | other |" in markdown
    assert "| specguard | 25% | 2% | 5% | 55% | 5% | 7% |" in markdown
    assert summarize(ROWS)[0]["time_split"] == {}  # rows without timings: no split, no table
    assert "Where the time goes" not in write_report(ROWS, tmp_path / "plain", "plain", {})[0].read_text()


def test_the_salvage_split_counts_who_wrote_the_tokens():
    from specguard_local.report import salvage_split

    rows = [{"kept": {"drafted": 12, "kept_whole": 6, "salvaged": 3, "corrections": 1, "bonus": 0, "passes": 2}},
            {"kept": {"drafted": 8, "kept_whole": 0, "salvaged": 7, "corrections": 1, "bonus": 2, "passes": 3}},
            {"kept": None}]
    split = salvage_split(rows)
    assert split == {"kept_whole": 6 / 20, "salvaged": 10 / 20, "own": 4 / 20, "drafted_kept": 16 / 20,
                     "per_pass": 16 / 5}
    assert salvage_split([{"kept": None}]) is None
