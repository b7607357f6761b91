import codecs
import csv
import json

import pytest

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
    # The id-less row comes after s2 began, so its error record follows s2's: output keeps input order.
    assert [(i.conversation_id, i.error) for i in items] == [
        ("s1", None), ("s2", None), (None, "row without a conversation id")]
    assert items[0].record["turns"] == [
        {"role": "customer", "text": "在吗", "ts": "2026-03-01T10:00:00+08:00"},
        {"role": "agent", "text": "在的", "ts": "2026-03-01T10:00:05+08:00"}]
    assert items[1].record["turns"] == [{"role": "customer", "text": "发票"}, {"role": "agent", "text": "已开"}]


def test_csv_reader_refuses_non_contiguous_conversation(tmp_path):
    path = write_csv(tmp_path / "in.csv", ["conversation_id", "role", "text"], [
        ["a", "agent", "1"], ["b", "agent", "2"], ["a", "agent", "3"]])
    items = list(read_conversations(path))
    assert [i.conversation_id for i in items] == ["a", "b", "a"]
    assert "not contiguous" in items[2].error


def test_csv_reader_reports_rows_swallowed_by_an_unclosed_quote(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('id,role,text\na,customer,在吗\na,agent,"好的\nb,customer,退款呢\nb,客服,稍等\n'
                    'c,agent,收到\n', encoding="utf-8")
    items = list(read_conversations(path))
    # Without the check, b's and c's rows were read as part of a's reply and vanished without a word.
    assert [i.conversation_id for i in items] == ["a"]
    assert "quote was opened and not closed" in items[0].error and "(conversation b, c)" in items[0].error
    assert items[0].record is None


def test_csv_reader_keeps_a_real_multi_line_message(tmp_path):
    path = write_csv(tmp_path / "in.csv", ["id", "role", "text"], [
        ["a", "agent", "第一步,customer,先登录\n第二步 a,点设置"], ["a", "customer", "好"]])
    items = list(read_conversations(path))
    assert items[0].error is None and items[0].record["turns"][0]["text"].count("\n") == 1


def test_csv_reader_names_missing_columns(tmp_path):
    path = write_csv(tmp_path / "in.csv", ["id", "who", "text"], [["a", "agent", "1"]])
    try:
        list(read_conversations(path))
    except ValueError as error:
        assert "no column for role" in str(error)
    else:
        raise AssertionError("a CSV without a role column was accepted")


GOOD = {"id": "ok", "turns": [{"role": "agent", "text": "好的"}]}


def test_jsonl_reader_reports_undecodable_and_unparseable_lines_one_item_each(tmp_path):
    lines = [codecs.BOM_UTF8 + json.dumps(GOOD).encode(),
             json.dumps({**GOOD, "id": "gbk", "turns": [{"role": "agent", "text": "有黑色L码吗"}]},
                        ensure_ascii=False).encode("gbk"),
             b'{"id": "nan", "meta": {"x": NaN}, "turns": []}',
             b'{"meta": ' + b"[" * 100000 + b"]" * 100000 + b"}",
             b'{"id": 1' + b"0" * 5000 + b"}",
             b'{"id": "cut", "turns": [',  # cut short
             json.dumps(GOOD).encode() + b"\r"]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    items = list(read_conversations(path))
    assert [item.line for item in items] == list(range(1, 8))
    assert items[0].record == GOOD and items[6].record == GOOD
    assert "not UTF-8" in items[1].error and "iconv" in items[1].error
    assert "NaN is not a JSON number" in items[2].error
    assert items[3].error == "bad JSON: nested too deeply"
    assert items[4].error.startswith("bad JSON") and "digits" in items[4].error
    # The position of a cut line is its end, not the start of a phantom next line.
    cut = b'{"id": "cut", "turns": ['
    assert items[5].error.endswith(f"column {len(cut) + 1}")


def test_jsonl_reader_echoes_an_id_with_a_lone_surrogate_in_writable_form(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", ['{"id": "b\\ud83d", "turns": []}'])
    (item,) = read_conversations(path)
    assert item.record["id"] == "b\ud83d" and item.conversation_id == "b?"


def test_csv_reader_refuses_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes("会话ID,发送方,内容\nc1,客服,您好\n".encode("gbk"))
    with pytest.raises(ValueError, match="not UTF-8 .*iconv"):
        list(read_conversations(path))


def test_csv_reader_takes_a_cell_longer_than_the_csv_module_default(tmp_path):
    path = write_csv(tmp_path / "in.csv", ["id", "role", "text"], [["c1", "agent", "亲" * 140_000]])
    (item,) = read_conversations(path)
    assert len(item.record["turns"][0]["text"]) == 140_000


def test_csv_reader_keeps_an_unknown_sender_as_written(tmp_path):
    path = write_csv(tmp_path / "in.csv", ["id", "role", "text"], [["c1", "BOSS", "好"], ["c1", "Agent", "好"]])
    (item,) = read_conversations(path)
    assert [turn["role"] for turn in item.record["turns"]] == ["BOSS", "agent"]
