"""Checking a student's own steps (`verify.solution`, `specguard-local check`): tiny models for the mechanics, the
embedded pair for a real corrupted solution."""

import json
import math
import subprocess
import sys

import pytest

from conftest import NATALIA, open_tiny_pair
from specguard_local.errors import SpecGuardError
from specguard_local.verify.signals import Profile, default_profile
from specguard_local.verify.solution import check_solution, split_steps

RIGHT = ["In April, Natalia sold 48 clips.",
         "In May, she sold half as many: 48 / 2 = 24 clips.",
         "Altogether she sold 48 + 24 = 72 clips. The answer is \\boxed{72}."]
WRONG = [RIGHT[0], "In May, she sold half as many: 48 / 2 = 26 clips.",
         "Altogether she sold 48 + 26 = 74 clips. The answer is \\boxed{74}."]


def test_corruptions_change_one_thing():
    import random
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    from check_study import auroc, corrupt

    step = "She sold 48 / 2 = 24 clips, so 48 + 24 + 10 = 82 in all."
    kinds = {}
    for seed in range(40):
        changed, kind = corrupt(step, random.Random(seed))
        assert changed != step
        kinds[kind] = changed
    assert set(kinds) == {"number", "operation", "dropped"}
    assert kinds["number"].startswith("She sold 48 / 2 = 24 clips, so 48 + 24 + 10 = ") and "82" not in kinds["number"]
    assert len(kinds["dropped"]) < len(step)
    assert corrupt("No numbers here.", random.Random(0)) is None
    assert auroc([3.0, 2.0], [1.0, 2.0]) == 0.875


def test_steps_are_paragraphs():
    assert split_steps("a\n\n\nb\r\n\r\nc  \n\n  ") == ["a", "b", "c"]
    assert split_steps("one line\nsame step") == ["one line\nsame step"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with open_tiny_pair(tmp_path_factory.mktemp("check")) as pair:
        yield pair.rt, Profile.load(pair.profile)


def test_every_step_is_scored_and_the_threshold_decides(tiny):
    rt, profile = tiny
    prompt = rt.prompt_tokens("count")
    steps = ["1 + 2 = 3", "3 + 4 = 7", "so 7"]
    trusting = check_solution(rt, prompt, steps, profile, threshold=-math.inf)
    assert [s.index for s in trusting.steps] == [0, 1, 2] and trusting.first_doubtful is None and trusting.hint is None
    for step in trusting.steps:
        assert step.scores["target_logprob_min"] <= step.scores["target_logprob_mean"] <= 0
        assert step.scores["target_logprob_min"] <= step.scores["maths_logprob_min"] <= 0
        assert 0 <= step.scores["judge"] <= 1 and 0 <= step.scores["r"] <= 1 and "grounding_min" in step.scores
    doubting = check_solution(rt, prompt, steps, profile, threshold=math.inf)
    assert all(s.doubtful for s in doubting.steps) and doubting.first_doubtful == 0 and doubting.hint is not None
    lowest = min(s.scores["maths_logprob_min"] for s in trusting.steps)
    middle = check_solution(rt, prompt, steps, profile, threshold=lowest + 1e-9)
    assert middle.first_doubtful == next(s.index for s in trusting.steps if s.scores["maths_logprob_min"] == lowest)
    assert json.dumps(doubting.to_dict())
    with pytest.raises(SpecGuardError, match="at least one step"):
        check_solution(rt, prompt, ["ok", "  "], profile)


@pytest.mark.real
def test_a_changed_number_is_the_first_doubtful_step(real_runtime):
    rt = real_runtime
    prompt, profile = rt.prompt_tokens(NATALIA), default_profile()
    right = check_solution(rt, prompt, RIGHT, profile)
    wrong = check_solution(rt, prompt, WRONG, profile)
    assert right.first_doubtful is None
    assert wrong.first_doubtful == 1 and "24" in wrong.hint
    assert wrong.steps[1].scores["maths_logprob_min"] < right.steps[1].scores["maths_logprob_min"]


@pytest.mark.real
def test_check_cli_prints_json(tmp_path):
    solution = tmp_path / "steps.txt"
    solution.write_text("\n\n".join(WRONG))
    done = subprocess.run([sys.executable, "-m", "specguard_local.cli", "check", NATALIA, "--solution", str(solution),
                           "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["first_doubtful"] == 1 and len(result["steps"]) == 3 and result["hint"]
    missing = subprocess.run([sys.executable, "-m", "specguard_local.cli", "check", NATALIA, "--solution",
                              str(tmp_path / "nope.txt")], capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and "error" in missing.stderr.lower()
