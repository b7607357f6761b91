import json

import numpy as np
import pytest

from hengwen.model.labels import LABELS
from hengwen.training.compare import (compare_reports, compare_runs, dev_predictions, format_comparison,
                                      paired_bootstrap)

from ..conftest import TINY_DATA

HALF = dict.fromkeys(LABELS, 0.5)


def _data(seed=0, conversations=60, turns=4):
    rng = np.random.default_rng(seed)
    gold = rng.random((conversations * turns, len(LABELS))) < 0.3
    return gold, np.repeat(np.arange(conversations), turns)


def test_a_run_against_itself_is_never_better():
    gold, conversation = _data()
    scores = np.random.default_rng(1).random(gold.shape)
    result = paired_bootstrap(gold, conversation, (scores, HALF), (scores, HALF), resamples=50)
    assert result["difference"] == 0 and result["probability_better"] == 0
    assert result["interval_90"] == [0.0, 0.0]


def test_a_clearly_better_run_wins_almost_every_resample_and_the_order_matters():
    gold, conversation = _data()
    rng = np.random.default_rng(2)
    noisy = np.where(rng.random(gold.shape) < 0.3, 1 - gold, gold).astype(float)
    good = np.where(rng.random(gold.shape) < 0.05, 1 - gold, gold).astype(float)
    better = paired_bootstrap(gold, conversation, (noisy, HALF), (good, HALF), resamples=200)
    worse = paired_bootstrap(gold, conversation, (good, HALF), (noisy, HALF), resamples=200)
    assert better["probability_better"] > 0.99 and better["interval_90"][0] > 0
    assert worse["probability_better"] < 0.01 and worse["difference"] == -better["difference"]


def test_compare_runs_reads_each_run_at_its_own_dev_thresholds(tiny_model):
    results = compare_runs(tiny_model, [tiny_model], TINY_DATA, resamples=20)
    row = results[str(tiny_model)]
    assert row["dev_macro_f1"] == row["reference_dev_macro_f1"] and row["difference"] == 0
    assert str(tiny_model) in format_comparison(tiny_model, results)


def test_compare_refuses_files_that_are_not_runs(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError):
        compare_runs(tiny_model, [tmp_path], TINY_DATA, resamples=5)


def test_several_dev_files_are_pooled_like_one(tiny_data_halves, tiny_model):
    pooled_gold, pooled_conversation, pooled_probabilities, _ = dev_predictions(tiny_model, tiny_data_halves)
    whole_gold, whole_conversation, whole_probabilities, _ = dev_predictions(tiny_model, TINY_DATA)
    assert np.array_equal(pooled_gold, whole_gold)
    assert np.array_equal(pooled_conversation, whole_conversation)
    np.testing.assert_allclose(pooled_probabilities, whole_probabilities, atol=1e-6)


def test_eval_reports_compare_models_as_they_scored(tmp_path, tiny_model, tiny_model_copy, tiny_data_halves):
    from hengwen.serving.runtime import Scorer
    from hengwen.training.evaluate import evaluate_file
    config_path = tiny_model_copy / "config.json"
    config = json.loads(config_path.read_text())
    config["hengwen_thresholds"] = dict.fromkeys(LABELS, 0.0)  # flags everything: a clearly worse operating point
    config_path.write_text(json.dumps(config))
    shipped, flag_all, other_gold = tmp_path / "shipped", tmp_path / "flag-all", tmp_path / "other"
    evaluate_file(TINY_DATA, Scorer(tiny_model), "onnx", shipped)
    evaluate_file(TINY_DATA, Scorer(tiny_model_copy), "onnx", flag_all)
    itself = compare_reports(shipped, [shipped], resamples=20)[str(shipped)]
    assert itself["difference"] == 0 and itself["probability_better"] == 0
    worse = compare_reports(shipped, [flag_all], resamples=20)[str(flag_all)]
    assert worse["dev_macro_f1"] == pytest.approx(
        json.loads((flag_all / "metrics.json").read_text())["turn"]["macro_f1"], abs=1e-4)
    evaluate_file(tiny_data_halves[0], Scorer(tiny_model), "onnx", other_gold)
    with pytest.raises(ValueError, match="same turns"):
        compare_reports(shipped, [other_gold], resamples=5)


def test_compare_command_needs_dev_files_or_reports(tiny_model, capsys):
    from hengwen.serving.cli import main
    assert main(["compare", str(tiny_model), str(tiny_model)]) == 2
    assert "--reports" in capsys.readouterr().err
