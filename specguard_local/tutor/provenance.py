"""Where a step's numbers come from: a number a computation uses must be given by the question, an earlier step,
a computation before it in the same step, or common knowledge (a dozen, 60 minutes, 7 days, 100%); otherwise it
"appears from nowhere" and the step is doubtful.

A given number also counts in the forms a solution writes it: 20% (or 20 percent) as 20, 0.2, 0.8 (what is left)
and 1.2 (what it grows to); "half" as 1/2 and 2; "three" as 3.
"""

from __future__ import annotations

from fractions import Fraction

from ..arithmetic import computations, numbers, words

SPELLED = {"half": (Fraction(1, 2), 2), "twice": (2,), "double": (2,), "doubles": (2,), "triple": (3,),
           "triples": (3,), "thrice": (3,), "dozen": (12,), "quarter": (Fraction(1, 4), 4), "third": (3,),
           "fourth": (4,), "fifth": (5,), "sixth": (6,), "tenth": (10,), "one": (1,), "two": (2,), "three": (3,),
           "four": (4,), "five": (5,), "six": (6,), "seven": (7,), "eight": (8,), "nine": (9,), "ten": (10,),
           "eleven": (11,), "twelve": (12,), "fifteen": (15,), "twenty": (20,), "thirty": (30,), "forty": (40,),
           "fifty": (50,), "hundred": (100,), "thousand": (1000,), "million": (1000000,), "percent": (100,),
           "week": (7,), "weeks": (7,), "weekly": (7,), "hour": (60,), "hours": (60,), "minute": (60,),
           "minutes": (60,), "day": (24,), "days": (24,), "daily": (24,), "year": (12, 365, 52),
           "years": (12, 365, 52), "yearly": (12, 365, 52), "month": (30, 4), "months": (30, 4), "monthly": (30, 4)}
COMMON = frozenset(Fraction(n) for n in (0, 1, 2, 3, 4, 10, 12, 24, 30, 31, 52, 60, 100, 365, 1000))


def given(text: str) -> set[Fraction]:
    """The numbers a text gives, written or spelled, with their percent readings."""
    found = set(numbers(text))
    for word in words(text):
        found.update(Fraction(n) for n in SPELLED.get(word, ()))
    return found | {form for x in found for form in (x / 100, x * 100, 1 - x / 100, 1 + x / 100, 1 - x, 1 + x)}


def unsupported(question: str, steps: list[str]) -> list[list[Fraction]]:
    """Per step, the numbers its computations use that nothing before them gives (see the module docstring)."""
    known = given(question) | COMMON
    found = []
    for step in steps:
        missing = []
        for computation in computations(step):
            missing += [n for n in computation.operands if n not in known and n not in missing]
            known.add(computation.value)
        found.append(missing)
        known |= given(step)
    return found
