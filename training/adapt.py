"""`hengwen adapt`: learn from a team's unlabelled exports (domain-adaptive MLM, fine-tuning, self-training).

Every step is a folder under the output directory, finished when its `step.json` is written; a re-run whose
settings and inputs give the same fingerprint reuses the folder instead of computing it again:

    baseline/          only without a starting model: `train` from the training config's base encoder
    before/            the starting model, evaluated (nothing is trained)
    mlm/               masked-LM training of the starting model's encoder on the unlabelled agent turns, jieba
                       whole-word masking; saved as the classifier with its label head and thresholds kept
    finetune/          `train` again on the annotated corpus, initialised from mlm/
    control/           the same fine-tuning from the starting model, so that what MLM contributed can be told
                       apart from what fine-tuning once more contributed
    self-training-N/   confident unlabelled turns pseudo-labelled by the latest model are added to the annotated
                       training data and the model is retrained from the fine-tuning starting point

Every step's model is evaluated the same way (annotated dev and test metrics at the model's own thresholds,
and the flag rates and score quantiles on the unlabelled set) and everything lands in `adapt_report.json`.
The annotated test split is reported and never read for a choice. Settings and safeguards: training/ADAPT.md.
"""
import dataclasses
import hashlib
import json
import logging
import math
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ..data.readers import TABLE_FORMATS, input_format_of, parse_utc_offset, read_conversations
from ..data.schema import ConversationError, check_conversation
from ..model.classifier import ModelSettings, set_hengwen_settings
from ..model.encoding import TurnEncoder
from ..model.labels import LABELS
from .args import TrainingConfig
from .dataset import data_files, file_sha256, gold_matrix, read_annotated

DEFAULT_CONFIG = Path(__file__).with_name("configs") / "adapt.json"
QUANTILES = (0.5, 0.9, 0.99)
TEST_POLICY = ("test metrics are reported only: thresholds, epochs, pseudo-label bounds and best_by_dev are "
               "chosen on dev or fixed in the config, never on test")


@dataclass
class UnlabeledArguments:
    files: list = field(default_factory=list)
    """Unlabelled conversations, JSONL or long-form CSV (what `hengwen score` reads); `--unlabeled` replaces the
    list. Unreadable and invalid conversations are skipped and counted."""
    input_format: str = ""
    """`jsonl`, `csv` or `xlsx` for every file; empty: from each file's extension."""
    columns: dict = field(default_factory=dict)
    """Table column names per field, as `hengwen score` takes them ({"id": "会话ID", "role": "发送方"});
    applied to the CSV and Excel files of the list."""
    timezone: str = ""
    """UTC offset (`+08:00`) given to table timestamps that carry none; empty: such timestamps are refused."""
    max_conversations: int = 0
    """Use only the first N usable conversations (0: all); for smoke runs."""
    expected_flag_rates: dict = field(default_factory=dict)
    """Optional {label: share of agent turns} that annotators found on a sample of the same source. The report
    then gives each model's flag rate as a multiple of it; reported only, never used for a choice."""


@dataclass
class MlmArguments:
    enabled: bool = True
    max_steps: int = 600
    """Optimizer steps at most: the cap on the run's length."""
    epochs: float = 3.0
    """Passes over the unlabelled agent turns, when they end before `max_steps`."""
    batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    mask_probability: float = 0.15
    """Share of jieba words chosen for masking; every token of a chosen word becomes [MASK]."""
    head_only_steps: int = 100
    """The first steps train only the new masked-LM head, encoder frozen: a random head's gradients would
    otherwise shake the encoder the classifier depends on before the head predicts anything."""
    freeze_word_embeddings: bool = True
    """Keep the word embeddings fixed, as fine-tuning does by default (the MLM output layer is tied to them)."""
    heldout_share: float = 0.05
    """Share of unlabelled conversations kept out of MLM training; the masked-LM loss on them is reported
    before and after the encoder is trained (at least one conversation when above 0)."""
    seed: int = 13
    log_every: int = 25
    """Steps between loss lines in the log and the step's history."""


@dataclass
class FinetuneArguments:
    enabled: bool = True
    training_config: str = "training/configs/m3e-small.json"
    """The `hengwen train` config: annotated data (train, dev, test) and fine-tuning settings. A relative path
    is read from the working directory, else next to the adapt config. Its encoding and base-model name are
    replaced by the starting model's; `model.init_from` and `train.output_dir` are set by each step."""
    overrides: dict = field(default_factory=dict)
    """`section.field` overrides of that config, e.g. {"train.epochs": 1}; on the command line
    `--set finetune.overrides.train.epochs=1`."""
    control: bool = True
    """With MLM on, also fine-tune the starting model without MLM (control/), so that the report can separate
    MLM's contribution from fine-tuning once more."""


@dataclass
class SelfTrainingArguments:
    iterations: int = 1
    """Rounds of pseudo-labelling and retraining (0: off). Each round labels with the previous round's model."""
    positive_min: float = 0.9
    """A label is pseudo-positive on a turn whose probability for it is at least this."""
    negative_max: float = 0.05
    """... and pseudo-negative at most this. A turn with any probability in between is not confident."""
    max_turns_per_label: int = 100
    """Pseudo-positive turns per label at most, so that no label floods the training data."""
    max_clean_turns: int = 1000
    """Pseudo-clean turns (every label pseudo-negative) at most."""
    seed: int = 13
    """Order in which conversations fill the caps."""


@dataclass
class AdaptConfig:
    from_model: str = ""
    """The hengwen model to adapt: a training output folder with its torch weights (`--from`). Empty: fine-tune
    the training config's base encoder first (baseline/) and adapt that."""
    threads: int = 0
    """torch intra-op threads for MLM and scoring (0: torch's default); fine-tuning uses `train.threads`."""
    unlabeled: UnlabeledArguments = field(default_factory=UnlabeledArguments)
    mlm: MlmArguments = field(default_factory=MlmArguments)
    finetune: FinetuneArguments = field(default_factory=FinetuneArguments)
    self_training: SelfTrainingArguments = field(default_factory=SelfTrainingArguments)

    SECTIONS = {"unlabeled": UnlabeledArguments, "mlm": MlmArguments, "finetune": FinetuneArguments,
                "self_training": SelfTrainingArguments}

    @classmethod
    def from_json(cls, path, overrides=None):
        """Read a config; overrides are {"section.field": value}, {"field": value} at the top level, or
        {"section.field.key": value} for one key of a dict field (finetune.overrides)."""
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        for dotted, value in (overrides or {}).items():
            parts = dotted.split(".", 2)
            if len(parts) == 1:
                raw[dotted] = value
            elif len(parts) == 2:
                raw.setdefault(parts[0], {})[parts[1]] = value
            else:
                raw.setdefault(parts[0], {}).setdefault(parts[1], {})[parts[2]] = value
        top = {f.name for f in dataclasses.fields(cls)} - set(cls.SECTIONS)
        unknown = set(raw) - top - set(cls.SECTIONS)
        if unknown:
            raise ValueError(f"{path}: unknown adapt config keys {sorted(unknown)}")
        sections = {}
        for name, kind in cls.SECTIONS.items():
            values = raw.get(name, {})
            wrong = set(values) - {f.name for f in dataclasses.fields(kind)}
            if wrong:
                raise ValueError(f"{path}: unknown {name} fields {sorted(wrong)}")
            sections[name] = kind(**values)
        config = cls(**{k: raw[k] for k in top if k in raw}, **sections)
        config.finetune.training_config = _resolve_beside(config.finetune.training_config, Path(path).parent)
        config.check()
        return config

    def check(self):
        bounds = self.self_training
        if not 0 <= bounds.negative_max < bounds.positive_min <= 1:
            raise ValueError("self_training needs 0 <= negative_max < positive_min <= 1")
        unknown = set(self.unlabeled.expected_flag_rates) - set(LABELS)
        if unknown:
            raise ValueError(f"unlabeled.expected_flag_rates: unknown labels {sorted(unknown)}")
        if self.mlm.enabled and self.mlm.max_steps < 1:
            raise ValueError("mlm.max_steps must be at least 1 (or set mlm.enabled false)")

    def to_dict(self):
        return dataclasses.asdict(self)


def _resolve_beside(path, folder):
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists() or not (folder / candidate).exists():
        return str(path)
    return str(folder / candidate)


def fingerprint(*parts):
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _outcome_settings(section, *ignored):
    """A config section without the fields that do not change a step's result (logging, switches, counts of
    later steps), so that changing those reuses finished steps."""
    return {key: value for key, value in dataclasses.asdict(section).items() if key not in ignored}


@contextmanager
def _quiet_transformers():
    """Loading a classifier checkpoint as a masked LM lists the new head's weights as missing: expected."""
    from transformers.utils import logging as hf_logging
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


# ---- unlabelled conversations ------------------------------------------------------------------------------

def conversation_key(record):
    """Identity of a conversation by what it says (whitespace-insensitive), for duplicate and overlap checks."""
    text = "\n".join(f"{turn.get('role')}:{' '.join(str(turn.get('text', '')).split())}" for turn in record["turns"])
    return hashlib.sha256(text.encode()).hexdigest()


def read_unlabeled(settings: UnlabeledArguments, excluded_keys=frozenset()):
    """Usable unlabelled conversations in input order and counts of what was skipped and why.

    Conversations that also appear in the annotated dev or test files (`excluded_keys`) are dropped, so that
    neither MLM nor pseudo-labels ever see the text that models are chosen or reported on.
    """
    if not settings.files:
        raise ValueError("no unlabelled files: pass --unlabeled EXPORT (JSONL or CSV) or set unlabeled.files")
    counts = {"read": 0, "unreadable": 0, "invalid": 0, "duplicates": 0, "in_dev_or_test": 0}
    timezone = parse_utc_offset(settings.timezone) if settings.timezone else None
    records, seen = [], set()
    for path in settings.files:
        kind = input_format_of(path, settings.input_format or None)
        # A column mapping is for tables; a mixed list of exports may hold JSONL files too.
        columns = settings.columns or None if kind in TABLE_FORMATS else None
        for item in read_conversations(path, kind, columns=columns, default_timezone=timezone):
            if settings.max_conversations and len(records) >= settings.max_conversations:
                break
            counts["read"] += 1
            if item.error is not None:
                counts["unreadable"] += 1
                continue
            try:
                check_conversation(item.record)
            except ConversationError:
                counts["invalid"] += 1
                continue
            key = conversation_key(item.record)
            if key in excluded_keys:
                counts["in_dev_or_test"] += 1
            elif key in seen:
                counts["duplicates"] += 1
            else:
                seen.add(key)
                records.append(item.record)
    counts["used"] = len(records)
    counts["agent_turns"] = sum(turn["role"] == "agent" for record in records for turn in record["turns"])
    return records, counts


# ---- masked-LM pretraining with jieba whole-word masking ---------------------------------------------------

def _jieba():
    import jieba
    jieba.setLogLevel(logging.WARNING)
    return jieba


def whole_word_offsets(tokens, special_tokens_mask):
    """Token offsets in which only a gap separates two jieba words.

    transformers' whole-word masking starts a new word wherever a token's start is not the previous token's
    end, which suits space-separated text; Chinese has no spaces, so the offsets handed to it are made up:
    tokens of one jieba word touch, the first token of every word starts one position later. WordPiece
    continuations (`##`) always stay with the token before them.
    """
    pieces = [" " if special else token.removeprefix("##") for token, special in zip(tokens, special_tokens_mask)]
    word_starts, position = set(), 0
    for word in _jieba().cut("".join(pieces)):
        word_starts.add(position)
        position += len(word)
    offsets, cursor, position = [], 0, 0
    for token, piece, special in zip(tokens, pieces, special_tokens_mask):
        if special:
            offsets.append((0, 0))
        else:
            cursor += position in word_starts and not token.startswith("##")
            offsets.append((cursor, cursor + 1))
            cursor += 1
        position += len(piece)
    return offsets


def mlm_examples(records, tokenizer, encoding):
    """Every agent turn in its context, encoded exactly as the classifier reads it, with word offsets."""
    encoder = TurnEncoder(tokenizer, encoding)
    examples = []
    for record in records:
        for feature in encoder.encode(record["turns"])[1]:
            special = tokenizer.get_special_tokens_mask(feature["input_ids"], already_has_special_tokens=True)
            tokens = tokenizer.convert_ids_to_tokens(feature["input_ids"])
            examples.append({**feature, "special_tokens_mask": special,
                             "offset_mapping": whole_word_offsets(tokens, special),
                             "maskable": len(special) - sum(special)})
    return examples


def _padded(examples, indices, pad_id):
    width = max(len(examples[i]["input_ids"]) for i in indices)
    fills = {"input_ids": pad_id, "token_type_ids": 0, "attention_mask": 0, "special_tokens_mask": 1,
             "offset_mapping": (0, 0)}
    return [{key: examples[i][key] + [fill] * (width - len(examples[i][key])) for key, fill in fills.items()}
            for i in indices]


def whole_word_collator(tokenizer, settings: MlmArguments):
    from transformers import DataCollatorForLanguageModeling
    # Whole-word masking in transformers always writes [MASK] (no random or kept tokens); say so explicitly.
    return DataCollatorForLanguageModeling(tokenizer, whole_word_mask=True, mlm_probability=settings.mask_probability,
                                           mask_replace_prob=1.0, random_replace_prob=0.0, seed=settings.seed)


def _lm_head(model):
    """The masked-LM head: the one child that is not the encoder (`cls` for BERT, `lm_head` for RoBERTa)."""
    heads = [module for name, module in model.named_children() if name != model.base_model_prefix]
    if len(heads) != 1:
        raise ValueError(f"cannot tell the masked-LM head of {type(model).__name__} apart")
    return heads[0]


def masked_lm_loss(model, batch):
    """Cross-entropy at the masked positions only: the vocabulary projection of every position is most of a
    step's cost on CPU and is thrown away for the 85% that are not masked."""
    import torch
    labels = batch.pop("labels")
    chosen = labels != -100
    hidden = model.base_model(**batch).last_hidden_state[chosen]
    if not len(hidden):
        return None, 0
    return torch.nn.functional.cross_entropy(_lm_head(model)(hidden), labels[chosen]), int(chosen.sum())


def heldout_loss(model, examples, tokenizer, settings):
    """Mean masked-LM loss per masked token, with the same masks on every call (a fresh seeded collator)."""
    import torch
    if not examples:
        return None
    collator = whole_word_collator(tokenizer, settings)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), settings.batch_size):
            loss, masked = masked_lm_loss(model, collator(_padded(examples, order[start:start + settings.batch_size],
                                                                  tokenizer.pad_token_id)))
            if masked:
                total, count = total + loss.item() * masked, count + masked
    return round(total / count, 4) if count else None


def run_mlm(source_dir, records, settings: MlmArguments, encoding, output_dir, log=print):
    """Continue the encoder of the classifier in `source_dir` as a masked LM on `records`; save the classifier
    (head and thresholds kept, encoder replaced) to `output_dir`. Returns what it did."""
    import torch
    from transformers import (AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer,
                              get_linear_schedule_with_warmup, set_seed)

    from .train import length_grouped_batches

    set_seed(settings.seed)
    rng = random.Random(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(source_dir))
    order = list(range(len(records)))
    rng.shuffle(order)
    heldout_count = math.ceil(len(records) * settings.heldout_share) if len(records) > 1 else 0
    heldout = mlm_examples([records[i] for i in order[:heldout_count]], tokenizer, encoding)
    examples = mlm_examples([records[i] for i in order[heldout_count:]], tokenizer, encoding)
    if not examples:
        raise ValueError("no unlabelled agent turn left for MLM training")

    with _quiet_transformers():
        model = AutoModelForMaskedLM.from_pretrained(str(source_dir))
    if settings.freeze_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    encoder_parameters = [p for p in model.base_model.parameters() if p.requires_grad]
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    total_steps = min(settings.max_steps, max(1, math.ceil(len(examples) / settings.batch_size * settings.epochs)))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total_steps * settings.warmup_ratio), total_steps)
    collator = whole_word_collator(tokenizer, settings)
    lengths = [len(e["input_ids"]) for e in examples]

    def train_encoder(on):
        for parameter in encoder_parameters:
            parameter.requires_grad_(on)

    started = time.time()
    losses, history, masked_tokens, maskable_tokens = [], [], 0, 0
    heldout_before = None
    train_encoder(settings.head_only_steps == 0)
    if settings.head_only_steps == 0:
        heldout_before = heldout_loss(model, heldout, tokenizer, settings)
    step = 0
    while step < total_steps:
        for indices in length_grouped_batches(lengths, settings.batch_size, rng):
            if step >= total_steps:
                break
            if step and step == settings.head_only_steps:
                heldout_before = heldout_loss(model, heldout, tokenizer, settings)
                train_encoder(True)
            model.train()
            batch = collator(_padded(examples, indices, tokenizer.pad_token_id))
            maskable_tokens += sum(examples[i]["maskable"] for i in indices)
            loss, masked = masked_lm_loss(model, batch)
            if masked:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                optimizer.step()
                losses.append(loss.item())
                masked_tokens += masked
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % settings.log_every == 0 or step == total_steps:
                recent = losses[-settings.log_every:]
                entry = {"step": step, "loss": round(float(np.mean(recent)), 4) if recent else None,
                         "encoder_trained": step > settings.head_only_steps,
                         "elapsed_s": round(time.time() - started)}
                history.append(entry)
                log(f"mlm {json.dumps(entry)}")
    heldout_after = heldout_loss(model, heldout, tokenizer, settings)

    with _quiet_transformers():
        classifier = AutoModelForSequenceClassification.from_pretrained(str(source_dir))
    missing, unexpected = classifier.base_model.load_state_dict(model.base_model.state_dict(), strict=False)
    if unexpected or any(not key.startswith("pooler.") for key in missing):
        raise RuntimeError(f"encoder weights do not match the classifier's: missing {missing}, "
                           f"unexpected {unexpected}")
    source = ModelSettings(source_dir)
    # Also drops temperatures fitted to the old encoder's outputs.
    set_hengwen_settings(classifier.config, source.thresholds, source.encoding)
    classifier.config.hengwen_model_version = Path(output_dir).name
    classifier.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    window = settings.log_every
    return {
        "examples": len(examples), "heldout_examples": len(heldout), "steps": step,
        "encoder_steps": max(0, step - settings.head_only_steps),
        "masked_token_share": round(masked_tokens / max(1, maskable_tokens), 4),
        "loss_first": round(float(np.mean(losses[:window])), 4) if losses else None,
        "loss_last": round(float(np.mean(losses[-window:])), 4) if losses else None,
        "heldout_loss": {"before_encoder_training": heldout_before, "after": heldout_after},
        "history": history, "mlm_seconds": round(time.time() - started, 1),
    }


# ---- self-training -----------------------------------------------------------------------------------------

def select_pseudo_labels(records, scores, settings: SelfTrainingArguments):
    """Annotated-format records made of confident turns, within the per-label and clean caps.

    `scores` holds one row of label probabilities per agent turn, records and turns in order. Training data
    needs a label list on every agent turn, so a record is the conversation cut after its last selected turn,
    and a confident turn that comes after a turn that is not confident (or after a cap was reached in that
    conversation) cannot be used. Conversations with a pseudo-positive turn fill the caps first, so that the
    rare labels are not crowded out by clean turns; within each group the order is a seeded shuffle.
    """
    scores = np.asarray(scores)
    plans, row = [], 0
    counts = {"agent_turns": 0, "confident_turns": 0, "selected_turns": 0, "selected_clean": 0,
              "selected_per_label": {label: 0 for label in LABELS}, "conversations": 0}
    for record in records:
        plan = []  # (turn index, labels) for the confident agent turns before the first unconfident one
        open_prefix = True
        for index, turn in enumerate(record["turns"]):
            if turn["role"] != "agent":
                continue
            probabilities = scores[row]
            row += 1
            counts["agent_turns"] += 1
            confident = all(p >= settings.positive_min or p <= settings.negative_max for p in probabilities)
            counts["confident_turns"] += confident
            open_prefix &= confident
            if open_prefix:
                plan.append((index, [l for l, p in zip(LABELS, probabilities) if p >= settings.positive_min]))
        plans.append(plan)
    if row != len(scores):
        raise ValueError(f"{len(scores)} score rows for {row} agent turns: scores of another unlabelled set")
    rng = random.Random(settings.seed)
    flagged = [i for i, plan in enumerate(plans) if any(labels for _, labels in plan)]
    rest = [i for i, plan in enumerate(plans) if plan and not any(labels for _, labels in plan)]
    rng.shuffle(flagged)
    rng.shuffle(rest)
    pseudo = []
    for number in flagged + rest:
        taken = []
        for index, labels in plans[number]:
            if labels and any(counts["selected_per_label"][l] >= settings.max_turns_per_label for l in labels):
                break
            if not labels and counts["selected_clean"] >= settings.max_clean_turns:
                break
            taken.append((index, labels))
            for label in labels:
                counts["selected_per_label"][label] += 1
            counts["selected_clean"] += not labels
        if not taken:
            continue
        record = records[number]
        labels_at = dict(taken)
        turns = []
        for index, turn in enumerate(record["turns"][:taken[-1][0] + 1]):
            kept = {key: turn[key] for key in ("role", "text", "ts") if key in turn}
            if turn["role"] == "agent":
                kept["labels"] = labels_at[index]
            turns.append(kept)
        meta = dict(record.get("meta") or {}) | {"pseudo_labelled": True}
        pseudo.append({"id": f"pseudo:{record['id']}", "meta": meta, "turns": turns})
        counts["selected_turns"] += len(taken)
    counts["conversations"] = len(pseudo)
    counts["confident_but_not_usable"] = counts["confident_turns"] - counts["selected_turns"]
    return pseudo, counts


# ---- evaluation --------------------------------------------------------------------------------------------

class Evaluator:
    """Evaluates models the same way: annotated dev/test and the unlabelled set, scored by the runtime's
    `Scorer` (so a calibrated model is measured as it scores) at the model's own thresholds.

    The annotated sets are encoded once, with the starting model's tokenizer and encoding that every adapted
    model shares, and only when a step actually needs an evaluation (a resumed run needs none).
    """

    def __init__(self, data, tokenizer_dir, encoding, records, threads=0):
        self.data, self.tokenizer_dir, self.encoding = data, tokenizer_dir, encoding
        self.records, self.threads = records, threads

    @cached_property
    def annotated(self):
        from .dataset import load_turn_dataset
        from .train import model_inputs
        files = {"dev": self.data.dev_file, "test": self.data.test_file}
        datasets = {phase: load_turn_dataset(path, self.tokenizer_dir, self.encoding)
                    for phase, path in files.items() if path}
        return {phase: (model_inputs(dataset), gold_matrix(dataset), dataset["conversation"])
                for phase, dataset in datasets.items()}

    def __call__(self, model_dir, folder):
        """Metrics of the model in `model_dir`; its unlabelled turn scores go to folder/unlabeled_scores.npy."""
        from ..serving.runtime import Scorer
        from .metrics import conversation_level, multilabel_metrics
        scorer = Scorer(model_dir, engine="torch", threads=self.threads)
        result = {}
        for phase, (features, gold, conversations) in self.annotated.items():
            probabilities = scorer.predict_features(features)
            result[phase] = {"turn": multilabel_metrics(gold, probabilities, scorer.thresholds),
                             "conversation": multilabel_metrics(*conversation_level(gold, probabilities, conversations),
                                                                scorer.thresholds)}
        outputs = scorer.score_records(self.records)
        scores = np.array([[turn["scores"][label] for label in LABELS] for output in outputs
                           for turn in output["turns"]], dtype=np.float32)
        np.save(Path(folder) / "unlabeled_scores.npy", scores)
        result["unlabeled"] = unlabeled_summary(outputs, scores)
        return result


def unlabeled_summary(outputs, scores):
    """Flag rates per label (turns and conversations) and score quantiles of scored unlabelled conversations."""
    turn_flags = np.array([[label in turn["labels"] for label in LABELS] for output in outputs
                           for turn in output["turns"]])
    conversation_flags = np.array([[label in output["labels"] for label in LABELS] for output in outputs])
    return {
        "conversations": len(outputs), "agent_turns": len(scores),
        "turn_flag_rate": {label: round(float(turn_flags[:, i].mean()), 4) for i, label in enumerate(LABELS)},
        "turn_flag_rate_any": round(float(turn_flags.any(axis=1).mean()), 4),
        "conversation_flag_rate": {label: round(float(conversation_flags[:, i].mean()), 4)
                                   for i, label in enumerate(LABELS)},
        "score_quantiles": {label: {f"p{round(q * 100)}": round(float(np.quantile(scores[:, i], q)), 4)
                                    for q in QUANTILES} | {"mean": round(float(scores[:, i].mean()), 4)}
                            for i, label in enumerate(LABELS)},
    }


def choose_by_dev(models):
    """The model name with the best dev turn macro-F1 ({name: summary row}); ties go to the earlier step."""
    best = None
    for name, row in models.items():
        if best is None or row["dev_macro_f1"] > models[best]["dev_macro_f1"]:
            best = name
    return best


def summarize(steps, expected_flag_rates):
    """Before/after rows per evaluated model, the best by dev, and what each step changed (a self-training
    round against the model that labelled its data, which it would replace)."""
    models = {}
    for name, record in steps.items():
        evaluation = record.get("evaluation")
        if not evaluation:
            continue
        unlabeled = evaluation["unlabeled"]
        row = {"model": record["model"], "dev_macro_f1": evaluation["dev"]["turn"]["macro_f1"],
               "dev_f1": {l: m["f1"] for l, m in evaluation["dev"]["turn"]["per_label"].items()},
               "test_macro_f1": evaluation["test"]["turn"]["macro_f1"] if "test" in evaluation else None,
               "unlabeled_turn_flag_rate": unlabeled["turn_flag_rate"],
               "unlabeled_turn_flag_rate_any": unlabeled["turn_flag_rate_any"]}
        if expected_flag_rates:
            row["flag_rate_vs_expected"] = {label: round(unlabeled["turn_flag_rate"][label] / rate, 2)
                                            for label, rate in expected_flag_rates.items() if rate}
        models[name] = row
    names = list(models)
    pairs = [("mlm encoder under the old head (mlm vs before)", "before", "mlm")]
    if "control" in models:
        pairs += [("mlm (finetune vs control)", "control", "finetune"),
                  ("fine-tuning again (control vs before)", "before", "control")]
    elif "mlm" in models:
        pairs.append(("mlm and fine-tuning again together (finetune vs before)", "before", "finetune"))
    else:
        pairs.append(("fine-tuning again (finetune vs before)", "before", "finetune"))
    pairs += [(name, steps[name]["labelled_by"], name) for name in names if name.startswith("self-training")]
    contributions = {}
    for title, old, new in pairs:
        if old in models and new in models:
            contributions[title] = {
                key: (None if models[new][key] is None or models[old][key] is None
                      else round(models[new][key] - models[old][key], 4))
                for key in ("dev_macro_f1", "test_macro_f1", "unlabeled_turn_flag_rate_any")}
            contributions[title]["unlabeled_turn_flag_rate"] = {
                label: round(models[new]["unlabeled_turn_flag_rate"][label]
                             - models[old]["unlabeled_turn_flag_rate"][label], 4) for label in LABELS}
    return {"models": models, "before": "before" if "before" in models else None,
            "after": names[-1] if names else None, "best_by_dev": choose_by_dev(models),
            "contributions": contributions}


# ---- the pipeline ------------------------------------------------------------------------------------------

class Steps:
    """Runs named steps in folders under `root`, reusing a finished folder whose fingerprint matches.

    A step folder is replaced only when it was made by a step (it holds STARTED): an unrelated folder that
    happens to carry a step's name under --out is never deleted.
    """
    STARTED = "adapt_step_started"

    def __init__(self, root, log):
        self.root, self.log, self.records = Path(root), log, {}

    def run(self, name, key, work):
        folder = self.root / name
        marker = folder / "step.json"
        if marker.is_file():
            saved = json.loads(marker.read_text(encoding="utf-8"))
            if saved["fingerprint"] == key:
                self.log(f"{name}: reusing {folder} (finished with the same settings)")
                self.records[name] = saved["record"] | {"reused": True}
                return self.records[name]
        if folder.exists():
            if not (folder / self.STARTED).is_file():
                raise ValueError(f"{folder} exists and was not made by `hengwen adapt`; choose another --out")
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        (folder / self.STARTED).touch()
        self.log(f"{name}: running")
        started = time.time()
        record = work(folder)
        record["seconds"] = round(time.time() - started, 1)
        marker.write_text(json.dumps({"fingerprint": key, "record": record}, indent=2, ensure_ascii=False))
        self.records[name] = record | {"reused": False}
        return self.records[name]


def _model_digest(model_dir):
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no such model folder")
    weights = sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("pytorch_model*.bin"))
    if not weights:
        raise FileNotFoundError(f"{model_dir} has no torch weights (model.safetensors): adapt needs the training "
                                "output folder of a model, not a folder with only ONNX files")
    return {path.name: file_sha256(path) for path in [model_dir / "config.json", *weights]}


def _training_record(output_dir):
    info = json.loads((Path(output_dir) / "run_info.json").read_text(encoding="utf-8"))
    return {"best_epoch": info["best_epoch"], "history": info["history"], "train_seconds": info["train_seconds"],
            "train_file": info["config"]["data"]["train_file"], "init_from": info["config"]["model"]["init_from"]}


def adapt(config: AdaptConfig, output_dir, log=print):
    """Run the configured steps into `output_dir`; returns the report also written to adapt_report.json."""
    import torch

    from .train import train
    if config.threads:
        torch.set_num_threads(config.threads)
    output_dir = Path(output_dir)
    started = time.time()
    start_digest = _model_digest(config.from_model) if config.from_model else None

    training = TrainingConfig.from_json(config.finetune.training_config, config.finetune.overrides)
    annotated = {name: {"path": path, "sha256": file_sha256(path)}
                 for name, path in data_files(training.data).items()}
    held_back = {conversation_key(record) for path in (training.data.dev_file, training.data.test_file) if path
                 for record in read_annotated(path)}
    records, unlabeled_counts = read_unlabeled(config.unlabeled, held_back)
    if not records:
        raise ValueError(f"no usable unlabelled conversation in {config.unlabeled.files}: {unlabeled_counts}")
    log(f"unlabelled: {json.dumps(unlabeled_counts)}")
    unlabeled_files = [{"path": path, "sha256": file_sha256(path)} for path in config.unlabeled.files]
    unlabeled_settings = config.to_dict()["unlabeled"]
    del unlabeled_settings["expected_flag_rates"]  # reporting only: changing it must not redo any step
    training_settings = training.to_dict()
    training_settings["train"].pop("output_dir")
    common = fingerprint(annotated, training_settings, unlabeled_files, unlabeled_settings)

    output_dir.mkdir(parents=True, exist_ok=True)
    steps = Steps(output_dir, log)
    report_path = output_dir / "adapt_report.json"

    def write_report():
        report = {"config": config.to_dict(), "training_config": training.to_dict(),
                  "annotated": annotated, "unlabeled": {"files": unlabeled_files, **unlabeled_counts},
                  "steps": steps.records, "summary": summarize(steps.records, config.unlabeled.expected_flag_rates),
                  "test_policy": TEST_POLICY, "seconds": round(time.time() - started, 1)}
        report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
        return report

    def fine_tune(init_from, folder, train_file=None):
        overrides = dict(config.finetune.overrides) | {"train.output_dir": str(folder)}
        if init_from:
            settings = ModelSettings(init_from)
            overrides |= {f"encoding.{key}": value for key, value in settings.encoding.to_dict().items()}
            overrides |= {"model.init_from": str(init_from), "model.base_model": settings.base_model}
        if train_file:
            overrides["data.train_file"] = str(train_file)
        train(TrainingConfig.from_json(config.finetune.training_config, overrides), log=log)
        return _training_record(folder)

    if config.from_model:
        start_dir = Path(config.from_model)
        start_key = fingerprint(start_digest)
    else:
        start_dir = output_dir / "baseline"
        start_key = fingerprint("baseline", common)
        steps.run("baseline", start_key, lambda folder: {"model": str(folder), **fine_tune("", folder)})
        write_report()
    start = ModelSettings(start_dir)
    evaluator = Evaluator(training.data, start_dir, start.encoding, records, config.threads)

    def evaluated(model_dir, work):
        def step(folder):
            record = work(folder)
            return record | {"model": str(model_dir), "evaluation": evaluator(model_dir, folder)}
        return step

    steps.run("before", fingerprint("before", start_key, common), evaluated(start_dir, lambda folder: {}))
    write_report()
    current = ("before", start_dir, start_key)

    init_dir, init_key = start_dir, start_key
    if config.mlm.enabled:
        init_dir = output_dir / "mlm"
        init_key = fingerprint("mlm", start_key, common, _outcome_settings(config.mlm, "enabled", "log_every"))
        steps.run("mlm", init_key, evaluated(init_dir, lambda folder: run_mlm(
            start_dir, records, config.mlm, start.encoding, folder, log)))
        write_report()
        current = ("mlm", init_dir, init_key)
    finetune_settings = _outcome_settings(config.finetune, "enabled", "control")
    if config.finetune.enabled:
        key = fingerprint("finetune", init_key, common, finetune_settings)
        steps.run("finetune", key, evaluated(output_dir / "finetune",
                                             lambda folder: fine_tune(init_dir, folder)))
        write_report()
        current = ("finetune", output_dir / "finetune", key)
        if config.mlm.enabled and config.finetune.control:
            steps.run("control", fingerprint("control", start_key, common, finetune_settings),
                      evaluated(output_dir / "control", lambda folder: fine_tune(start_dir, folder)))
            write_report()

    for iteration in range(1, config.self_training.iterations + 1):
        name = f"self-training-{iteration}"
        key = fingerprint(name, current[2], init_key, common, finetune_settings,
                          _outcome_settings(config.self_training, "iterations"))
        previous_scores = output_dir / current[0] / "unlabeled_scores.npy"

        def pseudo_label(folder):
            pseudo, counts = select_pseudo_labels(records, np.load(previous_scores), config.self_training)
            log(f"{name}: pseudo-labels {json.dumps(counts)}")
            if not pseudo:
                return {"pseudo_labels": counts, "labelled_by": current[0], "skipped": "no usable confident turn"}
            lines = [json.dumps(record, ensure_ascii=False) for record in pseudo]
            (folder / "pseudo_labels.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
            annotated_text = Path(training.data.train_file).read_text(encoding="utf-8").rstrip("\n")
            combined = folder / "train_with_pseudo.jsonl"
            combined.write_text(annotated_text + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
            record = {"pseudo_labels": counts, "labelled_by": current[0], **fine_tune(init_dir, folder, combined)}
            return record | {"model": str(folder), "evaluation": evaluator(folder, folder)}

        record = steps.run(name, key, pseudo_label)
        write_report()
        if "skipped" in record:
            break
        current = (name, output_dir / name, key)

    report = write_report()
    log(f"adapt report: {report_path}")
    return report
