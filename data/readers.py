"""Read conversations from JSON Lines or long-form CSV, one item per input conversation, in input order.

Every item is either a record to score or the reason it cannot be read, so that a caller can write exactly
one output record per input conversation.
"""
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

# Header names common exports use for each field; the first match wins.
CSV_COLUMN_NAMES = {
    "id": ("conversation_id", "id", "session_id", "会话ID", "会话id"),
    "role": ("role", "sender", "发送方", "角色"),
    "text": ("text", "content", "message", "内容", "消息"),
    "ts": ("ts", "time", "timestamp", "时间"),
}
ROLE_ALIASES = {"客服": "agent", "坐席": "agent", "客户": "customer", "顾客": "customer", "用户": "customer",
                "系统": "system", "机器人": "system", "bot": "system"}


@dataclass
class ReadItem:
    """One input conversation: `record` when it parsed, else `error`; `line` is where it starts."""
    line: int
    record: Optional[dict] = None
    error: Optional[str] = None
    conversation_id: Optional[str] = None


def read_conversations(path, input_format=None) -> Iterator[ReadItem]:
    """Yield the conversations of a .jsonl or .csv file (input_format overrides the extension)."""
    kind = input_format or ("csv" if str(path).lower().endswith(".csv") else "jsonl")
    if kind == "csv":
        yield from _read_csv(path)
    elif kind == "jsonl":
        yield from _read_jsonl(path)
    else:
        raise ValueError(f"unknown input format {kind!r} (jsonl or csv)")


def _read_jsonl(path):
    with Path(path).open(encoding="utf-8", errors="replace") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                yield ReadItem(line_number, error=f"bad JSON: {error.msg} at column {error.colno}")
                continue
            conversation_id = record.get("id") if isinstance(record, dict) else None
            yield ReadItem(line_number, record=record,
                           conversation_id=None if conversation_id is None else str(conversation_id))


def _resolve_columns(header):
    found = {}
    for field, names in CSV_COLUMN_NAMES.items():
        for name in names:
            if name in header:
                found[field] = name
                break
    missing = [field for field in ("id", "role", "text") if field not in found]
    if missing:
        raise ValueError(f"CSV header {header} has no column for {', '.join(missing)}; "
                         f"accepted names: " + "; ".join(f"{f}: {'/'.join(CSV_COLUMN_NAMES[f])}" for f in missing))
    return found


def _read_csv(path):
    with Path(path).open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = _resolve_columns(reader.fieldnames or [])
        current, seen = None, set()
        for row in reader:
            line_number = reader.line_num
            conversation_id = (row.get(columns["id"]) or "").strip()
            if not conversation_id:
                yield ReadItem(line_number, error="row without a conversation id")
                continue
            if current is None or conversation_id != current.conversation_id:
                if current is not None:
                    yield current
                if conversation_id in seen:
                    # Its earlier rows were already scored; merging would mean holding the whole file.
                    current = ReadItem(line_number, error="rows of this conversation are not contiguous in the CSV",
                                       conversation_id=conversation_id, record=None)
                    continue
                seen.add(conversation_id)
                current = ReadItem(line_number, record={"id": conversation_id, "turns": []},
                                   conversation_id=conversation_id)
            if current.record is None:
                continue
            role = (row.get(columns["role"]) or "").strip()
            turn = {"role": ROLE_ALIASES.get(role, role.lower()), "text": row.get(columns["text"]) or ""}
            stamp = (row.get(columns["ts"]) or "").strip() if "ts" in columns else ""
            if stamp:
                turn["ts"] = stamp
            current.record["turns"].append(turn)
        if current is not None:
            yield current
