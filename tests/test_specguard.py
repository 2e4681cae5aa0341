"""The SpecGuard loop and its signals on the embedded real pair (and the selector / profile on their own)."""

import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import NATALIA

from specguard_local import api
from specguard_local.decoders.options import Options
from specguard_local.errors import SpecGuardError
from specguard_local.verify.grounding import PrefixMass, extend_prefix, step_grounding
from specguard_local.verify.signals import Profile, decision_score, default_profile, select

pytestmark = pytest.mark.real
SHORT = "What is 12 plus 30? Answer briefly."


def run(rt, method, question=SHORT, **options):
    """The paper's loop: the cost-aware controller and salvage are off unless a test turns them on
    (tests/test_controller.py, tests/test_salvage.py)."""
    return list(api.stream(rt, question, method, Options(max_tokens=160, **{"adapt": False, "salvage": False,
                                                                             **options})))


def test_tau_zero_accepts_every_draft_step(real_runtime):
    steps = run(real_runtime, "specguard", tau=0.0)
    assert steps and all(s.source == "draft" and s.verdict == "accepted" for s in steps)
    assert all(0.0 <= s.scores["r"] <= 1.0 for s in steps)


def test_tau_above_one_is_target_only_greedy(real_runtime):
    guarded = run(real_runtime, "specguard", tau=1.01)
    plain = run(real_runtime, "target")
    assert all(s.source == "target" and s.verdict == "rejected" for s in guarded)
    assert "".join(s.text for s in guarded) == "".join(s.text for s in plain)


def test_k_candidates_are_drafted_and_selected(real_runtime):
    steps = run(real_runtime, "specguard", k=3, temperature=0.7, seed=1)
    first = steps[0]
    assert len(first.candidates) == 3 and 0 <= first.chosen < 3
    assert first.candidates[first.chosen]["r"] == pytest.approx(first.scores["r"])
    assert len({c["text"] for s in steps for c in s.candidates}) > len(steps)  # candidates really differ


def test_seeded_specguard_is_reproducible(real_runtime):
    a = run(real_runtime, "specguard", k=2, temperature=0.8, seed=3)
    b = run(real_runtime, "specguard", k=2, temperature=0.8, seed=3)
    assert [s.text for s in a] == [s.text for s in b]


def test_grounding_prefers_steps_that_copy_the_question(real_runtime):
    """A step quoting the question's numbers is better grounded than the same step with unrelated numbers."""
    from specguard_local.capture import last_layers

    rt = real_runtime
    session = rt.session("draft", n_seq=1, layers=3)
    capture = session.ctx.hook
    prompt = rt.prompt_tokens(NATALIA)
    session.sync(prompt)
    a1, a2, a3 = last_layers(rt.model("draft").n_layer)
    mass = extend_prefix(PrefixMass.empty(), capture.rows(a1), capture.rows(a2))

    def grounding(step_text):
        tokens = rt.model("draft").tokenize(step_text, special=False)
        session.ctx.truncate(0, len(prompt))  # back to the prompt, so the whole step is decoded and captured
        session.tokens = list(prompt)
        session.sync(prompt + tokens)
        return step_grounding(mass, capture.rows(a1), capture.rows(a2), capture.rows(a3))

    copied = grounding("In April, Natalia sold 48 clips. In May, she sold half as many: 48 / 2 = 24 clips.\n\n")
    unrelated = grounding("In April, Natalia sold 7391 clips. In May, she sold half as many: 7391 / 2 = 6158 clips.\n\n")
    assert copied.min() > unrelated.min()


def test_selector_picks_the_least_outlying_candidate():
    rng = np.random.default_rng(0)
    centre = rng.normal(size=16)
    cluster = [centre + 0.05 * rng.normal(size=16) for _ in range(3)]
    outlier = -centre
    embeddings = np.stack([outlier, *cluster])
    assert select(embeddings) in (1, 2, 3)
    assert select(embeddings[:1]) == 0


def test_decision_score_and_profile_round_trip(tmp_path):
    profile = Profile(logprob_lo=-4.0, logprob_hi=0.0, grounding_lo=0.2, grounding_hi=0.6, draft="a", target="b")
    path = tmp_path / "p.json"
    profile.save(path)
    assert Profile.load(path) == profile
    l_norm, g_norm, r = decision_score(-2.0, 0.5, profile)
    assert (l_norm, g_norm) == pytest.approx((0.5, 0.75)) and r == pytest.approx(0.3 * 0.5 + 0.7 * 0.75)
    assert decision_score(-9.0, 0.9, profile)[:2] == (0.0, 1.0)  # clipped to [0, 1]
    assert decision_score(-2.0, 0.5, profile, use_grounding=False)[2] == pytest.approx(0.5)
    assert default_profile().logprob_lo < default_profile().logprob_hi


@pytest.mark.parametrize("content", ["not json", json.dumps({"logprob_lo": 1}),
                                     json.dumps({"logprob_lo": 0, "logprob_hi": -1, "grounding_lo": 0,
                                                 "grounding_hi": 1})])
def test_bad_profile_is_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SpecGuardError, match="bad calibration profile"):
        Profile.load(path)


@pytest.fixture(scope="module")
def probe_files(real_runtime, tmp_path_factory):
    """Probe files for the real pair whose P(harmful) is ~0 (accept; on target hidden states) or ~1 (reject; on
    draft hidden states), so both feature paths run."""
    from specguard_local.verify.probe import Probe

    rt, folder = real_runtime, tmp_path_factory.mktemp("probes")
    paths = {}
    for name, features, intercept in (("safe", "target", -20.0), ("harmful", "draft", 20.0)):
        width = rt.model(features).n_embd
        paths[name] = folder / f"{name}.json"
        Probe(features, [0.0] * width, [1.0] * width, [0.0] * width, intercept, draft=rt.ids["draft"],
              target=rt.ids["target"]).save(paths[name])
    return paths


def verifier_settings(verifier, probe_files, folder):
    """Options under which `verifier` accepts every draft step, and options under which it rejects every one."""
    if verifier == "probe":
        return {"tau": 0.5, "probe": str(probe_files["safe"])}, {"tau": 0.5, "probe": str(probe_files["harmful"])}
    if "+" in verifier:  # a combination takes each part's τ from the profile
        settings = []
        for name, judge_tau in (("accept", 0.0), ("reject", 1.01)):
            path = folder / f"{name}.json"
            replace(default_profile(), taus={"signals": 0.0, "target-judge": judge_tau}).save(path)
            settings.append({"profile": str(path)})
        return tuple(settings)
    return {"tau": 0.0}, {"tau": 1.01}


@pytest.mark.parametrize("verifier", ["signals", "target-judge", "probe", "signals+target-judge"])
def test_always_accept_is_draft_only_and_always_reject_is_target_only(real_runtime, probe_files, verifier, tmp_path):
    accept, reject = verifier_settings(verifier, probe_files, tmp_path)
    kept = run(real_runtime, "specguard", verifier=verifier, **accept)
    assert kept and all(s.source == "draft" and s.verdict == "accepted" for s in kept)
    assert "".join(s.text for s in kept) == "".join(s.text for s in run(real_runtime, "draft"))
    if verifier != "signals":
        assert all(0.0 <= s.scores["judge"] <= 1.0 for s in kept)  # the target read every step
    rewritten = run(real_runtime, "specguard", verifier=verifier, **reject)
    assert rewritten and all(s.source == "target" and s.verdict == "rejected" for s in rewritten)
    assert "".join(s.text for s in rewritten) == "".join(s.text for s in run(real_runtime, "target"))


def test_bad_verifier_specs_are_clear_errors(real_runtime, tmp_path):
    signals_only = tmp_path / "signals.json"
    replace(default_profile(), taus={"signals": 0.7}).save(signals_only)
    for spec, message in (("nonsense", "bad --verifier"), ("signals+signals", "bad --verifier"),
                          ("probe", "no τ for probe")):
        with pytest.raises(SpecGuardError, match=message):
            run(real_runtime, "specguard", verifier=spec, profile=str(signals_only))
    with pytest.raises(SpecGuardError, match="single verifier"):
        run(real_runtime, "specguard", verifier="signals+target-judge", tau=0.5)
