"""Annotated conversations -> one encoded example per agent turn, as a cached `datasets.Dataset`."""
import hashlib
import json
import math
from pathlib import Path

import numpy as np

from ..data.schema import check_conversation
from ..model.encoding import EncodingConfig, TurnEncoder
from ..model.labels import LABELS

# `cold-follow-up` compares a reply with how the agent treated the customer before the sale
# (../shared/labels.md), so a reply read without that history cannot show it
STAGE_LABELS = ("cold-follow-up",)


def file_sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def data_file_hashes(data):
    """sha256 of every data file a training config names ({field: hash}, a list of hashes for a list field)."""
    hashes = {}
    for name, value in vars(data).items():
        if not name.endswith(("_file", "_files")):
            continue
        if isinstance(value, list):
            if value:
                hashes[name] = [file_sha256(path) for path in value]
        elif value:
            hashes[name] = file_sha256(value)
    return hashes


def data_files(data):
    """Every data file a training config names, one entry each ({field: path}; `extra_train_files[i]` for a list)."""
    files = {}
    for name, value in vars(data).items():
        if name.endswith("_files"):
            files.update({f"{name}[{number}]": path for number, path in enumerate(value)})
        elif name.endswith("_file") and value:
            files[name] = value
    return files


def read_annotated(path):
    """Annotated conversations of a JSONL file; refuses the file on the first invalid one (run `data validate`)."""
    conversations = []
    with Path(path).open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    conversations.append(check_conversation(json.loads(line), annotated=True))
                except ValueError as error:
                    raise ValueError(f"{path}:{line_number}: {error}") from None
    return conversations


def path_list(paths):
    """One path or several as a list of paths."""
    return [paths] if isinstance(paths, (str, Path)) else list(paths)


def read_annotated_files(paths):
    """read_annotated over one path or several, pooled in order (corpus ids are unique across files)."""
    return [conversation for path in path_list(paths) for conversation in read_annotated(path)]


def id_bucket(conversation, salt=""):
    """A stable number in [0, 1] from the conversation id; a different salt gives an independent draw, so that two
    shares taken of one file (kept for training, stripped of timestamps) do not pick the same conversations."""
    return int(hashlib.sha256((salt + str(conversation["id"])).encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF


def in_share(conversation, share):
    """Whether the conversation is among the `share` of its file kept for training (1.0: every one)."""
    return share >= 1.0 or id_bucket(conversation, salt="train_share:") < share


def without_timestamps(conversation, share):
    """The conversation with every `ts` removed when the hash of its id falls in the first `share` of the range."""
    if id_bucket(conversation) >= share or not any("ts" in turn for turn in conversation["turns"]):
        return conversation
    return {**conversation, "turns": [{k: v for k, v in turn.items() if k != "ts"} for turn in conversation["turns"]]}


def timing_variants(conversation, untimed_share=0.0, untimed_copies=False):
    """The conversation as trained on: timestamps removed by `untimed_share`, then, with `untimed_copies`, a second
    copy without any timestamps when the first still has some."""
    conversation = without_timestamps(conversation, untimed_share)
    variants = [conversation]
    if untimed_copies and any("ts" in turn for turn in conversation["turns"]):
        variants.append(without_timestamps(conversation, 1.0))
    return variants


def reply_only_excerpts(conversation):
    """Per agent turn, that turn with only the message(s) it answers: the turns since the previous agent turn, all
    without timestamps. Whether a reply answers is then read off the reply, not off a chasing history."""
    turns = [{k: v for k, v in turn.items() if k != "ts"} for turn in conversation["turns"]]
    start = 0
    for index, turn in enumerate(turns):
        if turn.get("role") == "agent":
            yield index, turns[start:index + 1]
            start = index + 1


def label_revisions(revision_paths, annotated_paths):
    """The stand-off revisions of `revision_paths` split by the annotated file they apply to (a run's training files,
    or one evaluation file): {path: [[conversation id, turn, labels], ...]}, JSON-serialisable so that they can be
    part of a dataset's cache key. Every revision line must name an agent turn of one of `annotated_paths`;
    otherwise ValueError lists each line that does not."""
    from ..data.standoff import read_standoff
    revisions, problems = {}, []
    for path in revision_paths:
        labels, file_problems = read_standoff(path)
        problems += file_problems
        for key, turn_labels in labels.items():
            if key in revisions and revisions[key] != turn_labels:
                problems.append(f"{path}: turn {key[1]} of {key[0]} is revised differently by an earlier file")
            revisions[key] = turn_labels
    by_file, applied = {str(path): [] for path in annotated_paths}, set()
    for path in annotated_paths:
        for conversation in read_annotated(path):
            for index, turn in enumerate(conversation["turns"]):
                key = (str(conversation["id"]), index)
                if key in revisions and turn["role"] == "agent":
                    by_file[str(path)].append([key[0], index, revisions[key]])
                    applied.add(key)
    problems += [f"turn {index} of {conversation_id} is revised but is no agent turn of the annotated files"
                 for conversation_id, index in sorted(set(revisions) - applied)]
    if problems:
        raise ValueError("label revisions do not fit the annotated files:\n" + "\n".join(problems))
    return by_file


def revised(conversation, revisions):
    """The conversation with the labels of its revised turns replaced ({(id, turn): labels})."""
    conversation_id = str(conversation["id"])
    if not any((conversation_id, index) in revisions for index in range(len(conversation["turns"]))):
        return conversation
    return {**conversation, "turns": [
        {**turn, "labels": revisions[(conversation_id, index)]} if (conversation_id, index) in revisions else turn
        for index, turn in enumerate(conversation["turns"])]}


def _turn_examples(path, tokenizer_dir, encoding, digest, untimed_share, untimed_copies, share, revisions,
                   reply_only_copies):
    from transformers import AutoTokenizer
    del digest  # only part of the cache key, so that an edited file is encoded again
    encoder = TurnEncoder(AutoTokenizer.from_pretrained(tokenizer_dir), EncodingConfig.from_dict(encoding))
    revisions = {(conversation_id, turn): labels for conversation_id, turn, labels in json.loads(revisions)}
    for conversation_number, original in enumerate(read_annotated(path)):
        if not in_share(original, share):
            continue
        original = revised(original, revisions)
        for conversation in timing_variants(original, untimed_share, untimed_copies):
            targets, features = encoder.encode(conversation["turns"])
            for target, feature in zip(targets, features):
                gold = conversation["turns"][target]["labels"]
                yield {**feature, "labels": [float(label in gold) for label in LABELS],
                       "conversation": conversation_number, "turn_index": target,
                       "conversation_id": str(conversation["id"])}
        if reply_only_copies:
            for target, excerpt in reply_only_excerpts(original):
                _, (feature,) = encoder.encode(excerpt, targets=[len(excerpt) - 1])
                gold = excerpt[-1]["labels"]
                # NaN: no target for a label that the excerpt cannot show; the loss skips it
                yield {**feature, "labels": [math.nan if label in STAGE_LABELS else float(label in gold)
                                             for label in LABELS],
                       "conversation": conversation_number, "turn_index": target,
                       "conversation_id": str(original["id"])}


def load_turn_dataset(path, tokenizer_dir, encoding: EncodingConfig, untimed_share=0.0, untimed_copies=False,
                      share=1.0, revisions=(), reply_only_copies=False):
    """One encoded example per agent turn of `path`; `revisions` ([[id, turn, labels], ...], from
    `label_revisions`) replace the labels of those turns. `reply_only_copies` adds one example per agent turn read
    with only the message(s) it answers (`reply_only_excerpts`), with no target for `STAGE_LABELS`."""
    from datasets import Dataset
    return Dataset.from_generator(_turn_examples, gen_kwargs={
        "path": str(Path(path).resolve()), "tokenizer_dir": str(tokenizer_dir),
        "encoding": encoding.to_dict(), "digest": file_sha256(path), "untimed_share": untimed_share,
        # a string, not a list: `datasets` splits list-valued generator arguments into shards
        "untimed_copies": untimed_copies, "share": share, "revisions": json.dumps(list(revisions)),
        "reply_only_copies": reply_only_copies})


def gold_matrix(dataset):
    return np.asarray(dataset["labels"], dtype=np.float32)
