"""SpecGuard with token-level salvage (one target pass per drafted stretch serves the judge and the salvage), and
every verifier and two-part combination end to end on tiny models, in both ways of handling a refused step."""

import itertools
from dataclasses import replace

import pytest
from conftest import open_tiny_pair

from specguard_local import api
from specguard_local.decoders.options import Options
from specguard_local.engine import Context
from specguard_local.verify.probe import Probe
from specguard_local.verify.signals import Profile
from specguard_local.verify.stage import VERIFIERS, parse_verifier

NEAR_TIE = 0.5  # logits; llama.cpp's batch-shape numerics only flip argmaxes this close (as in test_sd)
QUESTION = "Tom has 3 boxes with 12 apples each. He eats 5 apples. How many apples are left?"


def salvage_run(rt, question=QUESTION, **options):
    return list(api.stream(rt, question, "specguard", Options(max_tokens=96, **{"adapt": False, **options})))


def test_verifier_parts_run_cheapest_first():
    profile = Profile(-5.0, 0.0, 0.0, 1.0, taus={"signals": 0.5, "target-judge": 0.9, "probe": 0.7})
    assert parse_verifier("target-judge+signals", profile).parts == ("signals", "target-judge")
    assert parse_verifier("target-judge+probe+signals", profile).taus == (0.5, 0.7, 0.9)
    assert parse_verifier("target-judge+signals", profile).early_rejection_tau() == 0.5  # the signals only fall
    assert parse_verifier("target-judge+probe", profile).early_rejection_tau() is None


def test_the_arithmetic_verifier_keeps_a_stretch_only_when_its_computations_are_right():
    from specguard_local.generation import Candidate
    from specguard_local.verify.stage import check

    verifier = parse_verifier("arithmetic+target-judge", Profile(-5.0, 0.0, 0.0, 1.0, taus={"target-judge": 0.9}))
    assert verifier.parts == ("arithmetic", "target-judge") and verifier.taus == (1.0, 0.9)  # a fixed τ of 1
    alone = parse_verifier("arithmetic", Profile(-5.0, 0.0, 0.0, 1.0))

    def never_read():
        raise AssertionError("the target's pass is not needed")

    for text, right in (("So 48 / 2 = 24 clips.", True), ("So 48 / 2 = 26 clips.", False), ("No sums here.", True)):
        scores = {}
        kept, read = check(alone, Candidate(seq=0, data=text.encode()), scores, never_read)
        assert kept is right and read is None and scores["arithmetic"] == float(right)


def test_salvage_defaults_to_the_verifier_that_reads_every_kept_stretch():
    from specguard_local.decoders.specguard import default_verifier

    both = Profile(-5.0, 0.0, 0.0, 1.0, taus={"signals": 0.9, "target-judge": 0.97})
    assert default_verifier(both, salvage=True) == "target-judge"
    assert default_verifier(both, salvage=False) == "signals"  # the paper's loop: the study's choice
    assert default_verifier(Profile(-5.0, 0.0, 0.0, 1.0, taus={"signals": 0.9}), salvage=True) == "signals"


@pytest.mark.real
def test_greedy_salvage_is_the_targets_greedy_output_up_to_near_ties(real_runtime):
    rt = real_runtime
    steps = salvage_run(rt, tau=1.01)  # the signals keep nothing: every stretch is read and salvaged
    tokens = [t for s in steps for t in s.tokens]
    assert sum(s.scores["salvaged"] for s in steps) > 0 and sum(s.scores["kept_whole"] for s in steps) == 0
    assert {s.verdict for s in steps} <= {"accepted", "salvaged"} and sum(s.accepted for s in steps) > 0
    prompt = rt.prompt_tokens(QUESTION)
    ctx = Context(rt.model("target"), n_seq=1, n_ctx_seq=2048)
    try:
        logits = ctx.decode(prompt + tokens, list(range(len(prompt + tokens))), [0] * len(prompt + tokens),
                            [True] * len(prompt + tokens))
    finally:
        ctx.close()
    for i, token in enumerate(tokens):  # every emitted token is the target's argmax, up to a near-tie
        row = logits[len(prompt) - 1 + i]
        assert row.max() - row[token] < NEAR_TIE
    # a refused stretch keeps the prefix the target agrees with and ends with the target's own token
    chunks = [c for s in steps for c in s.candidates]
    assert all(c["checked"] for c in chunks)
    assert any(0 < c["kept"] < c["n_tokens"] and c["target_token"] for c in chunks)


@pytest.mark.real
def test_signals_keep_only_stretches_that_end_their_step_without_the_target(real_runtime):
    steps = salvage_run(real_runtime, verifier="signals", tau=0.0)  # the signals keep everything they may judge
    assert all(c["checked"] for s in steps for c in s.candidates[:-1])  # cut short of its step: the target reads it
    last = [s.candidates[-1] for s in steps]
    assert all(c["kept"] == c["n_tokens"] and not c["checked"] for c in last if c["stop"] in ("step", "eos"))
    assert any(not c["checked"] for c in last)


@pytest.mark.real
def test_sampled_salvage_is_reproducible_and_uses_the_rejection_rule(real_runtime):
    a = salvage_run(real_runtime, tau=1.01, temperature=0.8, seed=5)
    b = salvage_run(real_runtime, tau=1.01, temperature=0.8, seed=5)
    assert [s.text for s in a] == [s.text for s in b]
    assert sum(s.scores["passes"] for s in a) > 0


@pytest.mark.real
def test_judge_keeps_whole_stretches_in_one_pass(real_runtime):
    steps = salvage_run(real_runtime, verifier="target-judge", tau=0.0)  # the judge keeps every stretch it reads
    assert all(s.verdict == "accepted" and s.scores["passes"] >= 1 for s in steps)
    assert sum(s.scores["kept_whole"] for s in steps) == sum(s.drafted for s in steps)


# --- every verifier and two-part combination, both ways of handling a refused step, on tiny models ------------

COMBINATIONS = list(VERIFIERS) + ["+".join(pair) for pair in itertools.combinations(VERIFIERS, 2)]


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("verifiers")
    with open_tiny_pair(folder) as pair:
        yield pair.rt, folder


def settings(rt, folder, verifier, keep: bool) -> dict:
    """Options under which every part of `verifier` keeps every step (`keep`), or only its most expensive part
    refuses (so the cheaper parts run first and pass, and a refusal is always decided last)."""
    parts = parse_verifier(verifier, Profile(0, 1, 0, 1, taus=dict.fromkeys(VERIFIERS, 0.5))).parts
    taus = {part: 0.0 for part in VERIFIERS}
    if not keep:
        taus[parts[-1]] = 1.01
    profile = folder / f"profile-{verifier}-{keep}.json"
    Profile(-12.0, 0.0, 0.0, 1.0, taus=taus, draft=rt.ids["draft"], target=rt.ids["target"]).save(profile)
    probe = folder / "probe-target.json"  # on the target's hidden states: needs the target's pass
    width = rt.model("target").n_embd
    Probe("target", [0.0] * width, [1.0] * width, [0.0] * width, -20.0, draft=rt.ids["draft"],
          target=rt.ids["target"]).save(probe)
    return {"verifier": verifier, "profile": str(profile), "probe": str(probe)}


@pytest.mark.parametrize("salvage", [True, False], ids=["salvage", "paper"])
@pytest.mark.parametrize("verifier", COMBINATIONS)
def test_every_verifier_keeps_or_refuses_end_to_end(tiny_pair, verifier, salvage):
    rt, folder = tiny_pair
    # steps of 8 tokens, shorter than a stretch's cap, and no unsure stop: every stretch ends its step
    opts = Options(max_tokens=24, max_step_tokens=8, adapt=False, salvage=salvage, draft_p_min=0.0)
    kept = list(api.stream(rt, "count", "specguard", replace(opts, **settings(rt, folder, verifier, True))))
    assert kept and all(s.verdict == "accepted" and s.source == "draft" for s in kept)
    refused = list(api.stream(rt, "count", "specguard", replace(opts, **settings(rt, folder, verifier, False))))
    assert refused and all(s.source == "target" for s in refused)
    assert {s.verdict for s in refused} == ({"salvaged"} if salvage else {"rejected"})
    target = list(api.stream(rt, "count", "target", Options(max_tokens=24, max_step_tokens=8)))
    emitted, plain = [t for s in refused for t in s.tokens], [t for s in target for t in s.tokens]
    assert emitted[:8] == plain[:8]  # the target decides every refused step (batch-shape numerics aside)


@pytest.mark.parametrize("verifier", ["target-judge+signals", "signals+probe"])
def test_a_refusal_by_the_signals_never_reads_a_missing_score(tiny_pair, verifier):
    """The two defects of the old AND: `target-judge+signals` read the judge's score before it was computed, and
    `signals+probe` scored a target-feature probe on no features, whenever the signals refused."""
    rt, folder = tiny_pair
    options = settings(rt, folder, verifier, True)
    refusing = folder / f"signals-refuse-{verifier}.json"
    Profile(-12.0, 0.0, 0.0, 1.0, taus={**dict.fromkeys(VERIFIERS, 0.0), "signals": 1.01}, draft=rt.ids["draft"],
            target=rt.ids["target"]).save(refusing)
    for salvage in (False, True):
        steps = list(api.stream(rt, "count", "specguard", Options(max_tokens=16, max_step_tokens=8, adapt=False,
                                                                  salvage=salvage,
                                                                  **{**options, "profile": str(refusing)})))
        assert steps and all(s.source == "target" for s in steps)
        assert all("judge" not in s.scores and "probe_safe" not in s.scores for s in steps if not salvage)
