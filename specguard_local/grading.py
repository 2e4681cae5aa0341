"""Final-answer extraction from a solution and equivalence checking against the gold answer."""

from __future__ import annotations

import math
import re
import threading

from math_verify import parse, verify

BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
FINAL_LINE_RE = re.compile(r"(?:answer is|####)[:\s]*(.+)", re.IGNORECASE)
MATH_VERIFY_TIMEOUT_S = 3
# A plain number (thousands groups or digits, optional decimals), optional %, optional unit words
# of two or more letters after a space ("18 dollars"; "2x" is not a plain number).
NUMBER_RE = re.compile(
    r"([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+)\s*%?(?:\s+[A-Za-z]{2,}[A-Za-z\s]*)?"
)
# LaTeX spacing, dollar signs, \%, degree marks, and \text{} wrappers (their words kept).
LATEX_NOISE_RE = re.compile(r"\\[,!;: ]|\\\$|\$|\\%|\\(?:text|mbox|mathrm)\{([^{}]*)\}|\^\{?\\circ\}?")


def extract_answer(text: str) -> str | None:
    """The last complete \\boxed{...} (or \\fbox{...}) content, else a final 'The answer is X' / '#### X'."""
    for match in reversed(list(BOX_RE.finditer(text))):
        content = _braced_content(text, match.end())
        if content is not None and content.strip():
            return content.strip()
    final_lines = FINAL_LINE_RE.findall(text)
    if final_lines:
        answer = final_lines[-1].strip().rstrip(".").strip("$ ").strip()
        return answer or None
    return None


def _braced_content(text: str, start: int) -> str | None:
    """Text from `start` up to the brace closing the one just before it; None if never closed."""
    depth = 1
    for position in range(start, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[start:position]
    return None


def is_correct(predicted: str | None, gold: str) -> bool:
    """Whether the predicted final answer is mathematically equivalent to the gold answer."""
    if predicted is None or not predicted.strip():
        return False
    return _math_verify_equal(predicted, gold) or _numbers_equal(predicted, gold)


def _math_verify_equal(predicted: str, gold: str) -> bool:
    """math_verify's symbolic comparison of the two answers, each parsed as a boxed expression.

    Its timeouts use SIGALRM, which only works on the main thread; elsewhere they are switched off.
    """
    timeout_s = MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    try:
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=timeout_s)
        predicted_parsed = parse(f"\\boxed{{{predicted}}}", parsing_timeout=timeout_s)
        return verify(gold_parsed, predicted_parsed, timeout_seconds=timeout_s)
    except Exception:  # math_verify and sympy can raise anything on malformed input
        return False


def _numbers_equal(predicted: str, gold: str) -> bool:
    """Both answers are plain numbers (commas, $, %, unit words allowed) and agree."""
    predicted_number, gold_number = _plain_number(predicted), _plain_number(gold)
    if predicted_number is None or gold_number is None:
        return False
    return math.isclose(predicted_number, gold_number, rel_tol=1e-6, abs_tol=1e-9)


def _plain_number(answer: str) -> float | None:
    """The value of an answer like '1,000', '$18', '18 dollars', '18.0' or '50\\%'; None otherwise."""
    cleaned = LATEX_NOISE_RE.sub(lambda m: f" {m.group(1) or ''} ", answer).strip().rstrip(".").strip()
    match = NUMBER_RE.fullmatch(cleaned)
    if match is None:
        return None
    return float(match.group(1).replace(",", ""))
