import json

from hengwen.data.stats import validate_file
from hengwen.data.standoff import attach_labels, read_standoff
from hengwen.serving.cli import main

EXPORT = [
    {"id": "a", "turns": [{"role": "customer", "text": "快递到哪了"}, {"role": "agent", "text": "自己查"},
                          {"role": "customer", "text": "？"}, {"role": "agent", "text": "明天到"}]},
    {"id": "b", "turns": [{"role": "customer", "text": "在吗"}, {"role": "agent", "text": "在的亲"}]},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def test_labels_join_their_turns_and_unlabelled_conversations_are_left_out(tmp_path):
    export = write_jsonl(tmp_path / "export.jsonl", EXPORT)
    labels_file = write_jsonl(tmp_path / "labels.jsonl", [
        {"id": "a", "turn": 1, "labels": ["cold-follow-up", "perfunctory"]}, {"id": "a", "turn": 3, "labels": []}])
    labels, problems = read_standoff(labels_file)
    assert problems == []
    annotated, problems = attach_labels(export, labels)
    assert problems == [] and [record["id"] for record in annotated] == ["a"]
    assert [turn.get("labels") for turn in annotated[0]["turns"]] == [None, ["perfunctory", "cold-follow-up"],
                                                                       None, []]


def test_every_mismatch_is_named(tmp_path):
    export = write_jsonl(tmp_path / "export.jsonl", EXPORT)
    labels, _ = read_standoff(write_jsonl(tmp_path / "labels.jsonl", [
        {"id": "a", "turn": 0, "labels": ["perfunctory"]}, {"id": "a", "turn": 1, "labels": []},
        {"id": "zz", "turn": 1, "labels": []}]))
    _, problems = attach_labels(export, labels)
    assert problems == ["a: turn 0 is a customer turn, not an agent's", "a: agent turn 3 has no label line",
                        "zz: turn 1 is labelled but not in the export"]


def test_bad_label_lines_are_reported_with_their_line(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"id": "a", "turn": 1, "labels": ["rude"]}\n{"id": "a", "turn": "1", "labels": []}\n'
                    'not json\n{"id": "a", "turn": 3, "labels": []}\n{"id": "a", "turn": 3, "labels": []}\n',
                    encoding="utf-8")
    labels, problems = read_standoff(path)
    assert list(labels) == [("a", 3)]
    assert [problem.split(": ")[0] for problem in problems] == [f"{path}:{n}" for n in (1, 2, 3, 5)]
    assert "labels must be a list" in problems[0] and "labelled twice" in problems[3]


def test_command_writes_a_valid_annotated_file_or_nothing(tmp_path, capsys):
    export = write_jsonl(tmp_path / "export.jsonl", EXPORT)
    good = write_jsonl(tmp_path / "good.jsonl", [{"id": "b", "turn": 1, "labels": []}])
    output = tmp_path / "gold.jsonl"
    assert main(["data", "attach-labels", str(export), str(good), "-o", str(output)]) == 0
    assert validate_file(output, annotated=True) == []
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "turn": 1, "labels": []}])
    refused = tmp_path / "refused.jsonl"
    assert main(["data", "attach-labels", str(export), str(bad), "-o", str(refused)]) == 1
    assert not refused.exists() and "agent turn 3 has no label line" in capsys.readouterr().err


def test_revise_labels_writes_the_reviewed_labels_and_refuses_a_revision_of_no_agent_turn(tmp_path, capsys):
    gold = write_jsonl(tmp_path / "gold.jsonl", [
        {"id": "a", "turns": [{**turn, "labels": ["perfunctory"]} if turn["role"] == "agent" else turn
                              for turn in EXPORT[0]["turns"]]}])
    annotated_text = gold.read_text(encoding="utf-8")
    review = write_jsonl(tmp_path / "review.jsonl", [{"id": "a", "turn": 3, "labels": ["cold-follow-up"]}])
    output = tmp_path / "reviewed.jsonl"
    assert main(["data", "revise-labels", str(gold), str(review), "-o", str(output)]) == 0
    assert "1 reviewed turns, 1 relabelled" in capsys.readouterr().err
    [record] = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [turn.get("labels") for turn in record["turns"]] == [None, ["perfunctory"], None, ["cold-follow-up"]]
    assert gold.read_text(encoding="utf-8") == annotated_text and validate_file(output, annotated=True) == []
    stray = write_jsonl(tmp_path / "stray.jsonl", [{"id": "a", "turn": 2, "labels": []}])
    refused = tmp_path / "refused.jsonl"
    assert main(["data", "revise-labels", str(gold), str(stray), "-o", str(refused)]) == 1
    assert not refused.exists() and "turn 2 of a is revised but is no agent turn" in capsys.readouterr().err
