import json
import shutil

import pytest

from hengwen.training.args import TrainingConfig
from hengwen.training.soup import average_weights, make_soup
from hengwen.training.train import train

from ..conftest import TINY_DATA, tiny_config


@pytest.fixture(scope="module")
def second_run(tmp_path_factory, tiny_base):
    """Another tiny run from the same base with another seed and budget: a second soup ingredient."""
    folder = tmp_path_factory.mktemp("second-run")
    output_dir, _ = train(TrainingConfig.from_json(tiny_config(folder, tiny_base, seed=5, epochs=1)),
                          log=lambda *_: None)
    return output_dir


def _weights(run_dir):
    from safetensors.torch import load_file
    return load_file(str(run_dir / "model.safetensors"))


def test_average_weights_is_the_elementwise_mean_and_needs_equal_shapes():
    import torch
    first = {"w": torch.tensor([1.0, 2.0]), "step": torch.tensor([2])}
    second = {"w": torch.tensor([3.0, 6.0]), "step": torch.tensor([4])}
    average = average_weights([first, second])
    assert torch.equal(average["w"], torch.tensor([2.0, 4.0]))
    assert average["step"].dtype == torch.int64 and average["step"].item() == 3
    with pytest.raises(ValueError, match="shapes"):
        average_weights([first, {"w": torch.tensor([1.0]), "step": torch.tensor([1])}])


def test_uniform_soup_averages_every_run_and_is_a_usable_model(tiny_model, second_run, tmp_path):
    from hengwen.serving.runtime import Scorer
    out = tmp_path / "soup"
    description = make_soup([tiny_model, second_run], TINY_DATA, out, recipe="uniform", test_file=TINY_DATA,
                            log=lambda *_: None)
    assert all(item["kept"] for item in description["ingredients"])
    key = "classifier.weight"
    expected = (_weights(tiny_model)[key] + _weights(second_run)[key]) / 2
    assert (_weights(out)[key] - expected).abs().max().item() < 1e-6
    assert json.loads((out / "soup.json").read_text())["recipe"] == "uniform"
    assert {"dev", "test"} == {path.stem.split("_")[1] for path in out.glob("metrics_*.json")}
    assert json.loads((out / "run_info.json").read_text())["config"]["train"]["output_dir"] == str(out)
    assert "Weight average" in (out / "README.md").read_text()
    conversation = json.loads(TINY_DATA.read_text(encoding="utf-8").splitlines()[0])
    record = Scorer(out, engine="torch", threads=1).score_records([conversation])[0]
    assert "error" not in record and record["turns"]


def test_greedy_soup_never_scores_below_its_best_ingredient(tiny_model, second_run, tmp_path):
    description = make_soup([second_run, tiny_model], TINY_DATA, tmp_path / "soup", log=lambda *_: None)
    best = max(item["dev_macro_f1"] for item in description["ingredients"])
    assert description["ingredients"][0]["dev_macro_f1"] == best and description["ingredients"][0]["kept"]
    assert description["dev_macro_f1"] >= best
    assert len(description["greedy_trace"]) == 1


def test_soup_refuses_runs_that_encode_text_differently(tiny_model, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    config = json.loads((other / "config.json").read_text())
    config["hengwen_encoding"]["gap_markers"] = not config["hengwen_encoding"].get("gap_markers", True)
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hengwen_encoding"):
        make_soup([tiny_model, other], TINY_DATA, tmp_path / "soup", log=lambda *_: None)
    with pytest.raises(ValueError, match="at least two"):
        make_soup([tiny_model], TINY_DATA, tmp_path / "soup", log=lambda *_: None)
    with pytest.raises(ValueError, match="recipe"):
        make_soup([tiny_model, tiny_model], TINY_DATA, tmp_path / "soup", recipe="best", log=lambda *_: None)


def test_soup_of_runs_trained_at_two_lengths_reads_text_at_the_length_it_is_given(tiny_model, tmp_path):
    longer = tmp_path / "longer"
    shutil.copytree(tiny_model, longer)
    config = json.loads((longer / "config.json").read_text())
    trained_length = config["hengwen_encoding"]["max_length"]
    config["hengwen_encoding"]["max_length"] = trained_length + 32
    (longer / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hengwen_encoding"):
        make_soup([tiny_model, longer], TINY_DATA, tmp_path / "refused", log=lambda *_: None)
    out = tmp_path / "soup"
    description = make_soup([tiny_model, longer], TINY_DATA, out, recipe="uniform", max_length=trained_length + 32,
                            log=lambda *_: None)
    assert description["max_length"] == trained_length + 32
    assert json.loads((out / "config.json").read_text())["hengwen_encoding"]["max_length"] == trained_length + 32
    assert json.loads((out / "run_info.json").read_text())["config"]["encoding"]["max_length"] == trained_length + 32
    config["hengwen_encoding"]["gap_markers"] = not config["hengwen_encoding"].get("gap_markers", True)
    (longer / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hengwen_encoding"):
        make_soup([tiny_model, longer], TINY_DATA, tmp_path / "still-refused", max_length=trained_length,
                  log=lambda *_: None)
