"""Bundled and user JSONL datasets."""

import json

import pytest

from specguard_local.datasets import DATASETS, Problem, load_problems
from specguard_local.errors import SpecGuardError

# gaokao2023en has 385 rows; two have an empty answer and are skipped.
EXPECTED_COUNTS = {"gsm8k": 1319, "math500": 500, "gaokao2023en": 383, "olympiadbench": 675}


@pytest.mark.parametrize("name", DATASETS)
def test_bundled_dataset_loads(name):
    problems = load_problems(name)
    assert len(problems) == EXPECTED_COUNTS[name]
    assert all(problem.question.strip() and problem.gold.strip() for problem in problems)
    assert len({problem.id for problem in problems}) == len(problems)
    assert all(problem.id.startswith(f"{name}-") for problem in problems)


def test_gsm8k_gold_is_final_number():
    problems = load_problems("gsm8k")
    assert problems[0] == Problem(id="gsm8k-0", question=problems[0].question, gold="18")
    assert all("," not in problem.gold and "####" not in problem.gold for problem in problems)


def test_gold_fields_per_dataset():
    assert load_problems("math500", limit=1)[0].gold == r"\left( 3, \frac{\pi}{2} \right)"
    assert load_problems("olympiadbench", limit=1)[0].gold == "2"
    assert load_problems("gaokao2023en", limit=3)[2].gold == "-1"


def test_limit():
    assert [problem.id for problem in load_problems("math500", limit=3)] == ["math500-0", "math500-1", "math500-2"]


def test_jsonl_path(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"question": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": 4}, {"id": "x", "question": "3+3?", "answer": "6"}]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n", encoding="utf-8")
    assert load_problems(str(path)) == [
        Problem("mine-0", "1+1?", "2"),
        Problem("mine-1", "2+2?", "4"),
        Problem("mine-x", "3+3?", "6"),
    ]


def test_missing_path_or_unknown_name():
    with pytest.raises(SpecGuardError, match="unknown dataset or missing file"):
        load_problems("no-such-dataset.jsonl")


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "q", "answer": "1"}\n{not json\n', encoding="utf-8")
    with pytest.raises(SpecGuardError, match=r"broken\.jsonl:2: bad JSON"):
        load_problems(str(path))


def test_missing_field_names_line(tmp_path):
    path = tmp_path / "fields.jsonl"
    path.write_text('{"question": "q"}\n', encoding="utf-8")
    with pytest.raises(SpecGuardError, match=r"fields\.jsonl:1: missing field"):
        load_problems(str(path))


def test_duplicate_ids_rejected(tmp_path):
    path = tmp_path / "dupes.jsonl"
    path.write_text('{"id": 1, "question": "q", "answer": "1"}\n{"id": 1, "question": "r", "answer": "2"}\n', encoding="utf-8")
    with pytest.raises(SpecGuardError, match=r"dupes\.jsonl:2: duplicate problem id"):
        load_problems(str(path))
