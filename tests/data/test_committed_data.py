"""CI validates every committed data file: the corpus and annotations as annotated data, examples as input."""
from pathlib import Path

import pytest

from hengwen.data.stats import validate_file

DATA = Path(__file__).resolve().parents[2] / "data"
ANNOTATED = sorted((DATA / "corpus").glob("*.jsonl")) + sorted((DATA / "annotation").glob("*_annotation.jsonl"))
EXAMPLES = sorted((DATA / "examples").glob("*.jsonl"))
STANDOFF = sorted((DATA / "annotation").glob("*_standoff.jsonl"))


def test_the_corpus_is_present():
    assert {p.name for p in ANNOTATED} >= {"train.jsonl", "dev.jsonl", "test.jsonl"}


@pytest.mark.parametrize("path", ANNOTATED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_annotated_file_is_valid(path):
    assert validate_file(path, annotated=True) == []


@pytest.mark.parametrize("path", STANDOFF, ids=lambda p: p.name)
def test_standoff_labels_are_valid(path):
    from hengwen.data.standoff import read_standoff
    labels, problems = read_standoff(path)
    assert problems == [] and labels


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_input_is_valid(path):
    assert validate_file(path, annotated=False) == []


def test_no_conversation_id_is_shared_between_corpus_files():
    import json
    seen = {}
    for path in sorted((DATA / "corpus").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            conversation_id = json.loads(line)["id"]
            assert conversation_id not in seen, f"{conversation_id} in {seen.get(conversation_id)} and {path.name}"
            seen[conversation_id] = path.name
