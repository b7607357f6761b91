import json

import numpy as np
import pytest

from hengwen.model.labels import LABELS
from hengwen.model.rules import RuleScorer
from hengwen.serving.cli import main
from hengwen.serving.runtime import Scorer
from hengwen.training.dataset import read_annotated
from hengwen.training.evaluate import (bad_cases, evaluate, evaluate_file, label_confusion, length_bucket,
                                       slice_metrics, timestamp_coverage, turn_table)
from hengwen.training.metrics import multilabel_metrics

from ..conftest import TINY_DATA

REPORT_FILES = ("metrics.json", "confusion.json", "calibration.json", "pr_curves_turn.png",
                "pr_curves_conversation.png", "reliability_turn.png", "bad_cases.jsonl", "turns.jsonl", "slices.json")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def model_report(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-onnx")
    report, _ = evaluate_file(TINY_DATA, Scorer(tiny_model), "onnx", out, worst=3)
    return out, report


def test_report_folder_has_every_file(model_report):
    out, report = model_report
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name
    for name in ("pr_curves_turn.png", "reliability_turn.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report == json.loads((out / "metrics.json").read_text())
    assert report["engine"] == "onnx" and report["quantization"] == "int8"


def test_metrics_agree_with_the_scores_hengwen_score_writes(model_report, tiny_model, tmp_path):
    out, report = model_report
    scored = tmp_path / "scored.jsonl"
    assert main(["score", str(TINY_DATA), "--model", str(tiny_model), "-o", str(scored), "-q"]) == 0
    gold, scores = [], []
    for conversation, record in zip(read_annotated(TINY_DATA), read_jsonl(scored)):
        for turn in record["turns"]:
            gold.append([label in conversation["turns"][turn["index"]]["labels"] for label in LABELS])
            scores.append([turn["scores"][label] for label in LABELS])
    expected = multilabel_metrics(np.array(gold), np.array(scores), report["thresholds"])
    assert report["turn"]["macro_f1"] == expected["macro_f1"]
    assert report["turn"]["examples"] == len(gold) == len(read_jsonl(out / "turns.jsonl"))
    assert report["conversation"]["examples"] == 8
    for label in LABELS:
        assert report["turn"]["per_label"][label]["support"] == expected["per_label"][label]["support"]
        area = report["turn"]["per_label"][label]["pr_auc"]
        assert area is None or 0 <= area <= 1
        assert 0 <= report["turn"]["per_label"][label]["ece"] <= 1


def test_bad_cases_are_real_errors_with_the_turns_before_them(model_report):
    out, report = model_report
    conversations = {c["id"]: c for c in read_annotated(TINY_DATA)}
    cases = read_jsonl(out / "bad_cases.jsonl")
    assert cases, "a model trained for a few steps makes mistakes on this file"
    for case in cases:
        turns = conversations[case["conversation_id"]]["turns"]
        assert case["text"] == turns[case["turn_index"]]["text"]
        is_gold = case["label"] in turns[case["turn_index"]]["labels"]
        flagged = case["score"] >= report["thresholds"][case["label"]]
        assert (case["kind"], is_gold, flagged) in {("false_positive", False, True), ("false_negative", True, False)}
        start = case["context_turns_omitted"]
        assert [t["text"] for t in case["context"]] == [t["text"] for t in turns[start:case["turn_index"]]]
    for label in LABELS:
        for kind, order in (("false_positive", -1), ("false_negative", 1)):
            scores = [c["score"] for c in cases if c["label"] == label and c["kind"] == kind]
            assert len(scores) <= 3 and scores == sorted(scores, key=lambda s: order * s)


def test_bad_cases_rank_the_most_confident_mistakes_first():
    conversation = {"id": "c", "turns": [{"role": "customer", "text": "问"}] + [
        {"role": "agent", "text": f"答{i}", "labels": labels} for i, labels in enumerate([[], [], ["overbearing"]])]}
    records = [{"id": "c", "turns": [{"index": i + 1, "scores": dict.fromkeys(LABELS, 0.0) | {"overbearing": s}}
                                     for i, s in enumerate([0.6, 0.9, 0.1])]}]
    table = turn_table([conversation], records)
    cases = bad_cases([conversation], table, dict.fromkeys(LABELS, 0.5), worst=5)
    assert [(c["kind"], c["text"]) for c in cases] == [("false_positive", "答1"), ("false_positive", "答0"),
                                                       ("false_negative", "答2")]
    assert cases[0]["context"] == [{"role": "customer", "text": "问"}, {"role": "agent", "text": "答0"}]


def test_confusion_counts_swaps_and_co_occurrence():
    columns = {label: i for i, label in enumerate(LABELS)}
    gold = np.zeros((4, 4), dtype=bool)
    predicted = np.zeros((4, 4), dtype=bool)
    gold[0, columns["perfunctory"]] = predicted[0, columns["cold-follow-up"]] = True   # swapped
    gold[1, columns["perfunctory"]] = predicted[1, columns["perfunctory"]] = True      # found
    predicted[1, columns["cold-follow-up"]] = True                                     # ... with a co-occurring label
    predicted[2, columns["overbearing"]] = True                                        # false alarm on a clean turn
    confusion = label_confusion(gold, predicted)
    counts = confusion["counts"]
    assert counts["perfunctory"]["perfunctory"] == 1
    assert counts["perfunctory"]["cold-follow-up"] == 2
    assert counts["clean"]["overbearing"] == 1 and counts["clean"]["clean"] == 1
    assert confusion["missed_as"]["perfunctory"] == {"overbearing": 0, "vague-expertise": 0, "cold-follow-up": 1,
                                                     "clean": 0}


def test_slices_group_turns_and_average_only_labels_present():
    rows = [
        {"conversation_id": "a", "gold": ["overbearing"], "predicted": [],
         "scores": dict.fromkeys(LABELS, 0.0) | {"overbearing": 0.9}, "conversation_turns": 3,
         "meta": {"domain": "telecom", "script": "simplified", "channel": "chat", "set": "platform-contrast"}},
        {"conversation_id": "b", "gold": [], "predicted": [], "scores": dict.fromkeys(LABELS, 0.0),
         "conversation_turns": 20, "timestamps": "none", "meta": {"domain": "banking"}},
    ]
    slices = slice_metrics(rows, dict.fromkeys(LABELS, 0.5))
    assert slices["domain"]["telecom"]["macro_f1"] == 1.0
    assert slices["domain"]["banking"]["macro_f1"] is None
    assert slices["domain"]["banking"]["clean_false_alarm_rate"] == 0.0
    assert set(slices["script"]) == {"simplified", "unknown"}
    assert set(slices["length"]) == {"1-4 turns", "17+ turns"}
    assert set(slices["set"]) == {"platform-contrast", "unknown"}
    assert set(slices["timestamps"]) == {"none", "unknown"}
    assert length_bucket(8) == "5-8 turns"


def test_timestamp_coverage_tells_all_some_and_none_apart():
    assert timestamp_coverage([{"ts": "2026-03-01T10:00:00+08:00"}, {"ts": "2026-03-01T10:01:00+08:00"}]) == "all"
    assert timestamp_coverage([{"ts": "2026-03-01T10:00:00+08:00"}, {"text": "x"}]) == "some"
    assert timestamp_coverage([{"text": "x"}]) == "none"


def test_rule_baseline_is_evaluated_the_same_way(tmp_path):
    report, result = evaluate_file(TINY_DATA, RuleScorer(), "rules", tmp_path)
    assert report["engine"] == "rules" and report["model_dir"] is None
    assert set(report["turn"]["per_label"]) == set(LABELS)
    assert all("evidence" in case for case in read_jsonl(tmp_path / "bad_cases.jsonl"))
    again = evaluate(RuleScorer(), read_annotated(TINY_DATA))
    assert again.metrics == result.metrics


def test_eval_command_prints_a_summary_and_writes_the_folder(tiny_model, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["eval", "--model", str(tiny_model), str(TINY_DATA), "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    for word in ("turn level", "macro", "false alarms on clean agent turns", "conversation level", *LABELS):
        assert word in printed
    assert all((out / name).is_file() for name in REPORT_FILES)


def test_eval_command_with_the_torch_engine(tiny_model, tmp_path):
    assert main(["eval", "--model", str(tiny_model), str(TINY_DATA), "--engine", "torch", "--out",
                 str(tmp_path), "-q"]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["quantization"] == "none"


def test_eval_refuses_an_unannotated_file(tmp_path, capsys):
    path = tmp_path / "plain.jsonl"
    path.write_text('{"id": "x", "turns": [{"role": "agent", "text": "好"}]}\n', encoding="utf-8")
    assert main(["eval", str(path), "--engine", "rules", "--out", str(tmp_path / "out"), "-q"]) == 2
    assert "labels" in capsys.readouterr().err
