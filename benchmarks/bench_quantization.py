"""int8 quantization recipes side by side, in one process: agreement with fp32 on dev, F1, size and speed.

usage: .venv/bin/python benchmarks/bench_quantization.py --model RUN_DIR [--dev FILE] [--threads 1]
RUN_DIR is a training run exported with `hengwen export` (it needs onnx/model.onnx, the fp32 file). Every recipe of
`hengwen export --quantization-recipe` is quantized from that file into a temporary folder. Probabilities are the
raw (uncalibrated) outputs, decided at the run's dev thresholds (metrics_dev.json), so fp32 here equals the torch
model's dev figures. Timing rounds alternate between the engines so that a busy machine slows all of them alike.
Writes benchmarks/results/quantization.json and .md.
"""
import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import cpu_model

from hengwen.model.export import QUANTIZATION_RECIPES, quantize
from hengwen.model.labels import LABELS
from hengwen.serving.runtime import OnnxBackend, Scorer, pad_batch
from hengwen.training.calibration import annotated_features
from hengwen.training.dataset import read_annotated
from hengwen.training.metrics import multilabel_metrics


def single_turn_ms(backend, features, pad_id):
    timings = []
    for feature in features:
        batch = pad_batch([feature], pad_id)
        started = time.perf_counter()
        backend(batch)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="exported training run (with onnx/model.onnx)")
    parser.add_argument("--dev", default="data/corpus/dev.jsonl")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (medians are reported)")
    parser.add_argument("--latency-turns", type=int, default=100, help="single turns timed per round")
    parser.add_argument("--output", default="benchmarks/results/quantization.json")
    args = parser.parse_args()

    model_dir = Path(args.model)
    thresholds = {label: row["threshold"] for label, row in
                  json.loads((model_dir / "metrics_dev.json").read_text())["turn"]["per_label"].items()}
    scorer = Scorer(model_dir, engine="onnx", quantization="fp32", threads=args.threads)
    features, gold = annotated_features(scorer.encoder, read_annotated(args.dev))
    pad_id = scorer.encoder.tokenizer.pad_token_id
    with tempfile.TemporaryDirectory() as scratch:
        backends = {"fp32": scorer.backend}
        sizes = {"fp32": (model_dir / "onnx" / "model.onnx").stat().st_size}
        for recipe in QUANTIZATION_RECIPES:
            folder = Path(scratch) / recipe
            folder.mkdir()
            quantize(model_dir / "onnx" / "model.onnx", folder / "model.int8.onnx", recipe)
            backends[recipe] = OnnxBackend(folder, "int8", threads=args.threads)
            sizes[recipe] = (folder / "model.int8.onnx").stat().st_size

        probabilities, throughput, latency = {}, {name: [] for name in backends}, {name: [] for name in backends}
        sample = features[::max(1, len(features) // args.latency_turns)][:args.latency_turns]
        for _ in range(args.rounds):
            for name, backend in backends.items():
                scorer.backend = backend
                started = time.perf_counter()
                probabilities[name] = scorer.predict_features(features, calibrated=False)
                throughput[name].append(len(features) / (time.perf_counter() - started))
                latency[name] += single_turn_ms(backend, sample, pad_id)

    fp32 = probabilities["fp32"]
    thresholds_row = np.array([thresholds[label] for label in LABELS])
    fp32_metrics = multilabel_metrics(gold, fp32, thresholds)
    rows = []
    for name, values in probabilities.items():
        metrics = multilabel_metrics(gold, values, thresholds)
        f1 = {label: metrics["per_label"][label]["f1"] for label in LABELS}
        rows.append({
            "engine": name, "description": QUANTIZATION_RECIPES.get(name, "float32 (the reference)"),
            "size_mb": round(sizes[name] / 1e6, 1),
            "mean_abs_diff_vs_fp32": round(float(np.abs(values - fp32).mean()), 5),
            "max_abs_diff_vs_fp32": round(float(np.abs(values - fp32).max()), 4),
            "decisions_flipped_vs_fp32": int(np.sum((values >= thresholds_row) != (fp32 >= thresholds_row))),
            "dev_macro_f1": metrics["macro_f1"], "dev_f1": f1,
            "largest_label_f1_drop_vs_fp32": round(max(fp32_metrics["per_label"][label]["f1"] - f1[label]
                                                       for label in LABELS), 4),
            "dev_turns_per_s": round(statistics.median(throughput[name]), 1),
            "single_turn_ms_p50": round(statistics.median(latency[name]), 2),
            "single_turn_ms_p95": round(float(np.percentile(latency[name], 95)), 2),
        })
    result = {"model": str(model_dir), "dev": args.dev, "turns": len(features), "thresholds": thresholds,
              "cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads, "rounds": args.rounds,
              "load_average_at_end": os.getloadavg(), "rows": rows}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    lines = [f"{result['turns']} dev turns of {args.dev}, model {model_dir}; {result['cpu']}, {result['cores']} cores, "
             f"{args.threads} onnxruntime thread(s), medians of {args.rounds} rounds; load average at the end "
             + ", ".join(f"{load:.1f}" for load in result["load_average_at_end"]),
             "",
             "| engine | size MB | mean abs diff vs fp32 | decisions flipped | dev macro-F1 | largest label F1 drop "
             "| dev turns/s (batch 32) | single turn p50 / p95 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['engine']} | {row['size_mb']} | {row['mean_abs_diff_vs_fp32']:.4f} | "
                     f"{row['decisions_flipped_vs_fp32']} | {row['dev_macro_f1']:.3f} | "
                     f"{row['largest_label_f1_drop_vs_fp32']:.3f} | {row['dev_turns_per_s']} | "
                     f"{row['single_turn_ms_p50']} / {row['single_turn_ms_p95']} |")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
