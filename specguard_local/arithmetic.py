"""Exact arithmetic of a written step: every computation it states (`a op b = c`, chains `a = b = c`) re-evaluated
with sympy's rational arithmetic.

A step is read as a stream of numbers, operators and words. Words right after a number are its unit ("3 hours *
60 minutes/hour = 180 minutes" is 3 * 60 = 180), a percent is /100 ("20% of 100" is 20/100 * 100), LaTeX's
\\times, \\cdot, \\div and \\frac{a}{b} and the text forms ×, x, ÷, − are operators; any other word ends the
expression. Only an expression built from those tokens reaches sympy's parser, so a student's text is never
evaluated as code. A stated result is right when the exact value rounds to it at the precision it is written with
("8 / 1.5 = 5.33" is right, "(55 + 46.67) / 2 = 51" is not).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from fractions import Fraction

from sympy import Rational, nsimplify
from sympy.parsing.sympy_parser import parse_expr

LATEX = [(re.compile(r"\\(?:times|cdot)"), " * "), (re.compile(r"\\div"), " / "),
         (re.compile(r"\\(?:left|right|,|;|!|quad)|\\\(|\\\)|\\\[|\\\]|\\\$"), " "),
         (re.compile(r"\\(?:text|mathrm|mbox)\{([^{}]*)\}"), r" \1 ")]
FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
TOKEN = re.compile(r"(?P<number>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?P<percent>\s*%)?"
                   r"|(?P<op>[-+*/^()=×÷−–·])|(?P<word>[A-Za-z]+)|(?P<other>\S)")
OPERATORS = {"×": "*", "·": "*", "÷": "/", "−": "-", "–": "-", "^": "**"}
MAX_UNIT_WORDS = 6    # words of a unit after a number ("minutes to make the batter")
MAX_GAP_WORDS = 3     # words between an operator and its next number ("+ his 1 teacher")
CLAUSE = {"so", "because", "then", "and", "which", "that", "is", "are", "was", "were", "if", "but", "since",
          "therefore", "thus", "hence", "when", "while", "or"}
MAX_EXPONENT = 64
MAX_POWERS = 2   # powers in one expression: at worst a literal to the 64², never a tower


@dataclass(frozen=True)
class Computation:
    """One stated equality `left = right` of a step, as written and as evaluated exactly."""
    left: str          # the expression as a readable string ("300 * 3/5")
    stated: str        # the right-hand side as written ("180")
    value: Fraction    # the left-hand side's exact value
    right: bool        # whether `stated` is `value` at the precision it is written with
    operands: tuple[Fraction, ...]   # the numbers the left-hand side uses

    @property
    def reason(self) -> str:
        return f"{self.left} = {show(self.value)}, not {self.stated}"


def show(value: Fraction) -> str:
    """A value as a student would write it: an integer, else up to 2 decimals, trailing zeros dropped."""
    if value.denominator == 1:
        return str(value.numerator)
    if abs(value) < 1:
        return f"{float(value):.3g}"
    return f"{float(value):.2f}".rstrip("0").rstrip(".")


def _normalise(text: str) -> str:
    text = re.sub(r"(\d)-(?=[A-Za-z])", r"\1 ", text)              # a 36-minute call
    text = re.sub(r"(?<=[A-Za-z])-(?=[A-Za-z])", " ", text)          # post-it notes
    text = re.sub(r"\d{1,2}:\d{2}", " @ ", text)                    # 5:00 pm is a time, not a number
    text = re.sub(r"(\d)\s*/\s*(?=[A-Za-z]{2})", r"\1 per ", text)     # $8.00/pair is a unit
    for pattern, replacement in LATEX:
        text = pattern.sub(replacement, text)
    while FRAC.search(text):
        text = FRAC.sub(r"((\1)/(\2))", text)
    return text.replace("$", " ").replace("{", "(").replace("}", ")")


@dataclass
class _Token:
    kind: str    # number | op | word | other
    text: str    # the sympy form: "(20/100)" for 20%, "*" for ×
    shown: str   # as written
    number: Fraction | None = None   # a number's value (20% is 1/5)
    decimals: int = 0                # the places it is written with (20% has 2, as 0.20)


def _tokens(text: str) -> list[_Token]:
    tokens = []
    for match in TOKEN.finditer(_normalise(text)):
        kind = match.lastgroup
        if match.group("number"):
            raw, percent = match.group("number").replace(",", ""), bool(match.group("percent"))
            places = (len(raw.split(".")[1]) if "." in raw else 0) + (2 if percent else 0)
            tokens.append(_Token("number", f"({raw}/100)" if percent else raw, raw + "%" * percent,
                                 Fraction(raw) / (100 if percent else 1), places))
            continue
        raw = match.group(kind)
        tokens.append(_Token(kind, OPERATORS.get(raw, raw) if kind == "op" else raw, raw))
    return tokens


def _segments(tokens: list[_Token]) -> list[list[_Token]]:
    """Runs of numbers and operators. Words are skipped where they sit inside an expression: a unit after a number
    ("3 hours * 60 minutes/hour") or words before the next number ("25 classmates + his 1 teacher"); "dozen" after a
    number is * 12 and "of" after a percent is *; any other word or mark ends a run."""
    segments, run, i = [], [], 0
    while i < len(tokens):
        token = tokens[i]
        ends_operand = bool(run) and (run[-1].kind == "number" or run[-1].text == ")")
        if token.kind == "word" and token.text in ("x", "X") and ends_operand \
                and i + 1 < len(tokens) and (tokens[i + 1].kind == "number" or tokens[i + 1].text == "("):
            token = _Token("op", "*", "x")   # 27 x 2; in "3x + 37" x is a variable
        if token.kind in ("number", "op"):
            run.append(token)
            i += 1
            continue
        if token.kind == "word" and run and len(token.text) > 1:   # one letter: a variable (3x + 37) ends it
            after = _skip_words(tokens, i)
            if run[-1].kind == "number" and token.text.lower() == "dozen":
                run += [_Token("op", "*", "×"), _Token("number", "12", "12", Fraction(12))]
                i += 1
                continue
            if run[-1].kind == "number" and token.text.lower() == "of" and run[-1].shown.endswith("%"):
                run.append(_Token("op", "*", "of"))
                i += 1
                continue
            gap = sum(t.kind == "word" for t in tokens[i:after])
            if after < len(tokens) and (
                    (ends_operand and tokens[after].kind == "op" and tokens[after].text != "(")
                    or (run[-1].kind == "op" and run[-1].text not in ")=" and run[-1].shown != "of"
                        and gap <= MAX_GAP_WORDS and (tokens[after].kind == "number" or tokens[after].text == "("))):
                i = after
                continue
        if run:
            segments.append(run)
        run = []
        i += 1
    if run:
        segments.append(run)
    return segments


def _skip_words(tokens: list[_Token], i: int) -> int:
    """The index after the run of words (and "/word") starting at i, at most MAX_UNIT_WORDS words."""
    j, words = i, 0
    while j < len(tokens) and words < MAX_UNIT_WORDS:
        if tokens[j].kind == "word" and tokens[j].text in ("x", "X") and j + 1 < len(tokens) \
                and tokens[j + 1].kind == "number":
            break   # 60 ml x 8 laps
        if tokens[j].kind == "word" and tokens[j].text.lower() in CLAUSE:
            break
        if tokens[j].kind == "word":
            words += 1
        elif not (tokens[j].text == "/" and j + 1 < len(tokens) and tokens[j + 1].kind == "word"):
            break
        j += 1
    return j


def _value(part: list[_Token]) -> Fraction | None:
    """The exact value of tokens that form an arithmetic expression, else None."""
    if not part or not any(t.kind == "number" for t in part):
        return None
    pieces = []
    for before, token in zip([None, *part], part):
        if before is not None and token.text == "(" and (before.kind == "number" or before.text == ")"):
            pieces.append("*")   # 2(3 + 4)
        pieces.append(token.text)
    source = " ".join(pieces)
    exponents = re.findall(r"\*\*\s*(?:(\d+)(?![\d.])|\(\s*(\d+)\s*\))", source)   # integer literals only
    exponents = [plain or bracketed for plain, bracketed in exponents]
    powers = source.count("**")
    if (powers > MAX_POWERS or len(exponents) != powers or any(int(e) > MAX_EXPONENT for e in exponents)
            or re.search(r"\*\*\s*\(?\s*\d+\s*\)?\s*\*\*", source) or re.search(r"[*/]\s+[*/]", source)):
        return None   # a power too large to state (2^99999, 2^64^64, 2^(3+x)), or two operators in a row
    try:
        value = nsimplify(parse_expr(source, evaluate=True), rational=True)
    except Exception:  # sympy raises many kinds on a malformed expression (a dangling operator, "()")
        return None
    if not isinstance(value, Rational):
        return None
    return Fraction(int(value.p), int(value.q))


def _matches(value: Fraction, stated: Fraction, decimals: int, percent: bool) -> bool:
    """Whether a written result is the exact value rounded at the precision it is written with; a percent may be
    written for its number ("18 / 450 x 100 = 4%")."""
    readings = [(stated, decimals)] + ([(stated * 100, decimals - 2)] if percent else [])
    return any(abs(value - number) <= Fraction(1, 2 * 10 ** max(places, 0)) for number, places in readings)


@functools.lru_cache(maxsize=4096)
def computations(step: str) -> tuple[Computation, ...]:
    """Every equality the step states with a computation on one side. In a chain `a = b = c` each side is compared
    with the next; a side that is itself an expression ("80 * 2 = 160" in "80 * (4 - 2) = 80 * 2 = 160") is compared
    by its value, or by the number it starts with (a running total: "5 * 3 = 15 + 3 = 18"). Cached: the check
    reads each step's computations for several kinds of evidence."""
    found = []
    for segment in _segments(_tokens(step)):
        parts, part = [], []
        for token in segment:
            if token.text == "=":
                parts.append(part)
                part = []
            else:
                part.append(token)
        parts.append(part)
        for left, right in zip(parts, parts[1:]):
            if not _computes(left) or not right or right[0].kind != "number" and right[0].text not in ("-", "("):
                continue
            value = _value(left)
            if value is None:
                continue
            shown = _shown(left)
            if _computes(right):
                right_value = _value(right)
                if right_value is None:
                    continue
                ok = right_value == value or (right[0].kind == "number" and right[0].number == value)
                found.append(Computation(shown, _shown(right), value, ok, _operands(left)))
                continue
            sign = -1 if right[0].text == "-" else 1
            number = right[1] if sign < 0 and len(right) > 1 else right[0]
            if number.kind != "number":
                continue
            found.append(Computation(shown, "-" * (sign < 0) + number.shown, value,
                                     _matches(value, sign * number.number, number.decimals,
                                              number.shown.endswith("%")), _operands(left)))
    return tuple(found)


def _computes(part: list[_Token]) -> bool:
    """A side with an operation on numbers, not cut off mid-expression (a leading + * / is a lost left operand)."""
    return (bool(part) and part[0].text not in ("+", "*", "/", "**") and any(t.kind == "number" for t in part)
            and any(t.kind == "op" and t.text not in "()" for t in part[1:]))


def _shown(part: list[_Token]) -> str:
    return " ".join(t.shown for t in part).replace("( ", "(").replace(" )", ")")


def _operands(part: list[_Token]) -> tuple[Fraction, ...]:
    return tuple(t.number for t in part if t.kind == "number")


def numbers(text: str) -> list[Fraction]:
    """Every number written in the text, in order (20% is 1/5; 1,200 is 1200; 5:00 is a time, not a number)."""
    return [t.number for t in _tokens(text) if t.kind == "number"]


def words(text: str) -> list[str]:
    """The text's words, lower-cased, as the tokenizer reads them."""
    return [t.text.lower() for t in _tokens(text) if t.kind == "word"]
