"""Turn-in-context encoding: how one agent turn and the conversation before it become model input.

Layout (token level, see model/README.md):

    [CLS] opening exchange （略） recent turns, newest last [SEP] gap marker + target agent turn [SEP]
        (following turns [SEP], only when `following_turns` > 0)

Every context turn is written `客：text`, `服：text` or `系：text` (customer, agent, system). When timestamps are
present, a turn that comes after a noticeable pause is preceded by a gap marker such as `〔隔4小时〕`, and the
target turn always carries the gap to the message before it, so that a reply four hours late looks different
from the same words at once. Long contexts are cut from the left, but the opening exchange (pre-sale warmth that
`cold-follow-up` is judged against) is kept when `keep_opening_turns` > 0. The target turn is never dropped.

A transcript scored after the fact also shows how the conversation went on ("说好的回电呢？", the agent's own
"抱歉回复晚了"); with `following_turns` > 0 the turns after the target are read too, in a third segment. A live
draft has nothing after it, so it is encoded as the last turn of a transcript is. Off in the shipped recipe: with
two following turns the model did worse on held-out writers and on real sessions (training/README.md).
"""
from dataclasses import asdict, dataclass, fields

from ..data.schema import parse_ts

ROLE_PREFIX = {"customer": "客：", "agent": "服：", "system": "系："}
ELLIPSIS = "（略）"  # "……" is not in the bert-base-chinese vocabulary


@dataclass(frozen=True)
class EncodingConfig:
    max_length: int = 128
    """Total tokens per example, special tokens included."""
    max_target_tokens: int = 64
    """The target turn is cut to this many tokens (right side) so that some context always fits."""
    keep_opening_turns: int = 2
    """How many turns from the start of the conversation are kept when the middle is cut (0: none)."""
    opening_tokens: int = 24
    """Token budget for those opening turns."""
    max_context_turns: int = 12
    """At most this many turns before the target are read (then the opening, if kept)."""
    gap_markers: bool = True
    """Write reply-gap markers computed from `ts`."""
    following_turns: int = 0
    """How many turns after the target are read (0: none, as a live draft sees)."""
    following_tokens: int = 32
    """Token budget for those following turns (cut on the right: the nearest reaction is kept)."""
    lowercase: bool = False
    """Lower-case Latin letters before tokenizing. The bert-base-chinese vocabulary has lower-case word pieces
    only and its tokenizer does not lower-case, so "iPhone", "OK" or "SF1234567890" would each become [UNK].
    Off by default so that models trained before this setting existed keep reading text as they were trained."""

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown encoding settings: {sorted(unknown)}")
        return cls(**values)

    def to_dict(self):
        return asdict(self)


def gap_words(seconds):
    """A reply gap in the words a reader would use; None when it is too short to matter."""
    if seconds < 120:
        return None
    if seconds < 1800:
        return f"隔{round(seconds / 60)}分钟"
    if seconds < 86400:
        return f"隔{max(1, round(seconds / 3600))}小时"
    return f"隔{round(seconds / 86400)}天"


def _gaps(turns, use_markers):
    """Per turn, the marker for the pause before it (or None)."""
    markers = [None] * len(turns)
    if not use_markers:
        return markers
    previous = None
    for index, turn in enumerate(turns):
        stamp = turn.get("ts")
        current = parse_ts(stamp) if stamp else None
        if current is not None and previous is not None:
            words = gap_words((current - previous).total_seconds())
            markers[index] = f"〔{words}〕" if words else None
        if current is not None:
            previous = current
    return markers


class TurnEncoder:
    """Encodes the agent turns of conversations for a BERT-style tokenizer (pair input with token types)."""

    def __init__(self, tokenizer, config: EncodingConfig):
        self.tokenizer = tokenizer
        self.config = config
        self._ellipsis_ids = tokenizer.encode(ELLIPSIS, add_special_tokens=False)

    def _piece_ids(self, texts):
        if self.config.lowercase:
            texts = [text.lower() for text in texts]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    def encode(self, turns, targets=None, draft=None):
        """Encode turns[i] for every i in `targets` (default: every agent turn).

        With `draft` (a dict with `text` and optional `ts`), encode it as a new agent turn after all `turns`
        instead; the return value then holds that single example. Returns (target indices, features) where
        features is a list of dicts with input_ids, token_type_ids, attention_mask.
        """
        config = self.config
        if draft is not None:
            turns = list(turns) + [{"role": "agent", **draft}]
            targets = [len(turns) - 1]
        elif targets is None:
            targets = [i for i, turn in enumerate(turns) if turn.get("role") == "agent"]
        markers = _gaps(turns, config.gap_markers)
        context_pieces = self._piece_ids([(markers[i] or "") + ROLE_PREFIX.get(t.get("role"), "") + t["text"]
                                          for i, t in enumerate(turns)])
        target_pieces = self._piece_ids([(markers[i] or "〔即时〕" if config.gap_markers and turns[i].get("ts")
                                          else "") + turns[i]["text"] for i in targets])
        features = []
        for target, target_ids in zip(targets, target_pieces):
            target_ids = target_ids[:config.max_target_tokens]
            following_ids = self._following_ids(context_pieces, target)
            budget = config.max_length - len(target_ids) - 3 - (len(following_ids) + 1 if following_ids else 0)
            features.append(self._assemble(self._context_ids(context_pieces, target, budget), target_ids,
                                           following_ids))
        return targets, features

    def _following_ids(self, pieces, target):
        following = pieces[target + 1:target + 1 + self.config.following_turns]
        return [token for piece in following for token in piece][:self.config.following_tokens]

    def _context_ids(self, pieces, target, budget):
        config = self.config
        if budget <= 0:
            return []
        lowest = max(0, target - config.max_context_turns)
        reserve = min(config.opening_tokens, budget // 3) if config.keep_opening_turns else 0
        recent_start, used = target, 0
        for index in range(target - 1, lowest - 1, -1):
            if used + len(pieces[index]) > budget - reserve:
                break
            used += len(pieces[index])
            recent_start = index
        opening_count = min(config.keep_opening_turns, recent_start)
        context = [token for piece in pieces[:opening_count] for token in piece][:reserve]
        if recent_start > opening_count:
            # Fill what is left with the end of the turn that did not fit: it is the nearest context.
            room = budget - len(context) - used - len(self._ellipsis_ids)
            context += self._ellipsis_ids
            if room > 0 and recent_start - 1 >= max(opening_count, lowest):
                context += pieces[recent_start - 1][-room:]
        for piece in pieces[recent_start:target]:
            context.extend(piece)
        return context[-budget:]

    def _assemble(self, context_ids, target_ids, following_ids):
        tokenizer = self.tokenizer
        input_ids = [tokenizer.cls_token_id] + context_ids + [tokenizer.sep_token_id] + target_ids + [tokenizer.sep_token_id]
        token_type_ids = [0] * (len(context_ids) + 2) + [1] * (len(target_ids) + 1)
        if following_ids:
            # Token type 0 again: BERT has two segment types, and the target must stand apart from both sides.
            input_ids += following_ids + [tokenizer.sep_token_id]
            token_type_ids += [0] * (len(following_ids) + 1)
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": [1] * len(input_ids)}

    def describe(self, turns, target):
        """The encoded example as text, for model/README.md and debugging."""
        _, (feature,) = self.encode(turns, targets=[target])
        return self.tokenizer.decode(feature["input_ids"])
