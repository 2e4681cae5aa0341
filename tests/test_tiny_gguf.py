"""Tests for the tiny random GGUF fixture, run against real llama.cpp (no mocks)."""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import numpy as np
import pytest

import gguf
import llama_cpp

from tiny_gguf import (
    EOS_ID,
    IM_END_ID,
    IM_START_ID,
    N_VOCAB,
    build_vocab,
    write_tiny_model,
)


@llama_cpp.llama_log_callback
def _silent_log(level, text, user_data):  # noqa: ARG001 - ctypes signature
    pass


@pytest.fixture(scope="module", autouse=True)
def _quiet_llama():
    """Silence llama.cpp/ggml logs for this module; restore llama-cpp-python's logger after."""
    llama_cpp.llama_log_set(_silent_log, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    yield
    try:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    except Exception:  # pragma: no cover - best effort
        pass


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_gguf")


@pytest.fixture(scope="module")
def model_path(model_dir) -> Path:
    return write_tiny_model(model_dir / "tiny-v0.gguf")


def _load(path: Path):
    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers = 0
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
    assert model, f"llama.cpp failed to load {path}"
    return model


@pytest.fixture(scope="module")
def model(model_path):
    m = _load(model_path)
    yield m
    llama_cpp.llama_model_free(m)


@pytest.fixture(scope="module")
def vocab(model):
    return llama_cpp.llama_model_get_vocab(model)


def _new_ctx(model, n_seq_max: int = 1, n_ctx: int = 512):
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = n_ctx
    cp.n_batch = 512
    cp.n_ubatch = 512
    cp.n_seq_max = n_seq_max
    cp.n_threads = 2
    cp.n_threads_batch = 2
    ctx = llama_cpp.llama_init_from_model(model, cp)
    assert ctx, "llama_init_from_model failed"
    return ctx


def _tokenize(vocab, text: str, parse_special: bool = True) -> list[int]:
    raw = text.encode("utf-8")
    cap = len(raw) + 16
    buf = (llama_cpp.llama_token * cap)()
    n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, cap, False, parse_special)
    assert n >= 0
    return list(buf[:n])


def _piece(vocab, tok: int, special: bool = True) -> bytes:
    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, tok, buf, len(buf), 0, special)
    assert n >= 0
    return buf.raw[:n]


def _decode(ctx, batch, items) -> None:
    """items: list of (token, pos, seq_id, want_logits)."""
    batch.n_tokens = len(items)
    for i, (tok, pos, seq, want) in enumerate(items):
        batch.token[i] = tok
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = bool(want)
    rc = llama_cpp.llama_decode(ctx, batch)
    assert rc == 0, f"llama_decode returned {rc}"


def _logits(ctx, i: int) -> np.ndarray:
    ptr = llama_cpp.llama_get_logits_ith(ctx, i)
    assert ptr
    return np.ctypeslib.as_array(ptr, shape=(N_VOCAB,)).copy()


# --------------------------------------------------------------------------- writer


def test_write_is_fast_small_and_deterministic(model_dir):
    t0 = time.perf_counter()
    a = write_tiny_model(model_dir / "det-a.gguf", seed=3)
    elapsed = time.perf_counter() - t0
    b = write_tiny_model(model_dir / "det-b.gguf", seed=3)
    c = write_tiny_model(model_dir / "det-c.gguf", seed=4)
    assert elapsed < 1.0
    assert a.stat().st_size < 5 * 1024 * 1024
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_rejects_too_few_layers(model_dir):
    with pytest.raises(ValueError):
        write_tiny_model(model_dir / "bad.gguf", n_layer=2)


def test_vocab_variants_differ_via_gguf_reader(model_dir):
    p0 = write_tiny_model(model_dir / "var0.gguf", vocab_variant=0)
    p1 = write_tiny_model(model_dir / "var1.gguf", vocab_variant=1)

    def tokens(p: Path) -> list[str]:
        field = gguf.GGUFReader(p).fields["tokenizer.ggml.tokens"]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    t0, t1 = tokens(p0), tokens(p1)
    assert t0 == build_vocab(0)[0]
    assert t1 == build_vocab(1)[0]
    assert len(t0) == len(t1) == N_VOCAB
    assert t0 != t1
    diff = [i for i, (x, y) in enumerate(zip(t0, t1)) if x != y]
    assert len(diff) == 1
    # the specials keep their ids across variants
    assert t0[IM_START_ID] == t1[IM_START_ID] == "<|im_start|>"
    assert t0[IM_END_ID] == t1[IM_END_ID] == "<|im_end|>"


# --------------------------------------------------------------------------- llama.cpp


@pytest.mark.parametrize("n_layer", [3, 4, 6])
def test_loads_with_expected_hparams(model_dir, n_layer):
    p = write_tiny_model(model_dir / f"layers-{n_layer}.gguf", n_layer=n_layer)
    m = _load(p)
    try:
        assert llama_cpp.llama_model_n_layer(m) == n_layer
        assert llama_cpp.llama_model_n_embd(m) == 64
        assert llama_cpp.llama_model_n_head(m) == 4
        assert llama_cpp.llama_model_n_head_kv(m) == 2
        assert llama_cpp.llama_model_n_ctx_train(m) == 512
        v = llama_cpp.llama_model_get_vocab(m)
        assert llama_cpp.llama_vocab_n_tokens(v) == N_VOCAB
        assert llama_cpp.llama_vocab_eos(v) == EOS_ID
        assert llama_cpp.llama_vocab_is_eog(v, IM_END_ID)
        assert not llama_cpp.llama_vocab_is_eog(v, IM_START_ID)
        tmpl = llama_cpp.llama_model_chat_template(m, None)
        assert tmpl and b"<|im_start|>" in tmpl
    finally:
        llama_cpp.llama_model_free(m)


def test_tokenize_round_trip(vocab):
    text = "Hello there, the world is in order! 123"
    ids = _tokenize(vocab, text)
    assert ids and all(0 <= t < N_VOCAB for t in ids)
    assert any(t >= 256 for t in ids), "expected at least one merge token"
    assert b"".join(_piece(vocab, t) for t in ids) == text.encode()


def test_tokenize_chat_specials(vocab):
    ids = _tokenize(vocab, "<|im_start|>user\nhi<|im_end|>", parse_special=True)
    assert ids[0] == IM_START_ID and ids[-1] == IM_END_ID
    # without parse_special, the markers are plain bytes
    raw = _tokenize(vocab, "<|im_start|>", parse_special=False)
    assert IM_START_ID not in raw and len(raw) > 1


def test_single_decode_gives_finite_nondegenerate_logits(model, vocab):
    ctx = _new_ctx(model)
    batch = llama_cpp.llama_batch_init(16, 0, 1)
    try:
        prompt = _tokenize(vocab, "abcde")  # no merges apply -> 5 tokens
        assert len(prompt) == 5
        _decode(ctx, batch, [(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)])
        logits = _logits(ctx, len(prompt) - 1)
        assert logits.shape == (N_VOCAB,)
        assert np.all(np.isfinite(logits))
        assert logits.std() > 0.5
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        assert probs.max() < 0.95  # not one-hot
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)


def test_multi_sequence_batch_matches_individual_decodes_and_greedy_varies(model, vocab):
    prompts = [
        _tokenize(vocab, "Hello"),
        _tokenize(vocab, "the cat is in"),
        _tokenize(vocab, "<|im_start|>user\nhi"),
    ]
    n_seq = len(prompts)
    ctx = _new_ctx(model, n_seq_max=n_seq)
    batch = llama_cpp.llama_batch_init(64, 0, n_seq)
    try:
        mem = llama_cpp.llama_get_memory(ctx)
        # one batch with all sequences
        items, last_idx = [], []
        for s, pr in enumerate(prompts):
            for j, t in enumerate(pr):
                items.append((t, j, s, j == len(pr) - 1))
            last_idx.append(len(items) - 1)
        _decode(ctx, batch, items)
        batched = [_logits(ctx, i) for i in last_idx]

        # each sequence alone (clear the whole KV cache between runs)
        for s, pr in enumerate(prompts):
            llama_cpp.llama_memory_clear(mem, True)
            _decode(ctx, batch, [(t, j, 0, j == len(pr) - 1) for j, t in enumerate(pr)])
            alone = _logits(ctx, len(pr) - 1)
            np.testing.assert_allclose(batched[s], alone, atol=1e-3, rtol=0)
            assert int(batched[s].argmax()) == int(alone.argmax())

        # seq_rm rollback: drop the last token of seq 0, re-decode it, logits match
        llama_cpp.llama_memory_clear(mem, True)
        pr = prompts[0]
        _decode(ctx, batch, [(t, j, 0, j == len(pr) - 1) for j, t in enumerate(pr)])
        ref = _logits(ctx, len(pr) - 1)
        assert llama_cpp.llama_memory_seq_rm(mem, 0, len(pr) - 1, -1)
        assert llama_cpp.llama_memory_seq_pos_max(mem, 0) == len(pr) - 2
        _decode(ctx, batch, [(pr[-1], len(pr) - 1, 0, True)])
        np.testing.assert_allclose(_logits(ctx, 0), ref, atol=1e-4, rtol=0)

        # greedy continuation of all sequences in lock-step: must not repeat one token forever
        llama_cpp.llama_memory_clear(mem, True)
        _decode(ctx, batch, items)
        out_idx = list(last_idx)
        pos = [len(p) for p in prompts]
        gens: list[list[int]] = [[] for _ in range(n_seq)]
        for _ in range(24):
            step = []
            for s in range(n_seq):
                tok = int(_logits(ctx, out_idx[s]).argmax())
                gens[s].append(tok)
                step.append((tok, pos[s], s, True))
                pos[s] += 1
            _decode(ctx, batch, step)
            out_idx = list(range(n_seq))
        for g in gens:
            assert len(set(g)) >= 5, g
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)


def test_attention_softmax_tensors_visible_without_flash_attn(model, vocab):
    """With flash attention disabled, cb_eval sees kq_soft_max-<il> for every layer."""
    ggml = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    ggml.ggml_get_name.restype = ctypes.c_char_p
    ggml.ggml_get_name.argtypes = [ctypes.c_void_p]
    seen: set[bytes] = set()

    @llama_cpp.ggml_backend_sched_eval_callback
    def cb(tensor, ask, user_data):  # noqa: ARG001
        name = ggml.ggml_get_name(tensor)
        if name.startswith(b"kq_soft_max-"):
            seen.add(name)
        return True

    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = 512
    cp.n_threads = 2
    cp.n_threads_batch = 2
    cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cp.cb_eval = cb
    ctx = llama_cpp.llama_init_from_model(model, cp)
    assert ctx
    batch = llama_cpp.llama_batch_init(16, 0, 1)
    try:
        prompt = _tokenize(vocab, "abcde")
        seen.clear()
        _decode(ctx, batch, [(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)])
        n_layer = llama_cpp.llama_model_n_layer(model)
        assert seen == {f"kq_soft_max-{il}".encode() for il in range(n_layer)}
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)


def test_variant_1_loads_and_tokenizes_differently(model_dir):
    p1 = write_tiny_model(model_dir / "var1-load.gguf", vocab_variant=1)
    m = _load(p1)
    try:
        v = llama_cpp.llama_model_get_vocab(m)
        assert llama_cpp.llama_vocab_n_tokens(v) == N_VOCAB
        assert llama_cpp.llama_vocab_eos(v) == EOS_ID
        # id 267 is " w" in variant 0 and " b" in variant 1
        assert _piece(v, 267) == b" b"
    finally:
        llama_cpp.llama_model_free(m)
