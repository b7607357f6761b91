"""`hengwen data validate` and `hengwen data stats`: line-by-line problems and corpus statistics."""
import json
import statistics
from collections import Counter
from pathlib import Path

from ..model.labels import LABELS
from .schema import conversation_problems

# The markers ../shared/realism/compare.py counts, so that the data card's audit reads the same way.
POLITENESS_MARKERS = ("您好", "抱歉", "不好意思", "亲", "感谢", "谢谢", "请", "麻烦")
TEMPLATE_MARKERS = ("私信", "核实", "已反馈", "稍后", "反馈给", "记录", "请您", "为您")


def validate_file(path, annotated=True):
    """Every problem of a JSONL file as 'LINE: reason' strings, duplicate ids included."""
    problems, seen = [], {}
    with Path(path).open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                problems.append(f"{line_number}: bad JSON: {error.msg} at column {error.colno}")
                continue
            problems += [f"{line_number}: {p}" for p in conversation_problems(record, annotated)]
            conversation_id = record.get("id") if isinstance(record, dict) else None
            if conversation_id is not None:
                if conversation_id in seen:
                    problems.append(f"{line_number}: duplicate id {conversation_id!r} (first on line "
                                    f"{seen[conversation_id]})")
                seen.setdefault(conversation_id, line_number)
    return problems


def read_jsonl(paths):
    for path in paths:
        with Path(path).open(encoding="utf-8") as handle:
            yield from (json.loads(line) for line in handle if line.strip())


def surface(texts):
    lengths = sorted(len(t) for t in texts)
    if not lengths:
        return {"turns": 0}
    share = lambda predicate: round(sum(1 for t in texts if predicate(t)) / len(texts), 3)  # noqa: E731
    return {"turns": len(texts), "median_length": statistics.median(lengths),
            "share_le_15_chars": share(lambda t: len(t) <= 15),
            "share_polite": share(lambda t: any(m in t for m in POLITENESS_MARKERS)),
            "share_template": share(lambda t: any(m in t for m in TEMPLATE_MARKERS)),
            "share_question": share(lambda t: "?" in t or "？" in t)}


def corpus_stats(paths):
    conversations = list(read_jsonl(paths))
    by_domain, by_script, by_channel = Counter(), Counter(), Counter()
    conversation_labels, turn_labels = Counter(), Counter()
    timestamped = clean_conversations = multi_label = agent_turns = 0
    texts = {"clean": [], **{label: [] for label in LABELS}}
    for conversation in conversations:
        meta = conversation.get("meta") or {}
        by_domain[meta.get("domain", "unknown")] += 1
        by_script[meta.get("script", "unknown")] += 1
        by_channel[meta.get("channel", "unknown")] += 1
        timestamped += all(turn.get("ts") for turn in conversation["turns"])
        present = set()
        for turn in conversation["turns"]:
            if turn.get("role") != "agent":
                continue
            agent_turns += 1
            labels = turn.get("labels") or []
            present.update(labels)
            turn_labels.update(labels)
            for group in labels or ["clean"]:
                texts[group].append(turn["text"])
        conversation_labels.update(present)
        clean_conversations += not present
        multi_label += len(present) >= 2
    n = len(conversations) or 1
    return {
        "conversations": len(conversations), "agent_turns": agent_turns,
        "clean_agent_turns": len(texts["clean"]),
        "turns_per_label": {label: turn_labels[label] for label in LABELS},
        "conversations_per_label": {label: conversation_labels[label] for label in LABELS},
        "share_conversations_clean": round(clean_conversations / n, 3),
        "share_conversations_two_plus_labels": round(multi_label / n, 3),
        "share_timestamped": round(timestamped / n, 3),
        "scripts": dict(by_script.most_common()), "channels": dict(by_channel.most_common()),
        "domains": dict(by_domain.most_common()),
        "surface": {group: surface(group_texts) for group, group_texts in texts.items()},
    }


def format_stats(stats):
    lines = [f"conversations {stats['conversations']}, agent turns {stats['agent_turns']} "
             f"(clean {stats['clean_agent_turns']})",
             f"clean conversations {stats['share_conversations_clean']:.1%}, two or more labels "
             f"{stats['share_conversations_two_plus_labels']:.1%}, timestamped {stats['share_timestamped']:.1%}",
             "label             turns  conversations"]
    lines += [f"{label:16s} {stats['turns_per_label'][label]:6d} {stats['conversations_per_label'][label]:8d}"
              for label in LABELS]
    lines.append("scripts: " + ", ".join(f"{k} {v}" for k, v in stats["scripts"].items()))
    lines.append("channels: " + ", ".join(f"{k} {v}" for k, v in stats["channels"].items()))
    lines.append("domains: " + ", ".join(f"{k} {v}" for k, v in stats["domains"].items()))
    lines.append("surface          turns  median  <=15  polite  template  question")
    for group, s in stats["surface"].items():
        if s["turns"]:
            lines.append(f"{group:16s} {s['turns']:6d} {s['median_length']:7.1f} {s['share_le_15_chars']:5.2f} "
                         f"{s['share_polite']:7.2f} {s['share_template']:9.2f} {s['share_question']:9.2f}")
    return "\n".join(lines)
