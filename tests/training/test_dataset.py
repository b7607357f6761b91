import json

import pytest

from hengwen.model.encoding import EncodingConfig
from hengwen.training.args import DataArguments
from hengwen.training.dataset import (data_file_hashes, data_files, in_share, label_revisions, load_turn_dataset,
                                      reply_only_excerpts, timing_variants, without_timestamps)

from ..conftest import TINY_DATA


def _conversation(conversation_id):
    return {"id": conversation_id, "turns": [
        {"role": "customer", "text": "到了吗", "ts": "2026-01-01T10:00:00+08:00"},
        {"role": "agent", "text": "已发货", "ts": "2026-01-01T16:00:00+08:00", "labels": []}]}


def test_untimed_share_removes_every_timestamp_of_a_stable_share_of_conversations():
    conversations = [_conversation(f"c{i}") for i in range(400)]
    untimed = [c["id"] for c in conversations
               if not any("ts" in t for t in without_timestamps(c, 0.3)["turns"])]
    assert 0.2 < len(untimed) / len(conversations) < 0.4
    assert untimed == [c["id"] for c in conversations
                       if not any("ts" in t for t in without_timestamps(c, 0.3)["turns"])]
    assert all(without_timestamps(c, 0.0) is c for c in conversations)
    stripped = without_timestamps(conversations[0], 1.0)
    assert [t["text"] for t in stripped["turns"]] == ["到了吗", "已发货"]
    assert "ts" in conversations[0]["turns"][0]  # the input is left as it was


def test_untimed_share_reaches_the_encoded_training_examples(tmp_path, tiny_base):
    path = tmp_path / "timed.jsonl"
    path.write_text(json.dumps(_conversation("c1"), ensure_ascii=False) + "\n", encoding="utf-8")
    timed = load_turn_dataset(path, tiny_base, EncodingConfig())["input_ids"]
    untimed = load_turn_dataset(path, tiny_base, EncodingConfig(), untimed_share=1.0)["input_ids"]
    assert len(untimed[0]) < len(timed[0])  # the six-hour gap marker is gone


def test_train_share_keeps_a_stable_sample_drawn_apart_from_the_untimed_share():
    conversations = [_conversation(f"c{i}") for i in range(400)]
    kept = {c["id"] for c in conversations if in_share(c, 0.4)}
    assert 0.3 < len(kept) / len(conversations) < 0.5
    assert kept == {c["id"] for c in conversations if in_share(c, 0.4)}
    assert all(in_share(c, 1.0) for c in conversations)
    untimed = {c["id"] for c in conversations if not any("ts" in t for t in without_timestamps(c, 0.4)["turns"])}
    # independent draws: about 0.4 x 0.4 of the conversations are in both, not all of the kept ones
    assert 0.08 < len(kept & untimed) / len(conversations) < 0.25


def test_train_share_reaches_the_training_examples(tmp_path, tiny_base):
    conversations = [_conversation(f"c{i}") for i in range(40)]
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations), encoding="utf-8")
    sampled = load_turn_dataset(path, tiny_base, EncodingConfig(), share=0.5)
    assert set(sampled["conversation_id"]) == {c["id"] for c in conversations if in_share(c, 0.5)}
    assert len(load_turn_dataset(path, tiny_base, EncodingConfig())) == 40


def test_untimed_copies_add_a_stripped_copy_of_timed_conversations_only():
    timed = _conversation("c1")
    untimed = without_timestamps(timed, 1.0)
    as_written, stripped = timing_variants(timed, untimed_copies=True)
    assert as_written is timed and stripped == untimed
    assert timing_variants(untimed, untimed_copies=True) == [untimed]
    assert timing_variants(timed) == [timed]


def test_untimed_copies_double_the_timed_examples_with_and_without_gap_markers(tmp_path, tiny_base):
    path = tmp_path / "mixed.jsonl"
    lines = [_conversation("c1"), without_timestamps(_conversation("c2"), 1.0)]
    path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in lines), encoding="utf-8")
    dataset = load_turn_dataset(path, tiny_base, EncodingConfig(), untimed_copies=True)
    assert dataset["conversation_id"] == ["c1", "c1", "c2"]
    with_markers, without_markers, _ = dataset["input_ids"]
    assert len(without_markers) < len(with_markers)
    assert dataset["labels"][0] == dataset["labels"][1]


def _chased_conversation():
    return {"id": "c9", "turns": [
        {"role": "customer", "text": "这个能保修吗", "ts": "2026-01-01T10:00:00+08:00"},
        {"role": "agent", "text": "可以的亲，三年质保", "ts": "2026-01-01T10:01:00+08:00", "labels": []},
        {"role": "customer", "text": "坏了，怎么修", "ts": "2026-01-09T10:00:00+08:00"},
        {"role": "customer", "text": "人呢？", "ts": "2026-01-09T15:00:00+08:00"},
        {"role": "agent", "text": "等着", "ts": "2026-01-10T09:00:00+08:00",
         "labels": ["perfunctory", "cold-follow-up"]}]}


def test_reply_only_excerpts_keep_each_reply_with_the_messages_it_answers_and_no_timestamps():
    excerpts = list(reply_only_excerpts(_chased_conversation()))
    assert [index for index, _ in excerpts] == [1, 4]
    assert [turn["text"] for turn in excerpts[1][1]] == ["坏了，怎么修", "人呢？", "等着"]
    assert not any("ts" in turn for _, excerpt in excerpts for turn in excerpt)


def test_reply_only_copies_add_one_example_per_agent_turn_with_no_stage_target(tmp_path, tiny_base):
    import math
    path = tmp_path / "chased.jsonl"
    path.write_text(json.dumps(_chased_conversation(), ensure_ascii=False) + "\n", encoding="utf-8")
    plain = load_turn_dataset(path, tiny_base, EncodingConfig())
    dataset = load_turn_dataset(path, tiny_base, EncodingConfig(), reply_only_copies=True)
    assert dataset["turn_index"] == [1, 4, 1, 4]
    assert dataset["input_ids"][:2] == plain["input_ids"]
    assert len(dataset["input_ids"][3]) < len(dataset["input_ids"][1])
    perfunctory, stage = 1, 3
    assert dataset["labels"][3][perfunctory] == 1.0 and math.isnan(dataset["labels"][3][stage])
    assert dataset["labels"][1][stage] == 1.0


def test_only_file_settings_are_hashed():
    hashes = data_file_hashes(DataArguments(train_file=str(TINY_DATA), dev_file="", untimed_share=0.5))
    assert list(hashes) == ["train_file"]


def test_data_files_names_each_file_and_no_setting():
    data = DataArguments(train_file="a.jsonl", dev_file="b.jsonl", test_file="", train_share=0.4,
                         extra_train_files=["c.jsonl", "d.jsonl"], untimed_share=0.5, untimed_copies=True)
    assert data_files(data) == {"train_file": "a.jsonl", "dev_file": "b.jsonl",
                                "extra_train_files[0]": "c.jsonl", "extra_train_files[1]": "d.jsonl"}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def test_label_revisions_replace_the_labels_of_named_training_turns_only(tmp_path, tiny_base):
    train = _write_jsonl(tmp_path / "train.jsonl", [_conversation("c1"), _conversation("c2"), _conversation("c4")])
    extra = _write_jsonl(tmp_path / "extra.jsonl", [_conversation("c3")])
    review = _write_jsonl(tmp_path / "review_standoff.jsonl", [
        {"id": "c2", "turn": 1, "labels": ["cold-follow-up"]}, {"id": "c3", "turn": 1, "labels": ["perfunctory"]},
        {"id": "c4", "turn": 1, "labels": ["overbearing"]}])
    revisions = label_revisions([review], [train, extra])
    assert revisions == {str(train): [["c2", 1, ["cold-follow-up"]], ["c4", 1, ["overbearing"]]],
                         str(extra): [["c3", 1, ["perfunctory"]]]}
    dataset = load_turn_dataset(train, tiny_base, EncodingConfig(), revisions=revisions[str(train)])
    assert dataset["conversation_id"] == ["c1", "c2", "c4"]  # each turn once, however many revisions
    assert dataset["labels"] == [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]]
    assert load_turn_dataset(train, tiny_base, EncodingConfig())["labels"][1] == [0.0, 0.0, 0.0, 0.0]


def test_a_revision_that_names_no_training_agent_turn_is_refused(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", [_conversation("c1")])
    review = _write_jsonl(tmp_path / "review_standoff.jsonl", [
        {"id": "c1", "turn": 0, "labels": []}, {"id": "c9", "turn": 1, "labels": []},
        {"id": "c1", "turn": 1, "labels": ["nonsense"]}])
    with pytest.raises(ValueError) as error:
        label_revisions([review], [train])
    message = str(error.value)
    assert "turn 0 of c1" in message and "turn 1 of c9" in message and "nonsense" in message
