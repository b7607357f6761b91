"""Read conversations from JSON Lines, long-form CSV or Excel (.xlsx), one item per input conversation, in order.

Every item is either a record to score or the reason it cannot be read, so that a caller can write exactly
one output record per input conversation. Long-form tables hold one row a message; rows of one conversation
must be contiguous, and conversation-level columns (agent, team, channel, date) become the record's `meta`.
"""
import codecs
import csv
import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, Optional

from ..model.labels import ROLES
from .schema import printable_id

# Header names common exports use for each field; the first match wins.
CSV_COLUMN_NAMES = {
    "id": ("conversation_id", "id", "session_id", "会话ID", "会话id", "会话编号", "对话ID"),
    "role": ("role", "sender", "发送方", "角色", "发送者", "说话人"),
    "text": ("text", "content", "message", "内容", "消息", "消息内容", "聊天内容"),
    "ts": ("ts", "time", "timestamp", "时间", "发送时间", "消息时间"),
}
# Sender values of Chinese and English helpdesk exports; matched as written, then lower-cased.
ROLE_ALIASES = {"客服": "agent", "坐席": "agent", "人工客服": "agent", "客服人员": "agent", "售后客服": "agent",
                "卖家": "agent", "商家": "agent", "staff": "agent", "seller": "agent", "support": "agent",
                "客户": "customer", "顾客": "customer", "用户": "customer", "买家": "customer", "访客": "customer",
                "会员": "customer", "來電人": "customer", "来电人": "customer", "客戶": "customer", "顧客": "customer",
                "用戶": "customer", "user": "customer", "client": "customer", "visitor": "customer",
                "buyer": "customer", "系统": "system", "系統": "system", "系统消息": "system", "机器人": "system",
                "智能客服": "system", "bot": "system", "robot": "system"}
TURN_FIELDS = ("id", "role", "text", "ts")
# Conversation-level columns recognised without a mapping; their first non-empty value per conversation goes to
# meta under the field name.
META_COLUMN_NAMES = {
    "agent": ("agent_id", "agent", "客服工号", "坐席工号", "工号", "客服ID", "客服id"),
    "team": ("team", "group", "组别", "班组", "技能组"),
    "channel": ("channel", "渠道", "来源渠道"),
    "date": ("date", "日期", "会话日期"),
}
TABLE_FORMATS = ("csv", "xlsx")


def parse_column_mapping(text):
    """`id=会话ID,role=发送方,agent=客服工号` -> {"id": "会话ID", ...}; any field but id/role/text/ts goes to meta."""
    mapping = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        field, equals, column = part.partition("=")
        if not equals or not field.strip() or not column.strip():
            raise ValueError(f"--columns entry {part!r} is not FIELD=COLUMN (e.g. id=会话ID)")
        mapping[field.strip()] = column.strip()
    return mapping


def parse_utc_offset(text):
    """`+08:00` (or `+8`, `-05:30`, `UTC`) -> a fixed-offset timezone, for timestamps that carry none."""
    if text.strip().upper() in ("Z", "UTC"):
        return timezone.utc
    sign, digits = text.strip()[:1], text.strip()[1:]
    hours, _, minutes = digits.partition(":")
    if sign not in "+-" or not sign or not hours.isdigit() or (minutes and not minutes.isdigit()):
        raise ValueError(f"timezone {text!r} is not a UTC offset such as +08:00")
    offset = timedelta(hours=int(hours), minutes=int(minutes or 0))
    return timezone(-offset if sign == "-" else offset)


@dataclass
class ReadItem:
    """One input conversation: `record` when it parsed, else `error`; `line` is where it starts."""
    line: int
    record: Optional[dict] = None
    error: Optional[str] = None
    conversation_id: Optional[str] = None


def input_format_of(path, input_format=None):
    """jsonl, csv or xlsx: input_format when given, else from the file's extension (JSONL by default)."""
    if input_format:
        return input_format
    suffix = Path(path).suffix.lower()
    return {".csv": "csv", ".xlsx": "xlsx", ".xlsm": "xlsx"}.get(suffix, "jsonl")


def read_conversations(path, input_format=None, columns=None, default_timezone=None) -> Iterator[ReadItem]:
    """Yield the conversations of a .jsonl, .csv or .xlsx file (input_format overrides the extension).

    columns maps fields to column names of a table ({"id": "会话ID", "agent": "客服工号"}), overriding the
    recognised names; default_timezone is given to table timestamps that have no UTC offset.
    """
    kind = input_format_of(path, input_format)
    if kind not in ("jsonl", *TABLE_FORMATS):
        raise ValueError(f"unknown input format {kind!r} (jsonl, csv or xlsx)")
    if kind == "jsonl":
        if columns:
            raise ValueError("a column mapping applies to CSV and Excel input, not JSONL")
        yield from _read_jsonl(path)
    elif kind == "csv":
        yield from _read_csv(path, columns, default_timezone)
    else:
        yield from _read_xlsx(path, columns, default_timezone)


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _read_jsonl(path):
    with Path(path).open("rb") as handle:
        for line_number, raw in enumerate(handle, 1):
            if line_number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield ReadItem(line_number, error=f"line is not UTF-8 (byte {error.start + 1}); convert the file "
                                                  "to UTF-8 first, e.g. `iconv -f GBK -t UTF-8` for a GBK export")
                continue
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                record = json.loads(line, parse_constant=_refuse_constant)
            except json.JSONDecodeError as error:
                yield ReadItem(line_number, error=f"bad JSON: {error.msg} at column {error.colno}")
                continue
            except ValueError as error:  # a number too long to convert, NaN or Infinity
                yield ReadItem(line_number, error=f"bad JSON: {error}")
                continue
            except RecursionError:
                yield ReadItem(line_number, error="bad JSON: nested too deeply")
                continue
            conversation_id = record.get("id") if isinstance(record, dict) else None
            yield ReadItem(line_number, record=record, conversation_id=printable_id(conversation_id))


def _resolve_columns(header, mapping=None):
    mapping = mapping or {}
    absent = {field: column for field, column in mapping.items() if column not in header}
    if absent:
        raise ValueError(f"header {header} has no column " + ", ".join(f"{c!r} (mapped to {f})"
                                                                       for f, c in absent.items()))
    found = {}
    for field, names in (CSV_COLUMN_NAMES | META_COLUMN_NAMES).items():
        for name in names:
            if name in header and name not in mapping.values():
                found[field] = name
                break
    found |= mapping
    missing = [field for field in ("id", "role", "text") if field not in found]
    if missing:
        raise ValueError(f"header {header} has no column for {', '.join(missing)}; accepted names: "
                         + "; ".join(f"{f}: {'/'.join(CSV_COLUMN_NAMES[f])}" for f in missing)
                         + " (or map one with --columns, e.g. id=会话ID)")
    return found


def _cell_text(value):
    """A table cell as text: Excel numbers without a spurious .0, dates in ISO form, empty cells as ""."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == datetime.min.time() else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value).strip()


def _timestamp(value, default_timezone):
    """A turn's ts from a cell: Excel datetimes and naive strings get default_timezone when one is given;
    anything else is passed through unchanged for the schema check to accept or refuse."""
    if isinstance(value, datetime):
        stamp = value
    else:
        text = _cell_text(value)
        if not text or default_timezone is None:
            return text
        try:
            stamp = datetime.fromisoformat(text.replace("/", "-"))
        except ValueError:
            return text
        if stamp.tzinfo is not None:
            return text
    if stamp.tzinfo is None and default_timezone is not None:
        stamp = stamp.replace(tzinfo=default_timezone)
    return stamp.isoformat()


def _require_utf8(path):
    """Refuse a file that is not UTF-8 before any of it is read, naming the first bad byte: decoding it with
    replacement characters would score garbled text without a word."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:
                raise ValueError(f"{path} is not UTF-8 (byte {offset + error.start + 1}); convert it first, e.g. "
                                 "`iconv -f GBK -t UTF-8` for a GBK export") from None
            offset += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 (it ends inside a character)") from None


def _known_role(cell):
    """The role a sender cell names (an alias in any case, or a role name), or None."""
    return ROLE_ALIASES.get(cell) or ROLE_ALIASES.get(cell.lower()) or (cell.lower() if cell.lower() in ROLES else None)


# Row key (never a column name) for the conversation ids found inside a text cell that swallowed later rows.
_SWALLOWED_ROWS = object()


def _ids_of_swallowed_rows(text, header, columns):
    """Conversation ids of the lines after the first in a text cell that read as rows of this file: a quote opened
    and never closed makes the csv module take every row up to the next quote into one cell, which it cannot tell
    from a real multi-line message."""
    if not isinstance(text, str) or "\n" not in text:
        return []
    id_index, role_index = header.index(columns["id"]), header.index(columns["role"])
    ids = []
    for fields in csv.reader(text.splitlines()[1:]):
        if (len(fields) > max(id_index, role_index) and fields[id_index].strip()
                and _known_role(fields[role_index].strip())):
            ids.append(fields[id_index].strip())
    return ids


def _read_csv(path, mapping=None, default_timezone=None):
    _require_utf8(path)
    # The csv module's default cell limit (131,072 characters) is below what one long call transcript can hold.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    with Path(path).open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        columns = _resolve_columns(header, mapping)

        def rows():
            for row in reader:
                swallowed = _ids_of_swallowed_rows(row.get(columns["text"]), header, columns)
                if swallowed:
                    row[_SWALLOWED_ROWS] = swallowed
                yield reader.line_num, row
        yield from _group_rows(rows(), columns, default_timezone)


def _read_xlsx(path, mapping=None, default_timezone=None):
    from zipfile import BadZipFile

    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException
    try:
        # read_only streams the sheet's XML instead of building every cell in memory.
        workbook = load_workbook(path, read_only=True, data_only=True)
    except (BadZipFile, InvalidFileException) as error:
        raise ValueError(f"{path} is not an Excel .xlsx workbook ({error})") from None
    try:
        rows = enumerate(workbook.active.iter_rows(values_only=True), 1)
        header = next((values for _, values in rows if any(v is not None for v in values)), None)
        header = [_cell_text(value) for value in header or ()]
        columns = _resolve_columns(header, mapping)
        records = ((number, dict(zip(header, values))) for number, values in rows
                   if any(v is not None and str(v).strip() for v in values))
        yield from _group_rows(records, columns, default_timezone)
    finally:
        workbook.close()


def _group_rows(rows, columns, default_timezone=None):
    """Contiguous (line number, {column: cell}) rows with one conversation id -> one ReadItem each."""
    meta_columns = {field: column for field, column in columns.items() if field not in TURN_FIELDS}
    current, seen, idless = None, set(), []
    for line_number, row in rows:
        conversation_id = _cell_text(row.get(columns["id"]))
        if not conversation_id:
            error = ReadItem(line_number, error="row without a conversation id")
            if current is None:
                yield error
            else:  # after the conversation open above it is complete, so that output keeps input order
                idless.append(error)
            continue
        if current is None or conversation_id != current.conversation_id:
            if current is not None:
                yield current
                yield from idless
                idless.clear()
            if conversation_id in seen:
                # Its earlier rows were already scored; merging would mean holding the whole file.
                current = ReadItem(line_number, error="rows of this conversation are not contiguous in the file",
                                   conversation_id=conversation_id, record=None)
                continue
            seen.add(conversation_id)
            current = ReadItem(line_number, record={"id": conversation_id, "turns": []},
                               conversation_id=conversation_id)
        if current.record is None:
            continue
        if _SWALLOWED_ROWS in row:
            swallowed = row[_SWALLOWED_ROWS]
            names = ", ".join(dict.fromkeys(printable_id(name) for name in swallowed))
            current = ReadItem(current.line, conversation_id=conversation_id, record=None, error=(
                f"a text cell ending on line {line_number} holds {len(swallowed)} lines that read as rows of this file "
                f"(conversation {names}): a quote was opened and not closed, so those rows were not read as rows; "
                "close the quote and score the file again"))
            continue
        role = _cell_text(row.get(columns["role"]))
        text = row.get(columns["text"])
        # An unknown sender stays as written, so that the error names what the file holds.
        turn = {"role": _known_role(role) or role,
                "text": text if isinstance(text, str) else _cell_text(text)}
        stamp = _timestamp(row.get(columns["ts"]), default_timezone) if "ts" in columns else ""
        if stamp:
            turn["ts"] = stamp
        current.record["turns"].append(turn)
        for field, column in meta_columns.items():
            value = _cell_text(row.get(column))
            if value and field not in current.record.get("meta", {}):
                current.record.setdefault("meta", {})[field] = value
    if current is not None:
        yield current
    yield from idless
