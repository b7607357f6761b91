import numpy as np

from hengwen.model.labels import LABELS
from hengwen.training.metrics import choose_thresholds, conversation_level, multilabel_metrics

HALF = {label: 0.5 for label in LABELS}


def test_per_label_metrics_count_correctly():
    gold = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    probabilities = np.array([[0.9, 0.1, 0, 0], [0.2, 0.1, 0, 0], [0.8, 0.7, 0, 0], [0.1, 0.1, 0.6, 0]])
    metrics = multilabel_metrics(gold, probabilities, HALF)
    overbearing = metrics["per_label"]["overbearing"]
    assert (overbearing["precision"], overbearing["recall"], overbearing["support"]) == (0.5, 0.5, 2)
    assert metrics["per_label"]["perfunctory"]["f1"] == 1.0
    assert metrics["per_label"]["vague-expertise"]["f1"] == 0.0
    assert metrics["clean_false_alarm_rate"] == 1.0  # the one clean row got vague-expertise
    assert metrics["macro_f1"] == round((0.5 + 1.0 + 0 + 0) / 4, 4)


def test_thresholds_separate_when_possible():
    gold = np.array([[1, 0, 0, 0]] * 3 + [[0, 0, 0, 0]] * 3)
    probabilities = np.array([[0.3, 0, 0, 0]] * 3 + [[0.2, 0, 0, 0]] * 3)
    thresholds = choose_thresholds(gold, probabilities)
    assert 0.2 < thresholds["overbearing"] <= 0.3
    assert multilabel_metrics(gold, probabilities, thresholds)["per_label"]["overbearing"]["f1"] == 1.0


def test_conversation_level_takes_any_gold_and_max_score():
    gold, scores = conversation_level([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]],
                                      [[0.2, 0, 0, 0], [0.9, 0, 0, 0], [0, 0, 0.4, 0]], [0, 0, 1])
    assert gold.tolist() == [[1, 0, 0, 0], [0, 0, 1, 0]]
    assert np.allclose(scores[0], [0.9, 0, 0, 0])
