"""Benchmark report: per-method accuracy/latency summary, a Markdown table and an accuracy-latency plot."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

METHOD_ORDER = ("target", "draft", "sd", "specguard", "trispec", "rsd")

# Published reference from the SpecGuard paper (Qwen2.5-Math 1.5B draft -> 7B target, A100), shown in the
# report next to the local results. Only the abstract's headline figures were available offline; add the
# per-benchmark rows from the paper's tables, with their exact numbers, as further dicts.
PAPER_REFERENCE: tuple[dict, ...] = (
    {"source": "arXiv 2604.15244, abstract", "compared with": "SD and reward-guided SD (avg. over benchmarks)",
     "accuracy": "+3.6%", "latency": "about 11% lower"},
)

# the parts a decoder times, in the order a step spends them (decoders/specguard.py, sd.py, single.py)
TIME_PARTS = ("draft_prefill", "draft", "score", "judge", "verify", "target_prefill", "target", "draft_sync", "sd",
              "trispec")

SUMMARY_COLUMNS = (
    ("method", "method"),
    ("n", "n"),
    ("accuracy", "accuracy"),
    ("ci", "95% CI"),
    ("mean_latency_s", "mean latency (s)"),
    ("median_latency_s", "median latency (s)"),
    ("tokens_per_s", "tokens/s"),
    ("speedup_vs_target", "speedup vs target"),
    ("mean_acceptance_rate", "acceptance rate"),
    ("mean_target_call_fraction", "target-call fraction"),
    ("draft_lengths", "draft / accepted length"),
    ("stopped_share", "answers where drafting stopped"),
)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes out of n trials."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    p = k / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half_width), min(1.0, center + half_width)


def summarize(rows: list[dict]) -> list[dict]:
    """One summary dict per method; a repeated (method, problem_id) keeps its last row."""
    by_method: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_method.setdefault(row["method"], {})[row["problem_id"]] = row
    target_rows = by_method.get("target")
    return [
        _summarize_method(method, by_method[method], target_rows)
        for method in sorted(by_method, key=_method_sort_key)
    ]


def _method_sort_key(method: str) -> tuple[int, str]:
    """Known methods in their canonical order, then any others alphabetically."""
    name = method.split(":")[0]  # a variant ("specguard:verifier=probe") sorts with its method
    rank = METHOD_ORDER.index(name) if name in METHOD_ORDER else len(METHOD_ORDER)
    return rank, method


def _summarize_method(method: str, rows_by_id: dict[str, dict], target_rows: dict[str, dict] | None) -> dict:
    """Accuracy with its Wilson interval, latency, throughput and decoder statistics for one method."""
    rows = list(rows_by_id.values())
    n = len(rows)
    correct = sum(bool(row["correct"]) for row in rows)
    ci_lo, ci_hi = wilson_interval(correct, n)
    walls = [float(row["wall_s"]) for row in rows]
    total_wall = sum(walls)
    return {
        "method": method,
        "n": n,
        "accuracy": correct / n,
        "ci_lo": ci_lo,
        "ci_hi": ci_hi,
        "mean_latency_s": total_wall / n,
        "median_latency_s": statistics.median(walls),
        "tokens_per_s": sum(int(row["tokens"]) for row in rows) / total_wall if total_wall > 0 else None,
        "speedup_vs_target": _speedup(rows_by_id, target_rows),
        "mean_acceptance_rate": _mean_present(row.get("acceptance_rate") for row in rows),
        "mean_target_call_fraction": _mean_present(row.get("target_call_fraction") for row in rows),
        "mean_draft_len": _mean_present(row.get("draft_len_mean") for row in rows),
        "mean_accepted_len": _mean_present(row.get("accepted_len_mean") for row in rows),
        # the cost-aware controller (specguard): share of answers it switched to the target alone
        "stopped_share": _mean_present(not row["control"]["speculating"] for row in rows
                                       if row.get("control") and row["control"].get("adapt")),
        "time_split": time_split(rows),
        "salvage": salvage_split(rows),
    }


def time_split(rows: list[dict]) -> dict[str, float]:
    """Each timed part (a decoder's `timings`: draft, score, target_prefill, …) as a share of the rows' total wall
    time, plus "other" (what no part timed: Python between decodes, stop tests); empty when nothing was timed."""
    total = sum(float(row["wall_s"]) for row in rows)
    parts: dict[str, float] = {}
    for row in rows:
        for part, seconds in (row.get("timings") or {}).items():
            parts[part] = parts.get(part, 0.0) + seconds
    if not parts or total <= 0:
        return {}
    shares = {part: seconds / total for part, seconds in parts.items()}
    return {**shares, "other": max(0.0, 1.0 - sum(shares.values()))}


def salvage_split(rows: list[dict]) -> dict | None:
    """Shares of the speculative steps' tokens kept whole, salvaged and written by the target, the share of drafted
    tokens kept (where the rows know it) and kept drafted tokens per target pass; None without salvage rows."""
    kept = [row["kept"] for row in rows if row.get("kept")]
    if not kept:
        return None
    total = {key: sum(k.get(key, 0) for k in kept) for key in ("kept_whole", "salvaged", "corrections", "bonus",
                                                                 "passes", "drafted")}
    own = total["corrections"] + total["bonus"]
    emitted = max(total["kept_whole"] + total["salvaged"] + own, 1)
    drafted = total["drafted"] if all("drafted" in k for k in kept) else None
    return {"kept_whole": total["kept_whole"] / emitted, "salvaged": total["salvaged"] / emitted,
            "own": own / emitted,
            "drafted_kept": (total["kept_whole"] + total["salvaged"]) / drafted if drafted else None,
            "per_pass": (total["kept_whole"] + total["salvaged"]) / max(total["passes"], 1)}


def cost_ratio(summary: list[dict]) -> float | None:
    """The draft's cost per token relative to the target's, from the plain draft and target rows of one run."""
    speed = {entry["method"]: entry["tokens_per_s"] for entry in summary}
    if speed.get("draft") and speed.get("target"):
        return speed["target"] / speed["draft"]
    return None


def _speedup(rows_by_id: dict[str, dict], target_rows: dict[str, dict] | None) -> float | None:
    """Target's mean latency over this method's, both taken over the problems both ran."""
    if not target_rows:
        return None
    common_ids = rows_by_id.keys() & target_rows.keys()
    if not common_ids:
        return None
    method_wall = sum(float(rows_by_id[i]["wall_s"]) for i in common_ids)
    target_wall = sum(float(target_rows[i]["wall_s"]) for i in common_ids)
    return target_wall / method_wall if method_wall > 0 else None


def _mean_present(values) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    present = [float(value) for value in values if value is not None]
    return statistics.fmean(present) if present else None


def write_report(rows: list[dict], out_dir: Path, title: str, meta: dict) -> tuple[Path, Path]:
    """Write report.md and accuracy_latency.png into out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    datasets = sorted({str(row.get("dataset")) for row in rows})
    markdown_path = out_dir / "report.md"
    markdown_path.write_text(render_markdown(summary, title, meta, datasets), encoding="utf-8")
    plot_path = out_dir / "accuracy_latency.png"
    plot_accuracy_latency(summary, title, plot_path)
    if any(":" in entry["method"] for entry in summary):
        plot_pareto(summary, title, out_dir / "pareto.png")
    return markdown_path, plot_path


def render_markdown(summary: list[dict], title: str, meta: dict, datasets: list[str]) -> str:
    """The report as Markdown: run metadata, the summary table and any paper reference rows."""
    lines = [f"# {title}", ""]
    lines += [f"- **{key}**: {value}" for key, value in meta.items()]
    lines += [f"- **datasets**: {', '.join(datasets)}", ""]
    lines += _table([label for _, label in SUMMARY_COLUMNS], [_summary_cells(entry) for entry in summary])
    ratio = cost_ratio(summary)
    if ratio is not None:
        lines += ["", f"Draft/target cost per token in this run: **{ratio:.2f}** (target-only tokens/s over draft-only "
                      "tokens/s; the lower it is, the more an accepted draft step saves)."]
    splits = {entry["method"]: entry["time_split"] for entry in summary if entry["time_split"]}
    if splits:
        parts = [part for part in TIME_PARTS if any(part in split for split in splits.values())]
        parts += sorted({part for split in splits.values() for part in split} - set(parts) - {"other"})
        lines += ["", "## Where the time goes (share of each method's wall time)", ""]
        lines += _table(["method", *(part.replace("_", " ") for part in parts), "other"],
                        [[method, *(f"{split.get(part, 0.0):.0%}" for part in [*parts, "other"])]
                         for method, split in splits.items()])
    salvage = {entry["method"]: entry["salvage"] for entry in summary if entry.get("salvage")}
    if salvage:
        lines += ["", "## Who wrote the answers' tokens (salvage)", "",
                  "Of every answer token of the speculative steps: drafted and kept whole by the verifier, drafted and "
                  "kept as the prefix the target agreed with, or the target's own (a correction, or the free token "
                  "after a stretch it read whole); the share of drafted tokens kept; kept tokens per target pass.", ""]
        lines += _table(["method", "kept whole", "salvaged", "target's own", "drafted kept", "kept per pass"],
                        [[method, f"{split['kept_whole']:.0%}", f"{split['salvaged']:.0%}", f"{split['own']:.0%}",
                          "n/a" if split["drafted_kept"] is None else f"{split['drafted_kept']:.0%}",
                          _format(split["per_pass"])]
                         for method, split in salvage.items()])
    if PAPER_REFERENCE:
        keys = list(dict.fromkeys(key for row in PAPER_REFERENCE for key in row))
        lines += ["", "## SpecGuard paper reference (Qwen2.5-Math 1.5B -> 7B, A100; not measured here)", ""]
        lines += _table(keys, [[_format(row.get(key)) for key in keys] for row in PAPER_REFERENCE])
    return "\n".join(lines) + "\n"


def _summary_cells(entry: dict) -> list[str]:
    """Formatted table cells for one method's summary."""
    cells = {
        **{key: _format(value) for key, value in entry.items()},
        "accuracy": f"{entry['accuracy']:.1%}",
        "ci": f"[{entry['ci_lo']:.1%}, {entry['ci_hi']:.1%}]",
    }
    if entry["speedup_vs_target"] is not None:
        cells["speedup_vs_target"] = f"{entry['speedup_vs_target']:.2f}x"
    if entry["stopped_share"] is not None:
        cells["stopped_share"] = f"{entry['stopped_share']:.0%}"
    cells["draft_lengths"] = (f"{_format(entry['mean_draft_len'])} / {_format(entry['mean_accepted_len'])}"
                              if entry["mean_draft_len"] is not None else "n/a")
    return [cells[key] for key, _ in SUMMARY_COLUMNS]


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    """Markdown table lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def _format(value) -> str:
    """A table cell: floats to 3 decimals, None as 'n/a'."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def plot_accuracy_latency(summary: list[dict], title: str, path: Path) -> None:
    """Accuracy (with Wilson CI bars) against mean latency, one labelled point per method."""
    figure = Figure(figsize=(7, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for entry in summary:
        accuracy = entry["accuracy"]
        error = [[accuracy - entry["ci_lo"]], [entry["ci_hi"] - accuracy]]
        axes.errorbar(entry["mean_latency_s"], accuracy, yerr=error, fmt="o", capsize=4)
        axes.annotate(
            entry["method"], (entry["mean_latency_s"], accuracy), textcoords="offset points", xytext=(6, 6)
        )
    axes.set_xlabel("mean latency per problem (s)")
    axes.set_ylabel("accuracy (95% Wilson CI)")
    axes.set_ylim(-0.05, 1.05)
    axes.margins(x=0.15)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=120)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (higher is better on each)."""
    return [i for i, (x, y) in enumerate(points)
            if not any(u >= x and v >= y and (u, v) != (x, y) for u, v in points)]


def plot_pareto(summary: list[dict], title: str, path: Path) -> None:
    """Accuracy against speed-up vs target-only, one point per setting; the Pareto frontier of the variants
    (`name:field=value`) is joined, plain methods are reference points."""
    entries = [e for e in summary if e["speedup_vs_target"] is not None]
    variants = [e for e in entries if ":" in e["method"]]
    figure = Figure(figsize=(8, 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    front = [variants[i] for i in pareto_front([(e["speedup_vs_target"], e["accuracy"]) for e in variants])]
    front.sort(key=lambda e: e["speedup_vs_target"])
    axes.plot([e["speedup_vs_target"] for e in front], [e["accuracy"] for e in front], "-", color="tab:red",
              alpha=0.6, label="Pareto frontier")
    for entry in entries:
        variant = ":" in entry["method"]
        axes.plot(entry["speedup_vs_target"], entry["accuracy"], "o" if variant else "s",
                  color="tab:red" if entry in front else "tab:blue" if variant else "black")
        axes.annotate(entry["method"].split(":", 1)[-1] if variant else entry["method"],
                      (entry["speedup_vs_target"], entry["accuracy"]), textcoords="offset points", xytext=(5, 4),
                      fontsize=7)
    axes.axvline(1.0, color="gray", lw=0.8, ls="--")
    axes.set_xlabel("speed-up vs target-only (same problems, same run)")
    axes.set_ylabel("accuracy")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    figure.savefig(path, dpi=120)
