"""Answer extraction and equivalence grading."""

import threading

import pytest

from specguard_local.grading import extract_answer, is_correct


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the answer is \boxed{5}.", "5"),
        (r"first \boxed{1}, then \boxed{2}", "2"),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
        (r"\boxed {\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\fbox{7}", "7"),
        (r"\boxed{4} and a truncated \boxed{\frac{1}{", "4"),
        ("The answer is $42$.", "42"),
        ("The final answer is: 3/4", "3/4"),
        ("Janet makes 18 dollars.\n#### 18", "18"),
        ("no final answer here", None),
        (r"\boxed{}", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        (r"\frac{1}{2}", "0.5"),
        ("1/2", r"\frac{1}{2}"),
        (r"\dfrac{1}{2}", r"\frac12"),
        (r"5 \text{ cm}", "5"),
        ("1,000", "1000"),
        ("1,000 dollars", "1000"),
        (r"\$18", "18"),
        ("$18", "18"),
        ("18 dollars", "18"),
        ("18.0", "18"),
        (r"50\%", "50"),
        ("-3", "-3"),
        (r"[2, \infty)", r"$[2,+\infty)$"),
        (r"\{5,3,2\}", r"$\{2,3,5\}$"),
        (r"(3, \pi/2)", r"\left( 3, \frac{\pi}{2} \right)"),
        ("69, 84", "$69$,$84$"),
        (r"\text{a necessary but not a sufficient condition}", r"$\text{a necessary but not a sufficient condition}$"),
    ],
)
def test_equivalent_answers(predicted, gold):
    assert is_correct(predicted, gold)


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        ("3", "-3"),
        ("2x", "2"),
        ("135", "1,3,5"),
        (r"\frac{1}{3}", "0.33"),
        (None, "5"),
        ("", "5"),
        ("   ", "5"),
        ("}{", "5"),
        (r"\frac{", "5"),
    ],
)
def test_different_or_broken_answers(predicted, gold):
    assert not is_correct(predicted, gold)


def test_grades_last_boxed_answer():
    solution = r"A guess: \boxed{3}. Rechecking, it is \boxed{\dfrac{1}{2}}."
    assert is_correct(extract_answer(solution), "0.5")


def test_works_off_the_main_thread():
    results = []
    worker = threading.Thread(target=lambda: results.append(is_correct(r"\frac{1}{2}", "0.5")))
    worker.start()
    worker.join(timeout=30)
    assert results == [True]


def test_huge_expression_times_out_instead_of_hanging():
    assert not is_correct("9^{9^{9^{9}}}", "1")
