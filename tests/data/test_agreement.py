import json

import pytest

from hengwen.data.agreement import agreement, cohen_kappa


def test_kappa_known_values():
    assert cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == 1.0
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 1, 0]) == 0.0
    assert cohen_kappa([0, 0, 0], [0, 0, 0]) == 1.0


def write(path, labels_per_turn):
    turns = []
    for labels in labels_per_turn:
        turns += [{"role": "customer", "text": "问"}, {"role": "agent", "text": "答", "labels": labels}]
    path.write_text(json.dumps({"id": "c", "turns": turns}, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def test_agreement_per_label_and_disagreements(tmp_path):
    first = write(tmp_path / "a.jsonl", [["perfunctory"], [], ["overbearing"], []])
    second = write(tmp_path / "b.jsonl", [["perfunctory"], [], [], []])
    result = agreement(first, second)
    assert result["agent_turns"] == 4
    assert result["per_label"]["perfunctory"]["kappa"] == 1.0
    assert result["per_label"]["overbearing"]["kappa"] == 0.0
    assert result["disagreements"] == [{"id": "c", "turn": 5, "first": ["overbearing"], "second": []}]


def test_agreement_needs_shared_turns(tmp_path):
    first = write(tmp_path / "a.jsonl", [[]])
    other = tmp_path / "b.jsonl"
    other.write_text(json.dumps({"id": "d", "turns": [{"role": "agent", "text": "x", "labels": []}]}) + "\n")
    with pytest.raises(ValueError, match="share no agent turns"):
        agreement(first, other)
