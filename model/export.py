"""`hengwen export`: ONNX fp32 (sigmoid included, dynamic batch and sequence) and int8, checked against torch.

The legacy TorchScript exporter gives wrong probabilities for this model family with the pinned toolchain
(../shared/base-models.md), so the dynamo exporter is used and parity is always measured, never assumed.
"""
import json
import time
from pathlib import Path

import numpy as np

from .labels import LABELS

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class ExportCheckFailed(RuntimeError):
    """An exported model disagrees with torch beyond the allowed tolerance."""


def _probability_module(model):
    import torch

    class WithSigmoid(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).logits
            return torch.sigmoid(logits)

    return WithSigmoid().eval()


def _export_fp32(model, sample, path):
    import onnx
    import torch
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {name: {0: batch, 1: sequence} for name in INPUT_NAMES}
    args = tuple(torch.from_numpy(sample[name]) for name in INPUT_NAMES)
    torch.onnx.export(_probability_module(model), args, str(path), dynamo=True, input_names=list(INPUT_NAMES),
                      output_names=["probabilities"], dynamic_shapes=shapes, external_data=True)
    # Inline the weights (far below 2 GB): onnxruntime's quantization pre-processing needs one file.
    external = Path(str(path) + ".data")
    onnx.save(onnx.load(str(path)), str(path))
    if external.exists():
        external.unlink()


# Dynamic quantization recipes (`hengwen export --quantization-recipe`); benchmarks/bench_quantization.py measures
# each on dev, side by side. onnxruntime multiplies uint8 activations by the weights; with int8 weights on CPUs
# without AVX-512 VNNI that product saturates (onnxruntime's quantization docs), uint8 weights do not.
QUANTIZATION_RECIPES = {
    "s8": "int8 weights in every weight MatMul (smallest, fastest; saturates on CPUs without VNNI)",
    "u8": "uint8 weights in every weight MatMul (same size; no saturation on AVX2-only CPUs)",
    "s8-ffn-fp32": "int8 weights, but each feed-forward down-projection kept in fp32 (about 1.5x the size)",
    "u8-ffn-fp32": "uint8 weights, each feed-forward down-projection kept in fp32",
    "u8-ffn-fp32-per-channel": "u8-ffn-fp32 with one weight scale per output column instead of one per matrix "
                               "(same size; keeps more of a column whose range differs from the rest)",
    "u8-ffn-head-fp32": "u8-ffn-fp32 with the pooler and classification layers kept in fp32 too (0.3 M weights, "
                        "run once per turn; `refit-head --int8-recipe` reads the head's float input)",
}
DEFAULT_QUANTIZATION_RECIPE = "u8-ffn-fp32"


def down_projections(graph):
    """Weight MatMuls that map a wider input to a narrower output (BERT's feed-forward output layers), whose
    activations have the widest range in the network and lose most when quantized."""
    weights = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
    return [node.name for node in graph.node if node.op_type == "MatMul" and len(node.input) == 2
            and len(weights.get(node.input[1], ())) == 2 and weights[node.input[1]][0] > weights[node.input[1]][1]]


def head_layers(graph):
    """Weight MatMul/Gemm nodes after the encoder's last LayerNormalization: the pooler and the classification layer,
    which read one vector per turn. ONNX graphs list nodes in topological order, so "after" is position."""
    weights = {tensor.name for tensor in graph.initializer}
    last_norm = max(index for index, node in enumerate(graph.node) if node.op_type == "LayerNormalization")
    return [node.name for node in graph.node[last_norm + 1:]
            if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in weights]


def quantize(fp32_path, int8_path, recipe=DEFAULT_QUANTIZATION_RECIPE):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.onnx_model import ONNXModel
    from onnxruntime.quantization.shape_inference import quant_pre_process
    if recipe not in QUANTIZATION_RECIPES:
        raise ValueError(f"unknown quantization recipe {recipe!r}; choose from {', '.join(QUANTIZATION_RECIPES)}")
    prepared = Path(int8_path).with_suffix(".prep.onnx")
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        excluded = down_projections(onnx.load(str(prepared)).graph) if "-ffn-" in recipe else []
        if "-head-fp32" in recipe:
            # Dynamic quantization turns each Gemm into a MatMul and an Add under a new name; doing that first here
            # names the head layers as the quantizer will see them.
            model = ONNXModel(onnx.load(str(prepared)))
            model.replace_gemm_with_matmul()
            model.save_model_to_file(str(prepared))
            excluded += head_layers(model.graph())
        weight_type = QuantType.QInt8 if recipe.startswith("s8") else QuantType.QUInt8
        quantize_dynamic(str(prepared), str(int8_path), weight_type=weight_type, nodes_to_exclude=excluded,
                         per_channel=recipe.endswith("-per-channel"))
    finally:
        prepared.unlink(missing_ok=True)


def pooled_output_session(model, sample, scratch, recipe="u8-ffn-head-fp32"):
    """Export `model` to fp32 ONNX in folder `scratch`, quantize it with `recipe` (one that keeps the head in fp32)
    and return an onnxruntime session that also outputs "pooled": the classification layer's input as the int8
    encoder computes it. `hengwen export` with the same recipe then rebuilds the same int8 encoder."""
    import onnx
    import onnxruntime as ort
    if "-head-fp32" not in recipe:
        raise ValueError(f"recipe {recipe!r} quantizes the classification layer, so its input is not a float tensor")
    fp32_path, int8_path = Path(scratch) / "model.onnx", Path(scratch) / "model.int8.onnx"
    _export_fp32(model, sample, fp32_path)
    quantize(fp32_path, int8_path, recipe)
    graph_model = onnx.load(str(int8_path))
    classifier = [node for node in graph_model.graph.node if node.name in head_layers(graph_model.graph)][-1]
    graph_model.graph.output.append(onnx.helper.make_tensor_value_info("pooled", onnx.TensorProto.FLOAT, None))
    graph_model.graph.node.append(onnx.helper.make_node("Identity", [classifier.input[0]], ["pooled"]))
    return ort.InferenceSession(graph_model.SerializeToString(), providers=["CPUExecutionProvider"])


def _per_label_f1(gold, probabilities, thresholds):
    from ..training.metrics import multilabel_metrics
    metrics = multilabel_metrics(gold, probabilities, thresholds)
    return {label: metrics["per_label"][label]["f1"] for label in LABELS}, metrics["macro_f1"]


def export_model(model_dir, check_file, output_dir=None, max_abs_diff=1e-4, max_f1_drop=0.02, log=print,
                 quantization_recipe=DEFAULT_QUANTIZATION_RECIPE):
    """Export, quantize and check; writes export_report.json and raises ExportCheckFailed on a failed check."""
    from ..serving.runtime import OnnxBackend, Scorer, pad_batch
    from ..training.calibration import annotated_features
    from ..training.dataset import read_annotated

    model_dir = Path(model_dir)
    output_dir = Path(output_dir or model_dir / "onnx")
    output_dir.mkdir(parents=True, exist_ok=True)
    fp32_path, int8_path = output_dir / "model.onnx", output_dir / "model.int8.onnx"
    started = time.time()

    conversations = read_annotated(check_file)
    reference = Scorer(model_dir, engine="torch")
    features, gold = annotated_features(reference.encoder, conversations)

    model = reference.backend.model
    sample_features = sorted(features, key=lambda f: len(f["input_ids"]))[-4:]
    _export_fp32(model, pad_batch(sample_features, reference.encoder.tokenizer.pad_token_id), fp32_path)
    quantize(fp32_path, int8_path, quantization_recipe)
    log(f"exported {fp32_path} and {int8_path} in {time.time() - started:.0f}s; checking on {len(features)} turns")

    torch_probabilities = reference.predict_features(features)
    reference.backend = OnnxBackend(output_dir, "fp32")
    fp32_probabilities = reference.predict_features(features)
    reference.backend = OnnxBackend(output_dir, "int8")
    int8_probabilities = reference.predict_features(features)

    thresholds = reference.thresholds
    fp32_f1, fp32_macro = _per_label_f1(gold, fp32_probabilities, thresholds)
    int8_f1, int8_macro = _per_label_f1(gold, int8_probabilities, thresholds)
    torch_f1, torch_macro = _per_label_f1(gold, torch_probabilities, thresholds)
    report = {
        "check_file": str(check_file), "turns": len(features), "quantization_recipe": quantization_recipe,
        "fp32_vs_torch_max_abs_diff": float(np.abs(fp32_probabilities - torch_probabilities).max()),
        "int8_vs_fp32_max_abs_diff": float(np.abs(int8_probabilities - fp32_probabilities).max()),
        "int8_vs_fp32_mean_abs_diff": float(np.abs(int8_probabilities - fp32_probabilities).mean()),
        "int8_vs_fp32_decisions_flipped": int(np.sum(
            (int8_probabilities >= np.array([thresholds[l] for l in LABELS])) !=
            (fp32_probabilities >= np.array([thresholds[l] for l in LABELS])))),
        "f1": {"torch": torch_f1, "onnx_fp32": fp32_f1, "onnx_int8": int8_f1},
        "macro_f1": {"torch": torch_macro, "onnx_fp32": fp32_macro, "onnx_int8": int8_macro},
        "int8_vs_fp32_max_f1_drop": max(fp32_f1[l] - int8_f1[l] for l in LABELS),
        "size_bytes": {"fp32": fp32_path.stat().st_size, "int8": int8_path.stat().st_size},
        "tolerances": {"max_abs_diff": max_abs_diff, "max_f1_drop": max_f1_drop},
        "seconds": round(time.time() - started, 1),
    }
    failures = []
    if report["fp32_vs_torch_max_abs_diff"] > max_abs_diff:
        failures.append(f"fp32 ONNX differs from torch by {report['fp32_vs_torch_max_abs_diff']:.2e} "
                        f"(allowed {max_abs_diff:.0e})")
    if report["int8_vs_fp32_max_f1_drop"] > max_f1_drop:
        failures.append(f"int8 loses {report['int8_vs_fp32_max_f1_drop']:.3f} F1 on a label against fp32 "
                        f"(allowed {max_f1_drop})")
    report["passed"] = not failures
    report["failures"] = failures
    (output_dir / "export_report.json").write_text(json.dumps(report, indent=2))
    # A file that failed its check must not be picked up by the runtime (which prefers int8, then fp32).
    if report["fp32_vs_torch_max_abs_diff"] > max_abs_diff:
        fp32_path.unlink()
        int8_path.unlink()
    elif report["int8_vs_fp32_max_f1_drop"] > max_f1_drop:
        int8_path.unlink()
    if failures:
        raise ExportCheckFailed("; ".join(failures))
    return report


SHIPPED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "README.md",
                 "run_info.json", "metrics_dev.json", "metrics_test.json", "calibration.json", "onnx/export_report.json",
                 "onnx/model.int8.onnx")


def ship_model(model_dir, target):
    """Copy what scoring needs (int8 ONNX, tokenizer, config, card, reports) into a package model folder."""
    import shutil
    model_dir, target = Path(model_dir), Path(target)
    if not (model_dir / "onnx" / "model.int8.onnx").is_file():
        raise FileNotFoundError(f"{model_dir}/onnx/model.int8.onnx is missing: export (and pass its checks) first")
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.iterdir():
        stale.unlink()
    for name in SHIPPED_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, target / Path(name).name)
    return target
