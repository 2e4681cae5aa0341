"""Checking a student's own steps (`tutor`, `specguard-local check`, `/v1/check`): the exact arithmetic, where
numbers come from and the program reader on their own; the decision on hand-written solutions and target
solutions; tiny models for the mechanics; the embedded pair for a real wrong step."""

import json
import subprocess
import sys
from fractions import Fraction

import pytest

from conftest import NATALIA, open_tiny_pair
from specguard_local.errors import SpecGuardError
from specguard_local.arithmetic import computations, numbers
from specguard_local.tutor.check import (Evidence, Rule, check_solution, decide, read_steps, split_steps,
                                         student_answer)
from specguard_local.tutor.provenance import unsupported
from specguard_local.tutor.reference import Reference, answer_value, run_program
from specguard_local.verify.signals import Profile, default_profile

RIGHT = ["In April, Natalia sold 48 clips.",
         "In May, she sold half as many: 48 / 2 = 24 clips.",
         "Altogether she sold 48 + 24 = 72 clips. The answer is \\boxed{72}."]
WRONG = [RIGHT[0], "In May, she sold half as many: 48 / 2 = 26 clips.",
         "Altogether she sold 48 + 26 = 74 clips. The answer is \\boxed{74}."]


def stated(step):
    return [(c.left, c.stated, c.right) for c in computations(step)]


@pytest.mark.parametrize("step, expected", [
    ("so he will sell 300 * 3/5 = 180 chickens.", [("300 * 3 / 5", "180", True)]),
    ("So, $7 - $2 - ($2/2) = $7 - $2 - $1 = $3", [("7 - 2 - (2 / 2)", "7 - 2 - 1", True), ("7 - 2 - 1", "3", False)]),
    ("27 x 2 = 54 and (12 + 36) x 2 = 72", [("27 x 2", "54", True), ("(12 + 36) x 2", "72", False)]),
    ("3 hours * 60 minutes/hour = 180 minutes", [("3 * 60", "180", True)]),
    ("he can learn 8 / 1.5 = 5.33 recipes", [("8 / 1.5", "5.33", True)]),
    ("it has 100 + 20% of 100 = 120 pods", [("100 + 20% of 100", "120", True)]),
    ("The oven is off by 4% because 18 / 450 x 100 = 4%", [("18 / 450 x 100", "4%", True)]),
    ("his 25 classmates + his 1 teacher + 1 himself = 27 people", [("25 + 1 + 1", "27", True)]),
    ("$1,200 + $300 = $1,500", [("1200 + 300", "1500", True)]),
    ("$\\frac{48}{2} = 24$ and $48 \\times 2 = 97$", [("((48) / (2))", "24", True), ("48 * 2", "97", False)]),
    ("80 mph * (4 hours - 2 hours) = 80 mph * 2 hours = 160 miles", [("80 * (4 - 2)", "80 * 2", True),
                                                                      ("80 * 2", "160", True)]),
    ("5 - 8 = -3", [("5 - 8", "-3", True)]),
    ("2/3 * 2 dozen cups = 16 cups", [("2 / 3 * 2 × 12", "16", True)]),
])
def test_stated_computations_are_evaluated_exactly(step, expected):
    assert stated(step) == expected


@pytest.mark.parametrize("step", [
    "3x + 37 = 85",                              # algebra: x is a variable, nothing is computed
    "5:00 pm - 160 minutes = 8:00 am",           # times are not numbers
    "Robyn has 16 emails; 9 = the rest",         # nothing computed on the left
    "Combining like terms, we have: 2 * Fawn's number of books + 13 = 85.",   # the left side is cut off
    "So the total is 2 ** 99999 = 5",            # an exponent that large is not evaluated
    "So the total is 2^64^64 = 5",               # nor a stacked power (its value has 10^115 digits)
    "__import__('os').system('echo hi') = 1 + 1 = 3",   # words are never code: only 1 + 1 reaches sympy
])
def test_what_is_not_arithmetic_is_not_judged(step):
    assert all(c.right for c in computations(step) if c.left != "1 + 1") and stated(step) in ([], [("1 + 1", "3",
                                                                                                    False)])


def test_a_wrong_result_has_a_reason_with_the_exact_value():
    (wrong,) = [c for c in computations("So, 7 − 2 − 1 = 3 apples are left.") if not c.right]
    assert wrong.reason == "7 − 2 − 1 = 4, not 3" and wrong.value == 4
    assert computations("0.276 / 10,440,000 = 0.00025")[0].reason == "0.276 / 10440000 = 2.64e-08, not 0.00025"


def test_numbers_and_answers_are_read_as_students_write_them():
    assert numbers("She paid $1,200.50 for 20% of 3 boxes at 5:00 pm") == [Fraction("1200.50"), Fraction(1, 5), 3]
    assert [answer_value(a) for a in ("$1,200", "25%", "\\frac{3}{4}", "-5", "x = 3, y = 4")] == [
        1200, Fraction(1, 4), Fraction(3, 4), -5, None]
    assert student_answer(["3 + 4 = 7", "The answer is: 7"]) == ("7", 7)
    assert student_answer(["so she has 12 left"]) == ("12", 12)


def test_a_number_from_nowhere_is_found():
    question = "Tom has 3 boxes of 12 pencils and gives away half of them."
    steps = ["He has 3 * 12 = 36 pencils.", "He gives away 36 / 2 = 18.", "He keeps 36 - 18 = 18, then 18 * 1.4 = 25.2"]
    assert unsupported(question, steps) == [[], [], [Fraction(7, 5)]]
    assert unsupported("A dozen eggs cost 20% more.", ["12 * 1.2 = 14.4 and 14.4 * 60 = 864"]) == [[]]


def test_a_program_is_read_without_running_it():
    values, answer = run_program("```python\nboxes = 3\nper_box = 12\ntotal = boxes * per_box  # pencils\n"
                                 "answer = total / 2\nanswer += 0\nlate = math.ceil(total / 7)\n```")
    assert values == {"boxes": 3, "per_box": 12, "total": 36, "answer": 18, "late": 6} and answer == 18
    for unsafe in ("x = __import__('os').system('touch /tmp/pwned')", "x = open('/etc/passwd').read()",
                   "x = (1).__class__", "x = 2 ** 10 ** 10", "x = 'text'", "x = [1, 2]"):
        assert run_program(unsafe) == ({}, None), unsafe
    assert run_program("def f(:\n") == ({}, None)
    assert run_program("a = 10 ** 64\nb = a ** 64\nc = b ** 64\nd = 2 ** 3 ** 2") == ({"a": 10 ** 64}, 10 ** 64)


def reference(how, text, values, answer):
    return Reference(how, text, frozenset(Fraction(v) for v in values), Fraction(answer), 0)


MIA = "Mia and Emma are 16 years apart in age. Mia, who is younger than Emma, is 40. What's the average of their ages?"
MIA_WRONG = ["Emma is 40 + 16 = 56 years old.", "The sum of their ages is 56 + 40 = 96.",
             "The average is 96 / 4 = 24.", "The answer is: 24"]
MIA_RIGHT = ["Emma is 40 + 16 = 56 years old.", "The sum of their ages is 56 + 40 = 96.", "The average is 96 / 2 = 48",
             "The answer is: 48"]
MIA_REFS = [reference("words", "Emma is \\(40 + 16 = 56\\).\n\nTheir sum is \\(56 + 40 = 96\\).\n\nThe average is "
                               "\\(96 / 2 = 48\\). \\boxed{48}", [40, 16, 56, 96, 2, 48], 48),
            reference("program", "", [40, 56, 96, 48], 48)]


def test_the_target_finds_where_a_solution_leaves_its_path():
    wrong = decide(Evidence(MIA, MIA_WRONG, MIA_REFS, [0.0] * 4), Rule())
    assert wrong.first_doubtful == 2 and wrong.steps[2].evidence == "target" and "24" in wrong.steps[2].reason
    assert wrong.hint == "The average is \\(96 / 2 = 48\\). \\boxed{48}" and wrong.answer == "24"
    assert [s.doubtful for s in wrong.steps] == [False, False, True, False]
    assert decide(Evidence(MIA, MIA_RIGHT, MIA_REFS, [0.0] * 4), Rule()).first_doubtful is None


def test_the_rule_gates_the_targets_word():
    split = [MIA_REFS[0], reference("program", "", [40, 56, 96, 24], 24)]   # the target disagrees with itself
    assert decide(Evidence(MIA, MIA_WRONG, split, [0.0] * 4), Rule(consensus=True)).first_doubtful is None
    assert decide(Evidence(MIA, MIA_RIGHT, split, [0.0] * 4), Rule(consensus=False)).first_doubtful is None
    assert decide(Evidence(MIA, MIA_WRONG, MIA_REFS, [-1.0] * 4), Rule(logprob_min=-2.0)).first_doubtful is None
    assert decide(Evidence(MIA, MIA_WRONG, MIA_REFS, [-3.0] * 4), Rule(logprob_min=-2.0)).first_doubtful == 2
    keyed = decide(Evidence(MIA, MIA_RIGHT, split[1:], [0.0] * 4, key=Fraction(24)), Rule())
    assert keyed.first_doubtful == 2 and keyed.target_answers == ["24"]


def test_arithmetic_comes_first_and_its_hint_is_the_corrected_computation():
    steps = ["Emma is 40 + 16 = 57 years old.", *MIA_WRONG[1:]]
    result = decide(Evidence(MIA, steps, MIA_REFS, [0.0] * 4), Rule())
    assert result.first_doubtful == 0 and result.steps[0].evidence == "arithmetic"
    assert result.steps[0].reason == "40 + 16 = 56, not 57" and result.hint == "40 + 16 = 56"


def test_corruptions_of_the_regression_study_change_one_thing():
    import random
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    from check_study import corrupt

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


def test_a_wrong_result_carried_into_a_later_step_marks_that_step_too():
    result = decide(Evidence(NATALIA, WRONG, [], None), Rule())
    assert result.first_doubtful == 1 and [s.evidence for s in result.steps] == [None, "arithmetic", "carried"]
    assert result.steps[2].reason == "uses 26 from step 2, which is not right"
    assert [s.doubtful for s in decide(Evidence(NATALIA, RIGHT, [], None), Rule()).steps] == [False] * 3


def test_steps_are_paragraphs():
    assert split_steps("a\n\n\nb\r\n\r\nc  \n\n  ") == ["a", "b", "c"]
    assert split_steps("one line\nsame step") == ["one line\nsame step"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with open_tiny_pair(tmp_path_factory.mktemp("check")) as pair:
        yield pair.rt, Profile.load(pair.profile)


def test_a_check_on_tiny_models_flags_bad_arithmetic_with_its_reason(tiny):
    rt, profile = tiny
    result = check_solution(rt, "count", ["1 + 2 = 3", "3 + 4 = 8", "so 8"], profile)
    assert [s.index for s in result.steps] == [0, 1, 2] and result.first_doubtful == 1
    assert result.steps[1].reason == "3 + 4 = 7, not 8" and result.hint == "3 + 4 = 7"
    assert not result.steps[0].doubtful
    read = read_steps(rt, "count", ["1 + 2 = 3", "so it is three"])   # the second step has no maths token
    assert len(read) == 2 and read[0] < 0 and read[1] == 0
    assert result.target_tokens > 0 and result.seconds > 0 and json.dumps(result.to_dict())
    with pytest.raises(SpecGuardError, match="at least one step"):
        check_solution(rt, "count", ["ok", "  "], profile)
    with pytest.raises(SpecGuardError, match="answer key"):
        check_solution(rt, "count", ["ok"], profile, key="seven")


@pytest.mark.real
def test_a_changed_number_is_the_first_doubtful_step_and_a_right_solution_is_clean(real_runtime):
    rt, profile = real_runtime, default_profile()
    right = check_solution(rt, NATALIA, RIGHT, profile)
    wrong = check_solution(rt, NATALIA, WRONG, profile)
    assert right.first_doubtful is None and right.answer == "72"
    assert wrong.first_doubtful == 1 and wrong.steps[1].reason == "48 / 2 = 24, not 26" and wrong.hint == "48 / 2 = 24"


@pytest.mark.real
def test_check_cli_prints_json(tmp_path):
    solution = tmp_path / "steps.txt"
    solution.write_text("\n\n".join(WRONG))
    done = subprocess.run([sys.executable, "-m", "specguard_local.cli", "check", NATALIA, "--solution", str(solution),
                           "--json", "--answer", "72"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["first_doubtful"] == 1 and len(result["steps"]) == 3 and result["hint"] == "48 / 2 = 24"
    assert result["steps"][1]["reason"] == "48 / 2 = 24, not 26" and result["steps"][1]["evidence"] == "arithmetic"
    assert result["steps"][2]["evidence"] == "carried"
    missing = subprocess.run([sys.executable, "-m", "specguard_local.cli", "check", NATALIA, "--solution",
                              str(tmp_path / "nope.txt")], capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and "error" in missing.stderr.lower()
