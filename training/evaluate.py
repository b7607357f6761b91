"""`hengwen eval`: how well a model, or the rule baseline, finds the four labels in an annotated file.

Every annotated agent turn is scored through the same scorer `hengwen score` uses (serving.runtime.Scorer, or
model.rules.RuleScorer), at the thresholds (and temperatures) stored with the model. A conversation's score is
its highest turn score and its gold labels are those of any of its turns. Written to the output folder:

- metrics.json: per label precision, recall, F1, support, PR-AUC and ECE, macro/micro F1, false alarms on clean
  turns (conversations), for the turn and the conversation level; the model, engine and thresholds used.
- confusion.json: gold label (or clean) against predicted label (or clean), and what a missed label was taken for.
- calibration.json: ECE, log loss and reliability table per label and level.
- pr_curves_turn.png, pr_curves_conversation.png, reliability_turn.png.
- bad_cases.jsonl: per label the worst false positives and false negatives with the turns before them.
- turns.jsonl: every evaluated turn (gold, scores, predictions, meta), what the error-analysis notebook reads.
- slices.json: the same metrics by industry (meta.domain), script, channel, conversation length and meta.set.
"""
import json
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from ..data.schema import timestamp_coverage
from ..model.labels import LABELS
from .calibration import BINS, calibration_summary
from .dataset import file_sha256, read_annotated
from .metrics import conversation_level, multilabel_metrics

CHUNK = 64
CONTEXT_TURNS = 6
WORST = 20
CLEAN = "clean"
# Conversation length buckets (all turns, any role) for the length slice.
LENGTH_BUCKETS = ((1, 4), (5, 8), (9, 16), (17, None))


@dataclass
class TurnTable:
    """Every evaluated agent turn: gold (n, L) 0/1, scores (n, L), and the turn it came from."""
    gold: np.ndarray
    scores: np.ndarray
    conversation: np.ndarray
    turn_index: list
    evidence: list


@dataclass
class Evaluation:
    """What `evaluate` measured; every dict is keyed by level ("turn", "conversation")."""
    table: TurnTable
    levels: dict
    """(gold, scores) arrays per level."""
    metrics: dict
    confusion: dict
    calibration: dict


def score_conversations(scorer, conversations, quiet=True):
    """The scorer's output record for every conversation, in order (scored in chunks, with a progress bar)."""
    from tqdm.auto import tqdm
    records = []
    with tqdm(total=len(conversations), unit="conv", desc="eval", disable=quiet or None) as progress:
        items = iter(conversations)
        while chunk := list(islice(items, CHUNK)):
            records += scorer.score_records(chunk)
            progress.update(len(chunk))
    return records


def turn_table(conversations, records):
    """Gold and scores of the annotated agent turns (those with a `labels` list; inserted turns have none)."""
    gold, scores, conversation, turn_index, evidence = [], [], [], [], []
    for number, (source, record) in enumerate(zip(conversations, records)):
        if "error" in record:
            raise ValueError(f"conversation {record['id']} could not be scored: {record['error']}")
        for turn in record["turns"]:
            labels = source["turns"][turn["index"]].get("labels")
            if labels is None:
                continue
            gold.append([label in labels for label in LABELS])
            scores.append([turn["scores"][label] for label in LABELS])
            conversation.append(number)
            turn_index.append(turn["index"])
            evidence.append(turn.get("evidence"))
    shape = (-1, len(LABELS))
    return TurnTable(np.asarray(gold, dtype=bool).reshape(shape), np.asarray(scores, dtype=float).reshape(shape),
                     np.asarray(conversation, dtype=int), turn_index, evidence)


def pr_auc(gold, scores):
    """Average precision (area under the precision-recall curve); None for a label without positives."""
    from sklearn.metrics import average_precision_score
    return round(float(average_precision_score(gold, scores)), 4) if np.any(gold) else None


def level_metrics(gold, scores, thresholds):
    """multilabel_metrics with PR-AUC per label and its mean over the labels that have positives."""
    metrics = multilabel_metrics(gold, scores, thresholds)
    for column, label in enumerate(LABELS):
        metrics["per_label"][label]["pr_auc"] = pr_auc(gold[:, column], scores[:, column])
    areas = [v["pr_auc"] for v in metrics["per_label"].values() if v["pr_auc"] is not None]
    metrics["macro_pr_auc"] = round(float(np.mean(areas)), 4) if areas else None
    return metrics


def predictions(scores, thresholds):
    return np.asarray(scores) >= np.array([thresholds[label] for label in LABELS])


def label_confusion(gold, predicted):
    """Turn (or conversation) counts by gold label and predicted label, `clean` meaning no label.

    `counts[g][p]`: rows with gold label g and predicted label p; a row with several labels counts in several
    cells, so the diagonal holds the true positives and the rest shows which labels co-occur with or stand in
    for one another. `missed_as[g][p]`: rows whose gold label g was missed, by what was predicted instead.
    """
    gold, predicted = np.asarray(gold, dtype=bool), np.asarray(predicted, dtype=bool)
    gold_sets = {label: gold[:, c] for c, label in enumerate(LABELS)} | {CLEAN: ~gold.any(axis=1)}
    predicted_sets = {label: predicted[:, c] for c, label in enumerate(LABELS)} | {CLEAN: ~predicted.any(axis=1)}
    counts = {g: {p: int(np.sum(rows & cols)) for p, cols in predicted_sets.items()} for g, rows in gold_sets.items()}
    missed_as = {label: {p: int(np.sum(gold[:, c] & ~predicted[:, c] & cols)) for p, cols in predicted_sets.items()
                         if p != label} for c, label in enumerate(LABELS)}
    return {"counts": counts, "missed_as": missed_as}


def context_of(turns, index, size=CONTEXT_TURNS):
    """The `size` turns before turns[index], as role/text(/ts) dicts, and how many earlier ones were left out."""
    start = max(0, index - size)
    keep = ("role", "text", "ts")
    return [{k: t[k] for k in keep if k in t} for t in turns[start:index]], start


def bad_cases(conversations, table, thresholds, worst=WORST):
    """Per label, the `worst` false positives (highest scores) and false negatives (lowest), with context."""
    cases = []
    predicted = predictions(table.scores, thresholds)
    for column, label in enumerate(LABELS):
        scores = table.scores[:, column]
        false_positive = np.flatnonzero(predicted[:, column] & ~table.gold[:, column])
        false_negative = np.flatnonzero(~predicted[:, column] & table.gold[:, column])
        ranked = {"false_positive": false_positive[np.argsort(-scores[false_positive], kind="stable")],
                  "false_negative": false_negative[np.argsort(scores[false_negative], kind="stable")]}
        for kind, rows in ranked.items():
            for row in rows[:worst]:
                conversation = conversations[table.conversation[row]]
                index = table.turn_index[row]
                context, omitted = context_of(conversation["turns"], index)
                case = {"label": label, "kind": kind, "score": round(float(scores[row]), 4),
                        "threshold": thresholds[label], "conversation_id": str(conversation["id"]),
                        "turn_index": index, "text": conversation["turns"][index]["text"],
                        "gold": [l for l, g in zip(LABELS, table.gold[row]) if g],
                        "predicted": [l for l, p in zip(LABELS, predicted[row]) if p],
                        "context": context, "context_turns_omitted": omitted,
                        "meta": conversation.get("meta", {})}
                if table.evidence[row] is not None:
                    case["evidence"] = table.evidence[row]
                cases.append(case)
    return cases


def turn_rows(conversations, table, thresholds):
    """One JSON-ready dict per evaluated turn, for turns.jsonl and slice_metrics."""
    predicted = predictions(table.scores, thresholds)
    rows = []
    for row in range(len(table.gold)):
        conversation = conversations[table.conversation[row]]
        rows.append({"conversation_id": str(conversation["id"]), "turn_index": table.turn_index[row],
                     "gold": [l for l, g in zip(LABELS, table.gold[row]) if g],
                     "predicted": [l for l, p in zip(LABELS, predicted[row]) if p],
                     "scores": {l: round(float(s), 4) for l, s in zip(LABELS, table.scores[row])},
                     "conversation_turns": len(conversation["turns"]),
                     "timestamps": timestamp_coverage(conversation["turns"]), "meta": conversation.get("meta", {})})
    return rows


def length_bucket(turn_count):
    for low, high in LENGTH_BUCKETS:
        if turn_count >= low and (high is None or turn_count <= high):
            return f"{low}+ turns" if high is None else f"{low}-{high} turns"
    raise ValueError(f"no length bucket for {turn_count} turns")


SLICES = {
    "domain": lambda row: row["meta"].get("domain", "unknown"),
    "script": lambda row: row["meta"].get("script", "unknown"),
    "channel": lambda row: row["meta"].get("channel", "unknown"),
    "length": lambda row: length_bucket(row["conversation_turns"]),
    # The model leans on reply-gap markers: this slice shows how it does where a conversation has no times.
    "timestamps": lambda row: row.get("timestamps", "unknown"),
    # Which part of a corpus a conversation comes from (this repository's `platform-contrast` set, say).
    "set": lambda row: row["meta"].get("set", "unknown"),
}


def slice_metrics(rows, thresholds, min_turns=1):
    """Turn-level metrics of every slice value (SLICES) with at least `min_turns` turns.

    A slice's macro-F1 averages only the labels that occur in it: an industry without, say, cold-follow-up would
    otherwise score an F1 of 0 for it, whatever the model did.
    """
    result = {}
    for name, key in SLICES.items():
        groups = {}
        for row in rows:
            groups.setdefault(key(row), []).append(row)
        result[name] = {}
        for value, members in sorted(groups.items()):
            if len(members) < min_turns:
                continue
            gold = np.array([[label in row["gold"] for label in LABELS] for row in members])
            scores = np.array([[row["scores"][label] for label in LABELS] for row in members])
            metrics = multilabel_metrics(gold, scores, thresholds)
            supported = [v["f1"] for v in metrics["per_label"].values() if v["support"]]
            result[name][value] = {
                "turns": len(members), "conversations": len({row["conversation_id"] for row in members}),
                "macro_f1": round(float(np.mean(supported)), 4) if supported else None,
                "clean_false_alarm_rate": metrics["clean_false_alarm_rate"],
                "per_label": {label: {k: v[k] for k in ("f1", "precision", "recall", "support")}
                              for label, v in metrics["per_label"].items()},
            }
    return result


def describe_scorer(scorer, engine):
    """What was evaluated, for metrics.json."""
    if engine == "rules":
        return {"engine": "rules", "model_dir": None, "thresholds": dict(scorer.thresholds)}
    return {"engine": engine, "model_dir": str(scorer.model_dir), "model_version": scorer.settings.version,
            "quantization": scorer.backend.quantization, "thresholds": dict(scorer.thresholds),
            "temperatures": scorer.temperatures, "untimed_calibration": scorer.untimed}


def evaluate(scorer, conversations, quiet=True):
    """Score the conversations and measure them at the scorer's own thresholds, turn and conversation level."""
    table = turn_table(conversations, score_conversations(scorer, conversations, quiet))
    if not len(table.gold):
        raise ValueError("no annotated agent turns to evaluate")
    thresholds = scorer.thresholds
    conversation_gold, conversation_scores = conversation_level(table.gold, table.scores, table.conversation)
    levels = {"turn": (table.gold, table.scores), "conversation": (conversation_gold.astype(bool),
                                                                   conversation_scores)}
    metrics, confusion, calibration = {}, {}, {}
    for level, (gold, scores) in levels.items():
        metrics[level] = level_metrics(gold, scores, thresholds)
        confusion[level] = label_confusion(gold, predictions(scores, thresholds))
        calibration[level] = calibration_summary(gold, scores, BINS)
        metrics[level]["macro_ece"] = calibration[level]["macro_ece"]
        for label in LABELS:
            metrics[level]["per_label"][label]["ece"] = calibration[level]["per_label"][label]["ece"]
    return Evaluation(table, levels, metrics, confusion, calibration)


def plot_pr_curves(gold, scores, thresholds, title, path):
    """Precision against recall per label, with the operating point at the label's threshold marked."""
    from matplotlib.figure import Figure
    from sklearn.metrics import precision_recall_curve
    figure = Figure(figsize=(6.4, 5.2))
    axes = figure.add_subplot()
    operating = predictions(scores, thresholds)
    for column, label in enumerate(LABELS):
        if not gold[:, column].any():
            continue
        precision, recall, _ = precision_recall_curve(gold[:, column], scores[:, column])
        (line,) = axes.plot(recall, precision, drawstyle="steps-post",
                            label=f"{label} (AP {pr_auc(gold[:, column], scores[:, column]):.3f})")
        tp = np.sum(operating[:, column] & gold[:, column])
        flagged, positives = operating[:, column].sum(), gold[:, column].sum()
        axes.plot(tp / positives, tp / flagged if flagged else 1.0, "o", color=line.get_color())
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize="small")
    figure.savefig(path, dpi=110, bbox_inches="tight")


def plot_reliability(calibration, title, path):
    """Positive rate against mean probability per bin and label; the diagonal is perfect calibration."""
    from matplotlib.figure import Figure
    figure = Figure(figsize=(6.4, 5.2))
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for label, values in calibration["per_label"].items():
        filled = [b for b in values["reliability"] if b["count"]]
        axes.plot([b["mean_probability"] for b in filled], [b["positive_rate"] for b in filled], "o-",
                  label=f"{label} (ECE {values['ece']:.3f})")
    axes.set(xlabel="mean predicted probability", ylabel="share of turns with the label", xlim=(0, 1),
             ylim=(0, 1.02), title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize="small")
    figure.savefig(path, dpi=110, bbox_inches="tight")


def _write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def evaluate_file(gold_file, scorer, engine, out_dir, worst=WORST, quiet=True):
    """Evaluate on an annotated JSONL and write the report folder; returns (metrics.json's content, Evaluation)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    conversations = read_annotated(gold_file)
    result = evaluate(scorer, conversations, quiet)
    thresholds = scorer.thresholds
    report = {"gold_file": str(gold_file), "gold_sha256": file_sha256(gold_file),
              "conversations": len(conversations), **describe_scorer(scorer, engine), **result.metrics}
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    (out_dir / "confusion.json").write_text(json.dumps(result.confusion, indent=2), encoding="utf-8")
    (out_dir / "calibration.json").write_text(json.dumps(result.calibration, indent=2), encoding="utf-8")
    for level, (gold, scores) in result.levels.items():
        plot_pr_curves(gold, scores, thresholds, f"{level} level, {engine}", out_dir / f"pr_curves_{level}.png")
    plot_reliability(result.calibration["turn"], f"turn level, {engine}", out_dir / "reliability_turn.png")
    _write_jsonl(out_dir / "bad_cases.jsonl", bad_cases(conversations, result.table, thresholds, worst))
    rows = turn_rows(conversations, result.table, thresholds)
    _write_jsonl(out_dir / "turns.jsonl", rows)
    (out_dir / "slices.json").write_text(json.dumps(slice_metrics(rows, thresholds), indent=2, ensure_ascii=False),
                                         encoding="utf-8")
    return report, result


def format_confusion(confusion):
    columns = [*LABELS, CLEAN]
    lines = ["gold \\ predicted  " + " ".join(f"{c[:11]:>11s}" for c in columns)]
    for gold_label, row in confusion["counts"].items():
        lines.append(f"  {gold_label:16s}" + " ".join(f"{row[c]:11d}" for c in columns))
    return "\n".join(lines)


def format_summary(report, confusion):
    """The stdout summary of an evaluation."""
    turn, conversation = report["turn"], report["conversation"]
    if report["engine"] == "rules":
        model = "rule baseline"
    else:
        model = f"{report['model_dir']} ({report['engine']}, {report['quantization']})"
    lines = [f"{report['gold_file']}: {report['conversations']} conversations, {turn['examples']} agent turns; "
             f"{model}",
             f"{'turn level':18s}{'P':>7s}{'R':>7s}{'F1':>7s}{'PR-AUC':>8s}{'ECE':>7s}{'support':>9s}"
             f"{'threshold':>10s}"]
    for label in LABELS:
        m = turn["per_label"][label]
        area = "-" if m["pr_auc"] is None else f"{m['pr_auc']:.3f}"
        lines.append(f"  {label:16s}{m['precision']:7.3f}{m['recall']:7.3f}{m['f1']:7.3f}{area:>8s}"
                     f"{m['ece']:7.3f}{m['support']:9d}{m['threshold']:10.3f}")
    lines += [f"  {'macro':16s}{'':14s}{turn['macro_f1']:7.3f}"
              f"{'-' if turn['macro_pr_auc'] is None else format(turn['macro_pr_auc'], '.3f'):>8s}"
              f"{turn['macro_ece']:7.3f}   (micro-F1 {turn['micro_f1']:.3f})",
              f"false alarms on clean agent turns: {turn['clean_false_alarm_rate']:.1%}",
              f"conversation level ({conversation['examples']}): macro-F1 {conversation['macro_f1']:.3f}, "
              + ", ".join(f"{label} {conversation['per_label'][label]['f1']:.3f}" for label in LABELS)
              + f"; false alarms on clean conversations {conversation['clean_false_alarm_rate']:.1%}",
              "turn-level confusion (rows: gold, columns: predicted; turns):", format_confusion(confusion["turn"])]
    return "\n".join(lines)
