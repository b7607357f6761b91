"""Per-label precision/recall/F1, macro and micro averages, and per-label threshold choice."""
import numpy as np

from ..model.labels import LABELS

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)


def _prf(tp, fp, fn):
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def multilabel_metrics(gold, probabilities, thresholds):
    """gold: (n, L) 0/1; probabilities: (n, L); thresholds: {label: t}. Returns a JSON-ready dict."""
    gold = np.asarray(gold, dtype=bool)
    predicted = np.asarray(probabilities) >= np.array([thresholds[label] for label in LABELS])
    per_label, totals = {}, np.zeros(3)
    for column, label in enumerate(LABELS):
        tp = int(np.sum(predicted[:, column] & gold[:, column]))
        fp = int(np.sum(predicted[:, column] & ~gold[:, column]))
        fn = int(np.sum(~predicted[:, column] & gold[:, column]))
        precision, recall, f1 = _prf(tp, fp, fn)
        per_label[label] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                            "support": int(gold[:, column].sum()), "threshold": float(thresholds[label])}
        totals += (tp, fp, fn)
    clean = ~gold.any(axis=1)
    return {
        "examples": int(len(gold)),
        "per_label": per_label,
        "macro_f1": round(float(np.mean([v["f1"] for v in per_label.values()])), 4),
        "micro_f1": round(_prf(*totals)[2], 4),
        "clean_false_alarm_rate": round(float(predicted[clean].any(axis=1).mean()) if clean.any() else 0.0, 4),
    }


def choose_thresholds(gold, probabilities):
    """Per label, the grid threshold with the best F1 on these (dev) examples; ties go to the higher one."""
    gold = np.asarray(gold, dtype=bool)
    probabilities = np.asarray(probabilities)
    thresholds = {}
    for column, label in enumerate(LABELS):
        best, best_f1 = 0.5, -1.0
        for threshold in THRESHOLD_GRID:
            predicted = probabilities[:, column] >= threshold
            tp = np.sum(predicted & gold[:, column])
            f1 = _prf(tp, np.sum(predicted & ~gold[:, column]), np.sum(~predicted & gold[:, column]))[2]
            if f1 >= best_f1:
                best, best_f1 = float(threshold), f1
        thresholds[label] = best
    return thresholds


def conversation_level(turn_gold, turn_probabilities, conversation_index):
    """Collapse turn rows to conversations: gold = any turn, score = max turn score."""
    conversation_index = np.asarray(conversation_index)
    ids = np.unique(conversation_index)
    gold = np.stack([np.asarray(turn_gold)[conversation_index == i].max(axis=0) for i in ids])
    scores = np.stack([np.asarray(turn_probabilities)[conversation_index == i].max(axis=0) for i in ids])
    return gold, scores
