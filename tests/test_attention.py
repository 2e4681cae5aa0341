"""Attention capture (real llama.cpp eval callback) and the O(step × context) rollout grounding."""

import numpy as np
import pytest

from specguard_local.capture import Capture, last_layers
from specguard_local.engine import Context, Sampling
from specguard_local.generation import Session, sample_steps
from specguard_local.verify.grounding import PrefixMass, extend_prefix, extend_step, step_grounding
from specguard_local.verify.signals import Grounding, Profile


def random_attention(rng, n, renormalise, threshold=0.01):
    """A causal, head-averaged-like attention matrix, sparsified (and renormalised) like the capture does."""
    scores = rng.normal(size=(n, n)) * 2
    scores[np.triu_indices(n, 1)] = -np.inf
    attn = np.exp(scores - scores.max(axis=1, keepdims=True))
    attn /= attn.sum(axis=1, keepdims=True)
    attn[attn < threshold] = 0
    return attn / attn.sum(axis=1, keepdims=True) if renormalise else attn


@pytest.mark.parametrize("n_layers", [3, 4])
@pytest.mark.parametrize("renormalise", [True, False])
@pytest.mark.parametrize("n_prompt,step_sizes", [(5, [3]), (12, [4, 1, 6]), (1, [2, 2]), (60, [30, 5])])
def test_grounding_matches_dense_rollout(n_prompt, step_sizes, renormalise, n_layers):
    rng = np.random.default_rng(n_prompt)
    n = n_prompt + sum(step_sizes)
    attention = [random_attention(rng, n, renormalise) for _ in range(n_layers)]  # first layer first
    rollout = np.linalg.multi_dot(attention[::-1])  # R = A_L ··· A_1
    mass = extend_prefix(PrefixMass.empty(n_layers), *(a[:n_prompt] for a in attention[:-1]))
    start = n_prompt
    for size in step_sizes:
        rows = [a[start:start + size] for a in attention]
        grounding = step_grounding(mass, *rows)
        np.testing.assert_allclose(grounding, rollout[start:start + size, :start].sum(axis=1), atol=1e-12)
        levels = [[] for _ in attention]  # the same step scored token by token, as early rejection does
        running = [extend_step(mass, levels, *(r[i] for r in rows)) for i in range(size)]
        np.testing.assert_allclose(running, grounding, atol=1e-12)
        mass = extend_prefix(mass, *rows[:-1])  # the step is accepted: it joins I
        start += size


def test_capture_shapes_and_positions(tiny_model):
    layers = last_layers(tiny_model.n_layer)
    capture = Capture(layers, hidden=True, threshold=0.0)
    ctx = Context(tiny_model, n_seq=1, n_ctx_seq=256, hook=capture)
    tokens = tiny_model.tokenize("the cat sat on the mat")
    ctx.prefill(tokens, 0)
    for layer in layers:
        rows = capture.rows(layer)
        assert rows.shape[0] == len(tokens) and rows.shape[1] >= len(tokens)
        np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-5)  # threshold 0: softmax rows
        for pos, row in enumerate(rows):  # causal: cell == position, nothing after the token itself
            assert row[pos] > 0 and not row[pos + 1:].any()
    assert capture.rows("hidden").shape == (1, tiny_model.n_embd)  # only the output token's hidden state
    ctx.close()


def test_candidate_rows_match_a_fresh_evaluation(tiny_model):
    """After forks, rollbacks and batched drafting, each candidate's rows are those of its own token sequence."""
    layers = last_layers(tiny_model.n_layer)
    capture = Capture(layers, threshold=0.0)
    ctx = Context(tiny_model, n_seq=3, n_ctx_seq=256, hook=capture)
    session = Session(ctx)
    session.sync(tiny_model.tokenize("once upon a time there"))
    rng = np.random.default_rng(0)
    first = sample_steps(session, 3, Sampling(temperature=1.0), rng, 6, capture)
    session.adopt(first[1])  # sequence 1 holds the accepted step; the others must be rebuilt from it
    cands = sample_steps(session, 3, Sampling(temperature=1.0), rng, 5, capture)
    session.sync(session.tokens + [65, 66])  # a rollback of the candidates plus a prefill, as after a target step
    cands += sample_steps(session, 3, Sampling(temperature=1.0), rng, 4, capture)
    fresh_capture = Capture(layers, threshold=0.0)
    fresh = Context(tiny_model, n_seq=1, n_ctx_seq=256, hook=fresh_capture)
    for cand in cands:
        prefix = session.tokens if cand in cands[3:] else session.tokens[:-2]
        fresh.clear()
        fresh.prefill(prefix + cand.tokens, 0)
        for layer in layers:
            expected = fresh_capture.rows(layer)[len(prefix):]
            got = cand.attention(layer)
            width = min(expected.shape[1], got.shape[1])
            np.testing.assert_allclose(got[:, :width], expected[:, :width], atol=1e-3)
    ctx.close(), fresh.close()


def test_running_score_of_early_rejection_equals_the_whole_step_score(tiny_model):
    """The r that early rejection updates after every drafted token ends equal to the step's full score."""
    capture = Capture(last_layers(tiny_model.n_layer))
    ctx = Context(tiny_model, n_seq=2, n_ctx_seq=256, hook=capture)
    session = Session(ctx)
    session.sync(tiny_model.tokenize("once upon a time there"))
    grounding = Grounding.start(capture)
    grounding.absorb_prefill()
    profile = Profile(logprob_lo=-12.0, logprob_hi=0.0, grounding_lo=0.0, grounding_hi=1.0)
    seen = []

    def never_hopeless(cand):  # records the running score, never stops drafting
        seen.append(grounding.running_r(cand, profile))
        return False

    cands = sample_steps(session, 2, Sampling(temperature=1.0), np.random.default_rng(1), 12, capture, never_hopeless)
    assert len(seen) == sum(len(c.tokens) for c in cands)  # asked once per drafted token
    for cand in cands:
        assert len(cand.levels[-1]) == len(cand.tokens)
        assert grounding.running_r(cand, profile) == pytest.approx(grounding.signals(cand, profile)["r"], abs=1e-9)
    ctx.close()
