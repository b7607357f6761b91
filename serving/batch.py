"""Scoring at volume: a streamed input, several worker processes, output in input order that survives interruption.

Records are written whole and flushed as they come, so a crash or Ctrl-C leaves complete records and at most one
partial one at the end. `resume=True` reads what an earlier run wrote, checks that it is the start of this run's
output (same conversations, same order), drops the partial end and scores only what is missing.
"""
import csv
import io
import json
import multiprocessing
import os
import signal
import sys
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Optional

from ..data.readers import input_format_of, read_conversations
from ..model.labels import LABELS

CHUNK = 64
# Chunks waiting or running per worker: enough to keep every worker busy, few enough to keep memory flat.
CHUNKS_IN_FLIGHT_PER_WORKER = 2
TRANSCRIPT_FIELDS = ("role", "text", "ts")


@dataclass(frozen=True)
class ScorerSpec:
    """What build_scorer needs; small and picklable, so that each worker process builds its own scorer."""
    engine: str = "onnx"
    model: Optional[str] = None
    quantization: str = "auto"
    threads: int = 0
    batch_size: int = 32


def build_scorer(spec):
    if spec.engine == "rules":
        from ..model.rules import RuleScorer
        return RuleScorer()
    from .runtime import Scorer
    return Scorer(spec.model, engine=spec.engine, quantization=spec.quantization, threads=spec.threads,
                  batch_size=spec.batch_size)


def score_stream(items, scorer):
    """(ReadItem, output record) for every input conversation, in input order."""
    from .runtime import error_record
    items = iter(items)
    while chunk := list(islice(items, CHUNK)):
        readable = [item for item in chunk if item.error is None]
        scored = iter(scorer.score_records([item.record for item in readable]))
        for item in chunk:
            if item.error is not None:
                yield item, {"id": item.conversation_id, "error": item.error, "line": item.line}
                continue
            record = next(scored)
            if "error" in record:
                record = error_record(item.record, record["error"], item.line)
            yield item, record


def threads_per_worker(workers, threads=0):
    """Inference threads for each of `workers` processes: `threads` when set, else the cores shared out."""
    return threads or max(1, len(os.sched_getaffinity(0)) // workers)


_worker_scorer = None


def _start_worker(spec):
    global _worker_scorer
    # Ctrl-C reaches the whole process group; the main process decides what is kept and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        _worker_scorer = build_scorer(spec)
    except Exception as error:  # noqa: BLE001 - re-raised with the first chunk, where the main process sees it
        _worker_scorer = error


def _score_chunk(items):
    if isinstance(_worker_scorer, Exception):
        raise _worker_scorer
    return [record for _, record in score_stream(items, _worker_scorer)]


def scored_in_order(items, spec, workers=1):
    """(ReadItem, record) for every item, in input order, scored in `workers` processes (1: in this one)."""
    if workers <= 1:
        yield from score_stream(items, build_scorer(spec))
        return
    spec = replace(spec, threads=threads_per_worker(workers, spec.threads))
    items = iter(items)
    # spawn: a fresh interpreter per worker, never a fork of a process with inference threads running.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(spec,))
    pending = deque()
    try:
        while True:
            while len(pending) < workers * CHUNKS_IN_FLIGHT_PER_WORKER and (chunk := list(islice(items, CHUNK))):
                pending.append((chunk, pool.submit(_score_chunk, chunk)))
            if not pending:
                break
            chunk, future = pending.popleft()
            yield from zip(chunk, future.result())
    finally:
        # Chunks not yet started are dropped (a resumed run scores them); running ones finish within seconds.
        pool.shutdown(wait=True, cancel_futures=True)


def count_conversations(path, input_format=None, **reader_options):
    """How many output records the input gives (for the progress bar): a fast line count for JSONL."""
    if input_format_of(path, input_format) == "jsonl":
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    return sum(1 for _ in read_conversations(path, input_format, **reader_options))


def transcript(record):
    """The input turns as the output keeps them with keep_text: role, text and ts."""
    return [{key: turn[key] for key in TRANSCRIPT_FIELDS if key in turn} for turn in record["turns"]]


class JsonlOutput:
    """One JSON record a line, as `hengwen score` always wrote."""

    def start(self, handle, fresh):
        self.handle = handle

    def key(self, item):
        return item.conversation_id

    def write(self, record, item):
        self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def written(self, path):
        """(key, byte offset after it) of each complete record in an earlier output; stops at a partial line."""
        offset = 0
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                if not raw.endswith(b"\n"):
                    return
                try:
                    record = json.loads(raw)
                except ValueError:
                    record = None
                if not isinstance(record, dict) or "id" not in record:
                    raise ValueError(f"{path}:{number} is not a hengwen output record; not resuming into it")
                offset += len(raw)
                yield record["id"], offset


class CsvOutput:
    """One row a turn for spreadsheets: agent turns with their scores (every turn with keep_text), and one row
    for a conversation that could not be scored. UTF-8 with a byte-order mark, so that Excel reads Chinese."""
    META_COLUMNS = ("agent", "team", "channel", "date")

    def __init__(self, keep_text):
        self.keep_text = keep_text
        self.header = ["conversation_id", "line", *self.META_COLUMNS, "meta", "conversation_labels", "qa_score",
                       "passed", "error", "turn_index", "role", "turn_labels", *LABELS]
        self.header += ["text"] if keep_text else []

    def start(self, handle, fresh):
        self.handle = handle
        if fresh:
            handle.write(("\ufeff" if handle is not sys.stdout else "") + self._rows([self.header]))

    def key(self, item):
        return item.conversation_id or "", str(item.line)

    @staticmethod
    def _rows(rows):
        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows)
        return buffer.getvalue()

    def write(self, record, item):
        meta = record.get("meta") or {}
        rest = {key: value for key, value in meta.items() if key not in self.META_COLUMNS}
        conversation = [record["id"] or "", item.line, *(meta.get(key, "") for key in self.META_COLUMNS),
                        json.dumps(rest, ensure_ascii=False) if rest else "", ";".join(record.get("labels", [])),
                        record.get("qa_score", ""), {True: "true", False: "false"}.get(record.get("passed"), ""),
                        record.get("error", "")]
        if "error" in record:
            rows = [conversation + [""] * (len(self.header) - len(conversation))]
        else:
            scored = {turn["index"]: turn for turn in record["turns"]}
            indices = range(len(item.record["turns"])) if self.keep_text else sorted(scored)
            rows = []
            for index in indices:
                turn, input_turn = scored.get(index), item.record["turns"][index]
                row = conversation + [index, input_turn["role"], ";".join(turn["labels"]) if turn else ""]
                row += [turn["scores"][label] if turn else "" for label in LABELS]
                rows.append(row + ([input_turn["text"]] if self.keep_text else []))
        # One write per conversation: an interruption cuts at most the conversation being written.
        self.handle.write(self._rows(rows))

    def written(self, path):
        """(key, byte offset after it) of each conversation in an earlier output except the last one, which may
        have been cut off between its rows and is scored again."""
        consumed = 0

        def complete_lines(handle):
            nonlocal consumed
            for raw in handle:
                if not raw.endswith(b"\n"):
                    return
                consumed += len(raw)
                yield raw.decode("utf-8-sig" if consumed == len(raw) else "utf-8")

        with open(path, "rb") as handle:
            rows = csv.reader(complete_lines(handle))
            header = next(rows, None)
            if header is None:
                return
            if header != self.header:
                raise ValueError(f"{path} does not have the columns this run writes (was it written with other "
                                 f"options, such as --keep-text?); not resuming into it")
            previous_key, previous_end = None, consumed
            try:
                for row in rows:
                    key = (row[0], row[1])
                    if previous_key is not None and key != previous_key:
                        yield previous_key, previous_end
                    previous_key, previous_end = key, consumed
            except csv.Error:
                pass  # a quoted field cut off at the end: the partial conversation is scored again


@dataclass
class BatchSummary:
    total: Optional[int] = None
    skipped: int = 0
    conversations: int = 0
    errors: int = 0
    agent_turns: int = 0
    flagged: Counter = field(default_factory=Counter)
    """Conversations flagged, per label."""
    flagged_turns: Counter = field(default_factory=Counter)
    """Agent turns flagged, per label; "any" counts turns with at least one label."""
    interrupted: bool = False


def _resume_point(output, path, items):
    """Conversations an earlier run wrote to `path` and the byte offset after them, checked against the input;
    the items iterator is left just after them."""
    done, offset = 0, 0
    for key, end in output.written(path):
        item = next(items, None)
        expected = None if item is None else output.key(item)
        if item is None or expected != key:
            raise ValueError(f"{path} does not continue this input: its conversation {done + 1} is {key!r}, the "
                             f"input's is {expected!r}; use another output file or leave out --resume")
        done, offset = done + 1, end
    return done, offset


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a scheduler stopping the job, `kill`) ends the run like Ctrl-C: complete records are kept."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def score_file(input_path, output_path, spec, *, workers=1, resume=False, output_format="jsonl", scorecard=None,
               keep_text=False, progress=None, describe=None, input_format=None, **reader_options):
    """Score every conversation of input_path into output_path (None or "-": stdout) and summarise the run.

    reader_options go to read_conversations (columns, default_timezone). progress: True, False or None (a bar
    when stderr is a terminal). describe(item, record) -> text printed above the bar for each conversation.
    """
    from tqdm.auto import tqdm

    summary = BatchSummary(total=count_conversations(input_path, input_format, **reader_options))
    output = CsvOutput(keep_text) if output_format == "csv" else JsonlOutput()
    to_stdout = not output_path or output_path == "-"
    if resume and to_stdout:
        raise ValueError("--resume needs an output file (-o)")
    items = iter(read_conversations(input_path, input_format, **reader_options))
    fresh = True
    if resume and Path(output_path).is_file():
        summary.skipped, offset = _resume_point(output, output_path, items)
        with open(output_path, "r+b") as handle:
            handle.truncate(offset)  # drop the partial record an interruption left
        fresh = offset == 0
    if not to_stdout:
        Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    opened = nullcontext(sys.stdout) if to_stdout else open(output_path, "w" if fresh else "a", encoding="utf-8",
                                                            newline="")
    with opened as handle, closing(scored_in_order(items, spec, workers)) as scored:
        output.start(handle, fresh)
        bar = tqdm(total=summary.total, initial=summary.skipped, unit="conv", desc="score", file=sys.stderr,
                   disable=None if progress is None else not progress)
        try:
            for item, record in scored:
                if "error" in record:
                    summary.errors += 1
                else:
                    summary.agent_turns += len(record["turns"])
                    summary.flagged.update(record["labels"])
                    for turn in record["turns"]:
                        summary.flagged_turns.update(turn["labels"] + (["any"] if turn["labels"] else []))
                    if scorecard is not None:
                        scorecard.apply(record)
                    if keep_text:
                        record["transcript"] = transcript(item.record)
                if describe is not None:
                    bar.write(describe(item, record), file=sys.stderr)
                output.write(record, item)
                handle.flush()
                summary.conversations += 1
                bar.update(1)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            bar.close()
    return summary
