"""The engine on a tiny random GGUF, evaluated by real llama.cpp."""

import numpy as np
import pytest

from specguard_local.engine import Context, Sampling, log_softmax, sample, token_logprob

PROMPTS = ["hello there", "the cat", "in a hole in the ground"]


def greedy(ctx, seqs_prompts, n_new):
    """Greedy-decode every (seq, prompt) pair together, one batched decode per token."""
    logits = {seq: ctx.prefill(tokens, 0, seq) for seq, tokens in seqs_prompts}
    lengths = {seq: len(tokens) for seq, tokens in seqs_prompts}
    out = {seq: [] for seq, _ in seqs_prompts}
    for _ in range(n_new):
        seqs = sorted(out)
        nxt = [int(np.argmax(logits[s])) for s in seqs]
        rows = ctx.decode(nxt, [lengths[s] + len(out[s]) for s in seqs], seqs, [True] * len(seqs))
        for s, token, row in zip(seqs, nxt, rows):
            out[s].append(token)
            logits[s] = row
    return out


def test_batched_sequences_match_single(tiny_model):
    prompts = [tiny_model.tokenize(p) for p in PROMPTS]
    batched = Context(tiny_model, n_seq=3, n_ctx_seq=256)
    single = Context(tiny_model, n_seq=1, n_ctx_seq=256)
    together = greedy(batched, list(enumerate(prompts)), 12)
    for seq, tokens in enumerate(prompts):
        single.clear()
        assert greedy(single, [(0, tokens)], 12)[0] == together[seq]
    batched.close(), single.close()


def test_rollback_then_redecode_equals_fresh(tiny_model):
    tokens = tiny_model.tokenize("abc def ghi jkl")
    ctx = Context(tiny_model, n_seq=1, n_ctx_seq=256)
    ctx.prefill(tokens + tiny_model.tokenize(" xyz uvw"), 0)
    ctx.truncate(0, len(tokens) - 2)
    redone = ctx.prefill(tokens[-2:], len(tokens) - 2)
    ctx.clear()
    fresh = ctx.prefill(tokens, 0)
    np.testing.assert_allclose(redone, fresh, atol=1e-4)
    ctx.close()


def test_fork_copies_the_prefix(tiny_model):
    tokens = tiny_model.tokenize("the quick brown fox")
    ctx = Context(tiny_model, n_seq=3, n_ctx_seq=256)
    ctx.prefill(tokens[:-1], 0, seq=1)
    ctx.fork(1, range(3))
    rows = ctx.decode([tokens[-1]] * 3, [len(tokens) - 1] * 3, [0, 1, 2], [True] * 3)
    np.testing.assert_allclose(rows[0], rows[1], atol=1e-4)
    np.testing.assert_allclose(rows[2], rows[1], atol=1e-4)
    ctx.close()


def test_logprobs_normalise(tiny_model):
    ctx = Context(tiny_model, n_seq=1, n_ctx_seq=256)
    logits = ctx.prefill(tiny_model.tokenize("hello"), 0)
    logp = log_softmax(logits)
    assert np.exp(logp.astype(np.float64)).sum() == pytest.approx(1.0, abs=1e-4)
    for token in (0, int(np.argmax(logits)), tiny_model.n_vocab - 1):
        assert token_logprob(logits, token) == pytest.approx(float(logp[token]), abs=1e-4)
    ctx.close()


def test_seeded_sampling_is_reproducible(tiny_model):
    ctx = Context(tiny_model, n_seq=1, n_ctx_seq=256)
    logits = ctx.prefill(tiny_model.tokenize("hello"), 0)
    hot = Sampling(temperature=1.0, top_p=0.95)
    runs = [[sample(logits, hot, rng) for _ in range(50)] for rng in
            (np.random.default_rng(7), np.random.default_rng(7), np.random.default_rng(8))]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert len(set(runs[0])) > 1
    greedy_token = int(np.argmax(logits))
    assert sample(logits, Sampling(temperature=0.0), np.random.default_rng(0)) == greedy_token
    tiny_nucleus = Sampling(temperature=1.0, top_p=1e-6)
    assert {sample(logits, tiny_nucleus, np.random.default_rng(s)) for s in range(20)} == {greedy_token}
    ctx.close()


def test_sampling_follows_the_distribution(tiny_model):
    ctx = Context(tiny_model, n_seq=1, n_ctx_seq=256)
    logits = ctx.prefill(tiny_model.tokenize("hello"), 0)
    rng = np.random.default_rng(0)
    counts = np.bincount([sample(logits, Sampling(temperature=1.0), rng) for _ in range(4000)],
                         minlength=tiny_model.n_vocab)
    probs = np.exp(log_softmax(logits.astype(np.float64)))
    top = np.argsort(-probs)[:3]
    np.testing.assert_allclose(counts[top] / 4000, probs[top], atol=0.03)
    ctx.close()


def test_context_overflow_is_a_clear_error(tiny_model):
    from specguard_local.errors import SpecGuardError

    ctx = Context(tiny_model, n_seq=1, n_ctx_seq=256)
    with pytest.raises(SpecGuardError, match="do not fit"):
        ctx.prefill([65] * 300, 0)
    ctx.close()


def test_sample_steps_stops_early_once_every_candidate_is_hopeless(tiny_model):
    from specguard_local.generation import Session, sample_steps

    ctx = Context(tiny_model, n_seq=3, n_ctx_seq=256)
    session = Session(ctx)
    session.sync(tiny_model.tokenize("the cat"))
    rng = np.random.default_rng(0)
    cands = sample_steps(session, 3, Sampling(temperature=1.0), rng, 50, hopeless=lambda c: len(c.tokens) >= 4)
    assert all(len(c.tokens) <= 4 for c in cands)
    early = [c for c in cands if c.stop == "early"]
    assert early and all(len(c.tokens) == 4 for c in early)  # cut right when the last live one became hopeless
    hopeful = sample_steps(session, 3, Sampling(temperature=1.0), rng, 12, hopeless=lambda c: c.seq != 0)
    assert all(c.stop != "early" for c in hopeful)  # one candidate can still pass: nobody is cut short
    ctx.close()
