"""The research notebooks run top to bottom on the tiny test model, with their parameters set as a user would."""
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from ..conftest import TINY_DATA

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
SAMPLE = NOTEBOOKS.parent / "data" / "examples" / "sample.jsonl"


def run_notebook(name, **parameters):
    """Execute a notebook with a cell setting `parameters` after its `parameters` cell (papermill's convention);
    returns everything its cells printed. A failing cell raises CellExecutionError with its traceback."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    (index,) = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    injected = nbformat.v4.new_code_cell("\n".join(f"{key} = {value!r}" for key, value in parameters.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(index + 1, injected)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return "\n".join(output.get("text", "") or json.dumps(output.get("data", {}), ensure_ascii=False)
                     for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)


def test_parameter_cells_list_every_name_the_tests_set():
    for name, expected in (("error_analysis.ipynb", {"EVAL_DIR", "MODEL_DIR", "GOLD_FILE", "ENGINE", "TINY"}),
                           ("retrain_on_your_data.ipynb", {"TRAIN_FILE", "DEV_FILE", "TEST_FILE", "SCORE_FILE",
                                                           "INIT_FROM", "BASE_MODEL", "OUTPUT_DIR", "EPOCHS",
                                                           "TINY"})):
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        (cell,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assigned = {line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line.split("#")[0]}
        assert assigned == expected
        assert all(not c.get("outputs") for c in notebook.cells), f"{name} is committed with outputs"


def test_error_analysis_builds_and_reads_an_eval_folder(tiny_model, tmp_path):
    eval_dir = tmp_path / "eval"
    printed = run_notebook("error_analysis.ipynb", EVAL_DIR=str(eval_dir), MODEL_DIR=str(tiny_model),
                           GOLD_FILE=str(TINY_DATA), ENGINE="onnx", TINY=True)
    assert (eval_dir / "metrics.json").is_file()
    for expected in ("8 conversations, 16 agent turns", "false_positive", "by domain", "by script", "by channel",
                     "by length", "telecom"):
        assert expected in printed


@pytest.mark.parametrize("start", ["base", "model"])
def test_retrain_notebook_trains_exports_calibrates_evaluates_and_scores(tiny_base, tiny_model, tmp_path, start):
    output_dir = tmp_path / "my-model"
    init_from = str(tiny_model) if start == "model" else None
    run_notebook("retrain_on_your_data.ipynb", TRAIN_FILE=str(TINY_DATA), DEV_FILE=str(TINY_DATA),
                 TEST_FILE=str(TINY_DATA), SCORE_FILE=str(SAMPLE), INIT_FROM=init_from, BASE_MODEL=str(tiny_base),
                 OUTPUT_DIR=str(output_dir), EPOCHS=1, TINY=True)
    config = json.loads((output_dir / "config.json").read_text())
    assert set(config["hengwen_temperatures"]) == set(config["hengwen_thresholds"])
    assert (output_dir / "onnx" / "model.int8.onnx").is_file()
    for engine in ("onnx", "rules"):
        assert (tmp_path / f"my-model-eval-{engine}" / "metrics.json").is_file()
    scored = (tmp_path / "my-model-scored.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(scored) == len(SAMPLE.read_text(encoding="utf-8").splitlines())
    run_info = json.loads((output_dir / "run_info.json").read_text())
    assert run_info["config"]["model"]["init_from"] == (init_from or "")
