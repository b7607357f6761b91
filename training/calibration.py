"""Calibration: reliability tables, expected calibration error, and per-label temperature scaling fitted on dev.

`hengwen calibrate MODEL_DIR --dev DEV.jsonl` fits one temperature T per label on the model's raw dev
probabilities (minimum log loss of sigmoid(logit / T)), re-chooses the thresholds on the calibrated probabilities
and writes both into the model's config.json (`hengwen_temperatures`, `hengwen_thresholds`), where
`serving.runtime.Scorer` applies them; the ONNX files stay as they are. The report goes to calibration.json.

With `--untimed` it also fits an untimed calibration (`hengwen_untimed_calibration`) on the same conversations
with every `ts` removed: a temperature per label, then a logit offset that moves the best-F1 threshold on those untimed
probabilities onto the model's threshold. Without a `ts` the encoder writes no reply-gap marker, the model reads
another kind of input and its scores shift (`cold-follow-up` most); the Scorer applies the untimed calibration
to agent turns without `ts`, so one set of thresholds serves both.
"""
import json
from pathlib import Path

import numpy as np

from ..model.labels import LABELS
from ..serving.runtime import Scorer, apply_temperatures, logit
from .card import write_calibration_section
from .dataset import file_sha256, path_list, read_annotated_files, without_timestamps
from .metrics import choose_thresholds, multilabel_metrics

BINS = 10
TEMPERATURE_RANGE = (0.05, 20.0)
EPSILON = 1e-7


def _bins(gold, probabilities, bins):
    """(index, count, mean probability, positive rate) of each non-empty equal-width probability bin."""
    gold = np.asarray(gold, dtype=float)
    probabilities = np.asarray(probabilities, dtype=float)
    # Bin i holds [i/bins, (i+1)/bins); a probability of exactly 1 goes to the last bin.
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    for index in np.unique(which):
        inside = which == index
        yield int(index), int(inside.sum()), float(probabilities[inside].mean()), float(gold[inside].mean())


def reliability_table(gold, probabilities, bins=BINS):
    """One label's bins: how confident the scores were and how often the label was true (empty bins included)."""
    filled = {index: (count, mean, rate) for index, count, mean, rate in _bins(gold, probabilities, bins)}
    table = []
    for index in range(bins):
        count, mean, rate = filled.get(index, (0, None, None))
        table.append({"low": round(index / bins, 4), "high": round((index + 1) / bins, 4), "count": count,
                      "mean_probability": None if mean is None else round(mean, 4),
                      "positive_rate": None if rate is None else round(rate, 4)})
    return table


def expected_calibration_error(gold, probabilities, bins=BINS):
    """Mean |positive rate - mean probability| over the bins of reliability_table, weighted by their counts."""
    if not len(gold):
        return 0.0
    return sum(count * abs(rate - mean) for _, count, mean, rate in _bins(gold, probabilities, bins)) / len(gold)


def log_loss(gold, probabilities):
    """Mean binary cross-entropy (the quantity temperature scaling minimises)."""
    gold = np.asarray(gold, dtype=float)
    clipped = np.clip(np.asarray(probabilities, dtype=float), EPSILON, 1 - EPSILON)
    return float(-np.mean(gold * np.log(clipped) + (1 - gold) * np.log1p(-clipped)))


def calibration_summary(gold, probabilities, bins=BINS):
    """Per label ECE, log loss and reliability table, and the labels' mean ECE; gold and probabilities are (n, L)."""
    gold = np.asarray(gold, dtype=float)
    probabilities = np.asarray(probabilities, dtype=float)
    per_label = {label: {"ece": round(expected_calibration_error(gold[:, c], probabilities[:, c], bins), 4),
                         "log_loss": round(log_loss(gold[:, c], probabilities[:, c]), 4),
                         "reliability": reliability_table(gold[:, c], probabilities[:, c], bins)}
                 for c, label in enumerate(LABELS)}
    return {"bins": bins, "macro_ece": round(float(np.mean([v["ece"] for v in per_label.values()])), 4),
            "per_label": per_label}


def fit_temperatures(gold, probabilities):
    """Per label, the temperature in TEMPERATURE_RANGE with the lowest dev log loss; 1.0 for a label whose dev
    turns are all positive or all negative (nothing to calibrate against)."""
    from scipy.optimize import minimize_scalar
    gold = np.asarray(gold, dtype=float)
    temperatures = {}
    for column, label in enumerate(LABELS):
        positives = gold[:, column].sum()
        if positives == 0 or positives == len(gold):
            temperatures[label] = 1.0
            continue

        def loss(log_temperature, column=column, label=label):
            scaled = apply_temperatures(probabilities, {**dict.fromkeys(LABELS, 1.0),
                                                        label: float(np.exp(log_temperature))})
            return log_loss(gold[:, column], scaled[:, column])

        # Log loss is convex in 1/T, so a bounded scalar search over log T finds its minimum.
        best = minimize_scalar(loss, bounds=tuple(np.log(TEMPERATURE_RANGE)), method="bounded")
        temperatures[label] = round(float(np.exp(best.x)), 4)
    return temperatures


def fit_untimed_calibration(gold, raw, thresholds):
    """Temperatures (lowest log loss) and per-label logit offsets for untimed turns' raw probabilities: with them,
    a turn reaches the model's threshold exactly when its temperature-scaled score reaches the best-F1 threshold on
    these untimed turns. Returns (calibration, best untimed thresholds before the offset)."""
    temperatures = fit_temperatures(gold, raw)
    best = choose_thresholds(gold, apply_temperatures(raw, temperatures))
    offsets = {label: round(float(logit(thresholds[label]) - logit(best[label])), 4) for label in LABELS}
    return {"temperatures": temperatures, "offsets": offsets}, best


def untimed_report(gold, raw, calibration, best, temperatures, thresholds, bins):
    """How the untimed turns score under the timed calibration and under their own, at the model's thresholds."""
    timed_way = apply_temperatures(raw, temperatures)
    own_way = apply_temperatures(raw, calibration["temperatures"], calibration["offsets"])
    summaries = {"raw": calibration_summary(gold, raw, bins), "timed_calibration": calibration_summary(
        gold, timed_way, bins), "untimed_calibration": calibration_summary(gold, own_way, bins)}
    return {
        "turns": int(len(gold)), **calibration, "best_thresholds_before_offset": best,
        "macro_f1": {"timed_calibration": multilabel_metrics(gold, timed_way, thresholds)["macro_f1"],
                     "untimed_calibration": multilabel_metrics(gold, own_way, thresholds)["macro_f1"]},
        "macro_ece": {name: summary["macro_ece"] for name, summary in summaries.items()},
        "per_label_ece": {name: {label: v["ece"] for label, v in summary["per_label"].items()}
                          for name, summary in summaries.items()},
    }


def annotated_features(encoder, conversations):
    """Encoded examples for every agent turn of annotated conversations, and their gold labels (n, L) as booleans."""
    features, gold = [], []
    for conversation in conversations:
        targets, encoded = encoder.encode(conversation["turns"])
        features += encoded
        gold += [[label in conversation["turns"][t]["labels"] for label in LABELS] for t in targets]
    return features, np.asarray(gold, dtype=bool).reshape(-1, len(LABELS))


def dev_probabilities(scorer, conversations):
    """Gold (n, L) and the model's raw, uncalibrated probabilities for every agent turn of the conversations."""
    features, gold = annotated_features(scorer.encoder, conversations)
    return gold, scorer.predict_features(features, calibrated=False)


def calibrate_model(model_dir, dev_files, engine="onnx", quantization="auto", threads=None, batch_size=32,
                    bins=BINS, untimed=False):
    """Fit temperatures and thresholds on dev_files (one path or several, pooled), write them into
    model_dir/config.json and calibration.json; with `untimed`, also the untimed calibration. An untimed calibration
    left from an earlier run is removed otherwise: its offsets were fitted to the earlier thresholds."""
    model_dir = Path(model_dir)
    scorer = Scorer(model_dir, engine=engine, quantization=quantization, threads=threads, batch_size=batch_size)
    paths = path_list(dev_files)
    conversations = read_annotated_files(paths)
    gold, raw = dev_probabilities(scorer, conversations)
    if not len(gold):
        raise ValueError(f"{', '.join(map(str, paths))} has no agent turns to calibrate on")
    temperatures = fit_temperatures(gold, raw)
    calibrated = apply_temperatures(raw, temperatures)
    raw_thresholds = choose_thresholds(gold, raw)
    thresholds = choose_thresholds(gold, calibrated)
    before, after = calibration_summary(gold, raw, bins), calibration_summary(gold, calibrated, bins)
    untimed_calibration, untimed_summary = None, None
    if untimed:
        untimed_gold, untimed_raw = dev_probabilities(scorer, [without_timestamps(c, 1.0) for c in conversations])
        untimed_calibration, best_untimed = fit_untimed_calibration(untimed_gold, untimed_raw, thresholds)
        untimed_summary = untimed_report(untimed_gold, untimed_raw, untimed_calibration, best_untimed, temperatures,
                                         thresholds, bins)
    report = {
        "dev_files": {str(path): file_sha256(path) for path in paths}, "turns": int(len(gold)),
        "engine": engine, "quantization": scorer.backend.quantization,
        "temperatures": temperatures,
        "thresholds": {"previous": scorer.thresholds, "uncalibrated": raw_thresholds, "calibrated": thresholds},
        "dev_macro_f1": {"uncalibrated": multilabel_metrics(gold, raw, raw_thresholds)["macro_f1"],
                         "calibrated": multilabel_metrics(gold, calibrated, thresholds)["macro_f1"]},
        "macro_ece": {"before": before["macro_ece"], "after": after["macro_ece"]},
        "per_label": {label: {"temperature": temperatures[label],
                              "ece_before": before["per_label"][label]["ece"],
                              "ece_after": after["per_label"][label]["ece"],
                              "log_loss_before": before["per_label"][label]["log_loss"],
                              "log_loss_after": after["per_label"][label]["log_loss"]} for label in LABELS},
        "reliability": {"before": {label: v["reliability"] for label, v in before["per_label"].items()},
                        "after": {label: v["reliability"] for label, v in after["per_label"].items()}},
        "untimed": untimed_summary,
    }
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["hengwen_temperatures"] = temperatures
    config["hengwen_thresholds"] = thresholds
    config.pop("hengwen_untimed_calibration", None)
    if untimed_calibration is not None:
        config["hengwen_untimed_calibration"] = untimed_calibration
    # The layout transformers' save_pretrained writes, so that a later save_pretrained gives a small diff.
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (model_dir / "calibration.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    write_calibration_section(model_dir, report)
    return report


def format_calibration(report):
    lines = [f"calibrated on {report['turns']} dev turns ({report['engine']}, {report['quantization']}); "
             f"mean ECE {report['macro_ece']['before']:.4f} -> {report['macro_ece']['after']:.4f}, dev macro-F1 "
             f"{report['dev_macro_f1']['uncalibrated']:.4f} -> {report['dev_macro_f1']['calibrated']:.4f}"]
    for label in LABELS:
        row = report["per_label"][label]
        lines.append(f"  {label:16s} T {row['temperature']:6.3f}  ECE {row['ece_before']:.4f} -> "
                     f"{row['ece_after']:.4f}  threshold {report['thresholds']['previous'][label]:.3f} -> "
                     f"{report['thresholds']['calibrated'][label]:.3f}")
    untimed = report["untimed"]
    if untimed is None:
        return "\n".join(lines)
    lines.append(f"untimed ({untimed['turns']} turns with every ts removed): macro-F1 at these thresholds "
                 f"{untimed['macro_f1']['timed_calibration']:.4f} with the timed calibration -> "
                 f"{untimed['macro_f1']['untimed_calibration']:.4f} with their own; mean ECE "
                 f"{untimed['macro_ece']['timed_calibration']:.4f} -> "
                 f"{untimed['macro_ece']['untimed_calibration']:.4f}")
    for label in LABELS:
        lines.append(f"  {label:16s} T {untimed['temperatures'][label]:6.3f}  logit offset "
                     f"{untimed['offsets'][label]:+.3f}")
    return "\n".join(lines)
