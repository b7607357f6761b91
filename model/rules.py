"""The rule baseline: jieba words, per-label lexicons (lexicons/rules.json) and a few context rules.

It shows what keyword rules, the way most QA products work today, can and cannot find, and it supplies
evidence spans (character offsets in the turn's own text). It is a baseline, not the product's judge.
"""
import json
import logging
from functools import lru_cache
from pathlib import Path

from ..data.schema import ConversationError, check_conversation, parse_ts
from .labels import LABELS

LEXICON_PATH = Path(__file__).with_name("lexicons") / "rules.json"
FIRED, WEAK_FIRED, QUIET = 0.9, 0.7, 0.05
LONG_GAP_SECONDS = 2 * 3600


@lru_cache(maxsize=1)
def lexicons():
    return json.loads(LEXICON_PATH.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _tools():
    import jieba
    from opencc import OpenCC
    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba, OpenCC("t2s")


def to_simplified(text):
    """Simplified text with the same character offsets (falls back to the input if conversion changes length)."""
    converted = _tools()[1].convert(text)
    return converted if len(converted) == len(text) else text


def find_phrases(text, phrases):
    """Spans (start, end, phrase) of lexicon phrases in `text`; one- and two-character phrases must be whole
    jieba words, so that 亲 does not fire inside 亲自."""
    jieba = _tools()[0]
    simplified = to_simplified(text)
    boundaries = None
    spans = []
    for phrase in phrases:
        start = simplified.find(phrase)
        while start >= 0:
            end = start + len(phrase)
            if len(phrase) <= 2:
                if boundaries is None:
                    words = list(jieba.tokenize(simplified))
                    boundaries = ({s for _, s, _ in words}, {e for _, _, e in words})
                whole = start in boundaries[0] and end in boundaries[1]
            else:
                whole = True
            if whole:
                spans.append((start, end, phrase))
            start = simplified.find(phrase, start + 1)
    return sorted(set(spans))


def _any(texts, phrases):
    return any(p in to_simplified(t) for t in texts for p in phrases)


def _gap_seconds(turns, index):
    """Seconds from the latest earlier customer message to turns[index], or None without timestamps."""
    if not turns[index].get("ts"):
        return None
    for earlier in range(index - 1, -1, -1):
        if turns[earlier].get("role") == "customer" and turns[earlier].get("ts"):
            return (parse_ts(turns[index]["ts"]) - parse_ts(turns[earlier]["ts"])).total_seconds()
    return None


def judge_turn(turns, index):
    """Scores and evidence spans of the agent turn turns[index] given the turns before it."""
    lex = lexicons()
    text = turns[index]["text"]
    before = turns[:index]
    customer_before = [t["text"] for t in before if t.get("role") == "customer"]
    last_customer = customer_before[-1:] if customer_before else []
    scores = {label: QUIET for label in LABELS}
    evidence = []

    def fire(label, spans, score=FIRED):
        scores[label] = max(scores[label], score)
        evidence.extend({"label": label, "start": s, "end": e, "text": text[s:e]} for s, e, _ in spans)

    declined = _any(customer_before, lex["customer_declined"])
    if spans := find_phrases(text, lex["overbearing"]["phrases"]):
        fire("overbearing", spans)
    elif declined and (spans := find_phrases(text, lex["overbearing"]["weak"])):
        fire("overbearing", spans, WEAK_FIRED)

    if spans := find_phrases(text, lex["perfunctory"]["phrases"]):
        fire("perfunctory", spans)
    elif len(text) <= 6 and _any(last_customer, lex["customer_question"]) and (
            spans := find_phrases(text, lex["perfunctory"]["weak"])):
        fire("perfunctory", spans, WEAK_FIRED)

    asked = _any(customer_before[-2:], lex["customer_question"])
    if asked and (spans := find_phrases(text, lex["vague-expertise"]["phrases"])):
        fire("vague-expertise", spans)

    cold = lex["cold-follow-up"]
    if _any(customer_before, cold["aftersales"]):
        gap = _gap_seconds(turns, index)
        if spans := find_phrases(text, cold["phrases"]):
            fire("cold-follow-up", spans)
        elif scores["perfunctory"] >= WEAK_FIRED:
            fire("cold-follow-up", [(e["start"], e["end"], "") for e in evidence if e["label"] == "perfunctory"],
                 scores["perfunctory"])
        elif gap is not None and gap >= LONG_GAP_SECONDS and not find_phrases(text, cold["apology"]):
            fire("cold-follow-up", [], WEAK_FIRED)
    return scores, evidence


class RuleScorer:
    """Same interface and output shape as serving.runtime.Scorer, with `evidence` on every turn."""
    thresholds = {label: 0.5 for label in LABELS}

    def decide(self, scores):
        return [label for label in LABELS if scores[label] >= self.thresholds[label]]

    def score_records(self, records):
        from ..serving.runtime import conversation_record, error_record
        outputs = []
        for record in records:
            try:
                check_conversation(record)
            except ConversationError as error:
                outputs.append(error_record(record, str(error)))
                continue
            turns = []
            for index, turn in enumerate(record["turns"]):
                if turn["role"] == "agent":
                    scores, evidence = judge_turn(record["turns"], index)
                    turns.append({"index": index, "labels": self.decide(scores), "scores": scores,
                                  "evidence": evidence})
            outputs.append(conversation_record(record, turns, self.decide))
        return outputs
