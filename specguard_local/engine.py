"""llama.cpp through llama-cpp-python's low-level API: a model, contexts holding several sequences, batched decode.

Everything a decoder needs and nothing more: tokenize / detokenize / chat prompt, one `decode` that takes tokens of
several sequences at once (how k candidates are drafted in one call), KV roll-back (`seq_rm`) and prefix sharing
(`fork`, i.e. `llama_memory_seq_cp`), raw log-probabilities and sampling from logits.

Contexts use one KV stream per sequence (`kv_unified = false`): inside a stream a KV cell index equals the token's
position, which is what lets `capture` read rows of `kq_soft_max` by position (see `tests/test_attention.py`).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as ll
import numpy as np

from . import cancel
from .errors import ModelError, SpecGuardError

_LOG_CALLBACK = None


def _init_backend() -> None:
    """Initialise llama.cpp once and silence its logging unless SPECGUARD_VERBOSE is set."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return
    _LOG_CALLBACK = ll.llama_log_callback(lambda level, text, data: None)
    if not os.environ.get("SPECGUARD_VERBOSE"):
        ll.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
    ll.llama_backend_init()


class Model:
    """A loaded GGUF model: weights, vocabulary, chat template."""

    def __init__(self, path: str | Path, n_gpu_layers: int = 0):
        _init_backend()
        self.path = Path(path)
        params = ll.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        self.ptr = ll.llama_model_load_from_file(str(self.path).encode(), params)
        if not self.ptr:
            raise ModelError(f"llama.cpp could not load {self.path}; is it a complete GGUF file?")
        self.vocab = ll.llama_model_get_vocab(self.ptr)
        self.n_vocab = ll.llama_vocab_n_tokens(self.vocab)
        self.n_layer = ll.llama_model_n_layer(self.ptr)
        self.n_embd = ll.llama_model_n_embd(self.ptr)
        self.n_ctx_train = ll.llama_model_n_ctx_train(self.ptr)
        self.name = self._meta("general.name") or self.path.stem
        self._pieces: dict[int, bytes] = {}

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = ll.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        data = text.encode()
        cap = len(data) + 16
        out = (ll.llama_token * cap)()
        n = ll.llama_tokenize(self.vocab, data, len(data), out, cap, False, special)
        if n < 0:
            raise SpecGuardError(f"tokenization of {len(data)} bytes failed ({n})")
        return list(out[:n])

    def piece(self, token: int) -> bytes:
        """The bytes of one token (cached: decoders call this once per generated token)."""
        cached = self._pieces.get(token)
        if cached is None:
            buf = ctypes.create_string_buffer(256)
            n = ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            cached = self._pieces[token] = buf.raw[: max(n, 0)]
        return cached

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return bool(ll.llama_vocab_is_eog(self.vocab, token))

    def chat_prompt(self, messages: list[tuple[str, str]]) -> str:
        """Render (role, content) messages with the model's own chat template from its GGUF metadata."""
        template = ll.llama_model_chat_template(self.ptr, None)
        chat = (ll.llama_chat_message * len(messages))()
        keep = []  # the C structs point into these bytes objects
        for msg, (role, content) in zip(chat, messages):
            keep += [role.encode(), content.encode()]
            msg.role, msg.content = keep[-2], keep[-1]
        size = sum(len(b) for b in keep) * 2 + 512
        buf = ctypes.create_string_buffer(size)
        n = ll.llama_chat_apply_template(template, chat, len(messages), True, buf, size)
        if n < 0:
            raise ModelError(f"{self.name}: its chat template is not supported by llama.cpp")
        if n > size:
            buf = ctypes.create_string_buffer(n + 1)
            n = ll.llama_chat_apply_template(template, chat, len(messages), True, buf, n + 1)
        return buf.raw[:n].decode("utf-8")

    def close(self) -> None:
        if self.ptr:
            ll.llama_model_free(self.ptr)
            self.ptr = None


class Context:
    """A llama.cpp context with `n_seq` sequences of up to `n_ctx_seq` tokens each, one KV stream per sequence.

    `hook` (an `attention.Capture`) is installed as llama.cpp's eval callback; when it reads attention layers, flash
    attention is turned off, because it never materialises the attention weights the hook reads.
    """

    def __init__(self, model: Model, n_seq: int = 1, n_ctx_seq: int = 4096, n_threads: int | None = None,
                 n_batch: int = 512, hook=None):
        self.model, self.n_seq, self.n_ctx_seq, self.n_batch, self.hook = model, n_seq, n_ctx_seq, n_batch, hook
        threads = n_threads or available_cores()
        params = ll.llama_context_default_params()
        params.n_ctx = n_ctx_seq * n_seq
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.kv_unified = False
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        if hook is not None:
            params.cb_eval = hook.callback
            params.cb_eval_user_data = hook.user_data
            if hook.layers:
                params.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ptr = ll.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise SpecGuardError(f"llama.cpp could not create a context for {model.name} "
                                 f"({n_seq} sequences × {n_ctx_seq} tokens); try a smaller --n-ctx")
        self.memory = ll.llama_get_memory(self.ptr)
        self.batch = ll.llama_batch_init(n_batch, 0, n_seq)

    def decode(self, tokens: list[int], positions: list[int], seqs: list[int], outputs: list[bool]) -> np.ndarray:
        """Evaluate tokens of one or more sequences; return the logits of the tokens flagged in `outputs`.

        Tokens must be ordered by (sequence, position): llama.cpp then processes them in that order, which is the
        order the attention hook sees their rows in. Longer inputs are split into chunks of `n_batch`.
        """
        if self.hook is not None:
            self.hook.reset()
        logits = []
        for start in range(0, len(tokens), self.n_batch):
            end = min(start + self.n_batch, len(tokens))
            batch, out_idx = self.batch, []
            for i, j in enumerate(range(start, end)):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tokens[j], positions[j], 1
                batch.seq_id[i][0] = seqs[j]
                batch.logits[i] = outputs[j]
                if outputs[j]:
                    out_idx.append(i)
            batch.n_tokens = end - start
            with cancel.decoding():  # a Ctrl-C meanwhile raises KeyboardInterrupt here, after the call
                rc = ll.llama_decode(self.ptr, batch)
            if rc != 0:
                raise SpecGuardError(f"llama_decode failed ({rc}) on {self.model.name}: the context "
                                     f"({self.n_ctx_seq} tokens per sequence) is probably full")
            for i in out_idx:
                ptr = ll.llama_get_logits_ith(self.ptr, i)
                logits.append(np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,)).copy())
        return np.stack(logits) if logits else np.empty((0, self.model.n_vocab), np.float32)

    def prefill(self, tokens: list[int], start: int, seq: int = 0) -> np.ndarray:
        """Append `tokens` to sequence `seq` at positions start.. and return the next-token logits."""
        n = len(tokens)
        self.check_room(start + n)
        return self.decode(tokens, list(range(start, start + n)), [seq] * n, [False] * (n - 1) + [True])[0]

    def check_room(self, n_tokens: int) -> None:
        if n_tokens > self.n_ctx_seq:
            raise SpecGuardError(f"{n_tokens} tokens do not fit the context of {self.n_ctx_seq} tokens "
                                 f"({self.model.name}); shorten the question or raise --n-ctx")

    def truncate(self, seq: int, n_keep: int) -> None:
        """Roll back sequence `seq` to its first `n_keep` tokens (llama_memory_seq_rm)."""
        ll.llama_memory_seq_rm(self.memory, seq, n_keep, -1)

    def fork(self, src: int, dsts: range | list[int]) -> None:
        """Make every sequence in `dsts` an exact copy of `src` (llama_memory_seq_cp; a KV buffer copy across
        streams, never a re-prefill)."""
        for dst in dsts:
            if dst != src:
                ll.llama_memory_seq_cp(self.memory, src, dst, -1, -1)

    def clear(self) -> None:
        ll.llama_memory_clear(self.memory, True)

    def close(self) -> None:
        if self.ptr:
            ll.llama_batch_free(self.batch)
            ll.llama_free(self.ptr)
            self.ptr = None


@dataclass(frozen=True)
class Sampling:
    """How to pick the next token. temperature 0 is greedy. Scores never use these settings (see `log_softmax`)."""

    temperature: float = 0.0
    top_p: float = 1.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """exp((logits - max) / temperature) normalised over the last axis, in float64: the package's one softmax."""
    logits = np.asarray(logits, np.float64)
    scaled = np.exp((logits - logits.max(axis=-1, keepdims=True)) / temperature)
    return scaled / scaled.sum(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """The model's raw log-distribution: temperature 1, untruncated (what step scores are computed from)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def token_logprob(logits: np.ndarray, token: int) -> float:
    """log p(token) under the raw distribution, without materialising the whole log-softmax."""
    top = logits.max()
    return float(logits[token] - top - np.log(np.exp(logits - top).sum()))


def logprob_and_entropy(logits: np.ndarray, token: int) -> tuple[float, float]:
    """(log p(token), entropy H = -Σ p log p) of the raw distribution, from one pass over the vocabulary."""
    shifted = logits - logits.max()
    weights = np.exp(shifted)
    total = weights.sum()
    log_total = np.log(total)
    return float(shifted[token] - log_total), float(log_total - weights @ shifted / total)


def available_cores() -> int:
    """CPU cores this process may run on (respects taskset / cgroup affinity, unlike os.cpu_count())."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def sample(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator, n_top: int = 64) -> int:
    """Greedy, or temperature + nucleus (top-p) sampling.

    The nucleus is searched among the `n_top` most likely tokens (exact whenever their mass reaches top_p, which
    is nearly always); otherwise it falls back to a full sort. Reproducible for a given `rng` seed.
    """
    if sampling.temperature <= 0:
        return int(np.argmax(logits))
    probs = softmax(logits, sampling.temperature)
    if sampling.top_p >= 1.0:
        return int(rng.choice(len(probs), p=probs))
    order = np.argpartition(probs, -n_top)[-n_top:] if len(probs) > n_top else np.arange(len(probs))
    order = order[np.argsort(-probs[order], kind="stable")]
    if probs[order].sum() < sampling.top_p:
        order = np.argsort(-probs, kind="stable")
    keep = min(int(np.searchsorted(np.cumsum(probs[order]), sampling.top_p)) + 1, len(order))
    nucleus = order[:keep]
    return int(nucleus[rng.choice(keep, p=probs[nucleus] / probs[nucleus].sum())])
