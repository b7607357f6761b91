import copy
import re

import pytest

from hengwen.serving.runtime import Scorer
from hengwen.training.dataset import read_annotated
from hengwen.training.robustness import CHECKS, PLACEHOLDER, robustness_report, transform

from ..conftest import TINY_DATA


@pytest.fixture(scope="module")
def conversations():
    return read_annotated(TINY_DATA)


def texts(conversations):
    return [t["text"] for c in conversations for t in c["turns"]]


def labels(conversations):
    return [(c["id"], i, t["labels"]) for c in conversations for i, t in enumerate(c["turns"]) if "labels" in t]


@pytest.mark.parametrize("check", list(CHECKS))
def test_every_check_keeps_ids_and_labels_and_leaves_the_input_alone(conversations, check):
    original = copy.deepcopy(conversations)
    changed = transform(conversations, check)
    assert conversations == original
    assert [c["id"] for c in changed] == [c["id"] for c in conversations]
    annotated = [(c["id"], t["labels"]) for c in changed for t in c["turns"] if "labels" in t]
    assert annotated == [(cid, gold) for cid, _, gold in labels(conversations)]
    assert changed != conversations


def test_script_conversion_goes_both_ways(conversations):
    simplified = [c for c in conversations if c["meta"]["script"] == "simplified"]
    traditional = transform(simplified, "s2t")
    assert "這件衛衣有M碼嗎" in texts(traditional)
    assert texts(transform(traditional, "t2s")) == texts(simplified)
    assert transform(simplified, "t2s") == simplified


def test_noise_is_seeded(conversations):
    assert transform(conversations, "noisy", seed=1) == transform(conversations, "noisy", seed=1)
    assert transform(conversations, "noisy", seed=1) != transform(conversations, "noisy", seed=2)
    # Per conversation, so that a file's order does not change what a conversation gets.
    assert transform(conversations[::-1], "noisy", seed=1) == transform(conversations, "noisy", seed=1)[::-1]


def test_placeholders_replace_every_number(conversations):
    changed = transform(conversations, "placeholders")
    assert not any(re.search(r"\d", text) for text in texts(changed))
    assert "有的亲，M码适合身高[数字x]-[数字x]" in texts(changed)
    assert sum(text.count(PLACEHOLDER) for text in texts(changed)) > 0


def test_long_context_inserts_unlabelled_filler_after_the_first_exchange(conversations, tiny_model):
    encoding = Scorer(tiny_model).settings.encoding
    for before, after in zip(conversations, transform(conversations, "long_context")):
        added = len(after["turns"]) - len(before["turns"])
        if before["id"] == "t-0008":  # customer, agent, agent: nothing after the first exchange to push away
            assert after == before
            continue
        assert added > encoding.max_context_turns
        assert sum(len(t["text"]) for t in after["turns"][2:2 + added]) > encoding.max_length
        assert after["turns"][:2] == before["turns"][:2] and after["turns"][2 + added:] == before["turns"][2:]
        assert not any("labels" in t or "ts" in t for t in after["turns"][2:2 + added])


def test_no_timestamps_removes_every_ts(conversations):
    assert not any("ts" in t for c in transform(conversations, "no_timestamps") for t in c["turns"])


def test_unknown_check_is_refused(conversations):
    with pytest.raises(ValueError, match="unknown robustness check"):
        transform(conversations, "upside-down")


def test_report_gives_each_check_its_drop(conversations, tiny_model):
    report = robustness_report(Scorer(tiny_model), conversations, ["t2s", "no_timestamps"])
    assert set(report["checks"]) == {"t2s", "no_timestamps"}
    assert report["checks"]["t2s"]["conversations_changed"] == 1  # the one traditional conversation
    result = report["checks"]["no_timestamps"]
    assert result["conversations_changed"] == 4
    assert result["drop"] == pytest.approx(report["original"]["turn_macro_f1"] - result["turn_macro_f1"], abs=1e-4)
    assert result["over_tolerance"] == (result["drop"] > report["tolerance"])
