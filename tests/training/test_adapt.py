"""`hengwen adapt` on the tiny model and a tiny unlabelled file: steps, report, safeguards, resumability."""
import csv
import json

import numpy as np
import pytest

from hengwen.data.readers import read_conversations
from hengwen.model.classifier import ModelSettings
from hengwen.model.labels import LABELS
from hengwen.serving.cli import main
from hengwen.training.adapt import (DEFAULT_CONFIG, AdaptConfig, MlmArguments, SelfTrainingArguments, choose_by_dev,
                                    mlm_examples, run_mlm, select_pseudo_labels, summarize, whole_word_collator,
                                    whole_word_offsets)

from ..conftest import FIXTURES, TINY_DATA, tiny_config

TINY_UNLABELED = FIXTURES / "tiny_unlabeled.jsonl"
STEPS = ["before", "mlm", "finetune", "control", "self-training-1"]


def weights(model_dir):
    from transformers import AutoModelForSequenceClassification
    return {name: tensor.numpy() for name, tensor in
            AutoModelForSequenceClassification.from_pretrained(str(model_dir)).state_dict().items()}


def tiny_records():
    return [item.record for item in read_conversations(TINY_UNLABELED)]


TINY_AGENT_TURNS = sum(turn["role"] == "agent" for record in tiny_records() for turn in record["turns"])


def word_groups(offsets, special_tokens_mask):
    """Token positions per word, read back from offsets the way the collator reads them (a gap starts a word)."""
    groups, previous_end = [], None
    for position, ((start, end), special) in enumerate(zip(offsets, special_tokens_mask)):
        if special:
            previous_end = None
            continue
        if start != previous_end:
            groups.append([])
        groups[-1].append(position)
        previous_end = end
    return groups


def write_exports(folder):
    """The tiny unlabelled set as a CSV export (its own column names, timestamps without an offset) plus a JSONL
    export with one line of each kind to skip."""
    records = tiny_records()
    csv_path = folder / "exports.csv"
    with csv_path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sid", "who", "said", "when"])
        for record in records[:5]:
            for turn in record["turns"]:
                writer.writerow([record["id"], turn["role"], turn["text"], turn.get("ts", "")[:19]])
    dev_conversation = json.loads(TINY_DATA.read_text(encoding="utf-8").splitlines()[0])
    lines = [json.dumps(record, ensure_ascii=False) for record in records[5:]] + [
        "{not json",
        json.dumps({"id": "customer-only", "turns": [{"role": "customer", "text": "在吗"}]}),
        json.dumps(records[-1], ensure_ascii=False),
        json.dumps(dev_conversation, ensure_ascii=False),
    ]
    jsonl_path = folder / "exports.jsonl"
    jsonl_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [str(csv_path), str(jsonl_path)]


def adapt_args(folder, tiny_model, tiny_base, *extra):
    training = tiny_config(folder, tiny_base, epochs=1)
    config = {
        "mlm": {"max_steps": 4, "head_only_steps": 2, "batch_size": 4, "heldout_share": 0.2, "log_every": 2},
        "finetune": {"training_config": str(training), "overrides": {"data.test_file": str(TINY_DATA)}},
        # The tiny model scores every label near 0.5: these bounds make every turn a confident clean one.
        "self_training": {"iterations": 1, "positive_min": 0.99, "negative_max": 0.98, "max_clean_turns": 3},
    }
    path = folder / "adapt.json"
    path.write_text(json.dumps(config))
    return ["adapt", "--unlabeled", *write_exports(folder), "--out", str(folder / "out"), "--from",
            str(tiny_model), "--config", str(path), "--columns", "id=sid,role=who,text=said,ts=when",
            "--timezone", "+08:00",
            "--set", 'unlabeled.expected_flag_rates={"perfunctory": 0.04}', *extra]


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, tiny_model, tiny_base):
    folder = tmp_path_factory.mktemp("adapt")
    args = adapt_args(folder, tiny_model, tiny_base)
    assert main(args) == 0
    return folder / "out", args


def report_of(out):
    return json.loads((out / "adapt_report.json").read_text(encoding="utf-8"))


def test_report_states_what_every_step_did(adapted):
    out, _ = adapted
    report = report_of(out)
    assert list(report["steps"]) == STEPS
    for name, record in report["steps"].items():
        assert record["reused"] is False and record["seconds"] >= 0
        evaluation = record["evaluation"]
        assert set(evaluation) == {"dev", "test", "unlabeled"}
        assert set(evaluation["dev"]["turn"]["per_label"]) == set(LABELS)
        unlabeled = evaluation["unlabeled"]
        assert unlabeled["agent_turns"] == TINY_AGENT_TURNS and unlabeled["conversations"] == 8
        assert set(unlabeled["turn_flag_rate"]) == set(LABELS)
        for quantiles in unlabeled["score_quantiles"].values():
            assert quantiles["p50"] <= quantiles["p90"] <= quantiles["p99"]
    mlm = report["steps"]["mlm"]
    assert mlm["steps"] == 4 and mlm["encoder_steps"] == 2
    assert mlm["heldout_examples"] > 0 and mlm["examples"] + mlm["heldout_examples"] == TINY_AGENT_TURNS
    assert mlm["heldout_loss"]["before_encoder_training"] > 0 and mlm["heldout_loss"]["after"] > 0
    assert 0 < mlm["masked_token_share"] < 1
    assert report["steps"]["finetune"]["init_from"] == str(out / "mlm")
    assert report["steps"]["control"]["init_from"] == report["steps"]["before"]["model"]
    summary = report["summary"]
    assert summary["before"] == "before" and summary["after"] == "self-training-1"
    assert summary["best_by_dev"] in STEPS
    assert set(summary["contributions"]) == {"mlm encoder under the old head (mlm vs before)",
                                             "mlm (finetune vs control)", "fine-tuning again (control vs before)",
                                             "self-training-1"}
    row = summary["models"]["finetune"]
    assert row["test_macro_f1"] is not None
    assert row["flag_rate_vs_expected"] == {
        "perfunctory": round(row["unlabeled_turn_flag_rate"]["perfunctory"] / 0.04, 2)}
    assert "never on test" in report["test_policy"]


def test_unusable_and_held_back_conversations_are_skipped_and_counted(adapted):
    counts = report_of(adapted[0])["unlabeled"]
    assert counts["unreadable"] == 1 and counts["invalid"] == 1
    assert counts["duplicates"] == 1
    assert counts["in_dev_or_test"] == 1  # a dev conversation never reaches MLM or pseudo-labels
    assert counts["used"] == 8 and counts["agent_turns"] == TINY_AGENT_TURNS


def test_mlm_continues_the_encoder_and_keeps_the_label_head(adapted, tiny_model):
    out, _ = adapted
    before, after = weights(tiny_model), weights(out / "mlm")
    assert set(before) == set(after)
    for name in before:
        if name.startswith("classifier.") or "word_embeddings" in name:  # head kept, embeddings frozen
            np.testing.assert_array_equal(before[name], after[name])
    assert any(not np.array_equal(before[name], after[name]) for name in before if ".encoder.layer." in name)
    assert ModelSettings(out / "mlm").thresholds == ModelSettings(tiny_model).thresholds


def test_self_training_adds_capped_confident_turns_to_the_annotated_data(adapted):
    out, _ = adapted
    record = report_of(out)["steps"]["self-training-1"]
    counts = record["pseudo_labels"]
    assert record["labelled_by"] == "finetune" and record["init_from"] == str(out / "mlm")
    assert counts["selected_clean"] == 3 and counts["selected_per_label"] == {label: 0 for label in LABELS}
    pseudo = [json.loads(line) for line in (out / "self-training-1" / "pseudo_labels.jsonl").read_text().splitlines()]
    agent_turns = [turn for record in pseudo for turn in record["turns"] if turn["role"] == "agent"]
    assert len(agent_turns) == 3 and all(turn["labels"] == [] for turn in agent_turns)
    assert all(record["meta"]["pseudo_labelled"] and record["turns"][-1]["role"] == "agent" for record in pseudo)
    combined = (out / "self-training-1" / "train_with_pseudo.jsonl").read_text().splitlines()
    assert len(combined) == len(TINY_DATA.read_text().splitlines()) + len(pseudo)


def test_a_rerun_reuses_finished_steps_and_redoes_only_what_changed(adapted):
    out, args = adapted
    first = report_of(out)
    assert main(args) == 0
    again = report_of(out)
    assert all(record["reused"] for record in again["steps"].values())
    assert again["summary"] == first["summary"]
    assert main(args + ["--set", "self_training.max_clean_turns=2"]) == 0
    changed = report_of(out)["steps"]
    assert [name for name, record in changed.items() if not record["reused"]] == ["self-training-1"]
    assert changed["self-training-1"]["pseudo_labels"]["selected_clean"] == 2


def test_without_a_starting_model_a_baseline_is_trained_first(tmp_path, tiny_base):
    training = tiny_config(tmp_path, tiny_base, epochs=1)
    config = tmp_path / "adapt.json"
    config.write_text(json.dumps({"mlm": {"enabled": False}, "finetune": {"enabled": False,
                                                                          "training_config": str(training)},
                                  "self_training": {"iterations": 0}}))
    out = tmp_path / "out"
    assert main(["adapt", "--unlabeled", str(TINY_UNLABELED), "--out", str(out), "--config", str(config)]) == 0
    report = report_of(out)
    assert list(report["steps"]) == ["baseline", "before"]
    assert report["steps"]["before"]["model"] == str(out / "baseline")
    assert ModelSettings(out / "baseline").labels == LABELS


def test_a_folder_without_torch_weights_is_refused(tmp_path, tiny_model, capsys):
    onnx_only = tmp_path / "onnx-only"
    onnx_only.mkdir()
    (onnx_only / "config.json").write_text((tiny_model / "config.json").read_text())
    args = ["adapt", "--unlabeled", str(TINY_UNLABELED), "--out", str(tmp_path / "out"), "--from", str(onnx_only)]
    assert main(args + ["--config", str(DEFAULT_CONFIG)]) == 2
    assert "no torch weights" in capsys.readouterr().err


def test_a_folder_not_made_by_adapt_is_never_deleted(tmp_path, tiny_model, tiny_base):
    args = adapt_args(tmp_path, tiny_model, tiny_base)
    precious = tmp_path / "out" / "before" / "notes.txt"
    precious.parent.mkdir(parents=True)
    precious.write_text("keep me")
    assert main(args) == 2
    assert precious.read_text() == "keep me"


def test_choice_reads_dev_only_and_ties_go_to_the_earlier_step():
    models = {"before": {"dev_macro_f1": 0.50, "test_macro_f1": 0.90},
              "finetune": {"dev_macro_f1": 0.60, "test_macro_f1": 0.10},
              "control": {"dev_macro_f1": 0.60, "test_macro_f1": 0.95}}
    assert choose_by_dev(models) == "finetune"


def evaluation(dev, test, perfunctory_rate):
    rates = {label: 0.0 for label in LABELS} | {"perfunctory": perfunctory_rate}
    return {"dev": {"turn": {"macro_f1": dev, "per_label": {label: {"f1": dev} for label in LABELS}}},
            "test": {"turn": {"macro_f1": test}},
            "unlabeled": {"turn_flag_rate": rates, "turn_flag_rate_any": perfunctory_rate}}


def test_summary_credits_each_step_against_the_right_model():
    steps = {"before": {"model": "m0", "evaluation": evaluation(0.50, 0.40, 0.20)},
             "mlm": {"model": "m1", "evaluation": evaluation(0.45, 0.35, 0.30)},
             "finetune": {"model": "m2", "evaluation": evaluation(0.60, 0.50, 0.08)},
             "control": {"model": "m3", "evaluation": evaluation(0.55, 0.45, 0.12)},
             "self-training-1": {"model": "m4", "labelled_by": "finetune", "evaluation": evaluation(0.58, 0.70, 0.05)}}
    summary = summarize(steps, {"perfunctory": 0.04})
    contributions = summary["contributions"]
    assert contributions["mlm (finetune vs control)"]["dev_macro_f1"] == 0.05
    assert contributions["mlm (finetune vs control)"]["unlabeled_turn_flag_rate"]["perfunctory"] == -0.04
    assert contributions["fine-tuning again (control vs before)"]["test_macro_f1"] == 0.05
    assert contributions["mlm encoder under the old head (mlm vs before)"]["dev_macro_f1"] == -0.05
    assert contributions["self-training-1"]["dev_macro_f1"] == -0.02  # against finetune, not control
    assert summary["before"] == "before" and summary["after"] == "self-training-1"
    assert summary["best_by_dev"] == "finetune"  # the best test score does not win
    assert summary["models"]["control"]["flag_rate_vs_expected"] == {"perfunctory": 3.0}


def test_whole_word_offsets_group_tokens_by_jieba_words():
    tokens = ["[CLS]", "我", "想", "申", "请", "退", "款", "iphone", "##12", "[SEP]"]
    special = [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    groups = word_groups(whole_word_offsets(tokens, special), special)
    assert ["".join(tokens[i].removeprefix("##") for i in group) for group in groups] == [
        "我", "想", "申请", "退款", "iphone12"]


def test_whole_word_masking_masks_every_token_of_a_chosen_word(tiny_model):
    from transformers import AutoTokenizer

    from hengwen.training.adapt import _padded
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    examples = mlm_examples(tiny_records(), tokenizer, ModelSettings(tiny_model).encoding)
    batch = whole_word_collator(tokenizer, MlmArguments(mask_probability=0.3, seed=3))(
        _padded(examples, range(len(examples)), tokenizer.pad_token_id))
    masked = (batch["labels"] != -100).numpy()
    assert masked.any()
    multi_token_words = 0
    for row, example in enumerate(examples):
        for group in word_groups(example["offset_mapping"], example["special_tokens_mask"]):
            assert len({bool(masked[row, position]) for position in group}) == 1
            multi_token_words += len(group) > 1
    assert multi_token_words > 0


def test_mlm_is_seeded(tmp_path, tiny_model):
    settings = MlmArguments(max_steps=3, head_only_steps=1, batch_size=4, heldout_share=0.0, log_every=1)
    encoding = ModelSettings(tiny_model).encoding
    for name in ("a", "b"):
        run_mlm(tiny_model, tiny_records(), settings, encoding, tmp_path / name, log=lambda *_: None)
    first, second = (weights(tmp_path / name) for name in ("a", "b"))
    assert all(np.array_equal(first[name], second[name]) for name in first)


def conversation(name, agent_turns):
    turns = []
    for number in range(agent_turns):
        turns += [{"role": "customer", "text": f"问题{number}"}, {"role": "agent", "text": f"回答{number}"}]
    return {"id": name, "turns": turns}


CLEAN, PERFUNCTORY, UNSURE = [0.01, 0.02, 0.01, 0.03], [0.01, 0.95, 0.02, 0.01], [0.01, 0.5, 0.01, 0.01]


def test_pseudo_labels_keep_confident_prefixes_within_caps():
    records = [conversation("a", 4), conversation("b", 1), conversation("c", 2)]
    scores = [CLEAN, PERFUNCTORY, UNSURE, CLEAN,  PERFUNCTORY,  CLEAN, CLEAN]
    settings = SelfTrainingArguments(positive_min=0.9, negative_max=0.05, max_turns_per_label=1, max_clean_turns=2)
    pseudo, counts = select_pseudo_labels(records, scores, settings)
    assert counts["agent_turns"] == 7 and counts["confident_turns"] == 6
    assert counts["selected_per_label"]["perfunctory"] == 1 and counts["selected_clean"] == 2
    assert counts["selected_turns"] == 3 and counts["confident_but_not_usable"] == 3
    for record in pseudo:
        labels = [turn["labels"] for turn in record["turns"] if turn["role"] == "agent"]
        assert all("labels" not in turn for turn in record["turns"] if turn["role"] != "agent")
        assert record["turns"][-1]["role"] == "agent"
        assert labels in ([[], ["perfunctory"]], [["perfunctory"]], [[]], [[], []])
    assert counts["selected_turns"] == sum(len([t for t in r["turns"] if t["role"] == "agent"]) for r in pseudo)
    # The unsure third turn ends its conversation's usable prefix: its confident fourth turn is never used.
    assert all(len(record["turns"]) <= 4 for record in pseudo)


def test_pseudo_labels_refuse_scores_of_another_set():
    with pytest.raises(ValueError, match="score rows"):
        select_pseudo_labels([conversation("a", 1)], [CLEAN, CLEAN], SelfTrainingArguments())


def test_config_checks_fields_bounds_and_finds_the_training_config(tmp_path):
    config = AdaptConfig.from_json(DEFAULT_CONFIG, {"mlm.max_steps": 7, "finetune.overrides.train.epochs": 1})
    assert config.mlm.max_steps == 7 and config.finetune.overrides == {"train.epochs": 1}
    assert (DEFAULT_CONFIG.parent / "m3e-small.json").samefile(config.finetune.training_config)
    with pytest.raises(ValueError, match="mlm_steps"):
        AdaptConfig.from_json(DEFAULT_CONFIG, {"mlm.mlm_steps": 3})
    with pytest.raises(ValueError, match="negative_max"):
        AdaptConfig.from_json(DEFAULT_CONFIG, {"self_training.negative_max": 0.95})
    with pytest.raises(ValueError, match="unknown labels"):
        AdaptConfig.from_json(DEFAULT_CONFIG, {"unlabeled.expected_flag_rates": {"rude": 0.1}})


def test_mlm_learns_the_unlabelled_text_and_hands_it_to_the_classifier(tmp_path, tiny_model):
    settings = MlmArguments(max_steps=40, epochs=100, head_only_steps=10, batch_size=8, learning_rate=1e-2,
                            warmup_ratio=0.0, heldout_share=0.25, log_every=10, freeze_word_embeddings=False)
    done = run_mlm(tiny_model, tiny_records(), settings, ModelSettings(tiny_model).encoding, tmp_path / "mlm",
                   log=lambda *_: None)
    losses = [entry["loss"] for entry in done["history"]]
    assert [entry["encoder_trained"] for entry in done["history"]] == [False, True, True, True]
    assert losses[-1] < losses[0] - 2.0
    assert done["heldout_loss"]["after"] < done["heldout_loss"]["before_encoder_training"] - 1.0
    name = "bert.embeddings.word_embeddings.weight"
    before, after = weights(tiny_model), weights(tmp_path / "mlm")
    assert not np.array_equal(before[name], after[name])
