"""`hengwen experiments`: train several configs (finished runs are reused) and tabulate them side by side.

Each config is one experiment row; the table names what it changes against a reference config (by default
the first one), so that a row reads "encoding.gap_markers: true -> false" rather than as a full config.
A run is reused when its output folder holds a `run_info.json` of the same config on the same data files.

Test columns are left out unless asked for (`with_test`): choices are made on dev, and a table that shows test
for every row invites choosing on it. Ask for them once the choice is made, to report it.
"""
import json
from pathlib import Path

from ..model.labels import LABELS
from .args import TrainingConfig
from .dataset import data_file_hashes


def _flat(config):
    return {f"{section}.{key}": value for section, values in config.items() for key, value in values.items()}


def changes(config, reference):
    """`section.field: old -> new` for every setting that differs, output_dir left out."""
    mine, theirs = _flat(config), _flat(reference)
    return [f"{key}: {json.dumps(theirs.get(key))} -> {json.dumps(mine.get(key))}"
            for key in sorted(set(mine) | set(theirs))
            if key != "train.output_dir" and mine.get(key) != theirs.get(key)]


def finished(config: TrainingConfig):
    """Whether the config's output folder holds a run of this very config on the data files as they are now."""
    info_path = Path(config.train.output_dir) / "run_info.json"
    if not info_path.is_file():
        return False
    info = json.loads(info_path.read_text(encoding="utf-8"))
    if TrainingConfig.from_dict(info["config"]).to_dict() != config.to_dict():
        return False
    try:
        return info["data_sha256"] == data_file_hashes(config.data)
    except FileNotFoundError:
        return False


def run_experiments(config_paths, rerun=False, log=print):
    """Train every config whose run is not finished yet; returns the configs in order."""
    from .train import train
    configs = [TrainingConfig.from_json(path) for path in config_paths]
    outputs = [config.train.output_dir for config in configs]
    if len(set(outputs)) != len(outputs):
        raise ValueError("two experiment configs share a train.output_dir: each row needs its own folder")
    for path, config in zip(config_paths, configs):
        if finished(config) and not rerun:
            log(f"{path}: finished run in {config.train.output_dir}, reused")
            continue
        log(f"{path}: training into {config.train.output_dir}")
        train(config, log=log)
    return configs


def experiment_rows(config_paths, reference_path=None):
    """One row per config with a finished run: what it changes, dev/test turn macro-F1, test F1 per label."""
    reference = TrainingConfig.from_json(reference_path or config_paths[0]).to_dict()
    rows = []
    for path in config_paths:
        config = TrainingConfig.from_json(path)
        row = {"config": str(path), "changes": changes(config.to_dict(), reference), "finished": finished(config)}
        if row["finished"]:
            folder = Path(config.train.output_dir)
            info = json.loads((folder / "run_info.json").read_text(encoding="utf-8"))
            dev = json.loads((folder / "metrics_dev.json").read_text(encoding="utf-8"))
            row |= {"dev_macro_f1": dev["turn"]["macro_f1"], "best_epoch": info["best_epoch"],
                    "train_seconds": info["train_seconds"],
                    "device": info["machine"].get("gpu") or info["machine"].get("processor") or "cpu"}
            test_path = folder / "metrics_test.json"
            if test_path.is_file():
                test = json.loads(test_path.read_text(encoding="utf-8"))["turn"]
                row |= {"test_macro_f1": test["macro_f1"],
                        "test_f1": {label: test["per_label"][label]["f1"] for label in LABELS}}
        rows.append(row)
    return rows


def format_table(rows, with_test=False):
    header = ["config", "change against the reference", "dev macro-F1",
              *(["test macro-F1", *(f"test {label}" for label in LABELS)] if with_test else []),
              "best epoch", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if not row["finished"]:
            cells = ["not run"] + ["-"] * (len(header) - 3)
        else:
            cells = [f"{row['dev_macro_f1']:.3f}", *(_test_cells(row) if with_test else []),
                     str(row["best_epoch"]), str(row["train_seconds"])]
        change = "<br>".join(f"`{item}`" for item in row["changes"]) or "(reference)"
        lines.append(f"| `{Path(row['config']).name}` | {change} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _test_cells(row):
    test_f1 = row.get("test_f1", {})
    return [f"{row['test_macro_f1']:.3f}" if "test_macro_f1" in row else "-",
            *(f"{test_f1[label]:.3f}" if label in test_f1 else "-" for label in LABELS)]
