"""Attention grounding (the paper's ABGV signal) from llama.cpp's own attention weights.

Capture: llama.cpp asks an eval callback (`cb_eval`) about every graph tensor, ~800 per decode; a small C filter
(`_evalfilter.c`) answers those questions without a Python round trip, and hands Python only `kq_soft_max-<il>`
of the chosen layers (shape [n_kv, n_tokens, n_head, n_stream], f32, indexed by KV cell = position, see `engine`)
and, when the selector needs it, `result_norm` (the final hidden state of each output token). Each asked tensor
splits llama.cpp's graph, so we ask for as few as possible. Heads are averaged and values below 0.01 zeroed as the
tensor arrives, so only one row of `n_kv` floats per token and layer is kept.

Grounding: with the last three layers A1, A2, A3 (A3 the last), rollout R = A3·A2·A1 and a token's grounding is
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

import ctypes
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np

from . import _evalfilter
from .errors import SpecGuardError

SPARSITY_THRESHOLD = 0.01
HIDDEN = "hidden"

_lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
_lib.ggml_get_name.restype = ctypes.c_char_p
_lib.ggml_get_name.argtypes = [ctypes.c_void_p]
_lib.ggml_backend_tensor_get.restype = None
_lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
_GGML_TYPE_F32 = 0


class _TensorHead(ctypes.Structure):
    """The leading fields of `struct ggml_tensor` (ggml.h): type, buffer, ne[4], nb[4]."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p),
                ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4)]


class _Filter(ctypes.Structure):
    """ctypes twin of `sg_filter` in `_evalfilter.c`: the wanted tensor names and whom to call for them."""

    _fields_ = [("inner", ctypes.c_void_p), ("get_name", ctypes.c_void_p), ("n_names", ctypes.c_int32),
                ("names", (ctypes.c_char * _evalfilter.NAME_LEN) * _evalfilter.MAX_NAMES)]


_FILTER = llama_cpp.ggml_backend_sched_eval_callback(_evalfilter.address)


class Capture:
    """llama.cpp eval callback that keeps the head-averaged, sparsified attention rows of `layers` (and the final
    hidden states when `hidden`) of the last decode, in the order llama.cpp evaluated the tokens.

    llama.cpp's `cb_eval` is `callback` with `user_data`: the C filter of `_evalfilter`, which answers the
    scheduler's "do you want this tensor?" for every graph node and calls `_on_tensor` only for the wanted ones."""

    def __init__(self, layers: list[int], hidden: bool = False, threshold: float = SPARSITY_THRESHOLD):
        self.layers, self.threshold = list(layers), threshold
        self.wanted: dict[bytes, int | str] = {f"kq_soft_max-{il}".encode(): il for il in self.layers}
        if hidden:
            self.wanted[b"result_norm"] = HIDDEN
        if len(self.wanted) > _evalfilter.MAX_NAMES:
            raise SpecGuardError(f"at most {_evalfilter.MAX_NAMES - 1} attention layers can be captured")
        self.parts: dict[int | str, list[np.ndarray]] = {key: [] for key in self.wanted.values()}
        self.error: BaseException | None = None
        self._inner = llama_cpp.ggml_backend_sched_eval_callback(self._on_tensor)  # kept alive with the filter
        self._filter = _Filter(ctypes.cast(self._inner, ctypes.c_void_p).value,
                               ctypes.cast(_lib.ggml_get_name, ctypes.c_void_p).value, len(self.wanted))
        for i, name in enumerate(self.wanted):
            self._filter.names[i].value = name
        self.callback, self.user_data = _FILTER, ctypes.addressof(self._filter)

    def reset(self) -> None:
        for parts in self.parts.values():
            parts.clear()

    def _on_tensor(self, tensor: int, _ask: bool, _user_data) -> bool:
        """A wanted tensor, computed (the filter never asks Python whether a tensor is wanted)."""
        try:
            key = self.wanted[_lib.ggml_get_name(tensor)]
            head = _TensorHead.from_address(tensor)
            ne = list(head.ne)
            assert head.type == _GGML_TYPE_F32, f"unexpected tensor type {head.type}"
            data = np.empty(ne[0] * ne[1] * ne[2] * ne[3], np.float32)
            _lib.ggml_backend_tensor_get(tensor, data.ctypes.data, 0, data.nbytes)
            if key == HIDDEN:
                rows = data.reshape(ne[1], ne[0])
            else:  # [n_stream, n_head, n_tokens, n_kv] → head mean → one row per token, streams in sequence order
                rows = data.reshape(ne[3], ne[2], ne[1], ne[0]).mean(axis=1).reshape(-1, ne[0])
                rows[rows < self.threshold] = 0.0
                rows /= np.maximum(rows.sum(axis=1, keepdims=True), 1e-12)
            self.parts[key].append(rows)
        except BaseException as exc:  # an exception must not cross into C; report it after decode
            self.error = exc
        return True

    def rows(self, key: int | str) -> np.ndarray:
        """All rows captured for `key` in the last decode, padded with zeros to a common width."""
        if self.error is not None:
            error, self.error = self.error, None
            raise RuntimeError("attention capture failed") from error
        parts = self.parts[key]
        if not parts:
            return np.zeros((0, 0), np.float32)
        width = max(p.shape[1] for p in parts)
        return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]))) for p in parts])


def last_layers(n_layer: int, n: int = 3) -> list[int]:
    """The last `n` layers (the paper: rollout over the last three)."""
    if not 3 <= n <= n_layer:
        raise SpecGuardError(f"--layers must lie between 3 (rollout over the last three layers) and {n_layer} "
                             f"(the draft's depth), not {n}")
    return list(range(n_layer - n, n_layer))


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
