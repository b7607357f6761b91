"""Surface-cue audit: how well does a classifier that sees only form (length and keyword counts) find the labels?

If it comes close to the model, the corpus leaks its labels through form. Logistic regression per label on
train, thresholds on dev, macro-F1 reported on test (turn level).
"""
import json
import math
from pathlib import Path

import numpy as np

from ..model.labels import LABELS
from .stats import POLITENESS_MARKERS, TEMPLATE_MARKERS

FEATURE_NAMES = ("log_length", "short_le_15", "long_gt_60", "politeness_markers", "template_markers",
                 "question_marks", "exclamations", "digits", "emoji_or_code", "lexicon_hits_overbearing",
                 "lexicon_hits_perfunctory", "lexicon_hits_vague-expertise", "lexicon_hits_cold-follow-up",
                 "has_timestamp", "turn_position")


def turn_features(text, position, has_ts, lexicon):
    count = lambda markers: sum(text.count(m) for m in markers)  # noqa: E731
    emoji = sum(1 for ch in text if ord(ch) > 0x2600) + text.count("[表情]")
    return [math.log1p(len(text)), float(len(text) <= 15), float(len(text) > 60), count(POLITENESS_MARKERS),
            count(TEMPLATE_MARKERS), text.count("?") + text.count("？"), text.count("!") + text.count("！"),
            sum(ch.isdigit() for ch in text), emoji,
            *(count(lexicon[label]["phrases"]) for label in LABELS), float(has_ts), position]


def featurize(path):
    from ..model.rules import lexicons
    lexicon = lexicons()
    rows, gold = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        conversation = json.loads(line)
        turns = conversation["turns"]
        for index, turn in enumerate(turns):
            if turn["role"] == "agent":
                rows.append(turn_features(turn["text"], index / len(turns), bool(turn.get("ts")), lexicon))
                gold.append([float(label in turn["labels"]) for label in LABELS])
    return np.array(rows, dtype=np.float32), np.array(gold, dtype=np.float32)


def fit_logistic(features, gold, steps=500):
    import torch
    torch.manual_seed(0)
    x, y = torch.from_numpy(features), torch.from_numpy(gold)
    layer = torch.nn.Linear(x.shape[1], y.shape[1])
    optimizer = torch.optim.LBFGS(layer.parameters(), max_iter=steps)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(layer(x), y) + 1e-3 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return lambda new: torch.sigmoid(layer(torch.from_numpy(new))).detach().numpy()


def surface_audit(train_file, dev_file, test_file):
    from ..training.metrics import choose_thresholds, multilabel_metrics
    train_x, train_y = featurize(train_file)
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    predict = fit_logistic((train_x - mean) / std, train_y)
    dev_x, dev_y = featurize(dev_file)
    thresholds = choose_thresholds(dev_y, predict((dev_x - mean) / std))
    test_x, test_y = featurize(test_file)
    return {"features": list(FEATURE_NAMES),
            "test": multilabel_metrics(test_y, predict((test_x - mean) / std), thresholds)}
