"""QA scorecards (质检评分卡) as QA teams keep them: a weight per label summing to 100, fatal labels (致命项)
that zero the score, and a pass mark (合格线). The file is YAML or JSON; scorecards/default.yaml ships.

A conversation starts at 100 and loses the weight of every label flagged in it, once per label; a fatal label
sets it to 0; it passes when its score reaches the pass mark.
"""
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path

from ..model.labels import LABELS

DEFAULT_SCORECARD = Path(__file__).with_name("scorecards") / "default.yaml"
FIELDS = ("name", "weights", "fatal", "pass_mark")


class ScorecardError(ValueError):
    """A scorecard file that cannot be used; the message lists every problem."""


@dataclass(frozen=True)
class Scorecard:
    name: str
    weights: dict
    fatal: tuple
    pass_mark: float

    def assess(self, labels):
        """(qa_score, passed) of a conversation flagged with `labels`."""
        if any(label in self.fatal for label in labels):
            score = 0.0
        else:
            score = max(0.0, 100.0 - sum(self.weights[label] for label in set(labels)))
        score = round(score, 2)
        return (int(score) if score.is_integer() else score), score >= self.pass_mark

    def apply(self, record):
        """Adds qa_score and passed to a scored conversation record."""
        record["qa_score"], record["passed"] = self.assess(record["labels"])
        return record


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _unknown_label(label):
    close = get_close_matches(str(label), LABELS, n=1)
    return f"unknown label {label!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def parse_scorecard(data, source="scorecard"):
    """A Scorecard from parsed YAML/JSON, or ScorecardError naming every problem."""
    if not isinstance(data, dict):
        raise ScorecardError(f"{source}: a scorecard is a mapping with {', '.join(FIELDS)}")
    problems = [f"unknown field {key!r} (fields: {', '.join(FIELDS)})" for key in data if key not in FIELDS]
    weights = data.get("weights")
    if not isinstance(weights, dict):
        problems.append("weights must map every label to its weight: " + ", ".join(LABELS))
        weights = {}
    problems += [f"weights: {_unknown_label(label)}" for label in weights if label not in LABELS]
    problems += [f"weights: no weight for {label!r}" for label in LABELS if label not in weights]
    bad = {label: value for label, value in weights.items() if not _is_number(value) or value < 0}
    problems += [f"weights: {label} must be a number of points >= 0, got {value!r}" for label, value in bad.items()]
    if not bad and weights and abs(sum(weights.values()) - 100) > 1e-6:
        problems.append(f"weights must sum to 100, they sum to {sum(weights.values()):g}")
    fatal = data.get("fatal") or []
    if not isinstance(fatal, list):
        problems.append(f"fatal must be a list of labels, got {fatal!r}")
        fatal = []
    problems += [f"fatal: {_unknown_label(label)}" for label in fatal if label not in LABELS]
    pass_mark = data.get("pass_mark")
    if not _is_number(pass_mark) or not 0 <= pass_mark <= 100:
        problems.append(f"pass_mark must be a number from 0 to 100, got {pass_mark!r}")
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str):
        problems.append(f"name must be text, got {name!r}")
    if problems:
        raise ScorecardError(f"{source}: " + "; ".join(problems))
    return Scorecard(name=name, weights={label: weights[label] for label in LABELS}, fatal=tuple(fatal),
                     pass_mark=pass_mark)


def load_scorecard(path=None):
    """The scorecard in a YAML or JSON file (JSON is YAML too); the shipped default when path is None."""
    import yaml
    path = Path(path) if path else DEFAULT_SCORECARD
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ScorecardError(f"{path}: not valid YAML or JSON: {error}") from None
    return parse_scorecard(data, source=str(path))
