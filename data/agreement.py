"""Inter-annotator agreement: Cohen's kappa per label over the agent turns two annotation files share."""
import json
from pathlib import Path

from ..model.labels import LABELS


def _turn_labels(path):
    result = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            conversation = json.loads(line)
            for index, turn in enumerate(conversation["turns"]):
                if turn["role"] == "agent":
                    result[(conversation["id"], index)] = set(turn.get("labels") or [])
    return result


def cohen_kappa(first, second):
    """Kappa of two equal-length 0/1 sequences; 1.0 when both are constant and equal."""
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second)) / n
    p_first, p_second = sum(first) / n, sum(second) / n
    expected = p_first * p_second + (1 - p_first) * (1 - p_second)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def agreement(first_path, second_path):
    first, second = _turn_labels(first_path), _turn_labels(second_path)
    shared = sorted(set(first) & set(second))
    if not shared:
        raise ValueError("the two files share no agent turns (same conversation ids and turn positions)")
    per_label = {}
    for label in LABELS:
        a = [int(label in first[key]) for key in shared]
        b = [int(label in second[key]) for key in shared]
        per_label[label] = {"kappa": round(cohen_kappa(a, b), 3), "first_positive": sum(a),
                            "second_positive": sum(b), "both_positive": sum(x & y for x, y in zip(a, b))}
    disagreements = [{"id": key[0], "turn": key[1], "first": sorted(first[key]), "second": sorted(second[key])}
                     for key in shared if first[key] != second[key]]
    return {"conversations": len({key[0] for key in shared}), "agent_turns": len(shared),
            "per_label": per_label, "turns_in_full_agreement": round(1 - len(disagreements) / len(shared), 3),
            "disagreements": disagreements}
