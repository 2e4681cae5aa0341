"""TriSpec-style cascade and RSD-style judge on the embedded real pair, plus their pure parts."""

import numpy as np
import pytest

from specguard_local import api
from specguard_local.decoders.options import Options
from specguard_local.decoders.trispec import lookup, margin

QUESTION = "Tom has 3 boxes with 12 apples each. He eats 5 apples. How many apples are left?"


def run(rt, method, **options):
    return list(api.stream(rt, QUESTION, method, Options(max_tokens=96, **options)))


def test_lookup_continues_the_latest_longest_match():
    assert lookup([5, 1, 2, 3, 9, 1, 2, 4, 7, 1, 2], 3) == [4, 7, 1]  # "1 2" last seen before "4 7 1"
    assert lookup([5, 6, 7], 3) == []
    assert lookup([1, 2, 3, 1, 2, 3], 2) == [1, 2]  # 3-gram "1 2 3" first


def test_margin_is_top1_minus_top2_probability():
    token, gap = margin(np.log(np.array([0.1, 0.6, 0.3])))
    assert token == 1 and gap == pytest.approx(0.3)


@pytest.mark.real
def test_trispec_trusting_nothing_is_target_greedy(real_runtime):
    cascade = run(real_runtime, "trispec", lam=1.01)  # the proxy is never trusted: the target checks every token
    plain = run(real_runtime, "target")
    assert sum(s.scores["proxy_tokens"] for s in cascade) == 0
    assert sum(s.target_tokens for s in cascade) == sum(len(s.tokens) for s in cascade)
    a = [t for s in cascade for t in s.tokens]
    b = [t for s in plain for t in s.tokens]
    assert a[:16] == b[:16]  # batch-shape numerics may flip a later near-tie, as for sd


@pytest.mark.real
def test_trispec_trusting_everything_never_calls_the_target(real_runtime):
    steps = run(real_runtime, "trispec", lam=0.0)
    assert steps and sum(s.target_tokens for s in steps) == 0
    result = api.summarize("trispec", QUESTION, steps, 1.0)
    assert result.stats["target_call_fraction"] == 0.0


@pytest.mark.real
def test_rsd_thresholds(real_runtime):
    kept = run(real_runtime, "rsd", delta=0.0)
    assert all(s.verdict == "accepted" and 0 <= s.scores["judge"] <= 1 for s in kept)
    rewritten = run(real_runtime, "rsd", delta=1.01)
    assert all(s.verdict == "rejected" and s.source == "target" for s in rewritten)
    assert "".join(s.text for s in rewritten) == "".join(s.text for s in run(real_runtime, "target"))
