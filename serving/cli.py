"""The `hengwen` command: score, train, export, data validate/stats (and the service, in serve)."""
import argparse
import json
import sys
from collections import Counter
from contextlib import nullcontext
from itertools import islice
from pathlib import Path

from ..model.labels import LABELS

CHUNK = 64


def _open_output(path):
    return open(path, "w", encoding="utf-8") if path and path != "-" else nullcontext(sys.stdout)


def build_scorer(args):
    if args.engine == "rules":
        from ..model.rules import RuleScorer
        return RuleScorer()
    from .runtime import Scorer
    return Scorer(args.model, engine=args.engine, quantization=args.quantization, threads=args.threads,
                  batch_size=args.batch_size)


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


def explain(item, record):
    """A few readable lines about one output record: its error, or its flagged turns with their text."""
    if "error" in record:
        return f"[{record['id']}] line {record['line']}: error: {record['error']}"
    lines = [f"[{record['id']}] " + (", ".join(record["labels"]) or "clean")]
    for turn in record["turns"]:
        if turn["labels"]:
            text = item.record["turns"][turn["index"]]["text"]
            scores = " ".join(f"{label} {turn['scores'][label]:.2f}" for label in turn["labels"])
            lines.append(f"    turn {turn['index']} ({scores}): {text[:80]}")
    return "\n".join(lines)


def _count_lines(path):
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def command_score(args):
    from tqdm.auto import tqdm

    from ..data.readers import read_conversations
    scorer = build_scorer(args)
    total = _count_lines(args.input) if not args.input.lower().endswith(".csv") else None
    summary, flagged = Counter(), Counter()
    with _open_output(args.output) as out:
        progress = tqdm(total=total, unit="conv", desc="score", disable=args.quiet or None, file=sys.stderr)
        for item, record in score_stream(read_conversations(args.input, args.input_format), scorer):
            if args.explain:
                progress.write(explain(item, record), file=sys.stderr)
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            summary["conversations"] += 1
            if "error" in record:
                summary["errors"] += 1
            else:
                summary["agent turns"] += len(record["turns"])
                flagged.update(record["labels"])
            progress.update(1)
        progress.close()
    lines = [f"{summary['conversations']} conversations, {summary['agent turns']} agent turns scored, "
             f"{summary['errors']} errors"]
    lines += [f"  {label:16s} flagged in {flagged[label]} conversations" for label in LABELS]
    print("\n".join(lines), file=sys.stderr)
    return 0


def command_train(args):
    from ..training.args import TrainingConfig
    from ..training.train import train
    overrides = {}
    for item in args.set or []:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    train(TrainingConfig.from_json(args.config, overrides))
    return 0


def command_export(args):
    from ..model.export import ExportCheckFailed, export_model
    check_file = args.check_file
    if not check_file:
        info = Path(args.model_dir) / "run_info.json"
        if not info.is_file():
            print("error: no --check-file given and no run_info.json to find the dev file in", file=sys.stderr)
            return 2
        check_file = json.loads(info.read_text())["config"]["data"]["dev_file"]
    try:
        report = export_model(args.model_dir, check_file, args.output_dir, args.max_abs_diff, args.max_f1_drop)
    except ExportCheckFailed as failure:
        print(f"error: export check failed: {failure} (see export_report.json)", file=sys.stderr)
        return 1
    print(json.dumps({k: report[k] for k in ("fp32_vs_torch_max_abs_diff", "int8_vs_fp32_max_f1_drop",
                                             "macro_f1", "size_bytes")}, indent=2))
    if args.ship_to:
        from ..model.export import ship_model
        print(f"shipped to {ship_model(args.model_dir, args.ship_to)}")
    return 0


def command_data(args):
    from ..data.stats import corpus_stats, format_stats, validate_file
    if args.data_command == "validate":
        failed = False
        for path in args.files:
            problems = validate_file(path, annotated=not args.unannotated)
            for problem in problems:
                print(f"{path}:{problem}")
            failed |= bool(problems)
            print(f"{path}: {'INVALID, ' + str(len(problems)) + ' problems' if problems else 'ok'}", file=sys.stderr)
        return 1 if failed else 0
    if args.data_command == "split":
        from ..data.split import write_splits
        report = write_splits(args.files, args.output_dir, args.test_only_domains, dev_share=args.dev_share,
                              test_share=args.test_share, near_duplicate=args.near_duplicate, seed=args.seed)
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    if args.data_command == "audit":
        from ..data.audit import surface_audit
        result = surface_audit(*args.files)
        print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else
              f"form-only classifier, test turn macro-F1 {result['test']['macro_f1']:.3f} "
              + " ".join(f"{k} {v['f1']:.3f}" for k, v in result["test"]["per_label"].items()))
        return 0
    stats = corpus_stats(args.files)
    print(json.dumps(stats, indent=2, ensure_ascii=False) if args.json else format_stats(stats))
    return 0


def parser():
    top = argparse.ArgumentParser(prog="hengwen", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    score = commands.add_parser("score", help="score conversations (JSONL or long-form CSV) to JSONL")
    score.add_argument("input", help="conversations: .jsonl (one per line) or .csv (one row a message)")
    score.add_argument("-o", "--output", help="output JSONL (default: stdout)")
    score.add_argument("--model", help="model folder (default: the shipped model, or $HENGWEN_MODEL)")
    score.add_argument("--engine", choices=["onnx", "torch", "rules"], default="onnx",
                       help="onnx (default), torch (saved weights, eager) or rules (the keyword baseline)")
    score.add_argument("--quantization", choices=["auto", "int8", "fp32"], default="auto",
                       help="which ONNX file to run; auto prefers int8")
    score.add_argument("--input-format", choices=["jsonl", "csv"], help="override the file extension")
    score.add_argument("--batch-size", type=int, default=32, help="agent turns per inference batch")
    score.add_argument("--threads", type=int, default=0, help="inference threads (0: all cores)")
    score.add_argument("--explain", action="store_true", help="print each conversation's flagged turns to stderr")
    score.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    score.set_defaults(handler=command_score)

    train = commands.add_parser("train", help="fine-tune a model from a JSON config")
    train.add_argument("--config", required=True, help="training config JSON (see training/args.py)")
    train.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                       help="override one config field, e.g. --set train.epochs=1 (repeatable)")
    train.set_defaults(handler=command_train)

    export = commands.add_parser("export", help="write and check ONNX fp32 and int8 models")
    export.add_argument("model_dir")
    export.add_argument("--check-file", help="annotated JSONL for the parity checks (default: the run's dev file)")
    export.add_argument("--output-dir", help="where to write the ONNX files (default: MODEL_DIR/onnx)")
    export.add_argument("--max-abs-diff", type=float, default=1e-4, help="fp32 ONNX vs torch, probabilities")
    export.add_argument("--max-f1-drop", type=float, default=0.02, help="int8 vs fp32, per-label F1")
    export.add_argument("--ship-to", metavar="DIR",
                        help="after passing the checks, copy the int8 model, tokenizer and card to DIR "
                             "(model/default is the model the package ships)")
    export.set_defaults(handler=command_export)

    data = commands.add_parser("data", help="check and describe annotated data files")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    validate = data_commands.add_parser("validate", help="report every problem with its line; exit 1 on any")
    validate.add_argument("files", nargs="+")
    validate.add_argument("--unannotated", action="store_true", help="input for scoring: labels not required")
    stats = data_commands.add_parser("stats", help="conversations, turns, labels, industries, scripts")
    stats.add_argument("files", nargs="+")
    stats.add_argument("--json", action="store_true")
    split = data_commands.add_parser("split", help="train/dev/test with near-duplicates kept together")
    split.add_argument("files", nargs="+", help="annotated JSONL files to pool")
    split.add_argument("--output-dir", required=True)
    split.add_argument("--test-only-domains", nargs="*", default=[], help="meta.domain values seen only in test")
    split.add_argument("--dev-share", type=float, default=0.12)
    split.add_argument("--test-share", type=float, default=0.15)
    split.add_argument("--near-duplicate", type=float, default=0.35,
                       help="character 4-gram Jaccard at or above which conversations stay in one split")
    split.add_argument("--seed", type=int, default=7)
    audit = data_commands.add_parser("audit", help="macro-F1 of a classifier that sees only length and keywords")
    audit.add_argument("files", nargs=3, metavar=("TRAIN", "DEV", "TEST"))
    audit.add_argument("--json", action="store_true")
    data.set_defaults(handler=command_data)
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
