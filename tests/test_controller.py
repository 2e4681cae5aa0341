"""The cost-aware controller of SpecGuard: its choice (not a time) where drafting clearly pays and where it clearly
does not, on real llama.cpp with tiny random models (a 4-layer draft against a 96-layer target)."""

import pytest

from specguard_local import api
from specguard_local.decoders.controller import CARRY_TOKENS, EXPLORE_SHARE, PROBE_EVERY, Controller
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


def losing_controller() -> Controller:
    """Two drafted steps at S = 0.1 s/token against T = 0.05 measured on the paper loop's rewrites: drafting loses."""
    control = Controller()
    control.record_speculative(1.0, 10, 0.5, 10, 0.0, 0, 0.0, 0)
    control.record_speculative(1.0, 10, 0.5, 10, 0.0, 0, 0.0, 0)
    assert not control.speculating
    return control


def write_alone(control: Controller, steps: int, seconds: float = 0.5, tokens: int = 10) -> list[bool]:
    """`steps` steps the target writes alone unless a probe is due; the controller's calls."""
    calls = []
    for _ in range(steps):
        calls.append(control.speculate())
        if calls[-1]:
            return calls
        control.record_target(seconds, tokens, 0.0, 0)
    return calls


def test_a_lost_probe_is_paid_for_from_a_share_of_the_target_s_own_time():
    control = losing_controller()
    assert write_alone(control, PROBE_EVERY + 1) == [False] * PROBE_EVERY + [True]  # the first probe is free
    control.record_speculative(2.0, 10, 0.0, 0, 0.0, 0, 1.0, 0)  # it loses: 2 s (catch-up included) for 10 tokens
    charged = 2.0 - 10 * control.per_token[1]
    assert not control.speculating and control.explored_s == pytest.approx(charged) == control.probe_cost
    # the next probe waits until the target alone has written enough for the share to pay both episodes
    calls = write_alone(control, 10_000, seconds=0.7)
    assert calls[-1] and EXPLORE_SHARE * control.alone_s >= 2 * charged > EXPLORE_SHARE * (control.alone_s - 0.7)
    carried = control.next_answer()
    assert not carried.speculate() and carried.per_token == control.per_token  # a new answer starts target-only
    assert (carried.alone_s, carried.explored_s, carried.probe_cost) == (control.alone_s, control.explored_s,
                                                                          control.probe_cost)


def test_a_probe_episode_that_saves_time_pays_for_the_next_probes():
    control = losing_controller()
    write_alone(control, PROBE_EVERY + 1)
    for _ in range(3):  # the probe wins (0.1 s for 100 tokens against T = 0.05 s/token) and drafting goes on
        control.record_speculative(0.1, 100, 0.0, 0, 0.0, 0, 0.0, 0)
    assert control.speculating and control.exploring and control.explored_s == pytest.approx(-14.7)
    control = control.next_answer()  # the next answer goes on drafting, until a slow step makes it lose
    control.record_speculative(7.0, 10, 0.0, 0, 0.0, 0, 0.0, 0)
    assert not control.speculating and not control.exploring
    assert control.explored_s == pytest.approx(-8.2) and control.probe_cost == 0  # the episode saved time …
    assert write_alone(control, PROBE_EVERY + 1) == [False] * PROBE_EVERY + [True]  # … so the next probe is due


def test_what_an_answer_hands_on_weighs_little_so_a_slow_one_is_soon_outweighed():
    slow = Controller()
    slow.spec_s, slow.spec_tokens, slow.target_s, slow.target_tokens = 740.0, 1000, 8.7, 100  # 740 vs 87 ms/token
    carried = slow.next_answer()
    assert carried.per_token == pytest.approx(slow.per_token)  # the same rates …
    assert carried.spec_tokens == CARRY_TOKENS and carried.target_tokens == 100  # … weighing at most CARRY_TOKENS
    assert not carried.speculate()  # it starts target-only, as the rates say
