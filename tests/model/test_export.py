import json

import pytest

from hengwen.model.export import ExportCheckFailed, export_model, ship_model
from hengwen.serving.runtime import Scorer

from ..conftest import TINY_DATA


def test_onnx_matches_torch(tiny_model):
    report = json.loads((tiny_model / "onnx" / "export_report.json").read_text())
    assert report["fp32_vs_torch_max_abs_diff"] <= 1e-4
    records = [json.loads(line) for line in TINY_DATA.read_text().splitlines()]
    torch_out = Scorer(tiny_model, engine="torch").score_records(records)
    onnx_out = Scorer(tiny_model, engine="onnx", quantization="fp32").score_records(records)
    for a, b in zip(torch_out, onnx_out):
        for turn_a, turn_b in zip(a["turns"], b["turns"]):
            for label, score in turn_a["scores"].items():
                assert abs(score - turn_b["scores"][label]) <= 1e-4


def test_export_refuses_and_removes_a_model_that_fails_its_check(tiny_model_copy):
    with pytest.raises(ExportCheckFailed, match="int8 loses"):
        export_model(tiny_model_copy, TINY_DATA, max_f1_drop=-1.0, log=lambda *_: None)
    report = json.loads((tiny_model_copy / "onnx" / "export_report.json").read_text())
    assert report["passed"] is False and report["failures"]
    assert not (tiny_model_copy / "onnx" / "model.int8.onnx").exists()
    assert (tiny_model_copy / "onnx" / "model.onnx").exists()
    with pytest.raises(FileNotFoundError, match="export"):
        ship_model(tiny_model_copy, tiny_model_copy / "shipped")


def test_shipped_folder_scores_on_its_own(tiny_model, tmp_path):
    shipped = ship_model(tiny_model, tmp_path / "shipped")
    assert (shipped / "model.int8.onnx").is_file() and not (shipped / "model.safetensors").exists()
    record = json.loads(TINY_DATA.read_text().splitlines()[0])
    (result,) = Scorer(shipped).score_records([record])
    assert result["id"] == record["id"] and len(result["turns"]) == 2


def _weight_types(onnx_path):
    """Element types of the quantized MatMul weights, and the weight MatMuls left in float."""
    import onnx
    graph = onnx.load(str(onnx_path)).graph
    initializers = {t.name: t.data_type for t in graph.initializer}
    quantized = {initializers[n.input[1]] for n in graph.node
                 if n.op_type == "MatMulInteger" and n.input[1] in initializers}
    float_matmuls = [n.name for n in graph.node if n.op_type == "MatMul" and any(i in initializers for i in n.input)]
    return quantized, float_matmuls


@pytest.mark.parametrize("recipe, weight_type, float_down_projections", [
    ("s8", "INT8", 0), ("u8", "UINT8", 0), ("s8-ffn-fp32", "INT8", 2), ("u8-ffn-fp32", "UINT8", 2)])
def test_quantization_recipes(tiny_model, tmp_path, recipe, weight_type, float_down_projections):
    import onnx
    from hengwen.model.export import down_projections, quantize
    fp32 = tiny_model / "onnx" / "model.onnx"
    # The tiny model has 2 layers with a 64 -> 32 feed-forward output each.
    assert len(down_projections(onnx.load(str(fp32)).graph)) == 2
    quantize(fp32, tmp_path / "model.int8.onnx", recipe)
    types, float_matmuls = _weight_types(tmp_path / "model.int8.onnx")
    assert types == {getattr(onnx.TensorProto, weight_type)}
    assert len(float_matmuls) == float_down_projections


@pytest.mark.parametrize("recipe, per_channel", [("u8-ffn-fp32", False), ("u8-ffn-fp32-per-channel", True)])
def test_per_channel_recipe_gives_each_output_column_its_own_scale(tiny_model, tmp_path, recipe, per_channel):
    import onnx
    from hengwen.model.export import quantize
    quantize(tiny_model / "onnx" / "model.onnx", tmp_path / "model.int8.onnx", recipe)
    graph = onnx.load(str(tmp_path / "model.int8.onnx")).graph
    initializers = {t.name: tuple(t.dims) for t in graph.initializer}
    # MatMulInteger's fourth input is the weight zero point: one value per matrix, or one per output column
    weight_zero_points = [initializers[n.input[3]] for n in graph.node
                          if n.op_type == "MatMulInteger" and n.input[1] in initializers]
    assert weight_zero_points
    assert all((zero_point != () and zero_point[0] > 1) == per_channel for zero_point in weight_zero_points)


@pytest.mark.parametrize("recipe, float_head_layers", [("u8-ffn-fp32", 0), ("u8-ffn-head-fp32", 2)])
def test_head_recipe_keeps_pooler_and_classifier_in_float(tiny_model, tmp_path, recipe, float_head_layers):
    import onnx
    from hengwen.model.export import head_layers, quantize
    fp32 = tiny_model / "onnx" / "model.onnx"
    graph = onnx.load(str(fp32)).graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    # The tiny model's hidden size is 32 and it has 4 labels: the pooler is 32 x 32, the classifier 4 x 32.
    head = [node for node in graph.node if node.name in head_layers(graph)]
    assert sorted(shapes[node.input[1]] for node in head) == [(4, 32), (32, 32)]
    quantize(fp32, tmp_path / "model.int8.onnx", recipe)
    _, float_matmuls = _weight_types(tmp_path / "model.int8.onnx")
    # the two feed-forward down-projections, and with the head recipe the pooler and classifier (now MatMuls)
    assert len(float_matmuls) == 2 + float_head_layers


def test_unknown_quantization_recipe_is_refused(tiny_model, tmp_path):
    from hengwen.model.export import quantize
    with pytest.raises(ValueError, match="u8-ffn-fp32"):
        quantize(tiny_model / "onnx" / "model.onnx", tmp_path / "model.int8.onnx", "int4")
