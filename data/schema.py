"""What a conversation must look like (../shared/labels.md) and the reasons it can be refused."""
import json
from datetime import datetime, timedelta

from ..model.labels import LABELS, ROLES


class ConversationError(ValueError):
    """A conversation that cannot be scored; the message is the reason shown to the user."""


def parse_ts(value):
    """ISO 8601 with offset -> aware datetime. Naive stamps are refused: a gap across zones would be a guess."""
    if not isinstance(value, str):
        raise ConversationError(f"ts must be an ISO 8601 string, got {type(value).__name__}")
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConversationError(f"ts {value!r} is not ISO 8601") from None
    if stamp.tzinfo is None:
        raise ConversationError(f"ts {value!r} has no UTC offset")
    return stamp


# Exports may order a few messages by server receipt; a larger step back in time is a broken export, and a negative
# gap would hide the reply delays the model reads.
BACKWARD_TOLERANCE = timedelta(minutes=5)
# Customers come back on a warranty years later (dev has one a year on); a next message more than ten years on is a
# mistyped year (2062 or 2036 for 2026), and the gap would read as an extreme reply delay.
FORWARD_LIMIT = timedelta(days=3653)


def unwritable_content(value):
    """Why a decoded JSON value cannot be written back out as UTF-8 JSON (a lone UTF-16 surrogate, what a tool leaves
    when it cuts an emoji in half, or NaN/Infinity), or None: the output writers' own encoding, tried once."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        return "an unpaired UTF-16 surrogate (a cut emoji or character)"
    except ValueError:
        return "NaN or Infinity, which JSON does not allow"
    return None


def printable_id(value):
    """A conversation id as output records echo it: a string, with what UTF-8 cannot carry replaced."""
    return None if value is None else str(value).encode("utf-8", "replace").decode("utf-8")


def conversation_problems(record, annotated=False):
    """Every problem of one conversation record, as readable strings (empty list: usable).

    annotated=True also checks the label fields of training data: every agent turn has a `labels` list of
    known labels and no other turn has one.
    """
    if not isinstance(record, dict):
        return [f"a conversation must be a JSON object, got {type(record).__name__}"]
    unwritable = unwritable_content(record)
    if unwritable:
        return [f"the conversation holds {unwritable}; repair the export"]
    problems, last_stamp = [], None
    conv_id = record.get("id")
    if conv_id is None or (isinstance(conv_id, str) and not conv_id.strip()):
        problems.append("missing id")
    elif not isinstance(conv_id, (str, int)) or isinstance(conv_id, bool):
        problems.append(f"id must be a string or an integer, got {type(conv_id).__name__}")
    if "meta" in record and not isinstance(record["meta"], dict):
        problems.append("meta must be an object")
    turns = record.get("turns")
    if not isinstance(turns, list) or not turns:
        return problems + ["turns must be a non-empty list"]
    for index, turn in enumerate(turns):
        where = f"turn {index}"
        if not isinstance(turn, dict):
            problems.append(f"{where}: must be an object")
            continue
        role = turn.get("role")
        if role not in ROLES:
            problems.append(f"{where}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        text = turn.get("text")
        if text is not None and not isinstance(text, str):
            problems.append(f"{where}: text must be a string, got {type(text).__name__}")
        elif text is None or not text.strip():
            problems.append(f"{where}: empty text")
        if "ts" in turn and turn["ts"] is not None:
            try:
                stamp = parse_ts(turn["ts"])
            except ConversationError as error:
                problems.append(f"{where}: {error}")
            else:
                if last_stamp is not None and stamp < last_stamp[1] - BACKWARD_TOLERANCE:
                    problems.append(f"{where}: ts {turn['ts']} is earlier than turn {last_stamp[0]}'s; timestamps "
                                    "must not go back in time (fix the export, or drop the ts fields)")
                elif last_stamp is not None and stamp > last_stamp[1] + FORWARD_LIMIT:
                    problems.append(f"{where}: ts {turn['ts']} is more than ten years after turn {last_stamp[0]}'s; "
                                    "a mistyped year? (fix the export, or drop the ts fields)")
                last_stamp = (index, stamp)
        if annotated:
            labels = turn.get("labels")
            if role == "agent":
                if not isinstance(labels, list):
                    problems.append(f"{where}: agent turn without a labels list")
                else:
                    unknown = [label for label in labels if label not in LABELS]
                    if unknown:
                        problems.append(f"{where}: unknown labels {unknown}")
                    if len(set(labels)) != len(labels):
                        problems.append(f"{where}: repeated labels")
            elif labels is not None:
                problems.append(f"{where}: labels on a {role} turn")
    if not any(isinstance(t, dict) and t.get("role") == "agent" for t in turns):
        problems.append("no agent turn")
    return problems


def check_conversation(record, annotated=False):
    problems = conversation_problems(record, annotated)
    if problems:
        raise ConversationError("; ".join(problems))
    return record


def timestamp_coverage(turns):
    """Whether a conversation's turns carry `ts`: "all", "some" or "none" (many real exports have none)."""
    stamped = sum(bool(turn.get("ts")) for turn in turns)
    return "none" if not stamped else "all" if stamped == len(turns) else "some"
