"""Stand-off labels: annotations kept apart from the transcripts they label.

Real service data often may not be copied or redistributed, but its labels can be: one JSON line per agent turn,
`{"id": conversation id, "turn": index in its turns, "labels": [...]}`, and nothing of the text. Whoever holds the
export joins the two back into an annotated file (`hengwen data attach-labels`), which every tool then reads as
gold data. Every labelled turn must be an agent turn of the export, and a conversation with any labelled turn
must have all of its agent turns labelled: evaluation counts unlabelled agent turns as clean.
"""
import json
from pathlib import Path

from ..model.labels import LABELS
from .readers import read_conversations
from .schema import conversation_problems


def read_standoff(path):
    """{(conversation id, turn index): labels} and a list of problems (line-numbered)."""
    labels, problems = {}, []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key, turn_labels = (str(row["id"]), row["turn"]), row["labels"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            problems.append(f"{path}:{number}: not a stand-off label line ({error!r}); "
                            'expected {"id": ..., "turn": N, "labels": [...]}')
            continue
        if not isinstance(key[1], int) or isinstance(key[1], bool):
            problems.append(f"{path}:{number}: turn must be an integer index, not {key[1]!r}")
        elif not isinstance(turn_labels, list) or set(turn_labels) - set(LABELS):
            problems.append(f"{path}:{number}: labels must be a list of {list(LABELS)}, not {turn_labels!r}")
        elif key in labels:
            problems.append(f"{path}:{number}: turn {key[1]} of {key[0]} labelled twice")
        else:
            labels[key] = sorted(turn_labels, key=LABELS.index)
    return labels, problems


def attach_labels(export_path, labels, input_format=None, columns=None, default_timezone=None):
    """The export's conversations that carry labels, with `labels` on every agent turn; and a list of problems.

    Conversations without any labelled turn are left out: they were not annotated.
    """
    annotated, problems, matched = [], [], set()
    wanted = {conversation_id for conversation_id, _ in labels}
    for item in read_conversations(export_path, input_format, columns, default_timezone):
        if item.conversation_id not in wanted:
            continue
        reasons = [item.error] if item.error else conversation_problems(item.record)
        if reasons:
            problems.append(f"{export_path}:{item.line}: {'; '.join(reasons)}")
            continue
        record = item.record
        for index, turn in enumerate(record["turns"]):
            key = (item.conversation_id, index)
            if key not in labels:
                if turn.get("role") == "agent":
                    problems.append(f"{item.conversation_id}: agent turn {index} has no label line")
                continue
            matched.add(key)
            if turn.get("role") == "agent":
                turn["labels"] = labels[key]
            else:
                problems.append(f"{item.conversation_id}: turn {index} is a {turn.get('role')} turn, not an agent's")
        annotated.append(record)
    for conversation_id, index in sorted(set(labels) - matched):
        problems.append(f"{conversation_id}: turn {index} is labelled but not in the export")
    return annotated, problems
