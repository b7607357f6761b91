import pytest

from hengwen.model.encoding import EncodingConfig, TurnEncoder, gap_words
from hengwen.serving.runtime import DEFAULT_MODEL_DIR, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(DEFAULT_MODEL_DIR)


def encoder(tokenizer, **settings):
    return TurnEncoder(tokenizer, EncodingConfig(**settings))


def decoded(tokenizer, feature):
    return tokenizer.decode(feature["input_ids"]).replace(" ", "")


TURNS = [
    {"role": "customer", "text": "这款空调能装在十平米的卧室吗", "ts": "2026-03-01T10:00:00+08:00"},
    {"role": "agent", "text": "可以的，1匹正好适合十平米", "ts": "2026-03-01T10:00:20+08:00"},
    {"role": "customer", "text": "好的我下单了", "ts": "2026-03-01T10:01:00+08:00"},
    {"role": "system", "text": "订单已支付", "ts": "2026-03-01T10:01:05+08:00"},
    {"role": "customer", "text": "装好第二天就不制冷了", "ts": "2026-03-08T09:00:00+08:00"},
    {"role": "agent", "text": "您自己看看说明书", "ts": "2026-03-08T15:10:00+08:00"},
]


def test_every_agent_turn_is_a_target_with_roles_and_gaps(tokenizer):
    targets, features = encoder(tokenizer).encode(TURNS)
    assert targets == [1, 5]
    last = decoded(tokenizer, features[1])
    assert "客：" in last and "服：" in last and "系：" in last
    assert "〔隔7天〕" in last  # the customer came back a week later
    assert last.endswith("〔隔6小时〕您自己看看说明书[SEP]")
    first = decoded(tokenizer, features[0])
    assert first.endswith("〔即时〕可以的，1匹正好适合十平米[SEP]")


def test_without_timestamps_or_with_markers_off_there_are_no_gap_markers(tokenizer):
    plain = [{k: v for k, v in turn.items() if k != "ts"} for turn in TURNS]
    for turns, settings in ((plain, {}), (TURNS, {"gap_markers": False})):
        _, features = encoder(tokenizer, **settings).encode(turns)
        assert "〔" not in decoded(tokenizer, features[1])


def test_lowercase_keeps_latin_words_out_of_unk(tokenizer):
    turns = [{"role": "customer", "text": "iPhone 16 Pro 的 SF1234567890 到哪了"},
             {"role": "agent", "text": "OK 亲，在转运中心了"}]
    unknown = tokenizer.unk_token_id
    _, (as_written,) = encoder(tokenizer).encode(turns)
    _, (lowered,) = encoder(tokenizer, lowercase=True).encode(turns)
    assert as_written["input_ids"].count(unknown) >= 4
    assert unknown not in lowered["input_ids"]
    assert "iphone16pro" in decoded(tokenizer, lowered) and decoded(tokenizer, lowered).endswith("ok亲，在转运中心了[SEP]")


def test_token_types_separate_context_from_target(tokenizer):
    _, features = encoder(tokenizer).encode(TURNS)
    feature = features[1]
    first_target = feature["token_type_ids"].index(1)
    assert feature["input_ids"][first_target - 1] == tokenizer.sep_token_id
    assert len(feature["input_ids"]) == len(feature["token_type_ids"]) == len(feature["attention_mask"])


def test_long_context_is_cut_from_the_left_but_keeps_opening_and_target(tokenizer):
    turns = [{"role": "customer", "text": "你好我想问下这个套餐"}, {"role": "agent", "text": "您好，在的，请讲"}]
    turns += [{"role": "customer" if i % 2 else "agent", "text": f"第{i}条消息" + "很长的内容" * 8}
              for i in range(30)]
    turns.append({"role": "agent", "text": "最后这条是要打分的回复"})
    config = {"max_length": 96, "max_target_tokens": 32, "opening_tokens": 20, "max_context_turns": 30}
    targets, features = encoder(tokenizer, **config).encode(turns, targets=[len(turns) - 1])
    text = decoded(tokenizer, features[0])
    assert len(features[0]["input_ids"]) <= 96
    assert text.startswith("[CLS]客：你好我想问下这个套餐")
    assert "（略）" in text
    assert "第29条消息" in text and "第2条消息" not in text
    assert text.endswith("最后这条是要打分的回复[SEP]")


def test_very_long_target_is_truncated_never_dropped(tokenizer):
    turns = [{"role": "customer", "text": "在吗"}, {"role": "agent", "text": "好" * 500}]
    _, (feature,) = encoder(tokenizer, max_length=64, max_target_tokens=40).encode(turns)
    assert len(feature["input_ids"]) <= 64
    assert feature["token_type_ids"].count(1) == 41  # 40 target tokens and the closing [SEP]


def test_draft_is_encoded_as_the_next_agent_turn(tokenizer):
    targets, features = encoder(tokenizer).encode(TURNS, draft={"text": "抱歉久等了"})
    assert targets == [len(TURNS)]
    assert decoded(tokenizer, features[0]).endswith("抱歉久等了[SEP]")


def test_following_turns_are_read_after_the_target_within_their_budget(tokenizer):
    turns = TURNS[:4] + [{"role": "agent", "text": "好的"}, {"role": "customer", "text": "说好的安装师傅呢"}]
    _, features = encoder(tokenizer, following_turns=2, following_tokens=32).encode(turns)
    first = decoded(tokenizer, features[0])
    assert "可以的，1匹正好适合十平米[SEP]客：好的我下单了系：订单已支付[SEP]" in first
    assert "说好的安装师傅呢" not in first  # a third turn after the target
    last = decoded(tokenizer, features[1])
    assert last.endswith("好的[SEP]客：说好的安装师傅呢[SEP]")
    types = features[1]["token_type_ids"]
    following_start = len(types) - 1 - types[::-1].index(1) + 1
    assert set(types[following_start:]) == {0} and types[following_start - 1] == 1

    _, cut = encoder(tokenizer, following_turns=2, following_tokens=3).encode(turns)
    assert decoded(tokenizer, cut[0]).endswith("[SEP]客：好[SEP]")
    assert all(len(feature["input_ids"]) <= 128 for feature in features + cut)


def test_last_turn_and_draft_have_nothing_following_and_default_reads_nothing_after(tokenizer):
    reading = encoder(tokenizer, following_turns=2)
    _, features = reading.encode(TURNS)
    _, plain = encoder(tokenizer).encode(TURNS)
    assert features[1] == plain[1]  # the last turn of the transcript
    assert features[0] != plain[0] and decoded(tokenizer, plain[0]).endswith("适合十平米[SEP]")
    _, (draft,) = reading.encode(TURNS, draft={"text": "抱歉久等了"})
    _, (plain_draft,) = encoder(tokenizer).encode(TURNS, draft={"text": "抱歉久等了"})
    assert draft == plain_draft


def test_following_turns_take_room_from_the_context_not_the_target(tokenizer):
    turns = [{"role": "customer" if i % 2 else "agent", "text": f"第{i}条消息" + "很长的内容" * 8} for i in range(12)]
    turns[6] = {"role": "agent", "text": "要打分的回复"}
    _, (feature,) = encoder(tokenizer, following_turns=1, following_tokens=20).encode(turns, targets=[6])
    text = decoded(tokenizer, feature)
    assert len(feature["input_ids"]) == 128
    assert "[SEP]要打分的回复[SEP]客：第7条消息" in text


@pytest.mark.parametrize("seconds, words", [(30, None), (600, "隔10分钟"), (4 * 3600, "隔4小时"),
                                            (3 * 86400, "隔3天")])
def test_gap_words(seconds, words):
    assert gap_words(seconds) == words
