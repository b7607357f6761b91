"""`hengwen refit-head`: fit a trained model's classification layer again on its own frozen features.

A model soup (`soup.py`) averages encoders and heads that were each trained together on different data; the
averaged encoder's features are a point no ingredient's head was fitted to. Here the encoder stays frozen: every
training turn is encoded once (twice with `int8_recipe`: by torch and by the int8 file, rule 22), its pooled output
(the classification layer's input) is kept, and one standardized L2 logistic regression per label is fitted on it,
with the regularization chosen on dev. The standardization is folded
into the weights, so the result is the same architecture with a new `classifier` layer: export, calibration and every
entry point read it unchanged (decision rule 20, training/README.md).
"""
import json
import time
from pathlib import Path

import numpy as np

from ..model.classifier import ModelSettings, set_hengwen_settings
from ..model.export import pooled_output_session
from ..model.labels import LABELS
from ..serving.runtime import pad_batch
from .card import write_derived_card
from .dataset import file_sha256, gold_matrix, load_turn_dataset
from .metrics import choose_thresholds, multilabel_metrics
from .train import evaluate, model_inputs, write_phase_metrics

DEFAULT_C_GRID = (0.003, 0.01, 0.03, 0.1)


def torch_encoder(model):
    """Batch (int64 arrays) -> the torch model's pooled output."""
    import torch
    model.eval()

    def encode(batch):
        with torch.inference_mode():
            return model.base_model(**{k: torch.from_numpy(v) for k, v in batch.items()}).pooler_output.numpy()
    return encode


def onnx_encoder(session):
    """Batch -> the "pooled" output of a session from `pooled_output_session`."""
    names = {entry.name for entry in session.get_inputs()}
    return lambda batch: session.run(["pooled"], {k: v for k, v in batch.items() if k in names})[0]


def pooled_features(encode, dataset, pad_id, hidden_size, batch_size=64, description="encode"):
    """The classification layer's input (BERT's pooled output) for every example, in dataset order."""
    from tqdm.auto import tqdm
    features = model_inputs(dataset)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    pooled = np.zeros((len(features), hidden_size), dtype=np.float32)
    for start in tqdm(range(0, len(order), batch_size), desc=description, unit="batch", mininterval=5):
        chunk = order[start:start + batch_size]
        pooled[chunk] = encode(pad_batch([features[i] for i in chunk], pad_id))
    return pooled


def fit_head(features, gold, c):
    """Per label, an L2 logistic regression on standardized features with inverse regularization `c`, folded back
    to raw features: returns (weight [labels x hidden], bias [labels]) such that logits = features @ weight.T + bias."""
    from sklearn.linear_model import LogisticRegression
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale == 0] = 1.0
    standardized = (features - mean) / scale
    weight = np.zeros((gold.shape[1], features.shape[1]))
    bias = np.zeros(gold.shape[1])
    for column in range(gold.shape[1]):
        target = gold[:, column]
        if target.min() == target.max():
            raise ValueError(f"label {LABELS[column]!r} has only one class in the training turns; cannot fit a head")
        regression = LogisticRegression(C=c, max_iter=5000).fit(standardized, target)
        weight[column] = regression.coef_[0] / scale
        bias[column] = regression.intercept_[0] - np.dot(regression.coef_[0], mean / scale)
    return weight, bias


def _dev_macro_f1(features, gold, weight, bias):
    """Macro-F1 of a head on encoded dev turns, at thresholds chosen on them (as training and `soup` choose)."""
    probabilities = 1.0 / (1.0 + np.exp(-(features @ weight.T + bias)))
    return multilabel_metrics(gold, probabilities, choose_thresholds(gold, probabilities))["macro_f1"]


def refit_head(model_dir, train_files, dev_file, output_dir, c_grid=DEFAULT_C_GRID, untimed_copies=False,
               int8_recipe=None, log=print):
    """Fit `model_dir`'s head again on its frozen features of `train_files`, choose C and thresholds on `dev_file`,
    save a run folder in `output_dir`. With `int8_recipe`, every turn is encoded by the torch model and by the int8
    file that recipe makes of it, the head is fitted on both and C is chosen on the mean of both engines' dev
    macro-F1. Returns the description written to `head.json` there."""
    import tempfile

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    if not c_grid:
        raise ValueError("give at least one value of C")
    if not (Path(model_dir) / "run_info.json").is_file():
        raise ValueError(f"{model_dir}: not a trained run or soup (no run_info.json to say how it was made)")
    started = time.time()
    settings = ModelSettings(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad_id, hidden_size = tokenizer.pad_token_id, model.config.hidden_size

    train_sets = [load_turn_dataset(path, model_dir, settings.encoding, untimed_copies=untimed_copies)
                  for path in train_files]
    dev_set = load_turn_dataset(dev_file, model_dir, settings.encoding)
    encoders = {"torch": torch_encoder(model)}
    with tempfile.TemporaryDirectory() as scratch:
        if int8_recipe:
            sample = sorted(model_inputs(dev_set), key=lambda f: len(f["input_ids"]))[-4:]
            encoders["int8"] = onnx_encoder(pooled_output_session(model, pad_batch(sample, pad_id), scratch,
                                                                  int8_recipe))
        train_features = np.concatenate([pooled_features(encode, dataset, pad_id, hidden_size, description=engine)
                                         for engine, encode in encoders.items() for dataset in train_sets])
        dev_features = [pooled_features(encode, dev_set, pad_id, hidden_size, description=f"{engine} dev")
                        for engine, encode in encoders.items()]
    train_gold = np.concatenate([gold_matrix(dataset) for dataset in train_sets] * len(encoders))
    dev_gold = gold_matrix(dev_set)
    log(f"encoded {len(train_features)} training turns from {len(train_files)} files with {', '.join(encoders)}")

    def dev_macro_f1(weight, bias):
        return float(np.mean([_dev_macro_f1(features, dev_gold, weight, bias) for features in dev_features]))

    old_head = model.classifier.weight.detach().double().numpy(), model.classifier.bias.detach().double().numpy()
    before = dev_macro_f1(*old_head)
    trials = []
    for c in c_grid:
        weight, bias = fit_head(train_features, train_gold, c)
        macro = dev_macro_f1(weight, bias)
        trials.append({"c": c, "dev_macro_f1": macro, "weight": weight, "bias": bias})
        log(f"C {c}: dev macro-F1 {macro:.4f}")
    # Ties go to the stronger regularization: the grid is searched from the smallest C.
    best = max(sorted(trials, key=lambda trial: trial["c"]), key=lambda trial: trial["dev_macro_f1"])

    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(best["weight"]).to(model.classifier.weight.dtype))
        model.classifier.bias.copy_(torch.from_numpy(best["bias"]).to(model.classifier.bias.dtype))
    # Scored through the whole model, not the cached features: this also proves the folded layer reads as fitted.
    metrics, thresholds = evaluate(model, dev_set, pad_id)
    set_hengwen_settings(model.config, thresholds, settings.encoding)
    output_dir = Path(output_dir)
    model.config.hengwen_model_version = output_dir.name
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    phases = {"dev": metrics}
    write_phase_metrics(output_dir, phases)

    description = {"source": str(model_dir), "train_files": [{"path": str(path), "sha256": file_sha256(path)}
                                                             for path in train_files],
                   "untimed_copies": untimed_copies, "int8_recipe": int8_recipe,
                   "training_turns": int(len(train_features)),
                   "dev_file": str(dev_file), "dev_sha256": file_sha256(dev_file),
                   "c_grid": [{"c": trial["c"], "dev_macro_f1": trial["dev_macro_f1"]} for trial in trials],
                   "chosen_c": best["c"], "dev_macro_f1_before": before,
                   "dev_macro_f1": metrics["turn"]["macro_f1"], "seconds": round(time.time() - started)}
    (output_dir / "head.json").write_text(json.dumps(description, indent=2, ensure_ascii=False), encoding="utf-8")
    engines, scored = "", ""
    if int8_recipe:
        engines = (f" (each turn encoded twice: by the torch model and by the int8 file `hengwen export "
                   f"--quantization-recipe {int8_recipe}` makes of it; export it with that recipe)")
        scored = ", the mean of both engines at each one's best thresholds"
    section = (f"## Head fitted again\nThe encoder is `{model_dir}`'s, frozen; the classification layer was fitted "
               f"again (`hengwen refit-head`) as one L2 logistic regression per label on its pooled features of "
               f"{len(train_features)} training turns{engines}, C {best['c']} chosen on `{dev_file}` (dev macro-F1 "
               f"{before:.3f} with the old head, {best['dev_macro_f1']:.3f} with this one{scored}). `head.json` has "
               f"the grid and the data hashes.\n\n")
    write_derived_card(model_dir, output_dir, "head_refit", description, phases, section)
    log(f"saved {output_dir}: C {best['c']}, dev macro-F1 {before:.4f} -> {best['dev_macro_f1']:.4f}")
    return description
