"""The attention capture: llama.cpp's own attention weights (and final hidden states) of chosen layers, per decode.

llama.cpp asks an eval callback (`cb_eval`) about every graph tensor, ~800 per decode; a small C filter
(`_evalfilter.c`) answers those questions without a Python round trip, and hands Python only `kq_soft_max-<il>`
of the chosen layers (shape [n_kv, n_tokens, n_head, n_stream], f32, indexed by KV cell = position, see `engine`)
and, when the selector or a probe needs it, `result_norm` (the final hidden state of each output token). Each asked
tensor splits llama.cpp's graph, so we ask for as few as possible. Heads are averaged and values below 0.01 zeroed
as the tensor arrives, so only one row of `n_kv` floats per token and layer is kept. What the rows are used for
(the paper's ABGV grounding) is `verify.grounding`.
"""

from __future__ import annotations

import ctypes
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
