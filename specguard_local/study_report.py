"""The step-signal study's report: how well each signal predicts a harmful draft step, and what it would cost.

Per signal (oriented so that a higher risk score means "more likely harmful"):
  - AUROC for `harmful` over the steps where harm is possible (the target's own solution is right), with a 95%
    bootstrap interval that resamples problems, not steps (steps of one problem are correlated);
  - AUROC for the cheap label "says something else than the target's own step" over all steps;
  - the acceptance curve: accepting every step whose score clears a threshold, the share of steps kept against the
    share of problems flipped from right to wrong (a problem flips when any kept step in it is harmful);
  - its median added cost per step token, in units of one target decode token measured on the same problem.
Probes (`probe`) are scored out-of-fold by grouped cross-validation, never on the problems they were fitted on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .verify import probe as probes
from .verify.calibration import study_table
from .verify.signals import Profile, decision_score

N_BOOTSTRAP = 1000
# signal key, label, +1 when a higher value means a safer step (-1 when riskier), cost keys it needs
SIGNALS = (
    ("r", "SpecGuard r = β·l̃ + (1-β)·g̃", +1, ()),
    ("logprob_min", "draft min log-prob (LPBV)", +1, ()),
    ("logprob_mean", "draft mean log-prob", +1, ()),
    ("grounding_min", "draft min grounding (ABGV)", +1, ()),
    ("grounding_mean", "draft mean grounding", +1, ()),
    ("entropy_max", "draft max token entropy", -1, ()),
    ("entropy_mean", "draft mean token entropy", -1, ()),
    ("target_logprob_min", "target min log-prob of the step", +1, ("judge",)),
    ("target_logprob_mean", "target mean log-prob of the step", +1, ("judge",)),
    ("judge", "target judge: geometric-mean probability", +1, ("judge",)),
    ("n_tokens", "step length (baseline)", -1, ()),
)


def _auroc(labels: np.ndarray, risk: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, risk)) if 0 < labels.sum() < len(labels) else float("nan")


def bootstrap_auroc(labels: np.ndarray, risk: np.ndarray, groups: np.ndarray, seed: int = 0,
                    n: int = N_BOOTSTRAP) -> tuple[float, float, float]:
    """AUROC and its 95% percentile interval from resampling whole groups (problems) with replacement."""
    point = _auroc(labels, risk)
    if np.isnan(point):
        return point, float("nan"), float("nan")
    rng, names = np.random.default_rng(seed), np.unique(groups)
    members = {name: np.flatnonzero(groups == name) for name in names}
    values = []
    for _ in range(n):
        index = np.concatenate([members[name] for name in rng.choice(names, len(names))])
        value = _auroc(labels[index], risk[index])
        if not np.isnan(value):
            values.append(value)
    if not values:
        return point, float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return point, float(low), float(high)


def acceptance_curve(risk: np.ndarray, harmful: np.ndarray, groups: np.ndarray,
                     n_problems: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every threshold t (accept a step iff risk ≤ t): share of steps accepted, share of problems flipped
    (any accepted harmful step), and t."""
    thresholds = np.unique(risk)
    kept, flipped = [0.0], [0.0]
    for t in thresholds:
        accepted = risk <= t
        kept.append(accepted.mean())
        flipped.append(len(np.unique(groups[accepted & harmful])) / n_problems)
    return np.array(kept), np.array(flipped), np.concatenate([[-np.inf], thresholds])


def signal_risks(steps: list[dict], profile: Profile, seed: int = 0) -> dict[str, tuple[str, np.ndarray, tuple]]:
    """Risk score (higher = more likely harmful) of every step per signal, probes included (out-of-fold)."""
    steps = [{**s, "r": decision_score(s["logprob_min"], s["grounding_min"], profile)[2]} for s in steps]
    risks = {key: (label, -sign * np.array([s[key] for s in steps], float), costs)
             for key, label, sign, costs in SIGNALS}
    harmful = np.array([s["label"] == "harmful" for s in steps])
    groups = np.array([s["problem_id"] for s in steps])
    if 0 < harmful.sum() < len(harmful) and len(np.unique(groups[harmful])) >= 2:
        differs = np.array([probes.step_label(s, "differs") for s in steps])
        for kind in probes.FEATURES:
            features = [probes.step_features(s, kind) for s in steps]
            if any(f is None for f in features):
                continue
            costs = ("judge",) if kind != "draft" else ()
            for label, y in (("harmful", harmful), ("differs", differs)):
                oof = probes.cross_validated(np.stack(features), y.astype(int), groups, seed)
                risks[f"probe_{kind}_{label}"] = (f"probe on {kind} hidden states, trained for '{label}' "
                                                  f"(out-of-fold)", oof, costs)
    return risks


def per_token_cost(steps: list[dict], part: str) -> float:
    """Median over steps of what `part` cost per step token, in units of the target's decode time per token
    measured on the same problem."""
    return float(np.median([s["cost_s"][part] / max(s["n_tokens"], 1) / s["target_s_per_token"] for s in steps]))


def write_study_report(problems: list[dict], out_dir: Path, profile: Profile, seed: int = 0) -> Path:
    """report.md and acceptance.png for the study rows in `out_dir`."""
    out_dir = Path(out_dir)
    steps, counts = study_table(problems)
    lines = ["# Step-signal study", "",
             f"{counts['problems']} problems ({counts['target_right']} solved by the target), {counts['steps']} "
             f"draft steps: **{counts['harmful']} harmful**, {counts['rescue']} rescue, {counts['neutral']} neutral; "
             f"{counts['identical']} token-identical to the target's own step, {counts['says_same']} stating the "
             f"same numbers and operators. r under bounds log-prob [{profile.logprob_lo:.3f}, "
             f"{profile.logprob_hi:.3f}], grounding [{profile.grounding_lo:.4f}, {profile.grounding_hi:.4f}], "
             f"β = {profile.beta}.", ""]
    if not steps:
        (out_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return out_dir / "report.md"
    harmful = np.array([s["label"] == "harmful" for s in steps])
    possible = np.array([s["target_correct"] for s in steps])
    differs = np.array([not s["says_same"] for s in steps])
    groups = np.array([s["problem_id"] for s in steps])
    risks = signal_risks(steps, profile, seed)
    lines += ["| signal | AUROC harmful (95% CI, by problem; steps of problems the target solves) | AUROC differs "
              "from the target's step (all steps) | added cost per step token (target decode tokens) |",
              "|---|---|---|---|"]
    curves = {}
    for key, (label, risk, costs) in risks.items():
        auroc, low, high = bootstrap_auroc(harmful[possible], risk[possible], groups[possible], seed)
        cost = sum(per_token_cost(steps, c) for c in costs)
        lines.append(f"| {label} | {auroc:.2f} [{low:.2f}, {high:.2f}] | {_auroc(differs, risk):.2f} | "
                     f"{cost:.2f} |")
        curves[label] = acceptance_curve(risk, harmful, groups, counts["problems"])
    said, harm = np.array([s["says_same"] for s in steps]), harmful
    lines += ["", "Cheap label against the outcome label (all steps):", "",
              "| | harmful | not harmful |", "|---|---|---|",
              f"| says the same as the target's step | {int((said & harm).sum())} | {int((said & ~harm).sum())} |",
              f"| says something else | {int((~said & harm).sum())} | {int((~said & ~harm).sum())} |", "",
              f"Drafting costs a median {per_token_cost(steps, 'draft'):.2f} target decode tokens per drafted token "
              f"({np.median([s['n_tokens'] for s in steps]):.0f} tokens per step), attention capture included; the cost column is what each signal adds to that (the target's prefill of the step "
              "for judge signals and the target probes, one KV fork included). Draft-only signals add only their "
              "arithmetic (grounding: about 0.003 ms per token, `scripts/bench_overhead.py`).", ""]
    plot_curves(curves, out_dir / "acceptance.png")
    lines += ["![share of draft steps accepted vs problems flipped](acceptance.png)", ""]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out_dir / "report.md"


def plot_curves(curves: dict, path: Path) -> None:
    figure = Figure(figsize=(8, 5.5))
    axes = figure.add_subplot()
    for number, (label, (kept, flipped, _)) in enumerate(curves.items()):  # 10 colours, then dashed, dotted
        axes.step(kept, flipped, where="post", label=label, linewidth=1.2, linestyle=("-", "--", ":")[number // 10 % 3])
    axes.set_xlabel("share of draft steps accepted")
    axes.set_ylabel("share of problems flipped right → wrong")
    axes.set_title("Accepting draft steps by each signal")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    FigureCanvasAgg(figure).print_png(str(path))
