"""Excel and CSV exports with Chinese headers, column mappings and conversation-level fields."""
import csv
import json
from datetime import datetime, timedelta, timezone

import pytest
from openpyxl import Workbook

from hengwen.data.readers import parse_column_mapping, parse_utc_offset, read_conversations

HEADER = ["会话ID", "客服工号", "组别", "发送方", "内容", "时间"]
START = datetime(2026, 3, 1, 10, 0, 0)
ROWS = [
    ["s1", 1023, "售前一组", "客户", "在吗，这件有M码吗", START],
    ["s1", 1023, "售前一组", "客服", "有的亲，M码有货", START + timedelta(seconds=30)],
    ["s1", None, None, "系统", "会话已结束", START + timedelta(seconds=60)],
    ["s2", 2047, "售后组", "买家", "上周买的耳机左边没声音", START + timedelta(days=1)],
    ["s2", 2047, "售后组", "人工客服", "麻烦提供一下订单号，我马上帮您查", START + timedelta(days=1, seconds=40)],
]
MAPPING = "id=会话ID,role=发送方,text=内容,ts=时间,agent=客服工号,team=组别"
EXPECTED = [
    {"id": "s1", "meta": {"agent": "1023", "team": "售前一组"}, "turns": [
        {"role": "customer", "text": "在吗，这件有M码吗", "ts": "2026-03-01T10:00:00+08:00"},
        {"role": "agent", "text": "有的亲，M码有货", "ts": "2026-03-01T10:00:30+08:00"},
        {"role": "system", "text": "会话已结束", "ts": "2026-03-01T10:01:00+08:00"}]},
    {"id": "s2", "meta": {"agent": "2047", "team": "售后组"}, "turns": [
        {"role": "customer", "text": "上周买的耳机左边没声音", "ts": "2026-03-02T10:00:00+08:00"},
        {"role": "agent", "text": "麻烦提供一下订单号，我马上帮您查", "ts": "2026-03-02T10:00:40+08:00"}]},
]
CHINA = timezone(timedelta(hours=8))


def write_xlsx(path, header, rows):
    workbook = Workbook()
    sheet = workbook.active
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    workbook.save(path)
    return path


def write_csv(path, header, rows):
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        # What a spreadsheet's "save as CSV" writes for these cells: plain numbers, naive date-times.
        writer.writerows([[cell.strftime("%Y-%m-%d %H:%M:%S") if isinstance(cell, datetime) else
                           "" if cell is None else cell for cell in row] for row in rows])
    return path


def records(path, **options):
    return [item.record for item in read_conversations(path, **options)]


def test_xlsx_csv_and_jsonl_give_the_same_conversations(tmp_path):
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in EXPECTED), encoding="utf-8")
    options = {"columns": parse_column_mapping(MAPPING), "default_timezone": CHINA}
    from_xlsx = records(write_xlsx(tmp_path / "in.xlsx", HEADER, ROWS), **options)
    from_csv = records(write_csv(tmp_path / "in.csv", HEADER, ROWS), **options)
    assert from_xlsx == from_csv == records(jsonl) == EXPECTED


def test_recognised_headers_need_no_mapping_and_give_meta(tmp_path):
    path = write_xlsx(tmp_path / "in.xlsx", HEADER, ROWS)
    found = records(path, default_timezone=CHINA)
    assert found == EXPECTED


def test_excel_line_numbers_and_reader_errors(tmp_path):
    rows = [["a", "客户", "在吗"], [None, "客服", "没有会话ID"], ["a", "客服", "在的"], ["b", "客服", "你好"],
            ["a", "客服", "又是a"]]
    path = write_xlsx(tmp_path / "in.xlsx", ["会话ID", "发送方", "内容"], rows)
    items = list(read_conversations(path))
    assert [(i.line, i.conversation_id, i.error) for i in items] == [
        (2, "a", None), (3, None, "row without a conversation id"), (5, "b", None),
        (6, "a", "rows of this conversation are not contiguous in the file")]
    assert items[0].record["turns"] == [{"role": "customer", "text": "在吗"}, {"role": "agent", "text": "在的"}]


def test_naive_timestamps_stay_naive_without_a_timezone(tmp_path):
    path = write_xlsx(tmp_path / "in.xlsx", HEADER, ROWS[:2])
    (record,) = records(path)
    assert record["turns"][0]["ts"] == "2026-03-01T10:00:00"  # the schema check refuses it with its reason


def test_a_mapping_overrides_recognised_names_and_adds_fields(tmp_path):
    header = ["session_id", "id", "who", "msg", "渠道", "坐席"]
    rows = [["s1", "row-1", "Customer", "hello", "app", "Li"], ["s1", "row-2", "AGENT", "hi", "app", "Li"]]
    mapping = parse_column_mapping("id=session_id, role=who, text=msg, agent_name=坐席")
    (record,) = records(write_csv(tmp_path / "in.csv", header, rows), columns=mapping)
    assert record == {"id": "s1", "meta": {"channel": "app", "agent_name": "Li"},
                      "turns": [{"role": "customer", "text": "hello"}, {"role": "agent", "text": "hi"}]}


def test_mapping_to_a_missing_column_is_named(tmp_path):
    path = write_xlsx(tmp_path / "in.xlsx", HEADER, ROWS)
    with pytest.raises(ValueError, match="'客服ID' \\(mapped to agent\\)"):
        list(read_conversations(path, columns={"agent": "客服ID"}))


def test_missing_required_columns_suggest_a_mapping(tmp_path):
    path = write_xlsx(tmp_path / "in.xlsx", ["编号", "发送方", "内容"], [["1", "客服", "好"]])
    with pytest.raises(ValueError, match="no column for id.*--columns"):
        list(read_conversations(path))


def test_column_mapping_is_for_tables_only(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(EXPECTED[0], ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="CSV and Excel"):
        list(read_conversations(path, columns={"id": "x"}))


@pytest.mark.parametrize("text", ["id", "id=", "=会话ID", "id=会话ID,role"])
def test_bad_column_mapping_is_refused(text):
    with pytest.raises(ValueError, match="FIELD=COLUMN"):
        parse_column_mapping(text)


@pytest.mark.parametrize("text, hours", [("+08:00", 8), ("+8", 8), ("-05:30", -5.5), ("UTC", 0), ("Z", 0)])
def test_utc_offsets(text, hours):
    assert parse_utc_offset(text).utcoffset(None) == timedelta(hours=hours)


@pytest.mark.parametrize("text", ["08:00", "Asia/Shanghai", "+ab", ""])
def test_bad_utc_offsets(text):
    with pytest.raises(ValueError, match="UTC offset"):
        parse_utc_offset(text)
