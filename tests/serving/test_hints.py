"""Draft hints: occlusion evidence in one batch, span merging, the suggestions data and its situations."""
import numpy as np
import pytest

from hengwen.model.labels import LABELS
from hengwen.serving.hints import Hinter, SuggestionBook, merge_spans
from hengwen.serving.runtime import Scorer


class WordReactingBackend:
    """Stands in for the model: overbearing is high exactly when the target segment holds all of `word`'s
    tokens, so the right evidence is known; counts its calls."""

    def __init__(self, tokenizer, word):
        self.token_ids = set(tokenizer.encode(word, add_special_tokens=False))
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        probabilities = np.full((len(batch["input_ids"]), len(LABELS)), 0.1, dtype=np.float32)
        for row, (ids, types) in enumerate(zip(batch["input_ids"], batch["token_type_ids"])):
            if self.token_ids <= set(ids[types == 1].tolist()):
                probabilities[row, LABELS.index("overbearing")] = 0.9
        return probabilities


@pytest.fixture
def scorer(tiny_model):
    scorer = Scorer(tiny_model)
    scorer.thresholds = {label: 0.5 for label in LABELS}
    return scorer


def test_occlusion_finds_the_word_the_model_reacts_to_in_one_batched_call(scorer):
    scorer.backend = WordReactingBackend(scorer.encoder.tokenizer, "周末")
    draft = "这个周末我们店里人很多，您改天再来吧"
    context = [{"role": "customer", "text": "周六能来店里看看吗"}]
    result = Hinter(scorer, evidence_words=16).hint(context, draft)  # room for one variant per word
    assert result["fired"] == ["overbearing"]
    assert scorer.backend.calls == 2  # the draft, then every occluded variant together
    model_spans = [span for span in result["labels"]["overbearing"]["evidence"] if "model" in span["source"]]
    assert [(span["start"], span["end"], span["text"]) for span in model_spans] == [(2, 4, "周末")]


def test_long_drafts_are_occluded_in_at_most_evidence_words_runs_within_what_the_model_reads(scorer):
    hinter = Hinter(scorer, evidence_words=5)
    draft = "您好，" + "这款产品的质量非常好，" * 40
    units = hinter.occlusion_units(draft)
    assert len(units) == 5
    assert all(start < end for start, end in units)
    assert all(a[1] <= b[0] for a, b in zip(units, units[1:]))
    read = scorer.encoder.config.max_target_tokens
    assert units[-1][1] <= read + 5 < len(draft)


def test_more_evidence_words_than_one_batch_is_refused(scorer):
    with pytest.raises(ValueError, match="one inference call"):
        Hinter(scorer, evidence_words=scorer.batch_size + 1)


def test_spans_merge_when_they_overlap_or_touch():
    text = "现在下单吧，业绩"
    spans = [(0, 2, "model"), (2, 4, "model"), (0, 4, "rules"), (6, 8, "rules")]
    assert merge_spans(text, spans) == [
        {"start": 0, "end": 4, "text": "现在下单", "source": ["model", "rules"]},
        {"start": 6, "end": 8, "text": "业绩", "source": ["rules"]},
    ]


def test_every_label_has_several_concrete_alternatives_per_situation():
    book = SuggestionBook()
    for label in LABELS:
        assert book.titles[label]
        situations = book.situations[label]
        assert len(situations) >= 4 and situations[-1].unconditional
        assert len({s.name for s in situations}) == len(situations)
        for situation in situations:
            assert len(situation.alternatives) >= 3 and all(len(text) >= 8 for text in situation.alternatives)


@pytest.mark.parametrize("label, context, draft, draft_ts, situation", [
    ("overbearing", [{"role": "customer", "text": "不用了，谢谢"}], "亲再看看嘛", None, "customer-declined"),
    ("overbearing", [{"role": "customer", "text": "有什么颜色"}], "美女多大了呀", None, "personal-questions"),
    ("vague-expertise", [{"role": "customer", "text": "孕妇能用吗，有副作用吗"}], "放心吧", None, "asked-about-risk"),
    ("cold-follow-up", [{"role": "customer", "text": "说好今天回电的呢"}], "等着吧", None, "waiting-on-promise"),
    ("cold-follow-up", [{"role": "customer", "text": "耳机坏了", "ts": "2026-05-01T10:00:00+08:00"}],
     "自己检查下", "2026-05-01T15:00:00+08:00", "long-wait"),
    ("cold-follow-up", [{"role": "customer", "text": "耳机坏了", "ts": "2026-05-01T10:00:00+08:00"}],
     "自己检查下", "2026-05-01T10:01:00+08:00", "after-sales-problem"),
    ("perfunctory", [{"role": "customer", "text": "在吗"}], "在", None, "general"),
])
def test_the_situation_follows_the_conversation(label, context, draft, draft_ts, situation):
    assert SuggestionBook().suggest(label, context, draft, draft_ts)["situation"] == situation


def test_a_suggestion_file_for_another_label_is_refused(tmp_path):
    for label in LABELS:
        (tmp_path / f"{label}.json").write_text(
            '{"label": "overbearing", "title": "t", "situations": [{"situation": "s", "advice": "a", '
            '"alternatives": ["x"]}]}', encoding="utf-8")
    with pytest.raises(ValueError, match="perfunctory.json"):
        SuggestionBook(tmp_path)
