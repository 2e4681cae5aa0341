"""Hidden-state probe verifier (SemanticSpec, arXiv 2602.03708, adapted to outcome labels).

SemanticSpec trains probes on the mean final hidden state of a step to predict whether the step means what the
target would say. We train on the study's labels: `harmful` (the outcome label: P(harmful | mean hidden state)) or
`differs` (the step states other numbers or operators than the target's own step: SemanticSpec's question, with a
label far less rare), from the draft's own hidden states ("draft", captured while drafting), the target's at the
same tokens ("target", from the judge's prefill), or both concatenated. Whatever the training label, a probe is
judged by how well its out-of-fold scores find harmful steps, and its τ is chosen for harm (`calibration`).

Model: standardisation + L2 logistic regression with balanced class weights (harmful steps are rare), its inverse
regularisation C chosen by cross-validation. Steps of one problem are correlated, so every split is grouped by
problem (GroupKFold): no problem has steps on both sides. Training uses scikit-learn; the shipped probe is a small
JSON file (mean, scale, coefficients) applied with numpy: score = 1 - sigmoid(((x - mean) / scale)·w + b).
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import SpecGuardError

FORMAT = "specguard-local probe"
FEATURES = ("draft", "target", "both")
C_GRID = (0.001, 0.01, 0.1, 1.0)
DEFAULT_PROBE = "qwen2.5-coder-0.5b__qwen2.5-coder-1.5b.probe.json"


@dataclass(frozen=True)
class Probe:
    features: str                   # "draft", "target" or "both"
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    draft: str = ""
    target: str = ""
    training: dict = field(default_factory=dict)

    def harm(self, x: np.ndarray) -> float:
        """P(harmful) of one step's feature vector."""
        z = (np.asarray(x, np.float64) - self.mean) / self.scale
        return float(1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coef) + self.intercept))))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"format": FORMAT, **asdict(self)}) + "\n")

    @staticmethod
    def load(path: str | Path, draft: str | None = None, target: str | None = None,
             dims: dict[str, int] | None = None) -> "Probe":
        """Read a probe file; with `draft`/`target` it must be for that pair, with `dims` ({"draft": n_embd,
        "target": n_embd}) its width must match the models."""
        try:
            data = json.loads(Path(path).read_text())
            if data.pop("format", None) != FORMAT:
                raise ValueError("not a specguard-local probe file")
            probe = Probe(**data)
            if probe.features not in FEATURES or not len(probe.mean) == len(probe.scale) == len(probe.coef):
                raise ValueError("inconsistent fields")
        except (OSError, ValueError, TypeError) as exc:
            raise SpecGuardError(f"bad probe file {path}: {exc}; make one with `specguard-local study --train-probe`") \
                from None
        if draft is not None and (probe.draft, probe.target) != (draft, target):
            raise SpecGuardError(f"the probe {path} is for {probe.draft} → {probe.target}, not {draft} → {target}; "
                                 f"train one with `specguard-local study --train-probe`")
        if dims is not None:
            width = sum(dims[part] for part in (("draft", "target") if probe.features == "both" else (probe.features,)))
            if width != len(probe.coef):
                raise SpecGuardError(f"the probe {path} expects {len(probe.coef)} features, these models give {width}")
        return probe


def encode_vector(vector: np.ndarray | None) -> str | None:
    """A hidden-state vector as base64 float16 (study rows stay small; probes do not need more precision)."""
    return None if vector is None else base64.b64encode(np.asarray(vector, np.float16).tobytes()).decode()


def decode_vector(data: str | None) -> np.ndarray | None:
    return None if data is None else np.frombuffer(base64.b64decode(data), np.float16).astype(np.float32)


def step_features(step: dict, kind: str) -> np.ndarray | None:
    """A study step's probe features: the draft's mean hidden state, the target's, or both concatenated."""
    parts = {"draft": ["draft_hidden"], "target": ["target_hidden"], "both": ["draft_hidden", "target_hidden"]}[kind]
    vectors = [decode_vector(step.get(part)) for part in parts]
    return None if any(v is None for v in vectors) else np.concatenate(vectors)


LABELS = ("harmful", "differs")


def step_label(step: dict, label: str) -> bool:
    """A study step's training label: `harmful` (the outcome label) or `differs` (it states other numbers or
    operators than the target's own step: the cheap label, far less rare, closer to SemanticSpec's)."""
    return step["label"] == "harmful" if label == "harmful" else not step["says_same"]


def study_arrays(problems: list[dict], kind: str, label: str = "harmful") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, label 0/1, problem ids) of the greedy draft steps of a study's problem rows, in order."""
    steps = [{**step, "problem_id": row["problem_id"]} for row in problems for step in row["steps"]
             if not step.get("sampled")]
    features = [step_features(step, kind) for step in steps]
    if not steps or any(f is None for f in features):
        raise SpecGuardError(f"the study has no {kind} hidden states for every step; rerun `specguard-local study`")
    return (np.stack(features), np.array([step_label(step, label) for step in steps], int),
            np.array([step["problem_id"] for step in steps]))


def default_probe_path() -> Path:
    return Path(str(resources.files("specguard_local") / "data" / DEFAULT_PROBE))


def _pipeline(c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000,
                                                              random_state=seed))


def grouped_folds(groups: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs, no group on both sides (GroupKFold), at most one fold per group."""
    from sklearn.model_selection import GroupKFold

    n_folds = min(n_folds, len(np.unique(groups)))
    if n_folds < 2:
        raise SpecGuardError("probe training needs steps from at least two problems")
    return list(GroupKFold(n_splits=n_folds).split(np.zeros(len(groups)), groups=groups))


def _auroc(y: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores)) if 0 < y.sum() < len(y) else float("nan")


def choose_c(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int, n_folds: int = 5) -> float:
    """The C of `C_GRID` with the best grouped cross-validated AUROC on (x, y)."""
    best_c, best = C_GRID[0], -1.0
    for c in C_GRID:
        scores = np.zeros(len(y))
        for train, test in grouped_folds(groups, n_folds):
            if y[train].min() == y[train].max():
                continue
            scores[test] = _pipeline(c, seed).fit(x[train], y[train]).predict_proba(x[test])[:, 1]
        auroc = _auroc(y, scores)
        if auroc > best:
            best_c, best = c, auroc
    return best_c


def cross_validated(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0,
                    n_folds: int = 5) -> np.ndarray:
    """Out-of-fold P(harmful) for every step: each fold's probe (C chosen inside its training problems) scores the
    held-out problems. Reproducible for a seed."""
    scores = np.full(len(y), np.nan)
    for train, test in grouped_folds(groups, n_folds):
        if y[train].min() == y[train].max():
            scores[test] = float(y[train][0])
            continue
        c = choose_c(x[train], y[train], groups[train], seed, n_folds)
        scores[test] = _pipeline(c, seed).fit(x[train], y[train]).predict_proba(x[test])[:, 1]
    return scores


def train(x: np.ndarray, y: np.ndarray, groups: np.ndarray, features: str, seed: int = 0, n_folds: int = 5,
          label: str = "harmful", harmful: np.ndarray | None = None, **training) -> Probe:
    """Fit the probe on every step for `label` (C chosen by grouped CV) and record how it was trained and how well
    its out-of-fold scores find harmful steps (`harmful`, default: y itself)."""
    if y.min() == y.max():
        raise SpecGuardError(f"all {len(y)} labelled steps have the same label; study more problems before training "
                             f"a probe")
    harmful = y if harmful is None else harmful
    oof = cross_validated(x, y, groups, seed, n_folds)
    c = choose_c(x, y, groups, seed, n_folds)
    fitted = _pipeline(c, seed).fit(x, y)
    scaler, model = fitted[0], fitted[-1]
    return Probe(features=features, mean=scaler.mean_.tolist(), scale=scaler.scale_.tolist(),
                 coef=model.coef_[0].tolist(), intercept=float(model.intercept_[0]),
                 training={"label": label, "steps": int(len(y)), "positives": int(y.sum()),
                           "harmful": int(harmful.sum()), "problems": int(len(np.unique(groups))), "C": c,
                           "seed": seed, "folds": n_folds, "cv_auroc_harmful": _auroc(harmful, oof), **training})


def train_from_study(problems: list[dict], seed: int, draft: str, target: str, **training) -> list[Probe]:
    """Every probe a study's rows can train — on draft, target or both hidden states, for the harmful or the
    differs label — stamped with the pair, best first by out-of-fold AUROC for harmful steps (the one to ship)."""
    trained = []
    for kind in FEATURES:
        x, harmful, groups = study_arrays(problems, kind, "harmful")
        if not harmful.any():
            raise SpecGuardError("the study has no harmful step to train or judge a probe on; study more problems "
                                 "(--limit)")
        for label in LABELS:
            y = harmful if label == "harmful" else study_arrays(problems, kind, label)[1]
            probe = train(x, y, groups, kind, seed, label=label, harmful=harmful, **training)
            trained.append(replace(probe, draft=draft, target=target))
    return sorted(trained, key=lambda p: -np.nan_to_num(p.training["cv_auroc_harmful"]))
