"""Scoring at volume: worker processes keep input order; interrupted runs resume with nothing lost or repeated."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hengwen.model.labels import LABELS
from hengwen.serving.batch import CHUNK, threads_per_worker
from hengwen.serving.cli import main

from ..conftest import TINY_DATA

TEMPLATES = [json.loads(line) for line in TINY_DATA.read_text(encoding="utf-8").splitlines()]


def write_conversations(path, count, broken_every=0):
    """count conversations built from the fixture's (ids made unique, agents and teams added); with
    broken_every, every n-th line is not JSON, so that error records are part of the run too."""
    lines = []
    for number in range(count):
        if broken_every and number % broken_every == broken_every - 1:
            lines.append("{not json")
            continue
        record = json.loads(json.dumps(TEMPLATES[number % len(TEMPLATES)]))
        record["id"] = f"c{number:05d}"
        record["meta"] = {"agent": f"A{number % 7}", "team": f"T{number % 2}"}
        lines.append(json.dumps(record, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def score(*args):
    assert main(["score", *map(str, args), "-q"]) == 0


def jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_workers_keep_input_order_and_scores(tmp_path, tiny_model):
    source = write_conversations(tmp_path / "in.jsonl", 3 * CHUNK + 5, broken_every=50)
    score(source, "-o", tmp_path / "one.jsonl", "--model", tiny_model, "--threads", "1")
    score(source, "-o", tmp_path / "two.jsonl", "--model", tiny_model, "--threads", "1", "--workers", "2")
    one, two = jsonl(tmp_path / "one.jsonl"), jsonl(tmp_path / "two.jsonl")
    assert len(one) == 3 * CHUNK + 5 and [r["line"] for r in one if "error" in r] == [50, 100, 150]
    assert two == one


def test_threads_are_shared_out_among_workers():
    cores = len(os.sched_getaffinity(0))
    assert threads_per_worker(1) == cores
    assert threads_per_worker(cores * 2) == 1
    assert threads_per_worker(2, threads=3) == 3


@pytest.mark.parametrize("cut", ["mid-line", "after-line", "empty"])
def test_resume_after_a_crash_loses_and_repeats_nothing(tmp_path, cut):
    source = write_conversations(tmp_path / "in.jsonl", 40, broken_every=9)
    complete = tmp_path / "complete.jsonl"
    score(source, "-o", complete, "--engine", "rules", "--keep-text")
    data = complete.read_bytes()
    lines = data.splitlines(keepends=True)
    kept = {"mid-line": b"".join(lines[:17]) + lines[17][:25], "after-line": b"".join(lines[:17]), "empty": b""}[cut]
    crashed = tmp_path / "crashed.jsonl"
    crashed.write_bytes(kept)
    score(source, "-o", crashed, "--engine", "rules", "--keep-text", "--resume")
    assert crashed.read_bytes() == data


def test_resume_of_a_csv_output(tmp_path):
    source = write_conversations(tmp_path / "in.jsonl", 30, broken_every=7)
    complete = tmp_path / "complete.csv"
    options = ["--engine", "rules", "--format", "csv", "--keep-text"]
    score(source, "-o", complete, *options)
    data = complete.read_bytes()
    for cut in (len(data) // 2, len(data) // 3, data.index(b"\n") + 1, len(data) - 1, len(data)):
        crashed = tmp_path / f"crashed-{cut}.csv"
        crashed.write_bytes(data[:cut])
        score(source, "-o", crashed, *options, "--resume")
        assert crashed.read_bytes() == data, cut


def test_resume_of_a_finished_run_changes_nothing(tmp_path, capsys):
    source = write_conversations(tmp_path / "in.jsonl", 12)
    output = tmp_path / "out.jsonl"
    score(source, "-o", output, "--engine", "rules")
    before = output.read_bytes()
    score(source, "-o", output, "--engine", "rules", "--resume")
    assert output.read_bytes() == before
    assert "0 conversations" in capsys.readouterr().err


def test_resume_refuses_an_output_of_another_input(tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    score(write_conversations(tmp_path / "a.jsonl", 12), "-o", output, "--engine", "rules")
    other = tmp_path / "b.jsonl"
    other.write_text("".join(line.replace('"c000', '"x000') + "\n"
                             for line in (tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()))
    before = output.read_bytes()
    assert main(["score", str(other), "-o", str(output), "--engine", "rules", "--resume", "-q"]) == 2
    assert "does not continue this input" in capsys.readouterr().err
    assert output.read_bytes() == before


def test_resume_needs_an_output_file(tmp_path, capsys):
    assert main(["score", str(TINY_DATA), "--engine", "rules", "--resume"]) == 2
    assert "--resume needs an output file" in capsys.readouterr().err


def test_ctrl_c_keeps_whole_records_and_resume_completes_the_run(tmp_path):
    """A real interruption: SIGINT to the process group (what Ctrl-C does) while two workers score."""
    source = write_conversations(tmp_path / "in.jsonl", 400, broken_every=97)
    output = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "hengwen.serving.cli", "score", str(source), "-o", str(output), "-q",
               "--engine", "rules", "--workers", "2"]
    run = subprocess.Popen(command, start_new_session=True, stderr=subprocess.PIPE, text=True)
    while run.poll() is None and (not output.exists() or output.read_bytes().count(b"\n") < 2 * CHUNK):
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "--resume" in stderr
    interrupted = jsonl(output)  # every line is a whole JSON record
    assert 2 * CHUNK <= len(interrupted) < 400
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    score(source, "-o", tmp_path / "reference.jsonl", "--engine", "rules")
    assert jsonl(output) == jsonl(tmp_path / "reference.jsonl")


def test_csv_output_has_a_row_per_turn(tmp_path):
    source = write_conversations(tmp_path / "in.jsonl", 10, broken_every=4)
    score(source, "-o", tmp_path / "out.csv", "--format", "csv", "--engine", "rules", "--scorecard", "default")
    score(source, "-o", tmp_path / "out.jsonl", "--engine", "rules", "--scorecard", "default")
    text = (tmp_path / "out.csv").read_text(encoding="utf-8")
    assert text.startswith("\ufeff")  # Excel reads UTF-8 Chinese only with the byte-order mark
    rows = list(csv.DictReader(text.lstrip("\ufeff").splitlines()))
    records = jsonl(tmp_path / "out.jsonl")
    expected_rows = sum(len(r["turns"]) if "turns" in r else 1 for r in records)
    assert len(rows) == expected_rows
    by_turn = {(row["conversation_id"], row["turn_index"]): row for row in rows}
    for record in records:
        if "error" in record:
            (row,) = [row for row in rows if row["line"] == str(record["line"])]
            assert row["error"] == record["error"] and row["turn_index"] == ""
            continue
        for turn in record["turns"]:
            row = by_turn[(record["id"], str(turn["index"]))]
            assert row["agent"] == record["meta"]["agent"] and row["team"] == record["meta"]["team"]
            assert [float(row[label]) for label in LABELS] == [turn["scores"][label] for label in LABELS]
            assert row["turn_labels"] == ";".join(turn["labels"]) and row["role"] == "agent"
            assert row["qa_score"] == str(record["qa_score"]) and row["passed"] == str(record["passed"]).lower()


def test_keep_text_writes_the_transcript(tmp_path):
    score(TINY_DATA, "-o", tmp_path / "out.jsonl", "--engine", "rules", "--keep-text")
    score(TINY_DATA, "-o", tmp_path / "out.csv", "--engine", "rules", "--keep-text", "--format", "csv")
    gold = jsonl(TINY_DATA)
    for record, conversation in zip(jsonl(tmp_path / "out.jsonl"), gold):
        assert record["transcript"] == [{k: t[k] for k in ("role", "text", "ts") if k in t}
                                        for t in conversation["turns"]]
    rows = list(csv.DictReader((tmp_path / "out.csv").read_text(encoding="utf-8-sig").splitlines()))
    assert len(rows) == sum(len(c["turns"]) for c in gold)
    assert [row["text"] for row in rows] == [t["text"] for c in gold for t in c["turns"]]
