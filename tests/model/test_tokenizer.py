import json
from pathlib import Path

import pytest

from hengwen.model.tokenizer import ModelTokenizer
from hengwen.serving.runtime import DEFAULT_MODEL_DIR

CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus" / "dev.jsonl"


@pytest.fixture(scope="module")
def tokenizers():
    from transformers import AutoTokenizer
    return ModelTokenizer(DEFAULT_MODEL_DIR), AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))


def corpus_texts(limit=400):
    texts = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        texts += [turn["text"] for turn in json.loads(line)["turns"]]
    return texts[:limit] + ["iPhone 16 Pro 的 OK 吗", "  空格 \t tab ", "😂🙏[数字x]", "網路訊息", ""]


def test_same_ids_offsets_and_special_tokens_as_transformers(tokenizers):
    ours, theirs = tokenizers
    texts = corpus_texts()
    assert ours(texts, add_special_tokens=False)["input_ids"] == theirs(texts, add_special_tokens=False)["input_ids"]
    assert ours(texts[0])["input_ids"] == theirs(texts[0])["input_ids"]
    assert (ours(texts[1], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            == [tuple(o) for o in theirs(texts[1], add_special_tokens=False,
                                         return_offsets_mapping=True)["offset_mapping"]])
    for role in ("cls", "sep", "pad", "unk"):
        assert getattr(ours, f"{role}_token_id") == getattr(theirs, f"{role}_token_id")
    ids = ours.encode(texts[2])
    assert ours.decode(ids).replace(" ", "") == theirs.decode(ids).replace(" ", "")


def test_a_folder_without_tokenizer_json_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        ModelTokenizer(tmp_path)
