import json

import numpy as np
import pytest

from hengwen.model.classifier import ModelSettings, set_hengwen_settings
from hengwen.model.encoding import EncodingConfig
from hengwen.model.labels import LABELS
from hengwen.serving.cli import main
from hengwen.serving.runtime import Scorer, apply_temperatures
from hengwen.training.calibration import (calibration_summary, dev_probabilities, expected_calibration_error,
                                          fit_temperatures, fit_untimed_calibration, log_loss, reliability_table)
from hengwen.training.dataset import read_annotated, without_timestamps
from hengwen.training.metrics import choose_thresholds, multilabel_metrics

from ..conftest import TINY_DATA


def overconfident_sample(temperature, rows=4000, seed=0):
    """Gold drawn from sigmoid(z / temperature), reported probabilities sigmoid(z): overconfident when T > 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(rows, len(LABELS)))
    gold = rng.random((rows, len(LABELS))) < 1 / (1 + np.exp(-logits / temperature))
    return gold, 1 / (1 + np.exp(-logits))


def test_ece_of_known_cases():
    assert expected_calibration_error([1, 1, 1, 1, 0], [0.8] * 5) == pytest.approx(0.0)
    assert expected_calibration_error([1, 0, 1, 0], [0.9] * 4) == pytest.approx(0.4)
    # Two bins: [0.1, 0.1] with no positives (error 0.1) and [0.7, 0.7] with all positive (error 0.3).
    assert expected_calibration_error([0, 0, 1, 1], [0.1, 0.1, 0.7, 0.7]) == pytest.approx(0.2)


def test_reliability_table_counts_every_turn_once():
    table = reliability_table([0, 1, 1, 0], [0.0, 0.55, 1.0, 0.05], bins=10)
    assert len(table) == 10 and sum(b["count"] for b in table) == 4
    assert table[0]["count"] == 2 and table[0]["positive_rate"] == 0.0
    assert table[9]["count"] == 1 and table[9]["mean_probability"] == 1.0
    assert table[3] == {"low": 0.3, "high": 0.4, "count": 0, "mean_probability": None, "positive_rate": None}


def test_fitted_temperature_recovers_the_overconfidence_and_lowers_ece():
    gold, probabilities = overconfident_sample(temperature=2.0)
    temperatures = fit_temperatures(gold, probabilities)
    assert all(1.8 < t < 2.2 for t in temperatures.values()), temperatures
    before = calibration_summary(gold, probabilities)
    after = calibration_summary(gold, apply_temperatures(probabilities, temperatures))
    assert after["macro_ece"] < before["macro_ece"] / 2


def test_a_label_without_positives_keeps_temperature_one():
    gold, probabilities = overconfident_sample(temperature=2.0, rows=200)
    gold[:, 0] = False
    assert fit_temperatures(gold, probabilities)["overbearing"] == 1.0


def test_apply_temperatures_divides_the_logit():
    probabilities = np.array([[0.5, 0.8, 0.2, 0.99]], dtype=np.float32)
    assert apply_temperatures(probabilities, None) is probabilities
    assert np.allclose(apply_temperatures(probabilities, dict.fromkeys(LABELS, 1.0)), probabilities, atol=1e-6)
    scaled = apply_temperatures(probabilities, dict.fromkeys(LABELS, 2.0))[0]
    logit = np.log(probabilities[0] / (1 - probabilities[0]))
    assert np.allclose(np.log(scaled / (1 - scaled)), logit / 2, atol=1e-4)


def test_scorer_applies_the_temperatures_in_config(tiny_model_copy):
    conversations = read_annotated(TINY_DATA)
    plain = Scorer(tiny_model_copy).score_records(conversations)
    config_path = tiny_model_copy / "config.json"
    config = json.loads(config_path.read_text())
    config["hengwen_temperatures"] = {"overbearing": 3.0}
    config_path.write_text(json.dumps(config))
    scorer = Scorer(tiny_model_copy)
    assert scorer.temperatures == {"overbearing": 3.0, "perfunctory": 1.0, "vague-expertise": 1.0,
                                   "cold-follow-up": 1.0}
    for before, after in zip(plain, scorer.score_records(conversations)):
        for old, new in zip(before["turns"], after["turns"]):
            logit = np.log(old["scores"]["overbearing"] / (1 - old["scores"]["overbearing"]))
            assert new["scores"]["overbearing"] == pytest.approx(1 / (1 + np.exp(-logit / 3)), abs=2e-4)
            assert new["scores"]["perfunctory"] == pytest.approx(old["scores"]["perfunctory"], abs=2e-4)


def test_model_without_temperatures_is_uncalibrated(tiny_model):
    assert ModelSettings(tiny_model).temperatures is None
    assert "hengwen_temperatures" not in json.loads((tiny_model / "config.json").read_text())


@pytest.mark.parametrize("bad", [{"overbearing": 0}, {"overbearing": -1.0}, {"unknown-label": 1.0},
                                 {"overbearing": "2"}])
def test_invalid_temperatures_are_refused(tiny_model_copy, bad):
    config_path = tiny_model_copy / "config.json"
    config_path.write_text(json.dumps(json.loads(config_path.read_text()) | {"hengwen_temperatures": bad}))
    with pytest.raises(ValueError, match="hengwen_temperatures"):
        ModelSettings(tiny_model_copy)


def test_calibrate_command_writes_temperatures_thresholds_and_report(tiny_model_copy, capsys):
    assert main(["calibrate", str(tiny_model_copy), "--dev", str(TINY_DATA)]) == 0
    assert "ECE" in capsys.readouterr().out
    report = json.loads((tiny_model_copy / "calibration.json").read_text())
    settings = ModelSettings(tiny_model_copy)
    assert settings.temperatures == report["temperatures"]
    assert settings.thresholds == report["thresholds"]["calibrated"]
    for label in LABELS:
        row = report["per_label"][label]
        # Temperature scaling minimises dev log loss; T = 1 (no change) is among the candidates.
        assert row["log_loss_after"] <= row["log_loss_before"] + 1e-4
    # The scores the model now gives on dev are the calibrated ones the report measured.
    scorer = Scorer(tiny_model_copy)
    records = scorer.score_records(read_annotated(TINY_DATA))
    gold = [[label in c["turns"][t["index"]]["labels"] for label in LABELS]
            for c, r in zip(read_annotated(TINY_DATA), records) for t in r["turns"]]
    scores = [[t["scores"][label] for label in LABELS] for r in records for t in r["turns"]]
    assert calibration_summary(gold, scores)["macro_ece"] == pytest.approx(report["macro_ece"]["after"], abs=2e-3)
    assert log_loss(np.array(gold)[:, 0], np.array(scores)[:, 0]) == pytest.approx(
        report["per_label"]["overbearing"]["log_loss_after"], abs=2e-3)


def test_calibrating_on_several_files_pools_them_and_records_each(tiny_model_copy, tiny_data_halves):
    assert main(["calibrate", str(tiny_model_copy), "--dev", *map(str, tiny_data_halves)]) == 0
    report = json.loads((tiny_model_copy / "calibration.json").read_text())
    assert list(report["dev_files"]) == [str(path) for path in tiny_data_halves]
    turns = sum(turn["role"] == "agent" for conversation in read_annotated(TINY_DATA) for turn in conversation["turns"])
    assert report["turns"] == turns
    card = (tiny_model_copy / "README.md").read_text(encoding="utf-8")
    assert all(f"`{path}`" in card for path in tiny_data_halves)


def test_calibrating_twice_leaves_one_card_section_with_the_config_thresholds(tiny_model_copy):
    for _ in range(2):
        assert main(["calibrate", str(tiny_model_copy), "--dev", str(TINY_DATA)]) == 0
    card = (tiny_model_copy / "README.md").read_text(encoding="utf-8")
    assert card.count("## Calibration") == 1 and card.index("## Calibration") < card.index("## Limits")
    thresholds = ModelSettings(tiny_model_copy).thresholds
    section = card[card.index("## Calibration"):card.index("## Limits")]
    for label in LABELS:
        assert f"| {label} |" in section and f"{thresholds[label]:.3f} |" in section


def test_training_further_drops_temperatures_fitted_for_older_weights():
    from transformers import BertConfig
    config = BertConfig()
    config.hengwen_temperatures = dict.fromkeys(LABELS, 2.0)
    config.hengwen_untimed_calibration = {"temperatures": dict.fromkeys(LABELS, 2.0), "offsets": {}}
    set_hengwen_settings(config, dict.fromkeys(LABELS, 0.3), EncodingConfig())
    for key in ("hengwen_temperatures", "hengwen_untimed_calibration"):
        assert not hasattr(config, key) and key not in config.to_dict()


def test_untimed_offsets_move_the_best_untimed_threshold_onto_the_models():
    gold, probabilities = overconfident_sample(temperature=2.0, rows=1500, seed=3)
    # Untimed scores run low: the best threshold on them is far below the model's.
    shifted = apply_temperatures(probabilities, dict.fromkeys(LABELS, 1.0), dict.fromkeys(LABELS, -2.0))
    model_thresholds = dict(zip(LABELS, (0.825, 0.475, 0.75, 0.575)))
    calibration, best = fit_untimed_calibration(gold, shifted, model_thresholds)
    assert best == choose_thresholds(gold, apply_temperatures(shifted, calibration["temperatures"]))
    served = apply_temperatures(shifted, calibration["temperatures"], calibration["offsets"])
    scaled = apply_temperatures(shifted, calibration["temperatures"])
    for column, label in enumerate(LABELS):
        assert calibration["offsets"][label] > 0
        assert np.array_equal(served[:, column] >= model_thresholds[label], scaled[:, column] >= best[label])
    assert multilabel_metrics(gold, served, model_thresholds)["macro_f1"] > \
        multilabel_metrics(gold, shifted, model_thresholds)["macro_f1"]


def _raw_scores(model_dir, conversations):
    """Uncalibrated probabilities per agent turn, and whether each turn carries a ts."""
    _, raw = dev_probabilities(Scorer(model_dir), conversations)
    timed = [bool(turn.get("ts")) for c in conversations for turn in c["turns"] if turn["role"] == "agent"]
    return raw, np.array(timed)


def test_scorer_applies_the_untimed_calibration_to_turns_without_ts_only(tiny_model_copy):
    config_path = tiny_model_copy / "config.json"
    untimed = {"temperatures": dict.fromkeys(LABELS, 2.0), "offsets": dict.fromkeys(LABELS, 1.5)}
    config_path.write_text(json.dumps(json.loads(config_path.read_text()) | {
        "hengwen_temperatures": dict.fromkeys(LABELS, 1.2), "hengwen_untimed_calibration": untimed}))
    conversations = read_annotated(TINY_DATA)
    raw, timed = _raw_scores(tiny_model_copy, conversations)
    assert timed.any() and not timed.all()
    records = Scorer(tiny_model_copy).score_records(conversations)
    served = np.array([[t["scores"][label] for label in LABELS] for r in records for t in r["turns"]])
    expected_timed = apply_temperatures(raw, dict.fromkeys(LABELS, 1.2))
    expected_untimed = apply_temperatures(raw, untimed["temperatures"], untimed["offsets"])
    assert np.allclose(served[timed], expected_timed[timed], atol=2e-4)
    assert np.allclose(served[~timed], expected_untimed[~timed], atol=2e-4)
    assert not np.allclose(expected_timed[~timed], expected_untimed[~timed], atol=1e-2)
    draft = {"text": "在的，您说"}
    scorer = Scorer(tiny_model_copy)
    context = conversations[0]["turns"][:1]
    untimed_draft = scorer.score_draft(context, draft)
    raw_draft = scorer.predict_features(scorer.encoder.encode(context, draft=draft)[1], calibrated=False)
    assert np.allclose([untimed_draft[label] for label in LABELS],
                       apply_temperatures(raw_draft, untimed["temperatures"], untimed["offsets"])[0], atol=2e-4)


@pytest.mark.parametrize("bad", [{"temperatures": {}}, {"temperatures": {}, "offsets": {"overbearing": "1"}},
                                 {"temperatures": {"overbearing": 0}, "offsets": {}},
                                 {"temperatures": {}, "offsets": {"no-such-label": 1.0}}])
def test_invalid_untimed_calibration_is_refused(tiny_model_copy, bad):
    config_path = tiny_model_copy / "config.json"
    config_path.write_text(json.dumps(json.loads(config_path.read_text()) | {
        "hengwen_temperatures": dict.fromkeys(LABELS, 1.0), "hengwen_untimed_calibration": bad}))
    with pytest.raises(ValueError, match="hengwen_"):
        ModelSettings(tiny_model_copy)


def test_calibrate_fits_the_untimed_calibration_on_the_dev_turns_without_ts(tiny_model_copy, capsys):
    assert main(["calibrate", str(tiny_model_copy), "--dev", str(TINY_DATA), "--untimed"]) == 0
    assert "untimed" in capsys.readouterr().out
    report = json.loads((tiny_model_copy / "calibration.json").read_text())
    settings = ModelSettings(tiny_model_copy)
    assert settings.untimed_calibration == {"temperatures": report["untimed"]["temperatures"],
                                            "offsets": report["untimed"]["offsets"]}
    # Scored with every ts removed, the dev turns get exactly the figure the report gives for them.
    stripped = [without_timestamps(c, 1.0) for c in read_annotated(TINY_DATA)]
    records = Scorer(tiny_model_copy).score_records(stripped)
    gold = [[label in c["turns"][t["index"]]["labels"] for label in LABELS] for c, r in zip(stripped, records)
            for t in r["turns"]]
    scores = [[t["scores"][label] for label in LABELS] for r in records for t in r["turns"]]
    assert multilabel_metrics(gold, scores, settings.thresholds)["macro_f1"] == pytest.approx(
        report["untimed"]["macro_f1"]["untimed_calibration"], abs=0.02)
    assert "without a `ts`" in (tiny_model_copy / "README.md").read_text(encoding="utf-8")
    # Calibrating again without --untimed removes it: its offsets belong to the earlier thresholds.
    assert main(["calibrate", str(tiny_model_copy), "--dev", str(TINY_DATA)]) == 0
    assert ModelSettings(tiny_model_copy).untimed_calibration is None
    assert json.loads((tiny_model_copy / "calibration.json").read_text())["untimed"] is None
    assert "without a `ts`" not in (tiny_model_copy / "README.md").read_text(encoding="utf-8")
