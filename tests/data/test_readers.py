import csv
import json

from hengwen.data.readers import read_conversations


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_reader_yields_one_item_per_line_with_bad_json_reported(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [
        json.dumps({"id": "a", "turns": [{"role": "agent", "text": "好的"}]}), "", "{not json", json.dumps([1, 2])])
    items = list(read_conversations(path))
    assert [i.line for i in items] == [1, 3, 4]
    assert items[0].record["id"] == "a" and items[0].error is None
    assert items[1].error.startswith("bad JSON")
    assert items[2].record == [1, 2] and items[2].conversation_id is None


def write_csv(path, header, rows):
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_reader_groups_contiguous_rows_and_maps_chinese_headers(tmp_path):
    path = write_csv(tmp_path / "in.csv", ["会话ID", "发送方", "内容", "时间"], [
        ["s1", "客户", "在吗", "2026-03-01T10:00:00+08:00"],
        ["s1", "客服", "在的", "2026-03-01T10:00:05+08:00"],
        ["s2", "customer", "发票", ""],
        ["", "agent", "orphan", ""],
        ["s2", "agent", "已开", ""],
    ])
    items = list(read_conversations(path))
    assert [(i.conversation_id, i.error) for i in items] == [
        ("s1", None), (None, "row without a conversation id"), ("s2", None)]
    assert items[0].record["turns"] == [
        {"role": "customer", "text": "在吗", "ts": "2026-03-01T10:00:00+08:00"},
        {"role": "agent", "text": "在的", "ts": "2026-03-01T10:00:05+08:00"}]
    assert items[2].record["turns"] == [{"role": "customer", "text": "发票"}, {"role": "agent", "text": "已开"}]


def test_csv_reader_refuses_non_contiguous_conversation(tmp_path):
    path = write_csv(tmp_path / "in.csv", ["conversation_id", "role", "text"], [
        ["a", "agent", "1"], ["b", "agent", "2"], ["a", "agent", "3"]])
    items = list(read_conversations(path))
    assert [i.conversation_id for i in items] == ["a", "b", "a"]
    assert "not contiguous" in items[2].error


def test_csv_reader_names_missing_columns(tmp_path):
    path = write_csv(tmp_path / "in.csv", ["id", "who", "text"], [["a", "agent", "1"]])
    try:
        list(read_conversations(path))
    except ValueError as error:
        assert "no column for role" in str(error)
    else:
        raise AssertionError("a CSV without a role column was accepted")
