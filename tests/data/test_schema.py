import pytest

from hengwen.data.schema import (ConversationError, check_conversation, conversation_problems, parse_ts,
                                 timestamp_coverage)


def conversation(**changes):
    base = {"id": "c1", "turns": [{"role": "customer", "text": "在吗"}, {"role": "agent", "text": "在的"}]}
    return base | changes


def test_valid_conversation_has_no_problems():
    assert conversation_problems(conversation()) == []


@pytest.mark.parametrize("record, reason", [
    (conversation(id=""), "missing id"),
    (conversation(turns=[]), "turns must be a non-empty list"),
    (conversation(turns=[{"role": "customer", "text": "hi"}]), "no agent turn"),
    (conversation(turns=[{"role": "bot", "text": "hi"}, {"role": "agent", "text": "好"}]), "unknown role 'bot'"),
    (conversation(turns=[{"role": "agent", "text": "  "}]), "turn 0: empty text"),
    (conversation(turns=[{"role": "agent", "text": "好", "ts": "yesterday"}]), "not ISO 8601"),
    (conversation(turns=[{"role": "agent", "text": "好", "ts": "2026-03-01T10:00:00"}]), "no UTC offset"),
    (["not", "an", "object"], "must be a JSON object"),
    (conversation(id=1.5), "id must be a string or an integer, got float"),
    (conversation(turns=[{"role": "agent", "text": 123}]), "turn 0: text must be a string, got int"),
    (conversation(turns=[{"role": "agent", "text": "好\ud83d"}]), "unpaired UTF-16 surrogate"),
    (conversation(id="c\udc00"), "unpaired UTF-16 surrogate"),
    (conversation(meta={"score": float("nan")}), "NaN or Infinity"),
    (conversation(turns=[{"role": "customer", "text": "在吗", "ts": "2026-03-01T10:00:00+08:00"},
                         {"role": "agent", "text": "在", "ts": "2026-03-01T09:00:00+08:00"}]),
     "turn 1: ts 2026-03-01T09:00:00+08:00 is earlier than turn 0's"),
    (conversation(turns=[{"role": "customer", "text": "在吗", "ts": "2026-03-01T10:00:00+08:00"},
                         {"role": "agent", "text": "在", "ts": "2062-03-01T10:01:00+08:00"}]),
     "turn 1: ts 2062-03-01T10:01:00+08:00 is more than ten years after turn 0's"),
])
def test_each_kind_of_bad_conversation_is_named(record, reason):
    problems = conversation_problems(record)
    assert any(reason in p for p in problems), problems
    with pytest.raises(ConversationError):
        check_conversation(record)


def test_a_customer_back_years_later_is_accepted():
    record = conversation(turns=[{"role": "customer", "text": "在吗", "ts": "2026-03-01T10:00:00+08:00"},
                                 {"role": "agent", "text": "在", "ts": "2026-03-01T10:01:00+08:00"},
                                 {"role": "customer", "text": "保修期内又坏了", "ts": "2029-02-20T09:00:00+08:00"}])
    assert conversation_problems(record) == []


def test_annotated_mode_requires_known_labels_on_agent_turns_only():
    record = conversation(turns=[{"role": "customer", "text": "在吗", "labels": []},
                                 {"role": "agent", "text": "在的"},
                                 {"role": "agent", "text": "亲", "labels": ["rude"]}])
    problems = conversation_problems(record, annotated=True)
    assert "turn 0: labels on a customer turn" in problems
    assert "turn 1: agent turn without a labels list" in problems
    assert "turn 2: unknown labels ['rude']" in problems
    assert conversation_problems(record) == []


def test_timestamps_with_offset_parse():
    assert parse_ts("2026-03-01T10:00:05+08:00").utcoffset().total_seconds() == 8 * 3600
    assert parse_ts("2026-03-01T02:00:05Z").hour == 2


@pytest.mark.parametrize("stamps, coverage", [(["2026-03-01T10:00:00+08:00"] * 2, "all"),
                                              (["2026-03-01T10:00:00+08:00", None], "some"),
                                              ([None, None], "none")])
def test_timestamp_coverage(stamps, coverage):
    turns = [{"role": "customer", "text": "在吗"}, {"role": "agent", "text": "在的"}]
    for turn, stamp in zip(turns, stamps):
        if stamp:
            turn["ts"] = stamp
    assert timestamp_coverage(turns) == coverage
    assert timestamp_coverage([{**turn, "ts": None} for turn in turns]) == "none"


def test_timestamps_may_step_back_a_little_as_exports_order_by_receipt():
    turns = [{"role": "customer", "text": "在吗", "ts": "2026-03-01T10:00:00+08:00"},
             {"role": "system", "text": "转接中"},
             {"role": "agent", "text": "在", "ts": "2026-03-01T09:57:00+08:00"}]
    assert conversation_problems(conversation(turns=turns)) == []
