"""Token-level speculative decoding: lossless up to llama.cpp's numerics, the rejection rule, the cost model."""

import numpy as np
import pytest
from tiny_gguf import write_tiny_model

from specguard_local import api
from specguard_local.decoders.options import Options
from specguard_local.decoders.sd import PROBE_EVERY, PROBES_LOST, CostModel
from specguard_local.engine import Context
from specguard_local.runtime import Runtime, RuntimeConfig
from specguard_local.verify.stage import accept_or_resample

NEAR_TIE = 0.5  # logits; llama.cpp's batch-shape numerics only flip argmaxes this close


def generated_tokens(rt, method, question, **options):
    return [t for s in api.stream(rt, question, method, Options(**options)) for t in s.tokens]


def full_sequence_logits(model, tokens):
    ctx = Context(model, n_seq=1, n_ctx_seq=2048)
    try:
        return ctx.decode(tokens, list(range(len(tokens))), [0] * len(tokens), [True] * len(tokens))
    finally:
        ctx.close()


@pytest.mark.real
@pytest.mark.parametrize("draft_max", [1, 4])
def test_greedy_sd_is_the_targets_greedy_output_up_to_near_ties(real_runtime, draft_max):
    question = "Tom has 3 boxes with 12 apples each. He eats 5 apples. How many apples are left?"
    prompt = real_runtime.prompt_tokens(question)
    sd_steps = list(api.stream(real_runtime, question, "sd",
                               Options(max_tokens=96, draft_max=draft_max, draft_fixed=True)))
    sd_tokens = [t for s in sd_steps for t in s.tokens]
    assert sum(s.accepted for s in sd_steps) > 0  # the verification path really ran
    target_tokens = generated_tokens(real_runtime, "target", question, max_tokens=96)
    logits = full_sequence_logits(real_runtime.model("target"), prompt + sd_tokens)
    # every emitted token is the target's argmax (up to a near-tie) given the tokens before it
    for i, token in enumerate(sd_tokens):
        row = logits[len(prompt) - 1 + i]
        assert row.max() - row[token] < NEAR_TIE
    # and sd agrees with target-only greedy until a near-tie, if they diverge at all
    diverge = next((i for i, (a, b) in enumerate(zip(sd_tokens, target_tokens)) if a != b), None)
    if diverge is not None:
        row = np.sort(logits[len(prompt) - 1 + diverge])
        assert row[-1] - row[-2] < NEAR_TIE


def test_rejection_rule_preserves_the_target_distribution():
    rng = np.random.default_rng(0)
    target = rng.dirichlet(np.ones(6))
    draft = rng.dirichlet(np.ones(6) * 0.5)
    draws = 40000
    out = []
    for _ in range(draws):
        token = int(rng.choice(6, p=draft))
        replacement = accept_or_resample(target, draft, token, rng)
        out.append(token if replacement is None else replacement)
    np.testing.assert_allclose(np.bincount(out, minlength=6) / draws, target, atol=0.01)


def test_cost_aware_sd_settles_on_plain_decoding_when_the_draft_always_disagrees(tmp_path):
    target_path = write_tiny_model(tmp_path / "target.gguf", seed=0)
    draft_path = write_tiny_model(tmp_path / "draft.gguf", seed=1)  # same vocabulary, unrelated weights
    with Runtime(RuntimeConfig(draft=str(draft_path), target=str(target_path), n_ctx=512)) as rt:
        steps = list(api.stream(rt, "hello there", "sd", Options(max_tokens=150, draft_max=4)))
    accepted = sum(s.accepted for s in steps)
    drafted = sum(s.drafted for s in steps)
    assert accepted <= 0.1 * drafted
    assert steps[-1].scores["draft_len_mean"] < 1.0  # mostly n = 0: plain target decoding


def simulate_rounds(cost, acceptance, rounds, rng, target_s=1.0, sync_s=0.5, per_token_s=0.3):
    """Drive the cost model with rounds whose wall times follow its own model: R(n) = t + s + n·c."""
    for _ in range(rounds):
        n = cost.choose()
        accepted = 0
        while accepted < n and rng.random() < acceptance:
            accepted += 1
        round_s = target_s + (sync_s + n * per_token_s if n else 0.0)
        cost.update(n, accepted, round_s, sync_s if n else 0.0, 1 if n else 0, n * 0.2)


def test_cost_model_drafts_long_when_drafting_pays():
    # t = 1, s = 0.5, c = 0.3, α = 0.9: E(4)/R(4) = 4.1/2.7 tokens per unit time against 1 for plain decoding
    cost = CostModel(draft_max=4)
    simulate_rounds(cost, 0.9, 200, np.random.default_rng(0))
    assert np.mean(cost.chosen[-100:]) > 3


def test_cost_model_falls_back_to_plain_decoding_and_stops_probing():
    # α = 0: every round with a draft costs more and emits one token, like plain decoding
    cost = CostModel(draft_max=4)
    simulate_rounds(cost, 0.0, 500, np.random.default_rng(0))
    drafting_rounds = [i for i, n in enumerate(cost.chosen) if n]
    assert drafting_rounds == [PROBE_EVERY * (i + 1) - 1 for i in range(PROBES_LOST)]  # one-token probes, then none
    assert sum(cost.chosen) == PROBES_LOST
    assert cost.best() == 0
