"""The target's own solutions of the question: what the student's steps are compared with.

Two ways of solving, because the target (a coder model) is right on different problems with each:
  - in words, step by step (the product's prompt), its values read from the text (`numbers`);
  - as a short Python program, never run: each assignment of arithmetic on numbers and earlier names (the only
    statements read; ast-checked, so nothing but +, -, *, /, //, %, ** with a small exponent, round, int, abs, min,
    max, math.ceil and math.floor reaches sympy) is evaluated exactly, and `answer` (else the last name assigned)
    is its answer.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from fractions import Fraction

from sympy import Rational, ceiling, floor, nsimplify
from sympy.parsing.sympy_parser import parse_expr

from .. import api
from ..decoders.options import Options
from ..generation import PairRuntime
from ..grading import extract_answer
from ..arithmetic import numbers

PROGRAM_PROMPT = ("You are a careful math tutor who writes Python. Solve the word problem with a short Python program: "
                  "one assignment per quantity, each with a descriptive variable name and a comment, only arithmetic, "
                  "and the final result in a variable named answer. Reply with the code only.")
WORDS_TOKENS = 512
PROGRAM_TOKENS = 320
FUNCTIONS = {"round", "int", "abs", "min", "max", "ceil", "floor"}
ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Load, ast.Call, ast.Attribute,
           ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd)
MAX_EXPONENT = 64
MAX_BITS = 4096   # a value larger than this is no quantity of a word problem: dropped, so powers never stack


@dataclass(frozen=True)
class Reference:
    """One solution of the target's: its text, the values it computes, its final answer."""
    how: str                       # "words" | "program"
    text: str
    values: frozenset[Fraction]
    answer: Fraction | None
    tokens: int


def solve_in_words(rt: PairRuntime, question: str) -> Reference:
    steps = list(api.generate(rt, rt.prompt_tokens(question), "target", Options(max_tokens=WORDS_TOKENS)))
    text = "".join(step.text for step in steps)
    return Reference("words", text, frozenset(numbers(text)), answer_value(extract_answer(text) or ""),
                     sum(len(step.tokens) for step in steps))


def solve_as_program(rt: PairRuntime, question: str) -> Reference:
    prompt = rt.chat_tokens([("system", PROGRAM_PROMPT), ("user", question.strip())])
    steps = list(api.generate(rt, prompt, "target", Options(max_tokens=PROGRAM_TOKENS)))
    text = "".join(step.text for step in steps)
    values, answer = run_program(text)
    return Reference("program", text, frozenset(values.values()), answer, sum(len(step.tokens) for step in steps))


def answer_value(answer: str) -> Fraction | None:
    """The value of a final answer that is one number ("$1,200", "25%", "\\frac{3}{4}"), else None."""
    found = numbers(answer)
    if len(found) == 2 and re.search(r"\\[dt]?frac|^\s*-?\d+\s*/\s*\d+\s*$", answer) and found[1]:
        return found[0] / found[1]
    return -found[0] if len(found) == 1 and answer.strip().startswith("-") else (found[0] if len(found) == 1 else None)


def run_program(text: str) -> tuple[dict[str, Fraction], Fraction | None]:
    """The exact value of every name a program assigns by arithmetic (see the module docstring), and its answer."""
    code = text.split("```python")[-1].split("```")[0] if "```" in text else text
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return {}, None
    values: dict[str, Fraction] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, expr = node.targets[0].id, node.value
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            name, expr = node.target.id, ast.BinOp(ast.Name(node.target.id, ast.Load()), node.op, node.value)
        else:
            continue
        value = _evaluate(expr, values)
        if value is not None:
            values[name] = value
    answer = values.get("answer", next(reversed(values.values()), None) if values else None)
    return values, answer


def _evaluate(expr: ast.expr, values: dict[str, Fraction]) -> Fraction | None:
    if sum(isinstance(node, ast.Pow) for node in ast.walk(expr)) > 1:
        return None
    for node in ast.walk(expr):
        if not isinstance(node, ALLOWED):
            return None
        if isinstance(node, ast.Constant) and (isinstance(node.value, bool) or
                                               not isinstance(node.value, (int, float))):
            return None
        if isinstance(node, ast.Name) and node.id not in values and node.id not in FUNCTIONS | {"math"}:
            return None
        if isinstance(node, ast.Attribute) and not (isinstance(node.value, ast.Name) and node.value.id == "math"
                                                    and node.attr in ("ceil", "floor")):
            return None
        if isinstance(node, ast.Call) and (node.keywords or not isinstance(node.func, (ast.Name, ast.Attribute))):
            return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and not (
                isinstance(node.right, ast.Constant) and abs(node.right.value) <= MAX_EXPONENT):
            return None
    source = ast.unparse(expr).replace("math.ceil", "ceil").replace("math.floor", "floor")
    names = {name: Rational(value.numerator, value.denominator) for name, value in values.items()}
    try:
        result = nsimplify(parse_expr(source, local_dict={**names, "ceil": ceiling, "floor": floor}),
                           rational=True)
    except Exception:  # sympy raises many kinds on what it cannot evaluate (min of nothing, division by zero)
        return None
    if not isinstance(result, Rational) or max(int(result.p).bit_length(), int(result.q).bit_length()) > MAX_BITS:
        return None
    return Fraction(int(result.p), int(result.q))
