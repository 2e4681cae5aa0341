"""Math test sets (bundled or user JSONL) loaded as uniform `Problem`s."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from specguard_local.errors import SpecGuardError

DATASETS = ("gsm8k", "math500", "gaokao2023en", "olympiadbench")
QUESTION_FIELDS = ("question", "problem")
GOLD_FIELDS = ("final_answer", "answer")
# Found next to this module rather than via importlib.resources: Python 3.11's resources.files() fails
# when an editable install made before __init__.py existed loads the package as a namespace package.
DATA_DIR = Path(__file__).with_name("data")


@dataclass(frozen=True)
class Problem:
    """One question with its reference final answer."""

    id: str
    question: str
    gold: str


def load_problems(name_or_path: str, limit: int | None = None) -> list[Problem]:
    """Load a bundled dataset by name, or a JSONL file with question/answer fields."""
    if name_or_path in DATASETS:
        source = DATA_DIR / f"{name_or_path}_test.jsonl"
        prefix = name_or_path
    else:
        source = Path(name_or_path)
        if not source.is_file():
            raise SpecGuardError(
                f"unknown dataset or missing file: {name_or_path!r} (bundled: {', '.join(DATASETS)})"
            )
        prefix = source.stem
    with source.open(encoding="utf-8") as lines:
        return _read_problems(lines, str(source), prefix, limit)


def _read_problems(lines, source: str, prefix: str, limit: int | None) -> list[Problem]:
    """Turn non-blank JSONL lines into Problems, stopping after `limit`.

    Rows whose reference answer is empty are skipped: they cannot be graded.
    """
    problems: list[Problem] = []
    seen_ids: set[str] = set()
    row_index = 0
    for line_no, line in enumerate(lines, start=1):
        if limit is not None and len(problems) >= limit:
            break
        if not line.strip():
            continue
        where = f"{source}:{line_no}"
        problem = _row_to_problem(_parse_row(line, where), f"{prefix}-{row_index}", prefix, where)
        row_index += 1
        if not problem.gold:
            continue
        if problem.id in seen_ids:
            raise SpecGuardError(f"{where}: duplicate problem id {problem.id!r}")
        seen_ids.add(problem.id)
        problems.append(problem)
    return problems


def _parse_row(line: str, where: str) -> dict:
    """Decode one JSONL line into a dict, or fail naming the line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise SpecGuardError(f"{where}: bad JSON ({error.msg})") from None
    if not isinstance(row, dict):
        raise SpecGuardError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def _row_to_problem(row: dict, default_id: str, prefix: str, where: str) -> Problem:
    """Build a Problem from a row; the row's own `id` wins over the positional one."""
    question = str(_first_field(row, QUESTION_FIELDS, where)).strip()
    if not question:
        raise SpecGuardError(f"{where}: empty question")
    gold = _gold_answer(_first_field(row, GOLD_FIELDS, where))
    problem_id = f"{prefix}-{row['id']}" if row.get("id") is not None else default_id
    return Problem(id=problem_id, question=question, gold=gold)


def _first_field(row: dict, names: tuple[str, ...], where: str):
    """The value of the first field among `names` that the row has."""
    for name in names:
        if row.get(name) is not None:
            return row[name]
    raise SpecGuardError(f"{where}: missing field {' or '.join(repr(n) for n in names)}")


def _gold_answer(value) -> str:
    """Reference final answer as text: GSM8K's '#### N' tail, or the field itself.

    A list (OlympiadBench `final_answer`) is joined with ', '.
    """
    if isinstance(value, list):
        return ", ".join(str(item).strip() for item in value)
    text = str(value)
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    return text.strip()
