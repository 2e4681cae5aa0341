"""Attention grounding, the paper's ABGV signal, from the rows `capture` keeps.

With the last three layers A1, A2, A3 (A3 the last), rollout R = A3·A2·A1 and a token's grounding is
G(t) = Σ_{j∈I} R[t, j], I = prompt + accepted steps. Attention is causal and I is a prefix, so
    v(b) = Σ_{j∈I} A1[b, j]      (for b in I: the whole row sum)
    w(a) = Σ_b A2[a, b] · v(b)   (for a in I: fixed once a is accepted)
    G(t) = Σ_a A3[t, a] · w(a)
needs only the rows of the step's own tokens plus two cached scalars per accepted token: O(step × context) time,
O(context) memory, no n×n product. The same recursion runs over any number of layers (`--layers`, one cached
scalar per layer but the last). Early rejection scores a step after every drafted token: `extend_step` adds one
token to the step's running levels in O(context), so scoring a whole step token by token stays O(step × context).
`tests/test_attention.py` checks both against the dense R.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PrefixMass:
    """Per accepted token b, one scalar per rollout level: levels[0](b) = Σ A1[b, ·] and
    levels[l](b) = Σ A_{l+1}[b, ·]·levels[l-1] — for three layers, v and w above. With renormalised rows they are
    1 up to rounding; they are still computed from the rows, so the maths holds for any row normalisation."""

    levels: tuple[np.ndarray, ...]

    @staticmethod
    def empty(n_layers: int = 3) -> "PrefixMass":
        return PrefixMass(tuple(np.zeros(0) for _ in range(n_layers - 1)))

    def __len__(self) -> int:
        return len(self.levels[0])


def _fit(rows: np.ndarray, width: int) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows[:, :width] if rows.shape[1] >= width else np.pad(rows, ((0, 0), (0, width - rows.shape[1])))


def extend_prefix(mass: PrefixMass, *rows: np.ndarray) -> PrefixMass:
    """Add newly accepted tokens to I, given their rows of every rollout layer but the last (A1, …, A_{L-1})."""
    end = len(mass) + len(rows[0])
    level = np.concatenate([mass.levels[0], _fit(rows[0], end).sum(axis=1)])
    levels = [level]
    for old, layer_rows in zip(mass.levels[1:], rows[1:]):
        level = np.concatenate([old, _fit(layer_rows, end) @ level])
        levels.append(level)
    return PrefixMass(tuple(levels))


def step_grounding(mass: PrefixMass, *rows: np.ndarray) -> np.ndarray:
    """G(t) for every token of a step that directly follows I, given the step's rows of A1, …, A_L."""
    n, end = len(mass), len(mass) + len(rows[0])
    level = _fit(rows[0], n).sum(axis=1)  # mass each step token puts on I itself
    for prefix_level, layer_rows in zip(mass.levels, rows[1:]):
        level = _fit(layer_rows, end) @ np.concatenate([prefix_level, level])
    return level


def extend_step(mass: PrefixMass, levels: list[list[float]], *row: np.ndarray) -> float:
    """Add the next token of a step that directly follows I to the step's running `levels` (one list per rollout
    level, the last holding G; start with empty lists), given the token's row of A1, …, A_L; return its G(t).

    `step_grounding`'s recursion one token at a time: causal rows make a token's levels depend only on the tokens
    before it, so each token costs O(context)."""
    n = len(mass)
    width = n + len(levels[0]) + 1
    value = float(np.asarray(row[0][:n], dtype=np.float64).sum())
    values = [value]
    for prefix_level, layer_row, step_level in zip(mass.levels, row[1:], levels):
        value = float(_fit(layer_row[None], width)[0] @ np.concatenate([prefix_level, step_level, [value]]))
        values.append(value)
    for level, value in zip(levels, values):
        level.append(value)
    return values[-1]
