import json

from hengwen.model.encoding import EncodingConfig
from hengwen.training.args import DataArguments
from hengwen.training.dataset import data_file_hashes, load_turn_dataset, without_timestamps

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


def test_only_file_settings_are_hashed():
    hashes = data_file_hashes(DataArguments(train_file=str(TINY_DATA), dev_file="", untimed_share=0.5))
    assert list(hashes) == ["train_file"]
