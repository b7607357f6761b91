import json

from hengwen.data.stats import corpus_stats, validate_file
from hengwen.model.labels import LABELS

from ..conftest import TINY_DATA


def test_validate_reports_every_problem_with_its_line(tmp_path):
    good = json.dumps({"id": "a", "turns": [{"role": "agent", "text": "好", "labels": []}]})
    bad_label = json.dumps({"id": "b", "turns": [{"role": "agent", "text": "好", "labels": ["x"]}]})
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join([good, "{oops", bad_label, good]) + "\n", encoding="utf-8")
    problems = validate_file(path)
    assert problems[0].startswith("2: bad JSON")
    assert "3: turn 0: unknown labels ['x']" in problems
    assert "4: duplicate id 'a' (first on line 1)" in problems


def test_committed_fixture_is_valid_and_counted():
    assert validate_file(TINY_DATA) == []
    stats = corpus_stats([TINY_DATA])
    assert stats["conversations"] == 8
    assert stats["agent_turns"] == 16
    assert set(stats["turns_per_label"]) == set(LABELS)
    assert stats["clean_agent_turns"] + 0 <= stats["agent_turns"]
    assert stats["surface"]["clean"]["turns"] == stats["clean_agent_turns"]
