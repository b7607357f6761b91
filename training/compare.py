"""`hengwen compare`: is one run better than another on dev, or is the difference noise?

A dev set of 1,333 turns in 257 conversations moves macro-F1 by about a point between resamples, so a row that
beats the reference by 0.003 has not shown anything. This resamples dev conversations with replacement (turns of
one conversation stay together: they share context and writer) and scores both runs on every resample at their
own dev thresholds, the ones `hengwen train` chose. Reported per run against the reference: the mean difference of
macro-F1, its 90% interval, and the share of resamples in which the run is better. The same test compares
`hengwen eval` report folders as they scored (compare_reports), e.g. one model at two operating points.
"""
import json
from pathlib import Path

import numpy as np

from ..model.labels import LABELS
from .dataset import read_annotated_files
from .metrics import multilabel_metrics

RESAMPLES = 1000


def dev_predictions(run_dir, dev_files):
    """(gold (n, L), conversation index (n,), probabilities (n, L), thresholds) of a run on one annotated file or
    several pooled: raw torch probabilities and the thresholds of the run's metrics_dev.json (chosen on dev for
    those, so a pooled set of writers the run never saw measures how those thresholds carry over)."""
    from ..serving.runtime import Scorer
    from .calibration import dev_probabilities
    conversations = read_annotated_files(dev_files)
    gold, probabilities = dev_probabilities(Scorer(run_dir, engine="torch"), conversations)
    conversation = np.asarray([number for number, item in enumerate(conversations)
                               for turn in item["turns"] if turn.get("role") == "agent"])
    per_label = json.loads((Path(run_dir) / "metrics_dev.json").read_text(encoding="utf-8"))["turn"]["per_label"]
    return gold, conversation, probabilities, {label: per_label[label]["threshold"] for label in LABELS}


def paired_bootstrap(gold, conversation, reference, candidate, resamples=RESAMPLES, seed=0):
    """Macro-F1 of candidate minus reference over conversation-level resamples of the same turns.
    reference and candidate are (probabilities (n, L), thresholds) pairs."""
    conversation = np.asarray(conversation)
    ids = np.unique(conversation)
    rows = {identifier: np.flatnonzero(conversation == identifier) for identifier in ids}
    rng = np.random.default_rng(seed)
    differences = np.empty(resamples)
    for index in range(resamples):
        picked = np.concatenate([rows[identifier] for identifier in rng.choice(ids, len(ids))])
        differences[index] = (multilabel_metrics(gold[picked], candidate[0][picked], candidate[1])["macro_f1"]
                              - multilabel_metrics(gold[picked], reference[0][picked], reference[1])["macro_f1"])
    low, high = np.percentile(differences, [5, 95])
    return {"difference": round(multilabel_metrics(gold, *candidate)["macro_f1"]
                                - multilabel_metrics(gold, *reference)["macro_f1"], 4),
            "mean_resampled_difference": round(float(differences.mean()), 4),
            "interval_90": [round(float(low), 4), round(float(high), 4)],
            "probability_better": round(float((differences > 0).mean()), 3), "resamples": resamples}


def report_predictions(report_dir):
    """(gold, conversation index, probabilities, thresholds) of a `hengwen eval` report folder, as it scored: the
    engine, temperatures and thresholds it ran with (turns.jsonl and metrics.json)."""
    report_dir = Path(report_dir)
    rows = [json.loads(line) for line in (report_dir / "turns.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    per_label = json.loads((report_dir / "metrics.json").read_text(encoding="utf-8"))["turn"]["per_label"]
    conversation_ids = dict.fromkeys(row["conversation_id"] for row in rows)
    numbers = {identifier: number for number, identifier in enumerate(conversation_ids)}
    gold = np.asarray([[label in row["gold"] for label in LABELS] for row in rows], dtype=bool)
    probabilities = np.asarray([[row["scores"][label] for label in LABELS] for row in rows])
    conversation = np.asarray([numbers[row["conversation_id"]] for row in rows])
    return gold, conversation, probabilities, {label: per_label[label]["threshold"] for label in LABELS}


def _paired_comparison(reference, candidates, predictions, resamples, seed):
    gold, conversation, *reference_scores = predictions(reference)
    reference_f1 = multilabel_metrics(gold, *reference_scores)["macro_f1"]
    results = {}
    for candidate in candidates:
        candidate_gold, _, *candidate_scores = predictions(candidate)
        if candidate_gold.shape != gold.shape or not np.array_equal(candidate_gold, gold):
            raise ValueError(f"{candidate} and {reference} are not scored on the same turns")
        results[str(candidate)] = {"dev_macro_f1": multilabel_metrics(gold, *candidate_scores)["macro_f1"],
                                   "reference_dev_macro_f1": reference_f1,
                                   **paired_bootstrap(gold, conversation, reference_scores, candidate_scores,
                                                      resamples, seed)}
    return results


def compare_runs(reference_dir, run_dirs, dev_files, resamples=RESAMPLES, seed=0):
    """Every run against the reference on dev_files (a path or several, pooled):
    {run: {dev_macro_f1, reference_dev_macro_f1, ...}}."""
    return _paired_comparison(reference_dir, run_dirs, lambda run: dev_predictions(run, dev_files), resamples, seed)


def compare_reports(reference_dir, report_dirs, resamples=RESAMPLES, seed=0):
    """Every `hengwen eval` report folder against the reference folder, all made on the same gold file: compares
    models as they score (e.g. one model at two operating points, or int8 files), which compare_runs cannot."""
    return _paired_comparison(reference_dir, report_dirs, report_predictions, resamples, seed)


def format_comparison(reference_dir, results, scored_on="dev"):
    lines = [f"against {reference_dir} (conversation-level paired bootstrap on {scored_on})",
             f"  {'run':48s}{'macro':>7s}{'diff':>8s}{'90% interval':>18s}{'P(better)':>11s}"]
    for run, row in results.items():
        interval = f"{row['interval_90'][0]:+.3f}..{row['interval_90'][1]:+.3f}"
        lines.append(f"  {run:48s}{row['dev_macro_f1']:7.3f}{row['difference']:+8.3f}{interval:>18s}"
                     f"{row['probability_better']:11.3f}")
    return "\n".join(lines)
