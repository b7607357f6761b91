import json

import numpy as np
import pytest

from hengwen.model.labels import LABELS
from hengwen.training.head import fit_head, refit_head

from ..conftest import TINY_DATA


def test_fit_head_folds_the_standardization_into_raw_feature_weights():
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(0)
    features = rng.normal(loc=3.0, scale=[0.5, 4.0, 1.0], size=(400, 3))
    gold = np.stack([features[:, 0] > 3.0, features[:, 1] + features[:, 2] > 4.0], axis=1).astype(float)
    weight, bias = fit_head(features, gold, c=1.0)
    standardized = (features - features.mean(axis=0)) / features.std(axis=0)
    for column in range(2):
        expected = LogisticRegression(C=1.0, max_iter=5000).fit(standardized, gold[:, column])
        np.testing.assert_allclose(features @ weight[column] + bias[column], expected.decision_function(standardized),
                                   atol=1e-6)
    assert ((features @ weight.T + bias > 0) == gold.astype(bool)).mean() > 0.9


def test_fit_head_refuses_a_label_with_one_class():
    with pytest.raises(ValueError, match="only one class"):
        fit_head(np.ones((4, 2)) * [[1], [2], [3], [4]], np.array([[0, 1], [1, 1], [0, 1], [1, 1]], float), c=1.0)


def test_refit_head_changes_only_the_head_and_the_saved_model_scores_with_it(tiny_model, tmp_path):
    from safetensors.torch import load_file

    from hengwen.serving.runtime import Scorer
    out = tmp_path / "head"
    description = refit_head(tiny_model, [TINY_DATA], TINY_DATA, out, c_grid=(0.1, 1.0), untimed_copies=True,
                             log=lambda *_: None)
    assert [trial["c"] for trial in description["c_grid"]] == [0.1, 1.0]
    assert description["chosen_c"] == max(description["c_grid"], key=lambda trial: trial["dev_macro_f1"])["c"]
    # Untimed copies add a second encoding of every timestamped conversation.
    assert description["training_turns"] > sum(
        turn["role"] == "agent" for line in TINY_DATA.read_text(encoding="utf-8").splitlines()
        for turn in json.loads(line)["turns"])
    old, new = load_file(str(tiny_model / "model.safetensors")), load_file(str(out / "model.safetensors"))
    changed = {key for key in old if not (old[key] == new[key]).all()}
    assert changed == {"classifier.weight", "classifier.bias"}
    info = json.loads((out / "run_info.json").read_text())
    assert info["head_refit"]["chosen_c"] == description["chosen_c"]
    assert info["config"]["train"]["output_dir"] == str(out)
    assert "Head fitted again" in (out / "README.md").read_text()
    config = json.loads((out / "config.json").read_text())
    assert set(config["hengwen_thresholds"]) == set(LABELS) and "hengwen_temperatures" not in config
    metrics = json.loads((out / "metrics_dev.json").read_text())
    assert metrics["turn"]["macro_f1"] == pytest.approx(description["dev_macro_f1"])
    conversation = json.loads(TINY_DATA.read_text(encoding="utf-8").splitlines()[0])
    record = Scorer(out, engine="torch", threads=1).score_records([conversation])[0]
    assert "error" not in record and record["turns"]


def test_refit_head_needs_a_run_folder(tiny_model, tmp_path):
    import shutil
    source = tmp_path / "no-info"
    shutil.copytree(tiny_model, source)
    (source / "run_info.json").unlink()
    with pytest.raises(ValueError, match="run_info.json"):
        refit_head(source, [TINY_DATA], TINY_DATA, tmp_path / "out", log=lambda *_: None)


def test_refit_head_with_int8_features_fits_on_both_engines(tiny_model, tmp_path):
    from hengwen.model.export import export_model
    from hengwen.serving.runtime import Scorer
    plain = refit_head(tiny_model, [TINY_DATA], TINY_DATA, tmp_path / "plain", c_grid=(1.0,), log=lambda *_: None)
    out = tmp_path / "int8-aware"
    description = refit_head(tiny_model, [TINY_DATA], TINY_DATA, out, c_grid=(1.0,), int8_recipe="u8-ffn-head-fp32",
                             log=lambda *_: None)
    assert description["int8_recipe"] == "u8-ffn-head-fp32"
    assert description["training_turns"] == 2 * plain["training_turns"]
    assert "int8 file" in (out / "README.md").read_text()
    # Quantizing the new model rebuilds the int8 encoder the head was fitted on, bit for bit.
    from transformers import AutoModelForSequenceClassification

    from hengwen.model.export import pooled_output_session
    from hengwen.serving.runtime import pad_batch
    batch = pad_batch([{"input_ids": [2, 40, 41, 42, 3], "token_type_ids": [0] * 5, "attention_mask": [1] * 5}], 0)
    pooled = []
    for index, folder in enumerate((tiny_model, out)):
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        (tmp_path / f"scratch{index}").mkdir()
        session = pooled_output_session(model, batch, tmp_path / f"scratch{index}")
        pooled.append(session.run(["pooled"], batch)[0])
    np.testing.assert_array_equal(pooled[0], pooled[1])
    # The fp32 tolerance is loose: C 1.0 on a random tiny model gives large logits.
    assert export_model(out, TINY_DATA, max_abs_diff=1e-3, max_f1_drop=1.0, log=lambda *_: None,
                        quantization_recipe="u8-ffn-head-fp32")["passed"]
    conversation = json.loads(TINY_DATA.read_text(encoding="utf-8").splitlines()[0])
    assert "error" not in Scorer(out, quantization="int8", threads=1).score_records([conversation])[0]


def test_pooled_output_session_refuses_a_recipe_that_quantizes_the_head(tiny_model, tmp_path):
    from hengwen.model.export import pooled_output_session
    with pytest.raises(ValueError, match="quantizes the classification layer"):
        pooled_output_session(None, None, tmp_path, recipe="u8-ffn-fp32")
