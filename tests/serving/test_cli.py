import csv
import json

import pytest

from hengwen.model.labels import LABELS
from hengwen.serving.cli import main

from ..conftest import TINY_DATA


def run_score(tmp_path, input_path, *extra, model=None):
    output = tmp_path / "out.jsonl"
    args = ["score", str(input_path), "-o", str(output), "-q", *extra]
    if model is not None:
        args += ["--model", str(model)]
    assert main(args) == 0
    return [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]


def test_jsonl_output_has_one_record_per_conversation_in_order(tmp_path, tiny_model):
    records = run_score(tmp_path, TINY_DATA, model=tiny_model)
    gold = [json.loads(line) for line in TINY_DATA.read_text().splitlines()]
    assert [r["id"] for r in records] == [g["id"] for g in gold]
    for record, conversation in zip(records, gold):
        agent = [i for i, t in enumerate(conversation["turns"]) if t["role"] == "agent"]
        assert [t["index"] for t in record["turns"]] == agent
        assert set(record["scores"]) == set(LABELS)
        for label in LABELS:
            assert record["scores"][label] == max(t["scores"][label] for t in record["turns"])
        assert set(record["labels"]) <= set(LABELS)


def test_bad_input_gets_an_error_record_and_the_rest_goes_on(tmp_path, tiny_model):
    good = {"id": "ok", "turns": [{"role": "customer", "text": "在吗"}, {"role": "agent", "text": "在的"}]}
    lines = [
        json.dumps(good),
        "{broken json",
        json.dumps({"id": "no-agent", "turns": [{"role": "customer", "text": "在吗"}]}),
        json.dumps({"id": "bad-role", "turns": [{"role": "robot", "text": "x"}, {"role": "agent", "text": "y"}]}),
        json.dumps({"id": "empty", "turns": [{"role": "agent", "text": ""}]}),
        json.dumps({"turns": [{"role": "agent", "text": "没有 id"}]}),
        json.dumps({"id": "bad-ts", "turns": [{"role": "agent", "text": "好", "ts": "昨天"}]}),
        json.dumps("just a string"),
        json.dumps(good | {"id": "ok2"}),
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records = run_score(tmp_path, path, model=tiny_model)
    assert len(records) == len(lines)
    assert [r["id"] for r in records] == ["ok", None, "no-agent", "bad-role", "empty", None, "bad-ts", None, "ok2"]
    assert "turns" in records[0] and "turns" in records[-1]
    errors = {r["line"]: r["error"] for r in records if "error" in r}
    assert errors[2].startswith("bad JSON")
    assert errors[3] == "no agent turn"
    assert "unknown role 'robot'" in errors[4]
    assert "empty text" in errors[5]
    assert "missing id" in errors[6]
    assert "not ISO 8601" in errors[7]
    assert "JSON object" in errors[8]


def test_csv_and_jsonl_give_the_same_scores(tmp_path, tiny_model):
    conversations = [json.loads(line) for line in TINY_DATA.read_text().splitlines()]
    csv_path = tmp_path / "in.csv"
    with csv_path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["conversation_id", "role", "text", "ts"])
        for conversation in conversations:
            for turn in conversation["turns"]:
                writer.writerow([conversation["id"], turn["role"], turn["text"], turn.get("ts", "")])
    from_csv = run_score(tmp_path, csv_path, model=tiny_model)
    from_jsonl = run_score(tmp_path, TINY_DATA, model=tiny_model)
    strip = lambda records: [{k: v for k, v in r.items() if k != "meta"} for r in records]  # noqa: E731
    assert strip(from_csv) == strip(from_jsonl)


def test_thresholds_in_the_model_config_decide_the_labels(tmp_path, tiny_model_copy):
    config_path = tiny_model_copy / "config.json"
    config = json.loads(config_path.read_text())
    config["hengwen_thresholds"] = {label: 0.0 for label in LABELS}
    config_path.write_text(json.dumps(config))
    everything = run_score(tmp_path, TINY_DATA, model=tiny_model_copy)
    assert all(t["labels"] == list(LABELS) for r in everything for t in r["turns"])
    config["hengwen_thresholds"] = {label: 1.01 for label in LABELS}
    config_path.write_text(json.dumps(config))
    nothing = run_score(tmp_path, TINY_DATA, model=tiny_model_copy)
    assert all(r["labels"] == [] and all(t["labels"] == [] for t in r["turns"]) for r in nothing)


def test_rules_engine_writes_the_same_shape(tmp_path):
    records = run_score(tmp_path, TINY_DATA, "--engine", "rules")
    assert len(records) == 8 and all(set(r["scores"]) == set(LABELS) for r in records)


def test_missing_input_file_is_a_clear_error(tmp_path, capsys):
    assert main(["score", str(tmp_path / "nope.jsonl"), "--engine", "rules"]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("make_input", [lambda folder: folder,
                                        lambda folder: (folder / "fake.xlsx").write_text("x") and folder / "fake.xlsx"])
def test_unreadable_input_is_a_clear_error_not_a_traceback(tmp_path, capsys, make_input):
    assert main(["score", str(make_input(tmp_path)), "--engine", "rules", "-q"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_one_cut_emoji_loses_no_other_conversation(tmp_path):
    source = tmp_path / "in.jsonl"
    good = json.dumps({"id": "good", "turns": [{"role": "agent", "text": "您好"}]}, ensure_ascii=False)
    source.write_text("\n".join([good, '{"id": "b\\ud83d", "turns": [{"role": "agent", "text": "\\ud83d"}]}', good])
                      + "\n", encoding="utf-8")
    output = tmp_path / "out.jsonl"
    assert main(["score", str(source), "-o", str(output), "--engine", "rules", "-q"]) == 0
    records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [record["id"] for record in records] == ["good", "b?", "good"]
    assert "surrogate" in records[1]["error"] and "error" not in records[2]


def test_torch_engine_on_an_onnx_only_model_is_a_clear_error(tmp_path, capsys):
    # The shipped folder holds ONNX files and no torch weights.
    assert main(["eval", str(TINY_DATA), "--engine", "torch", "--out", str(tmp_path / "report")]) == 2
    error = capsys.readouterr().err
    assert "no torch weights" in error and "--engine onnx" in error
    assert not (tmp_path / "report").exists()


def test_data_validate_exit_code(tmp_path, capsys):
    assert main(["data", "validate", str(TINY_DATA)]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "turns": [{"role": "agent", "text": "好"}]}\n', encoding="utf-8")
    assert main(["data", "validate", str(bad)]) == 1
    assert "1: turn 0: agent turn without a labels list" in capsys.readouterr().out


@pytest.mark.parametrize("summary_word", ["conversations", "errors"])
def test_score_prints_a_summary(tmp_path, capsys, summary_word):
    run_score(tmp_path, TINY_DATA, "--engine", "rules")
    assert summary_word in capsys.readouterr().err


def test_score_summary_counts_flagged_agent_turns_per_label(tmp_path, capsys):
    records = run_score(tmp_path, TINY_DATA, "--engine", "rules")
    summary = capsys.readouterr().err
    turns = [turn for record in records for turn in record["turns"]]
    for label in LABELS:
        count = sum(label in turn["labels"] for turn in turns)
        assert f"{label:16s} flagged in " in summary and f", {count} agent turns ({count / len(turns):.1%})" in summary
    flagged = sum(bool(turn["labels"]) for turn in turns)
    assert f"any label        flagged in {flagged} agent turns ({flagged / len(turns):.1%})" in summary


def test_output_folder_is_created(tmp_path):
    output = tmp_path / "new" / "folder" / "out.jsonl"
    assert main(["score", str(TINY_DATA), "-o", str(output), "-q", "--engine", "rules"]) == 0
    assert len(output.read_text(encoding="utf-8").splitlines()) == 8


def _commands(parser, prefix=()):
    import argparse
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _commands(sub, prefix + (name,))


def test_every_command_prints_its_help(capsys):
    from hengwen.serving.cli import parser
    commands = list(_commands(parser()))
    assert ("data", "agreement") in commands and ("data", "audit") in commands
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0, command
        assert "usage: hengwen" in capsys.readouterr().out
