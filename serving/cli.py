"""The `hengwen` command: score, report, train, adapt, compare, soup, export, eval, calibrate, data validate/stats
(and the service, in serve)."""
import argparse
import json
import os
import sys
from pathlib import Path

from ..model.export import DEFAULT_QUANTIZATION_RECIPE, QUANTIZATION_RECIPES
from ..model.labels import LABELS
# build_scorer takes any object with the ScorerSpec fields, such as the parsed arguments of score and eval.
from .batch import build_scorer


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


def _reader_options(args):
    """input_format, columns and default_timezone from the reader flags `score` and `data attach-labels` share."""
    from ..data.readers import parse_column_mapping, parse_utc_offset
    options = {"input_format": args.input_format}
    if args.columns:
        options["columns"] = parse_column_mapping(args.columns)
    if args.timezone:
        options["default_timezone"] = parse_utc_offset(args.timezone)
    return options


def command_score(args):
    from .batch import ScorerSpec, score_file, sigterm_as_interrupt
    scorecard = None
    if args.scorecard:
        from .scorecard import load_scorecard
        scorecard = load_scorecard(None if args.scorecard == "default" else args.scorecard)
    spec = ScorerSpec(engine=args.engine, model=args.model, quantization=args.quantization, threads=args.threads,
                      batch_size=args.batch_size)
    reader_options = _reader_options(args)
    try:
        with sigterm_as_interrupt():
            summary = score_file(args.input, args.output, spec, workers=args.workers, resume=args.resume,
                                 output_format=args.format, scorecard=scorecard, keep_text=args.keep_text,
                                 progress=False if args.quiet else None, describe=explain if args.explain else None,
                                 **reader_options)
    except KeyboardInterrupt:
        print("interrupted; run the same command with --resume to continue", file=sys.stderr)
        return 130
    lines = [f"{summary.conversations} conversations, {summary.agent_turns} agent turns scored, "
             f"{summary.errors} errors"]
    if summary.skipped:
        lines[0] += f" ({summary.skipped} already in {args.output}, skipped)"
    def of_turns(count):
        return f"{count} agent turns ({count / summary.agent_turns if summary.agent_turns else 0.0:.1%})"
    lines.append(f"  any label        flagged in {of_turns(summary.flagged_turns['any'])}")
    lines += [f"  {label:16s} flagged in {summary.flagged[label]} conversations, "
              f"{of_turns(summary.flagged_turns[label])}" for label in LABELS]
    if summary.interrupted:
        lines.append(f"interrupted: {summary.skipped + summary.conversations} of {summary.total} conversations are "
                     f"in {args.output or 'the output'}; run the same command with --resume to score the rest")
    print("\n".join(lines), file=sys.stderr)
    return 130 if summary.interrupted else 0


def command_report(args):
    from .report import write_report
    figures = write_report(args.scored, args.output, top=args.top, agent_field=args.agent_field,
                           team_field=args.team_field, date_field=args.date_field)
    print(f"{args.output}: {figures['conversations']} conversations, {figures['agents']} agents, "
          f"{figures['teams']} teams, {figures['days']} days"
          + ("" if figures["with_text"] else "; no transcripts in the input (score with --keep-text for text "
             "and evidence)"), file=sys.stderr)
    return 0


def _overrides(items):
    """`--set KEY=VALUE` items -> {KEY: value}, the value read as JSON when it parses (numbers, true, lists)."""
    overrides = {}
    for item in items or []:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def command_train(args):
    from ..training.args import TrainingConfig
    from ..training.train import train
    train(TrainingConfig.from_json(args.config, _overrides(args.set)))
    return 0


def command_experiments(args):
    from ..training.experiments import experiment_rows, format_table, run_experiments
    if not args.table_only:
        run_experiments(args.configs, rerun=args.rerun)
    table = format_table(experiment_rows(args.configs, args.reference), with_test=args.with_test)
    if args.table:
        Path(args.table).write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


def command_adapt(args):
    from ..training.adapt import DEFAULT_CONFIG, AdaptConfig, adapt
    overrides = {}
    if args.unlabeled:
        # The configured expected flag rates describe the configured files' source, not these exports.
        overrides |= {"unlabeled.files": args.unlabeled, "unlabeled.expected_flag_rates": {}}
    if args.input_format:
        overrides["unlabeled.input_format"] = args.input_format
    if args.columns:
        from ..data.readers import parse_column_mapping
        overrides["unlabeled.columns"] = parse_column_mapping(args.columns)
    if args.timezone:
        overrides["unlabeled.timezone"] = args.timezone
    if args.from_model:
        overrides["from_model"] = args.from_model
    report = adapt(AdaptConfig.from_json(args.config or DEFAULT_CONFIG, overrides | _overrides(args.set)), args.out)
    summary = report["summary"]
    for name, row in summary["models"].items():
        test = "" if row["test_macro_f1"] is None else f", test {row['test_macro_f1']:.3f}"
        rates = " ".join(f"{label} {rate:.1%}" for label, rate in row["unlabeled_turn_flag_rate"].items())
        print(f"{name:16s} dev macro-F1 {row['dev_macro_f1']:.3f}{test}; unlabelled turns flagged: {rates}")
    print(f"best by dev: {summary['best_by_dev']}; report: {Path(args.out) / 'adapt_report.json'}")
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
        report = export_model(args.model_dir, check_file, args.output_dir, args.max_abs_diff, args.max_f1_drop,
                              quantization_recipe=args.quantization_recipe)
    except ExportCheckFailed as failure:
        print(f"error: export check failed: {failure} (see export_report.json)", file=sys.stderr)
        return 1
    print(json.dumps({k: report[k] for k in ("fp32_vs_torch_max_abs_diff", "int8_vs_fp32_max_f1_drop",
                                             "macro_f1", "size_bytes")}, indent=2))
    if args.ship_to:
        from ..model.export import ship_model
        print(f"shipped to {ship_model(args.model_dir, args.ship_to)}")
    return 0


def command_eval(args):
    from ..training.evaluate import evaluate_file, format_summary
    scorer = build_scorer(args)
    out_dir = Path(args.out or Path("runs") / "eval" / f"{Path(args.gold).stem}-{args.engine}")
    report, result = evaluate_file(args.gold, scorer, args.engine, out_dir, worst=args.worst, quiet=args.quiet)
    print(format_summary(report, result.confusion))
    if args.robustness or args.checks:
        from ..training.dataset import read_annotated
        from ..training.robustness import format_robustness, robustness_report
        robustness = robustness_report(scorer, read_annotated(args.gold), args.checks, args.seed, result.metrics,
                                       quiet=args.quiet)
        (out_dir / "robustness.json").write_text(json.dumps(robustness, indent=2), encoding="utf-8")
        print(format_robustness(robustness))
    print(f"report written to {out_dir}/")
    return 0


def command_calibrate(args):
    from ..training.calibration import calibrate_model, format_calibration
    report = calibrate_model(args.model_dir, args.dev, engine=args.engine, quantization=args.quantization,
                             threads=args.threads, batch_size=args.batch_size, bins=args.bins,
                             untimed=args.untimed)
    print(format_calibration(report))
    print(f"temperatures and thresholds written to {Path(args.model_dir) / 'config.json'}, "
          f"report to {Path(args.model_dir) / 'calibration.json'}")
    return 0


def command_compare(args):
    from ..training.compare import compare_reports, compare_runs, format_comparison
    if args.reports:
        results = compare_reports(args.reference, args.runs, resamples=args.resamples, seed=args.seed)
    elif args.dev:
        results = compare_runs(args.reference, args.runs, args.dev, resamples=args.resamples, seed=args.seed)
    else:
        print("error: give --dev FILE... to compare training runs, or --reports to compare eval folders",
              file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(format_comparison(args.reference, results, "the reports' turns" if args.reports else "dev"))
    return 0


def command_soup(args):
    from ..training.soup import make_soup
    make_soup(args.runs, args.dev, args.out, recipe=args.recipe, test_file=args.test, max_length=args.max_length)
    return 0


def command_refit_head(args):
    from ..training.head import refit_head
    refit_head(args.model_dir, args.train, args.dev, args.out, c_grid=args.c, untimed_copies=args.untimed_copies,
               int8_recipe=args.int8_recipe)
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
        result = surface_audit(args.train, args.dev, args.test)
        print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else
              f"form-only classifier, test turn macro-F1 {result['test']['macro_f1']:.3f} "
              + " ".join(f"{k} {v['f1']:.3f}" for k, v in result["test"]["per_label"].items()))
        return 0
    if args.data_command == "attach-labels":
        from ..data.standoff import attach_labels, read_standoff
        labels, problems = read_standoff(args.labels)
        if not problems:
            annotated, problems = attach_labels(args.export, labels, **_reader_options(args))
        if problems:
            print("\n".join(problems), file=sys.stderr)
            print(f"{len(problems)} problems; nothing written", file=sys.stderr)
            return 1
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in annotated),
                                     encoding="utf-8")
        print(f"{len(annotated)} conversations, {len(labels)} labelled agent turns -> {args.output}", file=sys.stderr)
        return 0
    if args.data_command == "revise-labels":
        from ..training.dataset import label_revisions, read_annotated, revised
        try:
            revisions = label_revisions(args.revisions, [args.gold])[str(args.gold)]
        except ValueError as error:
            print(f"{error}\nnothing written", file=sys.stderr)
            return 1
        by_turn = {(conversation_id, turn): labels for conversation_id, turn, labels in revisions}
        conversations = read_annotated(args.gold)
        reviewed = [revised(conversation, by_turn) for conversation in conversations]
        changed = sum(set(before.get("labels", ())) != set(after.get("labels", ()))
                      for conversation, revision in zip(conversations, reviewed)
                      for before, after in zip(conversation["turns"], revision["turns"]))
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text("".join(json.dumps(conversation, ensure_ascii=False) + "\n"
                                             for conversation in reviewed), encoding="utf-8")
        print(f"{len(by_turn)} reviewed turns, {changed} relabelled -> {args.output}", file=sys.stderr)
        return 0
    if args.data_command == "agreement":
        from ..data.agreement import agreement
        result = agreement(args.first, args.second)
        if args.json:
            print(json.dumps(result, indent=2, ensure_ascii=False))
        else:
            print(f"{result['conversations']} conversations, {result['agent_turns']} agent turns, "
                  f"{result['turns_in_full_agreement']:.1%} of turns labelled identically")
            for label, figures in result["per_label"].items():
                print(f"  {label:16s} kappa {figures['kappa']:.3f}  (first {figures['first_positive']}, "
                      f"second {figures['second_positive']}, both {figures['both_positive']})")
        return 0
    stats = corpus_stats(args.files)
    print(json.dumps(stats, indent=2, ensure_ascii=False) if args.json else format_stats(stats))
    return 0


def command_serve(args):
    import uvicorn

    from .app import SETTINGS_ENV, ServeSettings
    settings = ServeSettings(model=args.model, engine=args.engine, quantization=args.quantization,
                             threads=args.threads, token=args.token or None, max_body_bytes=args.max_body_bytes,
                             max_batch=args.max_batch, max_queue=args.max_queue,
                             inference_slots=args.inference_slots, evidence_words=args.evidence_words,
                             debug=args.debug)
    # Every worker process builds its own app from the environment (uvicorn's factory mode).
    os.environ[SETTINGS_ENV] = settings.to_json()
    log_config = json.loads(json.dumps(uvicorn.config.LOGGING_CONFIG))
    log_config["loggers"]["hengwen"] = {"handlers": ["default"], "level": "DEBUG" if args.debug else "INFO"}
    # uvicorn's access log would print query strings (the console's ?token=); the app logs requests itself.
    uvicorn.run("hengwen.serving.app:create_app_from_environment", factory=True, host=args.host, port=args.port,
                workers=args.workers, access_log=False, log_config=log_config)
    return 0


def parser():
    top = argparse.ArgumentParser(prog="hengwen", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    score = commands.add_parser("score", help="score conversations (JSONL, long-form CSV or Excel) to JSONL or CSV")
    score.add_argument("input", help="conversations: .jsonl (one per line), .csv or .xlsx (one row a message)")
    score.add_argument("-o", "--output", help="output file (default: stdout)")
    score.add_argument("--model", help="model folder (default: the shipped model, or $HENGWEN_MODEL)")
    score.add_argument("--engine", choices=["onnx", "torch", "rules"], default="onnx",
                       help="onnx (default), torch (saved weights, eager) or rules (the keyword baseline)")
    score.add_argument("--quantization", choices=["auto", "int8", "fp32"], default="auto",
                       help="which ONNX file to run; auto prefers int8")
    score.add_argument("--input-format", choices=["jsonl", "csv", "xlsx"], help="override the file extension")
    score.add_argument("--columns", metavar="FIELD=COLUMN,...",
                       help="CSV/Excel column names, e.g. id=会话ID,role=发送方,text=内容,ts=时间; other fields "
                            "(agent=客服工号,team=组别,channel=渠道,date=日期) go to each conversation's meta")
    score.add_argument("--timezone", metavar="OFFSET",
                       help="UTC offset for CSV/Excel timestamps without one, e.g. +08:00 (else they are refused)")
    score.add_argument("--format", choices=["jsonl", "csv"], default="jsonl",
                       help="output: jsonl (one conversation a line, default) or csv (one row a turn)")
    score.add_argument("--workers", type=int, default=1,
                       help="scoring processes, each with its own model and a share of the cores; order is kept")
    score.add_argument("--resume", action="store_true",
                       help="continue an interrupted run into the same output, skipping conversations already there")
    score.add_argument("--scorecard", metavar="FILE",
                       help="QA scorecard (YAML/JSON, or 'default' for the shipped one): adds qa_score and passed")
    score.add_argument("--keep-text", action="store_true",
                       help="write each conversation's turns (role, text, ts) as `transcript`; the report needs it")
    score.add_argument("--batch-size", type=int, default=32, help="agent turns per inference batch")
    score.add_argument("--threads", type=int, default=0,
                       help="inference threads per worker (0: all cores, shared out among the workers)")
    score.add_argument("--explain", action="store_true", help="print each conversation's flagged turns to stderr")
    score.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    score.set_defaults(handler=command_score)

    report = commands.add_parser("report", help="self-contained HTML QA report (质检报告) from scored JSONL")
    report.add_argument("scored", help="output of `hengwen score` (JSONL; --keep-text for turn text and evidence)")
    report.add_argument("-o", "--output", required=True, help="HTML file to write")
    report.add_argument("--top", type=int, default=20, help="worst conversations shown in full")
    report.add_argument("--agent-field", default="agent", help="meta field holding the agent id")
    report.add_argument("--team-field", default="team", help="meta field holding the team")
    report.add_argument("--date-field", default="date",
                        help="meta field holding the date (else the first timestamp of the transcript)")
    report.set_defaults(handler=command_report)

    train = commands.add_parser("train", help="fine-tune a model from a JSON config")
    train.add_argument("--config", required=True, help="training config JSON (see training/args.py)")
    train.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                       help="override one config field, e.g. --set train.epochs=1 (repeatable)")
    train.set_defaults(handler=command_train)

    experiments = commands.add_parser("experiments", help="train several configs (finished runs reused) and "
                                                          "print a table of what each changes and scores")
    experiments.add_argument("configs", nargs="+", metavar="CONFIG", help="training config JSON files, one per row")
    experiments.add_argument("--reference", metavar="CONFIG",
                             help="config the changes are named against (default: the first CONFIG)")
    experiments.add_argument("--table", metavar="FILE", help="also write the Markdown table to FILE")
    experiments.add_argument("--table-only", action="store_true", help="train nothing; tabulate finished runs")
    experiments.add_argument("--rerun", action="store_true", help="train again even when a run is finished")
    experiments.add_argument("--with-test", action="store_true",
                             help="add the test columns (left out by default: choose on dev, then report test)")
    experiments.set_defaults(handler=command_experiments)

    adapt = commands.add_parser("adapt", help="adapt a model to unlabelled exports: masked-LM pretraining, "
                                              "fine-tuning again, self-training (training/ADAPT.md)")
    adapt.add_argument("--unlabeled", nargs="+", metavar="EXPORT",
                       help="unlabelled conversations in any format `score` reads (default: the config's "
                            "unlabeled.files)")
    adapt.add_argument("--out", required=True, help="output folder; finished steps in it are reused on a re-run")
    adapt.add_argument("--from", dest="from_model", metavar="MODEL",
                       help="training output folder of the model to adapt (default: train one from the base first)")
    adapt.add_argument("--config", help="adapt config JSON (default: the packaged training/configs/adapt.json)")
    adapt.add_argument("--input-format", choices=["jsonl", "csv", "xlsx"], help="override the files' extensions")
    adapt.add_argument("--columns", metavar="FIELD=COLUMN,...", help="CSV/Excel column names, as for `score`")
    adapt.add_argument("--timezone", metavar="OFFSET", help="UTC offset for table timestamps without one, as for "
                                                            "`score`")
    adapt.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                       help="override one config field, e.g. --set mlm.max_steps=200 or "
                            "--set finetune.overrides.train.epochs=1 (repeatable)")
    adapt.set_defaults(handler=command_adapt)

    compare = commands.add_parser("compare", help="is a run better than a reference on dev, or is it noise "
                                                  "(paired bootstrap over conversations)")
    compare.add_argument("reference", metavar="REFERENCE",
                         help="training output folder (eval folder with --reports) to compare against")
    compare.add_argument("runs", nargs="+", metavar="RUN",
                         help="training output folders (eval folders with --reports), each compared with it")
    compare.add_argument("--dev", nargs="+", metavar="FILE",
                         help="annotated JSONL to resample (the dev split); several files are pooled")
    compare.add_argument("--reports", action="store_true",
                         help="REFERENCE and RUNs are `hengwen eval` folders on one gold file, compared as they scored")
    compare.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the conversations")
    compare.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    compare.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    compare.set_defaults(handler=command_compare)

    soup = commands.add_parser("soup", help="average the weights of fine-tuned runs (greedy or uniform model soup)")
    soup.add_argument("runs", nargs="+", metavar="RUN", help="training output folders that encode text alike")
    soup.add_argument("--out", required=True, help="folder for the averaged model (a run folder: export it next)")
    soup.add_argument("--dev", required=True, help="annotated JSONL that ranks the runs and chooses the thresholds")
    soup.add_argument("--test", help="annotated JSONL to report once (metrics_test.json)")
    soup.add_argument("--recipe", choices=["greedy", "uniform"], default="greedy",
                      help="greedy: keep a run only if dev macro-F1 does not drop with it; uniform: average all")
    soup.add_argument("--max-length", type=int,
                      help="read text at this many tokens; the runs may then differ in encoding.max_length only")
    soup.set_defaults(handler=command_soup)

    refit = commands.add_parser("refit-head", help="fit a run's classification layer again on its frozen features "
                                                   "(one logistic regression per label, C chosen on dev)")
    refit.add_argument("model_dir", help="a training run or soup folder (needs run_info.json)")
    refit.add_argument("--train", nargs="+", required=True, metavar="FILE", help="annotated JSONL to fit on")
    refit.add_argument("--dev", required=True, help="annotated JSONL that chooses C and the thresholds")
    refit.add_argument("--out", required=True, help="folder for the model with the new head (a run folder: export it next)")
    refit.add_argument("--c", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1], metavar="C",
                       help="inverse L2 regularization strengths to try")
    refit.add_argument("--untimed-copies", action="store_true",
                       help="also fit on a copy without timestamps of every timestamped conversation, as training does")
    refit.add_argument("--int8-recipe", choices=[name for name in QUANTIZATION_RECIPES if "-head-fp32" in name],
                       help="also encode every turn with the int8 file this recipe makes of the model, fit on both "
                            "engines' features and choose C on both; export the result with the same recipe")
    refit.set_defaults(handler=command_refit_head)

    export = commands.add_parser("export", help="write and check ONNX fp32 and int8 models")
    export.add_argument("model_dir")
    export.add_argument("--check-file", help="annotated JSONL for the parity checks (default: the run's dev file)")
    export.add_argument("--output-dir", help="where to write the ONNX files (default: MODEL_DIR/onnx)")
    export.add_argument("--max-abs-diff", type=float, default=1e-4, help="fp32 ONNX vs torch, probabilities")
    export.add_argument("--max-f1-drop", type=float, default=0.02, help="int8 vs fp32, per-label F1")
    export.add_argument("--quantization-recipe", choices=list(QUANTIZATION_RECIPES),
                        default=DEFAULT_QUANTIZATION_RECIPE,
                        help="how the int8 file is quantized: "
                             + "; ".join(f"{name}: {meaning}" for name, meaning in QUANTIZATION_RECIPES.items()))
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
    # One positional per file: argparse cannot print help for a tuple metavar on a positional (Python 3.11).
    for split in ("train", "dev", "test"):
        audit.add_argument(split, metavar=split.upper(), help=f"annotated JSONL of the {split} split")
    audit.add_argument("--json", action="store_true")
    agree = data_commands.add_parser("agreement", help="Cohen's kappa per label between two annotations")
    agree.add_argument("first", metavar="FIRST", help="annotated JSONL, first annotation")
    agree.add_argument("second", metavar="SECOND", help="the same conversations, second annotation")
    agree.add_argument("--json", action="store_true", help="also list every disagreement")
    attach = data_commands.add_parser("attach-labels", help="join stand-off labels (id, turn, labels; no text) with "
                                                            "the export they label into an annotated JSONL")
    attach.add_argument("export", metavar="EXPORT", help="the conversations, in any format `score` reads")
    attach.add_argument("labels", metavar="LABELS", help='JSONL, one {"id", "turn", "labels"} line per agent turn')
    attach.add_argument("-o", "--output", required=True, help="annotated JSONL to write (labelled conversations)")
    attach.add_argument("--input-format", choices=["jsonl", "csv", "xlsx"], help="override the export's extension")
    attach.add_argument("--columns", metavar="FIELD=COLUMN,...", help="CSV/Excel column names, as for `score`")
    attach.add_argument("--timezone", metavar="OFFSET", help="UTC offset for table timestamps, as for `score`")
    revise = data_commands.add_parser("revise-labels", help="an annotated file with stand-off label revisions "
                                                            "applied (a review's labels, the annotated file unchanged)")
    revise.add_argument("gold", metavar="GOLD", help="annotated JSONL")
    revise.add_argument("revisions", metavar="REVISIONS", nargs="+",
                        help='stand-off JSONL, {"id", "turn", "labels"} per revised agent turn; lines that name '
                             "no agent turn of GOLD are refused")
    revise.add_argument("-o", "--output", required=True, help="annotated JSONL to write")
    data.set_defaults(handler=command_data)

    from ..training.robustness import CHECKS
    evaluation = commands.add_parser("eval", help="metrics, curves, calibration and bad cases on an annotated file")
    evaluation.add_argument("gold", help="annotated JSONL (every agent turn with its labels)")
    evaluation.add_argument("--model", help="model folder (default: the shipped model, or $HENGWEN_MODEL)")
    evaluation.add_argument("--engine", choices=["onnx", "torch", "rules"], default="onnx",
                            help="onnx (default), torch (saved weights, eager) or rules (the keyword baseline)")
    evaluation.add_argument("--quantization", choices=["auto", "int8", "fp32"], default="auto",
                            help="which ONNX file to run; auto prefers int8")
    evaluation.add_argument("--out", help="report folder (default: runs/eval/GOLD-ENGINE)")
    evaluation.add_argument("--worst", type=int, default=20,
                            help="false positives and false negatives kept per label in bad_cases.jsonl")
    evaluation.add_argument("--robustness", action="store_true",
                            help="also score transformed copies of the file and report each drop (robustness.json)")
    evaluation.add_argument("--checks", nargs="+", choices=list(CHECKS), metavar="CHECK",
                            help=f"only these robustness checks (implies --robustness): {', '.join(CHECKS)}")
    evaluation.add_argument("--seed", type=int, default=7, help="seed of the injected noise and filler turns")
    evaluation.add_argument("--batch-size", type=int, default=32, help="agent turns per inference batch")
    evaluation.add_argument("--threads", type=int, default=0, help="inference threads (0: all cores)")
    evaluation.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    evaluation.set_defaults(handler=command_eval)

    calibrate = commands.add_parser("calibrate", help="fit per-label temperatures on dev and re-choose thresholds")
    calibrate.add_argument("model_dir", help="model folder; its config.json gets hengwen_temperatures and "
                                             "hengwen_thresholds, calibration.json the report")
    calibrate.add_argument("--dev", required=True, nargs="+", metavar="FILE",
                           help="annotated JSONL to fit on (the dev split); several files are pooled")
    calibrate.add_argument("--engine", choices=["onnx", "torch"], default="onnx",
                           help="whose probabilities to calibrate: onnx (default, what is shipped) or torch")
    calibrate.add_argument("--quantization", choices=["auto", "int8", "fp32"], default="auto",
                           help="which ONNX file to calibrate; auto prefers int8")
    calibrate.add_argument("--bins", type=int, default=10, help="reliability bins for the ECE")
    calibrate.add_argument("--untimed", action="store_true",
                           help="also fit a calibration for agent turns without ts (dev with every ts removed); "
                                "off by default: on real untimed sessions it raised false alarms (decision rule 10)")
    calibrate.add_argument("--batch-size", type=int, default=32, help="agent turns per inference batch")
    calibrate.add_argument("--threads", type=int, default=0, help="inference threads (0: all cores)")
    calibrate.set_defaults(handler=command_calibrate)

    serve = commands.add_parser("serve", help="the hint and scoring HTTP service with its agent console")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="server processes, each with its own model")
    serve.add_argument("--threads", type=int, default=0,
                       help="onnxruntime (or torch) intra-op threads per inference (0: all cores)")
    serve.add_argument("--model", help="model folder (default: the shipped model, or $HENGWEN_MODEL)")
    serve.add_argument("--engine", choices=["onnx", "torch", "rules"], default="onnx",
                       help="onnx (default), torch (saved weights, eager) or rules (the keyword baseline)")
    serve.add_argument("--quantization", choices=["auto", "int8", "fp32"], default="auto",
                       help="which ONNX file to run; auto prefers int8")
    serve.add_argument("--token", default=os.environ.get("HENGWEN_TOKEN"),
                       help="bearer token that every route but /health requires (default: $HENGWEN_TOKEN; "
                            "unset: no token)")
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    serve.add_argument("--max-batch", type=int, default=64, help="most conversations in one /v1/score request (413)")
    serve.add_argument("--max-queue", type=int, default=16,
                       help="requests that may wait for an inference slot; one more gets 429")
    serve.add_argument("--inference-slots", type=int, default=1, help="inferences run at the same time")
    serve.add_argument("--evidence-words", type=int, default=8,
                       help="most occluded variants of a draft, scored in one batch, for evidence spans")
    serve.add_argument("--debug", action="store_true", help="log transcript text (drafts); never in production")
    serve.set_defaults(handler=command_serve)
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except (OSError, ValueError) as error:  # a missing or unreadable path (a folder, no permission), or bad input
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
