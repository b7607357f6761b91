import json

from hengwen.serving.cli import main
from hengwen.training.experiments import changes

from ..conftest import tiny_config


def test_changes_name_each_differing_setting_but_not_the_output_folder():
    reference = {"encoding": {"gap_markers": True, "max_length": 128}, "train": {"output_dir": "a", "epochs": 3}}
    variant = {"encoding": {"gap_markers": False, "max_length": 128}, "train": {"output_dir": "b", "epochs": 3}}
    assert changes(variant, reference) == ["encoding.gap_markers: true -> false"]
    assert changes(reference, reference) == []


def test_experiments_train_once_then_reuse_and_tabulate(tmp_path, tiny_base, capsys):
    configs = []
    for name, extra in (("reference", {}), ("focal", {"loss": "focal", "pos_weight": "sqrt"})):
        folder = tmp_path / name
        folder.mkdir()
        configs.append(str(tiny_config(folder, tiny_base, epochs=1, **extra)))
    table_file = tmp_path / "table.md"
    assert main(["experiments", *configs, "--table", str(table_file)]) == 0
    first = capsys.readouterr().out
    table = table_file.read_text(encoding="utf-8")
    assert "(reference)" in table and '`train.loss: "bce" -> "focal"`' in table
    assert '`train.pos_weight: "none" -> "sqrt"`' in table and "not run" not in table
    saved = json.loads((tmp_path / "focal" / "model" / "run_info.json").read_text())
    assert saved["config"]["train"]["loss"] == "focal" and saved["machine"]["device"] == "cpu"
    assert main(["experiments", *configs]) == 0
    again = capsys.readouterr().out
    assert again.count("reused") == 2 and table in again and table in first


def test_an_experiment_without_a_run_is_listed_as_not_run(tmp_path, tiny_base, capsys):
    config = tiny_config(tmp_path, tiny_base, epochs=1)
    assert main(["experiments", str(config), "--table-only"]) == 0
    assert "not run" in capsys.readouterr().out


def test_a_run_on_other_data_is_not_reused(tmp_path, tiny_base, capsys):
    import shutil

    from ..conftest import TINY_DATA
    data = tmp_path / "train.jsonl"
    shutil.copy(TINY_DATA, data)
    path = tiny_config(tmp_path, tiny_base, epochs=1)
    config = json.loads(path.read_text())
    config["data"]["train_file"] = str(data)
    path.write_text(json.dumps(config))
    assert main(["experiments", str(path)]) == 0
    assert main(["experiments", str(path), "--table-only"]) == 0
    assert "not run" not in capsys.readouterr().out
    data.write_text(data.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    assert main(["experiments", str(path), "--table-only"]) == 0
    assert "not run" in capsys.readouterr().out


def test_test_columns_only_when_asked_for(tmp_path, tiny_base, capsys):
    from ..conftest import TINY_DATA
    path = tiny_config(tmp_path, tiny_base, epochs=1)
    config = json.loads(path.read_text())
    config["data"]["test_file"] = str(TINY_DATA)
    path.write_text(json.dumps(config))

    def table(*flags):
        assert main(["experiments", str(path), *flags]) == 0
        return [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]

    header, _, row = table()
    assert "dev macro-F1" in header and "test" not in header
    header, _, row = table("--table-only", "--with-test")
    test_macro = json.loads((tmp_path / "model" / "metrics_test.json").read_text())["turn"]["macro_f1"]
    assert "test macro-F1" in header and len(row.split("|")) == len(header.split("|"))
    assert row.split("|")[4].strip() == f"{test_macro:.3f}"
