"""`hengwen report`: scored JSONL -> one self-contained HTML file for a QA team (质检报告).

Two streaming passes over the scored file, so memory does not grow with it: the first counts labels, scores,
agents, teams and days and keeps the worst conversations; the second gathers each agent's typical evidence for
the label they are flagged for most. Turn text and evidence need the transcript that `hengwen score --keep-text`
writes. Personal data (phones, ID numbers, bank cards, e-mail) is masked in everything the page shows.
"""
import heapq
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from ..model.labels import LABELS
from .charts import histogram, horizontal_bars, line_chart
from .masking import mask_personal_data

TEMPLATE_DIR = Path(__file__).with_name("templates")
LABEL_NAMES = {"overbearing": "过度热情 / 越界", "perfunctory": "敷衍 / 冷漠 / 推诿",
               "vague-expertise": "专业含糊 / 夸大承诺", "cold-follow-up": "跟进冷淡 / 前热后冷"}
LABEL_COLOURS = {"overbearing": "#d9822b", "perfunctory": "#c23030", "vague-expertise": "#8f398f",
                 "cold-follow-up": "#2b6cb0"}
# What a coach says first about each label (from data/LABELS.md).
ADVICE = {"overbearing": "客户婉拒后停止推销；不打探与服务无关的隐私；不向客户转嫁考核与业绩压力。",
          "perfunctory": "正面回应客户的具体问题，给出处理办法或带交接的转接，不推诿、不甩模板。",
          "vague-expertise": "用事实和条件回答专业问题，讲清风险与限制，不做绝对化承诺。",
          "cold-follow-up": "售后与售前一样及时：按承诺时间回复，主动跟进进度，延误先致歉。"}
ROLE_NAMES = {"agent": "客服", "customer": "客户", "system": "系统"}
UNKNOWN = "（未填 unknown）"
SCORE_BINS = 10
# Flagged turns read per agent for typical evidence: enough for the common phrases, bounded time per agent.
EVIDENCE_TURNS_PER_AGENT = 200
DATE = re.compile(r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})")


def label_title(label):
    return f"{LABEL_NAMES[label]} ({label})"


@dataclass
class Tally:
    """Counts for a set of conversations: all of them, one agent's, one team's or one day's."""
    conversations: int = 0
    flagged: Counter = field(default_factory=Counter)
    with_any_label: int = 0
    qa_total: float = 0.0
    qa_count: int = 0
    passed: int = 0
    members: Counter = field(default_factory=Counter)

    def add(self, record, member=None):
        self.conversations += 1
        self.flagged.update(record["labels"])
        self.with_any_label += bool(record["labels"])
        if isinstance(record.get("qa_score"), (int, float)):
            self.qa_total += record["qa_score"]
            self.qa_count += 1
            self.passed += bool(record.get("passed"))
        if member is not None:
            self.members[member] += 1

    def rate(self, label=None):
        count = self.with_any_label if label is None else self.flagged[label]
        return count / self.conversations if self.conversations else 0.0

    @property
    def qa_mean(self):
        return self.qa_total / self.qa_count if self.qa_count else None

    @property
    def pass_rate(self):
        return self.passed / self.qa_count if self.qa_count else None

    def focus(self):
        """The label flagged in most of these conversations (ties: the order of LABELS), or None."""
        return max(LABELS, key=lambda label: (self.flagged[label], -LABELS.index(label))) if self.flagged else None


@dataclass
class ReportData:
    source: str
    fields: dict
    top: int
    records: int = 0
    unreadable: int = 0
    errors: int = 0
    error_reasons: Counter = field(default_factory=Counter)
    overall: Tally = field(default_factory=Tally)
    agent_turns: int = 0
    flagged_turns: Counter = field(default_factory=Counter)
    agents: dict = field(default_factory=lambda: defaultdict(Tally))
    teams: dict = field(default_factory=lambda: defaultdict(Tally))
    days: dict = field(default_factory=lambda: defaultdict(Tally))
    score_bins: list = field(default_factory=lambda: [[0, 0] for _ in range(SCORE_BINS)])  # [count, passed]
    worst: list = field(default_factory=list)
    with_text: int = 0
    timestamps: Counter = field(default_factory=Counter)  # "all" / "some" / "none"; older scored files lack it


def scored_records(path):
    """(line number, record or None when the line is not JSON) for each non-empty line of a scored file."""
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError:
                    yield number, None


def day_of(value):
    """2026-03-01 from '2026/3/1', '2026年3月1日', an ISO timestamp...; None when it holds no date."""
    match = DATE.search(str(value or ""))
    if not match:
        return None
    try:
        return date(*map(int, match.groups())).isoformat()
    except ValueError:
        return None


def conversation_fields(record, fields):
    """(agent, team, day) of a scored record: meta fields, the day falling back to its first timestamp."""
    meta = record.get("meta") or {}
    agent = str(meta.get(fields["agent"]) or UNKNOWN)
    team = str(meta.get(fields["team"]) or UNKNOWN)
    day = day_of(meta.get(fields["date"]))
    if day is None:
        stamps = [turn["ts"] for turn in record.get("transcript", []) if turn.get("ts")]
        day = day_of(stamps[0]) if stamps else None
    return agent, team, day


def badness(record):
    """Sort key of the worst conversations: lowest QA score, then most flagged turns, then highest score."""
    flagged = [turn for turn in record["turns"] if turn["labels"]]
    highest = max((turn["scores"][label] for turn in flagged for label in turn["labels"]), default=0.0)
    return -record.get("qa_score", 100), len(flagged), highest


def aggregate(path, fields, top):
    data = ReportData(source=str(path), fields=fields, top=top)
    for sequence, (_, record) in enumerate(scored_records(path)):
        data.records += 1
        if not isinstance(record, dict) or ("error" not in record and "turns" not in record):
            data.unreadable += 1
            continue
        if "error" in record:
            data.errors += 1
            data.error_reasons[str(record["error"]).split(";")[0]] += 1
            continue
        agent, team, day = conversation_fields(record, fields)
        data.overall.add(record)
        data.agents[agent].add(record, member=team)
        data.teams[team].add(record, member=agent)
        if day:
            data.days[day].add(record)
        data.agent_turns += len(record["turns"])
        data.flagged_turns.update(label for turn in record["turns"] for label in turn["labels"])
        data.with_text += "transcript" in record
        if record.get("timestamps"):
            data.timestamps[record["timestamps"]] += 1
        if isinstance(record.get("qa_score"), (int, float)):
            slot = data.score_bins[min(SCORE_BINS - 1, int(record["qa_score"] // (100 / SCORE_BINS)))]
            slot[0] += 1
            slot[1] += bool(record.get("passed"))
        if record["labels"]:
            entry = (badness(record), -sequence, record)
            if len(data.worst) < top:
                heapq.heappush(data.worst, entry)
            elif entry[:2] > data.worst[0][:2]:
                heapq.heapreplace(data.worst, entry)
    return data


def turn_evidence(record, turn):
    """Evidence spans of a flagged turn for its labels: the rule engine's, from the output or from the text."""
    if "evidence" in turn:
        evidence = turn["evidence"]
    elif "transcript" in record:
        from ..model.rules import judge_turn
        evidence = judge_turn(record["transcript"], turn["index"])[1]
    else:
        evidence = []
    return [span for span in evidence if span["label"] in turn["labels"]]


def segments(text, spans):
    """The masked text cut into (piece, label or None) with evidence spans marked; overlaps go to the first."""
    text = mask_personal_data(text)
    pieces, position = [], 0
    for span in sorted(spans, key=lambda s: (s["start"], -s["end"])):
        start, end = max(span["start"], position), min(span["end"], len(text))
        if start >= end:
            continue
        if start > position:
            pieces.append((text[position:start], None))
        pieces.append((text[start:end], span["label"]))
        position = end
    if position < len(text):
        pieces.append((text[position:], None))
    return pieces


def coaching(path, data):
    """Per agent with flags: the most frequent label, how often, its typical evidence and the clearest example."""
    focus = {agent: label for agent, tally in data.agents.items() if (label := tally.focus())}
    phrases, examples, examined = defaultdict(Counter), {}, Counter()
    if data.with_text:
        for _, record in scored_records(path):
            if not isinstance(record, dict) or "transcript" not in record or "turns" not in record:
                continue
            agent = conversation_fields(record, data.fields)[0]
            label = focus.get(agent)
            for turn in record["turns"]:
                if label not in turn["labels"] or examined[agent] >= EVIDENCE_TURNS_PER_AGENT:
                    continue
                examined[agent] += 1
                spans = [span for span in turn_evidence(record, turn) if span["label"] == label]
                phrases[agent].update(mask_personal_data(span["text"]) for span in spans if span["text"])
                score = turn["scores"][label]
                if agent not in examples or score > examples[agent][0]:
                    text = record["transcript"][turn["index"]]["text"]
                    examples[agent] = (score, record["id"], segments(text, spans))
    notes = []
    for agent, label in focus.items():
        tally = data.agents[agent]
        example = examples.get(agent)
        notes.append({"agent": agent, "team": tally.members.most_common(1)[0][0], "label": label,
                      "count": tally.flagged[label],
                      "conversations": tally.conversations, "share": tally.rate(label),
                      "phrases": phrases[agent].most_common(3), "advice": ADVICE[label],
                      "example": None if example is None else {"id": example[1], "segments": example[2]}})
    return sorted(notes, key=lambda note: (-note["count"], -note["share"], note["agent"]))


def table_rows(groups):
    """Agents, teams: most conversations first."""
    return [{"name": name, "tally": tally, "rates": [tally.rate(label) for label in LABELS]}
            for name, tally in sorted(groups.items(), key=lambda item: (-item[1].conversations, item[0]))]


def worst_views(data):
    views = []
    for _, _, record in sorted(data.worst, reverse=True):
        agent, team, day = conversation_fields(record, data.fields)
        scored = {turn["index"]: turn for turn in record["turns"]}
        turns = []
        if "transcript" in record:
            for index, turn in enumerate(record["transcript"]):
                flagged = scored.get(index, {}).get("labels", [])
                spans = turn_evidence(record, scored[index]) if flagged else []
                turns.append({"index": index, "role": ROLE_NAMES.get(turn["role"], turn["role"]),
                              "agent": turn["role"] == "agent", "labels": flagged,
                              "scores": scored[index]["scores"] if index in scored else {},
                              "segments": segments(turn["text"], spans)})
        else:
            turns = [{"index": turn["index"], "role": ROLE_NAMES["agent"], "agent": True, "labels": turn["labels"],
                      "scores": turn["scores"], "segments": []} for turn in record["turns"]]
        views.append({"id": record["id"], "agent": agent, "team": team, "day": day or "",
                      "qa_score": record.get("qa_score"), "labels": record["labels"], "turns": turns})
    return views


def charts(data):
    from markupsafe import Markup
    overall = horizontal_bars([(label_title(label), data.overall.rate(label), LABEL_COLOURS[label])
                               for label in LABELS], "各标签问题会话率 share of conversations flagged, per label")
    days = sorted(data.days)
    trend = line_chart(days, [(label_title(label), LABEL_COLOURS[label], [data.days[day].rate(label) for day in days])
                              for label in LABELS],
                       "按日期的问题会话率 share of conversations flagged, by day") if days else None
    width = 100 // SCORE_BINS
    names = [f"{low}-{low + width - 1}" if low + width < 100 else f"{low}-100" for low in range(0, 100, width)]
    colours = ["#2f9e44" if passed == count else "#c23030" if passed == 0 else "#e8a33d"
               for count, passed in data.score_bins]
    scores = histogram(list(zip(names, (count for count, _ in data.score_bins))),
                       "质检得分分布 distribution of QA scores", colours=colours) if data.overall.qa_count else None
    return {name: Markup(svg) if svg else None for name, svg in
            (("overall", overall), ("trend", trend), ("scores", scores))}


def _masked(value):
    from markupsafe import Markup
    return mask_personal_data(value) if isinstance(value, str) and not isinstance(value, Markup) else value


def render(data, notes, title):
    from jinja2 import Environment, FileSystemLoader, StrictUndefined
    # finalize masks every string the template prints, whatever its source (ids, agents, meta, evidence).
    environment = Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=True, finalize=_masked,
                              undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return environment.get_template("report.html").render(
        title=title, data=data, labels=LABELS, label_names=LABEL_NAMES, label_colours=LABEL_COLOURS,
        label_title=label_title, charts=charts(data), agents=table_rows(data.agents),
        teams=table_rows(data.teams), days=[(day, data.days[day]) for day in sorted(data.days)],
        notes=notes, worst=worst_views(data), generated=datetime.now().strftime("%Y-%m-%d %H:%M"),
        source=Path(data.source).name)


def write_report(scored_path, output_path, top=20, title="恒温质检报告 hengwen QA report", agent_field="agent",
                 team_field="team", date_field="date"):
    """Write the HTML report of a scored JSONL file; returns the figures it is built on."""
    data = aggregate(scored_path, {"agent": agent_field, "team": team_field, "date": date_field}, top)
    if data.records == 0:
        raise ValueError(f"{scored_path} holds no scored conversations")
    notes = coaching(scored_path, data)
    Path(output_path).write_text(render(data, notes, title), encoding="utf-8")
    return {"conversations": data.overall.conversations, "errors": data.errors, "unreadable": data.unreadable,
            "agents": len(data.agents), "teams": len(data.teams), "days": len(data.days),
            "with_text": data.with_text, "worst": len(data.worst)}
