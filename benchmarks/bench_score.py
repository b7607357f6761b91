"""Time to score 1,000 conversations with the shipped model: int8 and fp32 ONNX side by side, one process.

usage: .venv/bin/python benchmarks/bench_score.py [--model DIR] [--input FILE] [--conversations 1000]
Conversations are taken from the input file in order, cycling if it is shorter. Writes
benchmarks/results/score_1000.json and prints a markdown table.
"""
import argparse
import json
import os
import time
from itertools import cycle, islice
from pathlib import Path

from hengwen.serving.runtime import DEFAULT_MODEL_DIR, Scorer
from machine import cpu_model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--input", default="data/corpus/test.jsonl")
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--output", default="benchmarks/results/score_1000.json")
    args = parser.parse_args()

    source = [json.loads(line) for line in Path(args.input).read_text(encoding="utf-8").splitlines() if line]
    conversations = [dict(c, id=f"{c['id']}#{i}") for i, c in enumerate(islice(cycle(source), args.conversations))]
    turns = sum(1 for c in conversations for t in c["turns"] if t["role"] == "agent")
    rows = []
    for quantization in ("int8", "fp32"):
        model_dir = Path(args.model)
        try:
            scorer = Scorer(model_dir, quantization=quantization, threads=args.threads)
        except FileNotFoundError as missing:
            rows.append({"quantization": quantization, "skipped": str(missing)})
            continue
        scorer.score_records(conversations[:8])  # warm-up: session and tokenizer caches
        started = time.perf_counter()
        for start in range(0, len(conversations), 64):
            scorer.score_records(conversations[start:start + 64])
        seconds = time.perf_counter() - started
        rows.append({"quantization": quantization, "seconds": round(seconds, 2),
                     "conversations_per_s": round(len(conversations) / seconds, 1),
                     "agent_turns_per_s": round(turns / seconds, 1)})
    result = {"conversations": len(conversations), "agent_turns": turns, "input": args.input,
              "model": args.model, "cpu": cpu_model(), "cores": os.cpu_count(),
              "threads": args.threads or "onnxruntime default (all cores)", "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(f"{len(conversations)} conversations, {turns} agent turns, {result['cpu']}, {result['cores']} cores")
    print("| ONNX | seconds | conversations/s | agent turns/s |\n|---|---|---|---|")
    for row in rows:
        if "skipped" in row:
            print(f"| {row['quantization']} | skipped: {row['skipped']} | | |")
        else:
            print(f"| {row['quantization']} | {row['seconds']} | {row['conversations_per_s']} | "
                  f"{row['agent_turns_per_s']} |")


if __name__ == "__main__":
    main()
