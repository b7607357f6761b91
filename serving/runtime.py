"""The one inference runtime every entry point uses: conversations in, per-turn and per-conversation scores out."""
import os
from pathlib import Path

import numpy as np

from ..data.schema import ConversationError, check_conversation, printable_id, timestamp_coverage
from ..model.classifier import ModelSettings
from ..model.encoding import TurnEncoder
from ..model.labels import LABELS
from ..model.tokenizer import ModelTokenizer

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "model" / "default"
ONNX_FILES = {"int8": "model.int8.onnx", "fp32": "model.onnx"}


def find_onnx(model_dir, quantization="auto"):
    """The ONNX file of a model folder: int8 when present (or asked for), else fp32; also looks in onnx/."""
    model_dir = Path(model_dir)
    order = ["int8", "fp32"] if quantization == "auto" else [quantization]
    for kind in order:
        for folder in (model_dir, model_dir / "onnx"):
            if (folder / ONNX_FILES[kind]).is_file():
                return folder / ONNX_FILES[kind], kind
    raise FileNotFoundError(f"no ONNX model ({' or '.join(ONNX_FILES[k] for k in order)}) in {model_dir}; "
                            f"run `hengwen export {model_dir}` first")


class OnnxBackend:
    def __init__(self, model_dir, quantization="auto", threads=None):
        import onnxruntime as ort
        path, self.quantization = find_onnx(model_dir, quantization)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.path = path

    def __call__(self, batch):
        feeds = {name: array for name, array in batch.items() if name in self.input_names}
        return self.session.run(["probabilities"], feeds)[0]


class TorchBackend:
    """PyTorch eager inference on the saved weights; for comparison and for models without ONNX."""
    quantization = "none"

    def __init__(self, model_dir, threads=None):
        import torch
        from transformers import AutoModelForSequenceClassification
        if threads:
            torch.set_num_threads(threads)
        weights = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                   "pytorch_model.bin.index.json")
        if not any((Path(model_dir) / name).is_file() for name in weights):
            raise FileNotFoundError(f"no torch weights (model.safetensors) in {model_dir}: a shipped model folder "
                                    f"holds ONNX only; use --engine onnx, or a training output folder for --engine "
                                    f"torch")
        self.torch = torch
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        self.path = Path(model_dir)

    def __call__(self, batch):
        with self.torch.inference_mode():
            logits = self.model(**{k: self.torch.from_numpy(v) for k, v in batch.items()}).logits
        return self.torch.sigmoid(logits).numpy()


def load_tokenizer(model_dir):
    return ModelTokenizer(model_dir)


def logit(probabilities):
    """log(p / (1 - p)), with p kept off 0 and 1 so that the result is finite."""
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(clipped) - np.log1p(-clipped)


def apply_temperatures(probabilities, temperatures, offsets=None):
    """Temperature-scaled probabilities sigmoid(logit(p) / T + offset), per label column; unchanged when
    temperatures is None. Offsets (default 0) are the untimed calibration's (`hengwen calibrate`).

    Applied to the probabilities the model files output, so calibrating a model never touches its ONNX files.
    """
    if temperatures is None:
        return probabilities
    scaled = logit(probabilities) / np.array([temperatures[label] for label in LABELS])
    if offsets is not None:
        scaled = scaled + np.array([offsets[label] for label in LABELS])
    return (1 / (1 + np.exp(-scaled))).astype(np.float32)


def pad_batch(features, pad_id):
    """Stack variable-length features into int64 arrays padded on the right."""
    width = max(len(f["input_ids"]) for f in features)
    batch = {}
    for key, fill in (("input_ids", pad_id), ("token_type_ids", 0), ("attention_mask", 0)):
        batch[key] = np.array([f[key] + [fill] * (width - len(f[key])) for f in features], dtype=np.int64)
    return batch


class Scorer:
    """Scores conversations with a saved model (ONNX by default) and its thresholds and encoding settings."""

    def __init__(self, model_dir=None, engine="onnx", quantization="auto", threads=None, batch_size=32):
        self.model_dir = Path(model_dir or os.environ.get("HENGWEN_MODEL") or DEFAULT_MODEL_DIR)
        self.settings = ModelSettings(self.model_dir)
        self.thresholds = self.settings.thresholds
        self.temperatures = self.settings.temperatures
        self.untimed = self.settings.untimed_calibration
        self.encoder = TurnEncoder(load_tokenizer(self.model_dir), self.settings.encoding)
        if engine == "onnx":
            self.backend = OnnxBackend(self.model_dir, quantization, threads)
        elif engine == "torch":
            self.backend = TorchBackend(self.model_dir, threads)
        else:
            raise ValueError(f"unknown engine {engine!r}")
        self.batch_size = batch_size

    def predict_features(self, features, calibrated=True, timed=None):
        """Probabilities (n, labels) for encoded examples, batched by similar length to pad little; calibrated
        when the model is, unless calibrated=False (what `hengwen calibrate` fits on). `timed` (n booleans, default
        all true) says which target turns carry a `ts`; the others get the untimed calibration when the model has one,
        because without a `ts` the encoder writes no reply-gap marker and the model reads a different input."""
        probabilities = np.zeros((len(features), len(LABELS)), dtype=np.float32)
        order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
        pad_id = self.encoder.tokenizer.pad_token_id
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            probabilities[chunk] = self.backend(pad_batch([features[i] for i in chunk], pad_id))
        if not calibrated:
            return probabilities
        result = apply_temperatures(probabilities, self.temperatures)
        if self.untimed is not None and timed is not None:
            untimed = ~np.asarray(timed, dtype=bool)
            result[untimed] = apply_temperatures(probabilities[untimed], self.untimed["temperatures"],
                                                 self.untimed["offsets"])
        return result

    def decide(self, scores):
        return [label for label in LABELS if scores[label] >= self.thresholds[label]]

    def score_records(self, records):
        """One output record per input record, in order: scores, or {"id", "error"} with the reason."""
        encoded, outputs, timed = [], [], []
        for record in records:
            try:
                check_conversation(record)
                targets, features = self.encoder.encode(record["turns"])
                encoded.append((record, targets, len(outputs), features))
                timed += [bool(record["turns"][t].get("ts")) for t in targets]
                outputs.append(None)
            except ConversationError as error:
                outputs.append(error_record(record, str(error)))
        flat = [f for _, _, _, features in encoded for f in features]
        probabilities = self.predict_features(flat, timed=timed) if flat else None
        offset = 0
        for record, targets, slot, features in encoded:
            outputs[slot] = self._conversation_record(record, targets, probabilities[offset:offset + len(features)])
            offset += len(features)
        return outputs

    def _conversation_record(self, record, targets, probabilities):
        turns = []
        for index, row in zip(targets, probabilities):
            scores = {label: round(float(p), 4) for label, p in zip(LABELS, row)}
            turns.append({"index": index, "labels": self.decide(scores), "scores": scores})
        return conversation_record(record, turns, self.decide)

    def score_draft(self, context, draft):
        """Scores of a draft agent reply after `context` turns: {label: probability}."""
        _, features = self.encoder.encode(context, draft=draft)
        row = self.predict_features(features, timed=[bool(draft.get("ts"))])[0]
        return {label: round(float(p), 4) for label, p in zip(LABELS, row)}


def conversation_record(record, turns, decide):
    """The output record of a scored conversation from its scored agent turns; a label's score is its best turn's."""
    conversation_scores = {label: max(t["scores"][label] for t in turns) for label in LABELS}
    # Without timestamps the model reads no reply gaps and finds fewer cold-follow-up turns; reports say so.
    result = {"id": str(record["id"]), "labels": decide(conversation_scores), "scores": conversation_scores,
              "turns": turns, "timestamps": timestamp_coverage(record["turns"])}
    if isinstance(record.get("meta"), dict):
        result["meta"] = record["meta"]
    return result


def error_record(record, reason, line=None):
    result = {"id": printable_id(record.get("id") if isinstance(record, dict) else None), "error": reason}
    if line is not None:
        result["line"] = line
    return result
