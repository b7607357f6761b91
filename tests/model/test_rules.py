from hengwen.model.labels import LABELS
from hengwen.model.rules import RuleScorer, find_phrases, judge_turn


def flagged(turns, index):
    scores, evidence = judge_turn(turns, index)
    return {label for label in LABELS if scores[label] >= 0.5}, evidence


def test_pushing_after_a_decline_fires_overbearing_with_evidence_offsets():
    turns = [{"role": "customer", "text": "我先自己看看"},
             {"role": "agent", "text": "亲这款今天特价，真的很适合您，现在下单吧"}]
    labels, evidence = flagged(turns, 1)
    assert labels == {"overbearing"}
    for span in evidence:
        assert turns[1]["text"][span["start"]:span["end"]] == span["text"]
    assert {"现在下单", "真的很适合您"} <= {span["text"] for span in evidence}


def test_weak_sales_words_need_a_decline_first():
    pitch = {"role": "agent", "text": "这款套餐有优惠活动，挺划算的"}
    assert flagged([{"role": "customer", "text": "有什么套餐"}, pitch], 1)[0] == set()
    assert flagged([{"role": "customer", "text": "不需要，谢谢"}, pitch], 1)[0] == {"overbearing"}


def test_traditional_text_matches_with_offsets_in_the_original():
    turns = [{"role": "customer", "text": "我的帳單有問題"}, {"role": "agent", "text": "這是公司規定，沒辦法"}]
    labels, evidence = flagged(turns, 1)
    assert "perfunctory" in labels
    assert "公司規定" in {span["text"] for span in evidence}


def test_short_lexicon_entries_must_be_whole_words():
    assert find_phrases("我亲自帮您处理", ["亲"]) == []
    assert find_phrases("亲，在的", ["亲"]) == [(0, 1, "亲")]


def test_cold_follow_up_needs_the_after_sales_stage():
    late = [{"role": "customer", "text": "收到货屏幕坏了", "ts": "2026-03-01T09:00:00+08:00"},
            {"role": "agent", "text": "麻烦拍个照片", "ts": "2026-03-01T15:00:00+08:00"}]
    assert flagged(late, 1)[0] == {"cold-follow-up"}
    apologised = [late[0], {**late[1], "text": "抱歉久等了，麻烦拍个照片"}]
    assert flagged(apologised, 1)[0] == set()
    pre_sale = [{"role": "customer", "text": "这款屏幕多大", "ts": "2026-03-01T09:00:00+08:00"}, late[1]]
    assert flagged(pre_sale, 1)[0] == set()


def test_rule_scorer_has_the_model_output_shape_and_reports_bad_input():
    records = RuleScorer().score_records([
        {"id": "a", "turns": [{"role": "customer", "text": "能保证提分吗？"},
                              {"role": "agent", "text": "绝对能，百分百提分"}]},
        {"id": "b", "turns": [{"role": "customer", "text": "hi"}]}])
    assert records[0]["labels"] == ["vague-expertise"]
    assert set(records[0]["scores"]) == set(LABELS)
    assert records[0]["turns"][0]["index"] == 1
    assert records[1] == {"id": "b", "error": "no agent turn"}
