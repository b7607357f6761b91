import json

import pytest

from hengwen.model.labels import LABELS
from hengwen.serving.cli import main
from hengwen.serving.scorecard import DEFAULT_SCORECARD, ScorecardError, load_scorecard, parse_scorecard

from ..conftest import TINY_DATA

WEIGHTS = {"overbearing": 10, "perfunctory": 40, "vague-expertise": 30, "cold-follow-up": 20}


def card(**changes):
    return {"name": "test", "weights": dict(WEIGHTS), "fatal": ["vague-expertise"], "pass_mark": 60} | changes


def test_the_shipped_scorecard_is_valid():
    scorecard = load_scorecard()
    assert DEFAULT_SCORECARD.is_file()
    assert set(scorecard.weights) == set(LABELS) and sum(scorecard.weights.values()) == 100
    assert 0 <= scorecard.pass_mark <= 100


@pytest.mark.parametrize("labels, score, passed", [
    ([], 100, True),
    (["overbearing"], 90, True),
    (["perfunctory"], 60, True),  # exactly the pass mark
    (["perfunctory", "overbearing"], 50, False),
    (["perfunctory", "perfunctory"], 60, True),  # a label costs its weight once
    (["vague-expertise"], 0, False),  # fatal
    (["overbearing", "perfunctory", "cold-follow-up"], 30, False),
])
def test_weights_fatal_labels_and_pass_mark(labels, score, passed):
    assert parse_scorecard(card()).assess(labels) == (score, passed)


def test_fractional_weights_give_fractional_scores():
    scorecard = parse_scorecard(card(weights={"overbearing": 12.5, "perfunctory": 37.5, "vague-expertise": 25,
                                              "cold-follow-up": 25}, fatal=[]))
    assert scorecard.assess(["overbearing"]) == (87.5, True)


@pytest.mark.parametrize("changes, message", [
    ({"weights": WEIGHTS | {"overbearing": 20}}, "sum to 100, they sum to 110"),
    ({"weights": {k: v for k, v in WEIGHTS.items() if k != "overbearing"} | {"overbearing ": 10}},
     "unknown label 'overbearing ' (did you mean 'overbearing'?)"),
    ({"weights": {k: v for k, v in WEIGHTS.items() if k != "cold-follow-up"}}, "no weight for 'cold-follow-up'"),
    ({"weights": WEIGHTS | {"overbearing": -10, "perfunctory": 60}}, "overbearing must be a number of points >= 0"),
    ({"weights": WEIGHTS | {"overbearing": "10"}}, "overbearing must be a number"),
    ({"weights": [10, 40, 30, 20]}, "weights must map every label"),
    ({"fatal": ["rude"]}, "fatal: unknown label 'rude'"),
    ({"fatal": "vague-expertise"}, "fatal must be a list"),
    ({"pass_mark": 120}, "pass_mark must be a number from 0 to 100"),
    ({"pass_mark": None}, "pass_mark must be a number"),
    ({"passmark": 60}, "unknown field 'passmark'"),
])
def test_invalid_scorecards_are_refused_with_the_reason(changes, message):
    with pytest.raises(ScorecardError) as error:
        parse_scorecard(card(**changes), source="qa.yaml")
    assert message in str(error.value) and str(error.value).startswith("qa.yaml: ")


def test_every_problem_is_reported_at_once():
    with pytest.raises(ScorecardError) as error:
        parse_scorecard({"weights": WEIGHTS | {"overbearing": 20}, "fatal": ["rude"], "pass_mark": -1})
    assert all(part in str(error.value) for part in ("sum to 100", "rude", "pass_mark"))


def test_yaml_and_json_files(tmp_path):
    as_json = tmp_path / "card.json"
    as_json.write_text(json.dumps(card()), encoding="utf-8")
    as_yaml = tmp_path / "card.yaml"
    as_yaml.write_text("name: 测试\nweights:\n" + "".join(f"  {k}: {v}\n" for k, v in WEIGHTS.items())
                       + "fatal: [vague-expertise]\npass_mark: 60\n", encoding="utf-8")
    assert load_scorecard(as_json).weights == load_scorecard(as_yaml).weights == WEIGHTS
    assert load_scorecard(as_yaml).name == "测试"
    broken = tmp_path / "broken.yaml"
    broken.write_text("weights: [unclosed\n", encoding="utf-8")
    with pytest.raises(ScorecardError, match="not valid YAML or JSON"):
        load_scorecard(broken)
    with pytest.raises(ScorecardError, match="a scorecard is a mapping"):
        parse_scorecard(["not", "a", "mapping"])


def test_score_with_a_scorecard_adds_qa_score_and_passed(tmp_path):
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card()), encoding="utf-8")
    output = tmp_path / "out.jsonl"
    assert main(["score", str(TINY_DATA), "-o", str(output), "-q", "--engine", "rules", "--scorecard", str(path)]) == 0
    scorecard = load_scorecard(path)
    for record in map(json.loads, output.read_text(encoding="utf-8").splitlines()):
        assert (record["qa_score"], record["passed"]) == scorecard.assess(record["labels"])


def test_score_refuses_an_invalid_scorecard_before_scoring(tmp_path, capsys):
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card(pass_mark=101)), encoding="utf-8")
    output = tmp_path / "out.jsonl"
    assert main(["score", str(TINY_DATA), "-o", str(output), "--engine", "rules", "--scorecard", str(path)]) == 2
    assert "pass_mark must be a number from 0 to 100" in capsys.readouterr().err
    assert not output.exists()
