"""Hints for a draft agent reply: per-label scores, the draft's evidence spans, and what to do instead.

Evidence for a fired label merges two sources into one list of character spans of the draft: occlusion (drop
one jieba word of the draft at a time and measure how far the label's score falls; every variant goes through
the model in one batch) and the rule baseline's lexicon phrases for the label. Suggestions are data
(suggestions/<label>.json): per label, situations tried in order, each with advice and concrete alternatives;
a traditional-character draft gets them converted with OpenCC s2twp.
"""
import json
import logging
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..data.schema import parse_ts
from ..model.labels import LABELS
from ..model.rules import RuleScorer, find_phrases, judge_turn, lexicons, to_simplified

SUGGESTIONS_DIR = Path(__file__).with_name("suggestions")
# Situations read what the customer said lately, not at the start of a long conversation.
RECENT_CUSTOMER_TURNS = 3
# A word is evidence when dropping it costs at least half of the largest drop for the label and more than
# the runtime's rounding (scores carry 4 decimals); a few words per label keep the highlight readable.
RELATIVE_DROP = 0.5
MIN_DROP = 0.001
MAX_MODEL_SPANS_PER_LABEL = 3
DEFAULT_EVIDENCE_WORDS = 8


@lru_cache(maxsize=1)
def _jieba():
    import jieba
    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


@lru_cache(maxsize=1)
def _to_traditional():
    from opencc import OpenCC
    return OpenCC("s2twp").convert


# The pure-Python converter costs milliseconds a call, and while an agent types the same context turns come
# back with every request.
simplified = lru_cache(maxsize=4096)(to_simplified)


def is_traditional(text):
    """True when converting to simplified characters changes the text."""
    return simplified(text) != text


def _mentions(texts, phrases):
    return any(phrase in simplified(text) for text in texts for phrase in phrases)


@dataclass(frozen=True)
class Situation:
    name: str
    advice: str
    alternatives: tuple
    customer_said: tuple = ()
    draft_says: tuple = ()
    min_reply_gap_seconds: float = 0

    @property
    def unconditional(self):
        return not (self.customer_said or self.draft_says or self.min_reply_gap_seconds)

    def applies(self, customer_texts, draft, reply_gap):
        if self.customer_said and not _mentions(customer_texts, self.customer_said):
            return False
        if self.draft_says and not _mentions([draft], self.draft_says):
            return False
        if self.min_reply_gap_seconds and (reply_gap is None or reply_gap < self.min_reply_gap_seconds):
            return False
        return True


def _situation(values):
    when = values.get("when", {})
    unknown = set(when) - {"customer_said", "draft_says", "min_reply_gap_seconds"}
    if unknown:
        raise ValueError(f"situation {values['situation']!r}: unknown conditions {sorted(unknown)}")
    return Situation(values["situation"], values["advice"], tuple(values["alternatives"]),
                     tuple(when.get("customer_said", ())), tuple(when.get("draft_says", ())),
                     when.get("min_reply_gap_seconds", 0))


class SuggestionBook:
    """The suggestions of suggestions/<label>.json: a title per label and situations tried in order."""

    def __init__(self, folder=SUGGESTIONS_DIR):
        self.titles, self.situations = {}, {}
        for label in LABELS:
            data = json.loads((Path(folder) / f"{label}.json").read_text(encoding="utf-8"))
            if data.get("label") != label:
                raise ValueError(f"{label}.json: holds suggestions for {data.get('label')!r}")
            situations = [_situation(values) for values in data["situations"]]
            if not situations or not situations[-1].unconditional:
                raise ValueError(f"{label}.json: the last situation must have no conditions (the fallback)")
            self.titles[label] = data["title"]
            self.situations[label] = situations

    def title(self, label, traditional=False):
        return _to_traditional()(self.titles[label]) if traditional else self.titles[label]

    def suggest(self, label, context, draft, draft_ts=None, traditional=False):
        """{situation, advice, alternatives} for a fired label, in the draft's script."""
        customer_texts = [t["text"] for t in context if t.get("role") == "customer"][-RECENT_CUSTOMER_TURNS:]
        gap = reply_gap_seconds(context, draft_ts)
        situation = next(s for s in self.situations[label] if s.applies(customer_texts, draft, gap))
        convert = _to_traditional() if traditional else str
        return {"situation": situation.name, "advice": convert(situation.advice),
                "alternatives": [convert(text) for text in situation.alternatives]}


def reply_gap_seconds(context, draft_ts):
    """Seconds from the latest customer message with a timestamp to the draft, or None."""
    if not draft_ts:
        return None
    for turn in reversed(context):
        if turn.get("role") == "customer" and turn.get("ts"):
            return (parse_ts(draft_ts) - parse_ts(turn["ts"])).total_seconds()
    return None


def merge_spans(text, spans):
    """Overlapping or touching (start, end, source) spans become one {start, end, text, source} each."""
    merged = []
    for start, end, source in sorted(spans):
        if merged and start <= merged[-1]["end"]:
            merged[-1]["end"] = max(merged[-1]["end"], end)
            merged[-1]["source"].add(source)
        else:
            merged.append({"start": start, "end": end, "source": {source}})
    return [{"start": span["start"], "end": span["end"], "text": text[span["start"]:span["end"]],
             "source": sorted(span["source"])} for span in merged]


def _lexicon_phrases(label):
    entry = lexicons()[label]
    return entry["phrases"] + entry.get("weak", [])


def _is_wordlike(word):
    return any(unicodedata.category(char)[0] in "LN" for char in word)


class Hinter:
    """Hints for drafts with one scorer: the model runtime (Scorer) or the rule baseline (RuleScorer)."""

    def __init__(self, scorer, book=None, evidence_words=DEFAULT_EVIDENCE_WORDS):
        self.scorer = scorer
        self.book = book or SuggestionBook()
        self.uses_rules = isinstance(scorer, RuleScorer)
        if not self.uses_rules and evidence_words > scorer.batch_size:
            raise ValueError(f"evidence_words {evidence_words} exceeds the scorer's batch size "
                             f"{scorer.batch_size}: the occluded variants must fit one inference call")
        self.evidence_words = evidence_words

    def warm_up(self):
        """Load the word segmenter and the converter and run one inference, so the first request is not slow."""
        _jieba()
        _to_traditional()
        self.hint([{"role": "customer", "text": "你好"}], "您好，请问有什么可以帮您")

    def hint(self, context, draft, draft_ts=None):
        """{labels: {label: {score, threshold, fired, title, suggestion, evidence}}, fired, script}."""
        draft_turn = {"text": draft} | ({"ts": draft_ts} if draft_ts else {})
        if self.uses_rules:
            scores, rule_evidence = judge_turn(list(context) + [{"role": "agent", **draft_turn}], len(context))
            fired = self.scorer.decide(scores)
            evidence = {label: merge_spans(draft, [(e["start"], e["end"], "rules") for e in rule_evidence
                                                   if e["label"] == label]) for label in fired}
        else:
            scores = self.scorer.score_draft(context, draft_turn)
            fired = self.scorer.decide(scores)
            evidence = self._model_evidence(context, draft_turn, scores, fired) if fired else {}
        traditional = is_traditional(draft)
        labels = {}
        for label in LABELS:
            labels[label] = {
                "score": scores[label], "threshold": self.scorer.thresholds[label], "fired": label in fired,
                "title": self.book.title(label, traditional),
                "suggestion": self.book.suggest(label, context, draft, draft_ts, traditional)
                if label in fired else None,
                "evidence": evidence.get(label, []),
            }
        return {"labels": labels, "fired": fired, "script": "traditional" if traditional else "simplified"}

    def _model_evidence(self, context, draft_turn, scores, fired):
        draft = draft_turn["text"]
        units = self.occlusion_units(draft)
        drops = np.zeros((0, len(LABELS)))
        if units:
            encode = self.scorer.encoder.encode
            features = [encode(context, draft=draft_turn | {"text": draft[:start] + draft[end:]})[1][0]
                        for start, end in units]
            base = np.array([scores[label] for label in LABELS])
            timed = [bool(draft_turn.get("ts"))] * len(features)
            drops = base - self.scorer.predict_features(features, timed=timed)
        phrases = {label: set(_lexicon_phrases(label)) for label in fired}
        found = find_phrases(draft, sorted(set().union(*phrases.values())))  # one segmentation for all labels
        evidence = {}
        for label in fired:
            column = drops[:, LABELS.index(label)]
            spans = [(start, end, "rules") for start, end, phrase in found if phrase in phrases[label]]
            if len(column) and column.max() > MIN_DROP:
                keep = max(MIN_DROP, RELATIVE_DROP * column.max())
                strongest = [i for i in np.argsort(-column)[:MAX_MODEL_SPANS_PER_LABEL] if column[i] >= keep]
                spans += [(*units[i], "model") for i in strongest]
            evidence[label] = merge_spans(draft, spans)
        return evidence

    def occlusion_units(self, draft):
        """(start, end) character spans to drop one at a time: the jieba words the model reads, grouped into
        at most `evidence_words` runs of neighbouring words so that all variants fit one batch."""
        read = self._characters_read(draft)
        words = [(start, end) for word, start, end in _jieba().tokenize(simplified(draft[:read]))
                 if _is_wordlike(word)]
        if len(words) <= self.evidence_words:
            return words
        groups = np.array_split(np.arange(len(words)), self.evidence_words)
        return [(words[group[0]][0], words[group[-1]][1]) for group in groups]

    def _characters_read(self, draft):
        """How many leading characters of the draft fit the encoder's target budget (the rest is cut)."""
        limit = self.scorer.encoder.config.max_target_tokens
        offsets = self.scorer.encoder.tokenizer(draft, add_special_tokens=False,
                                                return_offsets_mapping=True)["offset_mapping"]
        return offsets[limit - 1][1] if len(offsets) > limit else len(draft)
