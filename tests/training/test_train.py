import json

import numpy as np
import pytest

from hengwen.model.classifier import ModelSettings
from hengwen.model.labels import LABELS
from hengwen.training.args import TrainingConfig
from hengwen.training.train import train

from ..conftest import tiny_config


def test_training_saves_a_complete_model_folder(tiny_model):
    settings = ModelSettings(tiny_model)
    assert settings.labels == LABELS
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["label2id"] == {label: i for i, label in enumerate(LABELS)}
    assert config["problem_type"] == "multi_label_classification"
    assert set(settings.thresholds) == set(LABELS) and all(0 < t < 1 for t in settings.thresholds.values())
    assert settings.encoding.max_length == 64
    dev = json.loads((tiny_model / "metrics_dev.json").read_text())
    for level in ("turn", "conversation"):
        assert set(dev[level]["per_label"]) == set(LABELS)
        for metrics in dev[level]["per_label"].values():
            assert {"precision", "recall", "f1", "support"} <= set(metrics)
    info = json.loads((tiny_model / "run_info.json").read_text())
    assert len(info["data_sha256"]["train_file"]) == 64
    assert info["config"]["train"]["seed"] == 13
    card = (tiny_model / "README.md").read_text()
    assert "Licence" in card and "overbearing" in card


def test_same_seed_same_model(tmp_path, tiny_base):
    runs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        config = TrainingConfig.from_json(tiny_config(folder, tiny_base, epochs=1, eval_every_epoch=False))
        train(config, log=lambda *_: None)
        runs.append(json.loads((folder / "model" / "metrics_dev.json").read_text()))
    assert runs[0] == runs[1]


def test_config_rejects_unknown_fields(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"train": {"epochz": 3}}))
    with pytest.raises(ValueError, match="epochz"):
        TrainingConfig.from_json(path)


def test_overrides_reach_the_config(tmp_path, tiny_base):
    config = TrainingConfig.from_json(tiny_config(tmp_path, tiny_base), {"train.epochs": 5,
                                                                         "encoding.gap_markers": False})
    assert config.train.epochs == 5 and config.encoding.gap_markers is False


def test_focal_loss_is_bce_at_gamma_zero_and_down_weights_easy_turns():
    import torch

    from hengwen.training.args import TrainArguments
    from hengwen.training.train import loss_function
    gold = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 1]], dtype=np.float32)
    logits, targets = torch.tensor([[4.0, -4.0, -3.0, 0.2]]), torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    bce = loss_function(gold, TrainArguments(loss="bce"), "cpu")(logits, targets)
    assert torch.isclose(loss_function(gold, TrainArguments(loss="focal", focal_gamma=0.0), "cpu")(logits, targets), bce)
    easy, hard = torch.tensor([[4.0, -4.0, -4.0, 4.0]]), torch.tensor([[-1.0, 1.0, 1.0, -1.0]])
    focal = loss_function(gold, TrainArguments(loss="focal", focal_gamma=2.0), "cpu")
    plain = loss_function(gold, TrainArguments(loss="bce"), "cpu")
    assert focal(easy, targets) / plain(easy, targets) < 0.01 < focal(hard, targets) / plain(hard, targets)
    with pytest.raises(ValueError, match="focal"):
        loss_function(gold, TrainArguments(loss="hinge"), "cpu")


def test_a_nan_target_adds_nothing_to_the_loss_or_the_positive_weights():
    import torch

    from hengwen.training.args import TrainArguments
    from hengwen.training.train import loss_function, positive_weights
    gold = np.array([[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 1]], dtype=np.float32)
    with_unknown = np.vstack([gold, [[0, 0, 0, np.nan]] * 50]).astype(np.float32)
    assert torch.equal(positive_weights(with_unknown, "sqrt")[3], positive_weights(gold, "sqrt")[3])
    for loss in ("bce", "focal"):
        logits = torch.tensor([[4.0, -4.0, -3.0, 0.2]], requires_grad=True)
        masked = loss_function(gold, TrainArguments(loss=loss), "cpu")(logits, torch.tensor([[1.0, 0.0, 0.0, np.nan]]))
        masked.backward()
        assert torch.isfinite(masked) and logits.grad[0, 3] == 0 and logits.grad[0, 0] != 0
    weights = positive_weights(gold, "sqrt")[:3]
    known_terms = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[:, :3], torch.tensor([[1.0, 0.0, 0.0]]), pos_weight=weights, reduction="none")
    weighted_bce = loss_function(gold, TrainArguments(loss="bce", pos_weight="sqrt"), "cpu")
    masked_bce = weighted_bce(logits, torch.tensor([[1.0, 0.0, 0.0, np.nan]]))
    assert torch.isclose(masked_bce, known_terms.mean())


def test_extra_train_files_are_trained_on_and_hashed(tmp_path, tiny_base):
    from ..conftest import TINY_DATA
    lines = []
    config = TrainingConfig.from_json(tiny_config(tmp_path, tiny_base, epochs=1, eval_every_epoch=False),
                                      {"data.extra_train_files": [str(TINY_DATA)]})
    train(config, log=lines.append)
    single = sum(1 for line in TINY_DATA.read_text(encoding="utf-8").splitlines()
                 for turn in json.loads(line)["turns"] if turn["role"] == "agent")
    assert f"train examples {2 * single}," in " ".join(lines)
    info = json.loads((tmp_path / "model" / "run_info.json").read_text())
    assert info["data_sha256"]["extra_train_files"] == [info["data_sha256"]["train_file"]]
