"""Start-up cost of a scoring process: the runtime's tokenizer (`tokenizers` only) against transformers'
AutoTokenizer, each loading the shipped model's Scorer in a fresh child process, side by side in one run.

usage: .venv/bin/python benchmarks/bench_startup.py [--model DIR] [--repeats 3]
Each child reports its wall time to a ready Scorer (imports included) and its peak RSS. Writes
benchmarks/results/startup.json and prints a markdown table.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from machine import cpu_model

CHILD = """
import json, resource, sys, time
started = time.perf_counter()
from hengwen.serving import runtime
if sys.argv[2] == "transformers":
    from transformers import AutoTokenizer
    runtime.load_tokenizer = lambda model_dir: AutoTokenizer.from_pretrained(str(model_dir))
scorer = runtime.Scorer(sys.argv[1])
scorer.score_records([{"id": "x", "turns": [{"role": "customer", "text": "在吗"}, {"role": "agent", "text": "在的亲"}]}])
print(json.dumps({"seconds": time.perf_counter() - started,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "torch_imported": "torch" in sys.modules}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model/default")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = {}
    for tokenizer in ("tokenizers", "transformers"):
        runs = [json.loads(subprocess.run([sys.executable, "-c", CHILD, args.model, tokenizer], check=True,
                                          capture_output=True, text=True).stdout.splitlines()[-1])
                for _ in range(args.repeats)]
        rows[tokenizer] = {"median_seconds": round(statistics.median(r["seconds"] for r in runs), 2),
                           "median_peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in runs)),
                           "torch_imported": runs[0]["torch_imported"], "runs": runs}
    result = {"machine": cpu_model(), "model": args.model, "repeats": args.repeats, "results": rows}
    out = Path(__file__).parent / "results" / "startup.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"machine: {result['machine']}; {args.repeats} fresh processes each\n")
    print("| tokenizer loader | time to a ready Scorer (median) | peak RSS (median) | torch imported |\n|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['median_seconds']} s | {row['median_peak_rss_mb']} MB | {row['torch_imported']} |")


if __name__ == "__main__":
    main()
