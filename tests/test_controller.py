"""The cost-aware controller of SpecGuard: its choice (not a time) where drafting clearly pays and where it clearly
does not, on real llama.cpp with tiny random models (a 4-layer draft against a 96-layer target)."""

import pytest

from specguard_local import api
from specguard_local.decoders.controller import CARRY_TOKENS, PROBE_EVERY, Controller
from specguard_local.decoders.options import Options
from conftest import open_tiny_pair


@pytest.fixture(scope="module")
def cheap_draft(tmp_path_factory):
    with open_tiny_pair(tmp_path_factory.mktemp("controller"), target_layers=96) as pair:
        yield pair.rt, str(pair.profile)


def solve(pair, **options):
    """The paper's loop unless a test asks for salvage: its verdicts are one per drafted step."""
    rt, profile = pair
    opts = Options(max_tokens=96, max_step_tokens=8, profile=profile, **{"salvage": False, **options})
    return list(api.stream(rt, "Tell me a long story about numbers.", "specguard", opts))  # 12 steps, no eos


def test_drafting_that_pays_goes_on(cheap_draft):
    steps = solve(cheap_draft, tau=0.0)  # every draft step is kept, and the draft is 24x shallower
    sources = [s.source for s in steps]
    assert sources[2] == "target" and steps[2].verdict == "generated"  # the one step that measures the target
    assert sources[3:] == ["draft"] * (len(steps) - 3)  # then drafting goes on: it is measured to pay
    control = steps[-1].control
    assert control["speculating"] and control["spec_ms_per_token"] < control["target_ms_per_token"]


def test_drafting_that_never_pays_stops(cheap_draft):
    steps = solve(cheap_draft, tau=1.01)  # every draft step is rejected: drafting only adds cost
    verdicts = [s.verdict for s in steps]
    assert len(steps) == 12 and all(s.source == "target" for s in steps)
    assert verdicts[:2] == ["rejected", "rejected"]  # measured for MIN_STEPS steps
    assert verdicts[2:2 + PROBE_EVERY] == ["generated"] * PROBE_EVERY  # then the target writes alone
    assert verdicts[2 + PROBE_EVERY] == "rejected"  # a probe drafts once more, loses, and the answer ends alone
    assert set(verdicts[3 + PROBE_EVERY:]) == {"generated"}
    assert not steps[-1].control["speculating"] and "ms/token" in steps[-1].control["reason"]
    stats = api.summarize("specguard", "q", steps, 1.0).stats
    assert stats["control"]["speculating"] is False and stats["target_call_fraction"] == 1.0
    again = solve(cheap_draft, tau=1.01)  # the next answer on the same loaded pair knows it already
    assert again[0].verdict == "generated" and "draft_prefill" not in again[0].timings


def test_no_adapt_always_drafts(cheap_draft):
    steps = solve(cheap_draft, tau=1.01, adapt=False)  # even after the runs above learnt that drafting loses
    assert {s.verdict for s in steps} == {"rejected"}


def test_probes_come_back_and_stop_after_a_lost_one():
    control = Controller()
    control.record_speculative(1.0, 10, 0.5, 10, 0.0, 0, 0.0, 0)
    control.record_speculative(1.0, 10, 0.5, 10, 0.0, 0, 0.0, 0)
    calls = [control.speculate() for _ in range(PROBE_EVERY + 1)]  # S = 0.1 s/token > T = 0.05
    assert calls == [False] * PROBE_EVERY + [True]  # a probe after PROBE_EVERY target-only steps
    control.record_speculative(1.0, 10, 0.5, 10, 0.0, 0, 0.2, 0)  # the probe loses too
    calls = [control.speculate() for _ in range(2 * PROBE_EVERY + 1)]
    assert calls == [False] * 2 * PROBE_EVERY + [True]  # so the next one waits twice as long
    carried = control.next_answer()
    assert not carried.speculate() and carried.per_token == control.per_token  # a new answer starts target-only


def test_a_probe_that_wins_halves_the_wait_instead_of_forgetting_the_losses():
    control = Controller()
    control.record_speculative(1.0, 10, 0.5, 10, 0.0, 0, 0.0, 0)
    control.record_speculative(1.0, 10, 0.5, 10, 0.0, 0, 0.0, 0)  # loses: S = 0.1 s/token > T = 0.05
    for lost in range(2):  # two lost probes: the wait is 4 x PROBE_EVERY
        while not control.speculate():
            pass
        control.record_speculative(1.0, 10, 0.0, 0, 0.0, 0, 0.0, 0)
    assert control.probes_lost == 2
    while not control.speculate():
        pass
    control.record_speculative(0.1, 100, 0.0, 0, 0.0, 0, 0.0, 0)  # a probe that wins (S falls below 1.1 T) …
    assert control.speculating and control.probes_lost == 1
    control.record_speculative(10.0, 10, 0.0, 0, 0.0, 0, 0.0, 0)  # … and drafting loses again in the same answer
    assert not control.speculating
    calls = [control.speculate() for _ in range(2 * PROBE_EVERY + 1)]
    assert calls == [False] * 2 * PROBE_EVERY + [True]  # the wait is halved, not back to PROBE_EVERY


def test_what_an_answer_hands_on_weighs_little_so_a_slow_one_is_soon_outweighed():
    slow = Controller()
    slow.spec_s, slow.spec_tokens, slow.target_s, slow.target_tokens = 740.0, 1000, 8.7, 100  # 740 vs 87 ms/token
    carried = slow.next_answer()
    assert carried.per_token == pytest.approx(slow.per_token)  # the same rates …
    assert carried.spec_tokens == CARRY_TOKENS and carried.target_tokens == 100  # … weighing at most CARRY_TOKENS
    assert not carried.speculate()  # it starts target-only, as the rates say
