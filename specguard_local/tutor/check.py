"""Checking a student's own solution step by step: is each step *right*, and if not, why, and what is right.

Three kinds of evidence, cheapest first:
  arithmetic   every computation a step states, re-evaluated exactly (`arithmetic`): "7 - 2 - 1 = 4, not 3";
  provenance   a number a computation uses that nothing before it gives (`provenance`): "1.4 appears from nowhere";
  the target   solves the question itself (`reference`: in words and as a program). When the student's final answer
               is none of the target's, the first step that produces a value no solution of the target's computes
               is where the solution left the target's path. The target is a 1.5B model, right on ~60% of GSM8K:
               a step is flagged on its word only when the rule's gates pass (`Rule`, fitted on the dev file).
A step is doubtful on the first evidence that flags it; the first doubtful step carries the hint: its computation
corrected, or the target's own step for the quantity the student missed, each passing the same exact check.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction

from ..arithmetic import computations, numbers, show
from ..engine import token_logprob
from ..errors import SpecGuardError
from ..generation import PairRuntime
from ..grading import extract_answer
from ..verify.signals import Profile
from .provenance import given, unsupported
from .reference import Reference, answer_value, solve_as_program, solve_in_words

MAX_STEPS = 64
MATHS = set("0123456789=+-*/×÷^%")


@dataclass(frozen=True)
class Rule:
    """When the target's word flags a step (fitted on the dev file, kept in the pair's profile):
    `consensus`: only when the target's solutions agree with each other on their answer;
    `logprob_min`: only when the step's least likely maths token, read by the target, is below this (None: off);
    `provenance`: whether a number from nowhere flags a step;
    `locate`: which step the target's word flags: "stray", the first that produces a value none of its solutions
    computes; "surprise", the one the target reads as least likely up to that step."""
    consensus: bool = True
    logprob_min: float | None = None
    provenance: bool = True
    locate: str = "stray"

    @property
    def reads_steps(self) -> bool:
        return self.logprob_min is not None or self.locate == "surprise"

    @staticmethod
    def of(profile: Profile, keyed: bool) -> "Rule":
        """The profile's rule for a check with or without the answer key (each fitted on its own)."""
        return Rule(**profile.check.get("with_key" if keyed else "without_key", {}))


@dataclass
class StepCheck:
    index: int
    text: str
    doubtful: bool
    reason: str | None         # why the step is doubtful, for the student (None: it looks right)
    evidence: str | None       # arithmetic | provenance | target | carried (uses a wrong result of an earlier step)
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class SolutionCheck:
    steps: list[StepCheck]
    first_doubtful: int | None     # index of the first doubtful step (None: every step looks right)
    hint: str | None               # the first doubtful step done right (None: nothing doubtful)
    answer: str | None             # the student's final answer as read
    target_answers: list[str]      # the target's own answers (words, program)
    seconds: float = 0.0
    target_tokens: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Evidence:
    """What the check decides from; the model-free parts are recomputed from the text."""
    question: str
    steps: list[str]
    references: list[Reference]
    surprise: list[float] | None   # per step: the target's min log-prob over its maths tokens (0: none;
                                   # None: not read, as no flag of the target's could follow)
    key: Fraction | None = None    # the right answer, when the teacher gives it


def split_steps(solution: str) -> list[str]:
    """A solution's steps: its paragraphs (separated by blank lines), stripped, empty ones dropped."""
    return [part.strip() for part in solution.replace("\r\n", "\n").split("\n\n") if part.strip()]


def check_solution(rt: PairRuntime, question: str, steps: list[str], profile: Profile,
                   key: str | None = None, rule: Rule | None = None) -> SolutionCheck:
    """Check every step of a student's solution to `question` (see the module docstring); `key` is the right
    answer when the teacher knows it (the target's answers then only locate the step and write the hint)."""
    start = time.perf_counter()
    answer_key = None if key is None else answer_value(key)
    if key is not None and answer_key is None:
        raise SpecGuardError(f"the answer key {key!r} is not one number; give it as e.g. 72, 2.5, 3/4 or 25%")
    rule = rule or Rule.of(profile, key is not None)
    evidence = gather(rt, question, steps, rule, answer_key)
    result = decide(evidence, rule)
    result.seconds = time.perf_counter() - start
    result.target_tokens = sum(ref.tokens for ref in evidence.references)
    return result


def gather(rt: PairRuntime, question: str, steps: list[str], rule: Rule, key: Fraction | None = None) -> Evidence:
    """The target's solutions and its reading of the student's steps, each only when it can change the verdict:
    none when the key says the answer is right; the solution in words only when the program does not give the
    student's answer; the reading only when the rule reads it and both solutions were needed. Whichever solver
    runs first, the verdicts are the same (`decide` flags on the target's word only when no solution of its gives
    the student's answer)."""
    steps = [step.strip() for step in steps]
    if not question.strip():
        raise SpecGuardError("the question is empty")
    if not steps or not all(steps):
        raise SpecGuardError("the solution needs at least one step, and no step may be empty")
    if len(steps) > MAX_STEPS:
        raise SpecGuardError(f"the solution has {len(steps)} steps; at most {MAX_STEPS} are checked at once")
    _, answer = student_answer(steps)
    references = []
    if key is None or not _close(answer, key):
        program = solve_as_program(rt, question)   # the cheaper solver first (~100 tokens against ~250)
        settled = key is None and _close(answer, program.answer)
        references = [program] if settled else [solve_in_words(rt, question), program]
    read = rule.reads_steps and len(references) == 2
    return Evidence(question, steps, references, read_steps(rt, question, steps) if read else None, key)


def read_steps(rt: PairRuntime, question: str, steps: list[str]) -> list[float]:
    """The target reads the solution in one batched pass: per step, the min log-prob of its maths tokens (those
    holding a digit or one of = + - * / × ÷ ^ %), 0 for a step without any. Logits are computed only where a maths
    token follows (the output layer over every position would cost more than the pass)."""
    model = rt.model("target")
    pieces = [model.tokenize(step + ("\n\n" if i < len(steps) - 1 else ""), special=False)
              for i, step in enumerate(steps)]
    solution = [token for piece in pieces for token in piece]
    maths = [bool(MATHS & set(model.detokenize([token]))) for token in solution]
    prompt = rt.prompt_tokens(question)
    session = rt.session("target")
    session.sync(prompt)
    after_prompt, start = session.logits, len(prompt)
    session.ctx.check_room(start + len(solution))
    rows = iter(session.ctx.decode(solution, list(range(start, start + len(solution))),
                                   [session.seq] * len(solution), maths[1:] + [False]))
    session.rewind(start, after_prompt)
    logprobs = [token_logprob(after_prompt if i == 0 else next(rows), token) if is_maths else None
                for i, (token, is_maths) in enumerate(zip(solution, maths))]
    surprise, start = [], 0
    for piece in pieces:
        found = [lp for lp in logprobs[start:start + len(piece)] if lp is not None]
        surprise.append(float(min(found, default=0.0)))
        start += len(piece)
    return surprise


def student_answer(steps: list[str]) -> tuple[str | None, Fraction | None]:
    """The student's final answer: a boxed or "The answer is" one, else the last number of the last step."""
    written = extract_answer("\n\n".join(steps))
    if written is None:
        found = numbers(steps[-1])
        return (show(found[-1]), found[-1]) if found else (None, None)
    return written, answer_value(written)


def decide(evidence: Evidence, rule: Rule) -> SolutionCheck:
    """Each step's verdict and reason, the first doubtful step and its hint (see the module docstring)."""
    question, steps = evidence.question, evidence.steps
    flags: list[tuple[str, str] | None] = [None] * len(steps)
    for index, step in enumerate(steps):
        wrong = [c for c in computations(step) if not c.right]
        if wrong:
            flags[index] = ("arithmetic", wrong[0].reason)
    if rule.provenance:
        for index, missing in enumerate(unsupported(question, steps)):
            if missing and flags[index] is None:
                flags[index] = ("provenance", f"{show(missing[0])} appears from nowhere: neither the question nor "
                                              f"an earlier step gives it")
    written, answer = student_answer(steps)
    answers = [ref.answer for ref in evidence.references if ref.answer is not None]
    trusted = len(answers) == len(evidence.references) and len(set(answers)) == 1 if rule.consensus else bool(answers)
    if evidence.key is not None:
        answers, trusted = [evidence.key], True
    if trusted and not any(_close(answer, a) for a in answers):
        right = f"the answer key says {show(answers[0])}" if evidence.key is not None else \
            f"my answer is {show(answers[0])}"
        index, reason = _departure(question, steps, evidence.references, right)
        if rule.locate == "surprise" and evidence.surprise is not None:
            least = min(range(index + 1), key=lambda i: evidence.surprise[i])
            if least != index:
                index, reason = least, (f"your answer ({written}) is not right ({right}), and of your steps up to "
                                        f"where your numbers leave my solution, this is the one I find least likely: "
                                        f"check it against the question")
        surprising = (rule.logprob_min is None or evidence.surprise is None
                      or evidence.surprise[index] < rule.logprob_min)
        if surprising and flags[index] is None:
            flags[index] = ("target", reason)
    _carry(steps, flags)
    first = next((i for i, flag in enumerate(flags) if flag), None)
    checks = [StepCheck(i, step, flag is not None, flag[1] if flag else None, flag[0] if flag else None,
                        {} if evidence.surprise is None else {"maths_logprob_min": evidence.surprise[i]})
              for i, (step, flag) in enumerate(zip(steps, flags))]
    hint = None if first is None else _hint(question, steps, first, flags[first][0], evidence.references,
                                            answers[0] if answers else None)
    return SolutionCheck(checks, first, hint, written, [show(a) for a in answers])


def _carry(steps: list[str], flags: list[tuple[str, str] | None]) -> None:
    """Mark a later step that computes with a wrong result of an arithmetic-flagged step ("48 + 26 = 74" after
    "48 / 2 = 26"): right on its own, wrong for the student. Never the first doubtful step."""
    for index, step in enumerate(steps):
        if flags[index] is None or flags[index][0] != "arithmetic":
            continue
        wrong = {numbers(c.stated)[0] for c in computations(step) if not c.right and numbers(c.stated)}
        for later in range(index + 1, len(steps)):
            used = [n for c in computations(steps[later]) for n in c.operands if n in wrong]
            if used and flags[later] is None:
                flags[later] = ("carried", f"uses {show(used[0])} from step {index + 1}, which is not right")


def _close(value: Fraction | None, other: Fraction | None) -> bool:
    """Equal as a student would round it (two decimals)."""
    return value is not None and other is not None and abs(value - other) <= Fraction(1, 200)


def _produced(step: str, known: set[Fraction]) -> list[Fraction]:
    """The values a step brings in: its computations' results, else the numbers it states that nothing gave."""
    results = [c.value for c in computations(step)]
    return results or [n for n in numbers(step) if n not in known]


def _departure(question: str, steps: list[str], references: list[Reference], right: str) -> tuple[int, str]:
    """The first step producing a value none of the target's solutions computes; else the step with the answer."""
    known = given(question)
    computed = set().union(*(ref.values for ref in references)) | known
    for index, step in enumerate(steps):
        stray = [v for v in _produced(step, known) if not any(_close(v, c) for c in computed)]
        if stray:
            return index, (f"{show(stray[0])} is not a quantity of this problem: solving it myself, I never get "
                           f"{show(stray[0])} ({right})")
        known |= given(step)
    last = max((i for i, s in enumerate(steps) if numbers(s)), default=len(steps) - 1)
    return last, f"this answer is not right ({right}): check what the question asks for"


def _hint(question: str, steps: list[str], first: int, evidence: str, references: list[Reference],
          right: Fraction | None) -> str | None:
    """The flagged step done right: its computation corrected, or the step of the target's solution in words (when
    that solution reaches the right answer, `right`) for the first quantity the student has not got, its
    arithmetic checked exactly; else None."""
    if evidence == "arithmetic":
        wrong = next(c for c in computations(steps[first]) if not c.right)
        return f"{wrong.left} = {show(wrong.value)}"
    known = given(question) | set().union(*(given(s) for s in steps[:first]))
    words = next((ref for ref in references if ref.how == "words"), None)
    if words is None or not _close(words.answer, right):
        return None
    for paragraph in split_steps(words.text):
        found = computations(paragraph)
        if found and all(c.right for c in found) and any(c.value not in known for c in found):
            return re.sub(r"\s+", " ", paragraph).strip()
    return None
