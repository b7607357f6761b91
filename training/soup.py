"""`hengwen soup`: average the weights of several fine-tuned runs into one model ("model soup", Wortsman et al.
2022, arXiv:2203.05482).

Runs that start from the same weights and differ in epochs, loss, data order or extra data end in nearby points;
their weight average often generalises better than each of them and costs nothing at inference. Two recipes:

- greedy (default): ingredients sorted by their own dev macro-F1; starting from the best, each next one stays in
  the soup only if the soup's dev macro-F1 does not go down with it.
- uniform: the plain average of every ingredient.

Every ingredient must read text the same way (same `hengwen_encoding`, labels and weight shapes); the soup keeps
that encoding, gets thresholds chosen on dev like a trained run, and is exported and calibrated like one. The one
exception is `max_length` when the soup is given its own: runs trained on shorter and longer windows of the same
layout share every weight (BERT's position table covers both), so they can be averaged and read at that length.
"""
import dataclasses
import json
import time
from pathlib import Path

from ..model.classifier import set_hengwen_settings
from ..model.encoding import EncodingConfig
from .card import write_derived_card
from .dataset import file_sha256, load_turn_dataset
from .train import evaluate, write_phase_metrics

RECIPES = ("greedy", "uniform")
# Settings that must agree for weights to be averaged and read by one encoder and one head.
SHARED_SETTINGS = ("hengwen_encoding", "id2label", "model_type", "hidden_size", "num_hidden_layers", "vocab_size")


def _config(run_dir):
    path = Path(run_dir) / "config.json"
    if not path.is_file() or not (Path(run_dir) / "model.safetensors").is_file():
        raise ValueError(f"{run_dir}: not a trained run (needs config.json and model.safetensors)")
    return json.loads(path.read_text(encoding="utf-8"))


def _shared(config, ignore_max_length):
    shared = {key: config.get(key) for key in SHARED_SETTINGS}
    if ignore_max_length:
        shared["hengwen_encoding"] = {key: value for key, value in (shared["hengwen_encoding"] or {}).items()
                                      if key != "max_length"}
    return shared


def check_compatible(run_dirs, ignore_max_length=False):
    """Refuse runs that cannot share one encoder and one head; returns the first run's config."""
    if len(run_dirs) < 2:
        raise ValueError("a soup needs at least two runs")
    first = _config(run_dirs[0])
    first_shared = _shared(first, ignore_max_length)
    for run_dir in run_dirs[1:]:
        other = _shared(_config(run_dir), ignore_max_length)
        differing = [key for key in SHARED_SETTINGS if other[key] != first_shared[key]]
        if differing:
            raise ValueError(f"{run_dir} differs from {run_dirs[0]} in {', '.join(differing)}: "
                             "only runs that encode text alike and share labels and shapes can be averaged")
    return first


def average_weights(states):
    """The element-wise mean of state dicts with the same keys and shapes, in the first one's dtypes."""
    keys = set(states[0])
    for state in states[1:]:
        if set(state) != keys or any(state[key].shape != states[0][key].shape for key in keys):
            raise ValueError("the runs' weights differ in names or shapes")
    return {key: (sum(state[key].double() for state in states) / len(states)).to(states[0][key].dtype)
            for key in states[0]}


class _DevJudge:
    """Dev macro-F1 (thresholds chosen on dev, as at the end of training) of a set of weights in one model."""

    def __init__(self, template_dir, dev_file, encoding):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        self.model = AutoModelForSequenceClassification.from_pretrained(template_dir)
        self.pad_id = AutoTokenizer.from_pretrained(template_dir).pad_token_id
        self.dev_set = load_turn_dataset(dev_file, template_dir, encoding)

    def __call__(self, state):
        self.model.load_state_dict(state)
        return evaluate(self.model, self.dev_set, self.pad_id)


def make_soup(run_dirs, dev_file, output_dir, recipe="greedy", test_file=None, max_length=None, log=print):
    """Average run_dirs' weights by `recipe`, choose thresholds on dev_file, save a run folder in output_dir.
    With `max_length`, the runs may differ in that encoding setting and the soup reads text at it.
    Returns the soup's description (what `soup.json` in output_dir holds)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer
    if recipe not in RECIPES:
        raise ValueError(f"unknown soup recipe {recipe!r} (one of {', '.join(RECIPES)})")
    run_dirs = [str(run_dir) for run_dir in run_dirs]
    template = check_compatible(run_dirs, ignore_max_length=max_length is not None)
    encoding = EncodingConfig.from_dict(template.get("hengwen_encoding", {}))
    if max_length is not None:
        encoding = dataclasses.replace(encoding, max_length=max_length)
    started = time.time()
    judge = _DevJudge(run_dirs[0], dev_file, encoding)
    states = {run_dir: load_file(str(Path(run_dir) / "model.safetensors")) for run_dir in run_dirs}

    alone, scores = {}, {}
    for run_dir in run_dirs:
        alone[run_dir] = judge(states[run_dir])
        scores[run_dir] = alone[run_dir][0]["turn"]["macro_f1"]
        log(f"ingredient {run_dir}: dev macro-F1 {scores[run_dir]:.4f}")
    ranked = sorted(run_dirs, key=lambda run_dir: -scores[run_dir])
    trace = []
    if recipe == "uniform":
        kept = ranked
        metrics, thresholds = judge(average_weights([states[run_dir] for run_dir in kept]))
    else:
        kept = ranked[:1]
        metrics, thresholds = alone[kept[0]]
        for candidate in ranked[1:]:
            trial_metrics, trial_thresholds = judge(average_weights([states[run_dir] for run_dir in kept + [candidate]]))
            added = trial_metrics["turn"]["macro_f1"] >= metrics["turn"]["macro_f1"]
            trace.append({"candidate": candidate, "dev_macro_f1_with_it": trial_metrics["turn"]["macro_f1"],
                          "kept": added})
            log(f"with {candidate}: dev macro-F1 {trial_metrics['turn']['macro_f1']:.4f} "
                f"({'kept' if added else 'left out'})")
            if added:
                kept, metrics, thresholds = kept + [candidate], trial_metrics, trial_thresholds

    soup_state = average_weights([states[run_dir] for run_dir in kept])
    model = judge.model
    model.load_state_dict(soup_state)
    set_hengwen_settings(model.config, thresholds, encoding)
    output_dir = Path(output_dir)
    model.config.hengwen_model_version = output_dir.name
    model.save_pretrained(output_dir)
    AutoTokenizer.from_pretrained(run_dirs[0]).save_pretrained(output_dir)

    phases = {"dev": metrics}
    if test_file:
        test_set = load_turn_dataset(test_file, run_dirs[0], encoding)
        phases["test"], _ = evaluate(model, test_set, judge.pad_id, thresholds)
    write_phase_metrics(output_dir, phases)
    description = {"recipe": recipe, "max_length": encoding.max_length, "dev_file": str(dev_file),
                   "dev_sha256": file_sha256(dev_file),
                   "ingredients": [{"run": run_dir, "dev_macro_f1": scores[run_dir], "kept": run_dir in kept}
                                   for run_dir in ranked],
                   "greedy_trace": trace, "dev_macro_f1": metrics["turn"]["macro_f1"],
                   "seconds": round(time.time() - started)}
    (output_dir / "soup.json").write_text(json.dumps(description, indent=2, ensure_ascii=False), encoding="utf-8")
    ingredients = "\n".join(f"- `{item['run']}` (dev macro-F1 {item['dev_macro_f1']:.3f})"
                            f"{'' if item['kept'] else ': tried, left out'}" for item in description["ingredients"])
    section = (f"## Weight average\nThis model is the {recipe} average (`hengwen soup`) of the weights of these "
               f"runs, chosen on `{dev_file}`; the Training section describes the first of them.\n\n{ingredients}\n\n")
    # The first ingredient may have been trained at another length than the soup reads (`--max-length`).
    write_derived_card(kept[0], output_dir, "soup", description, phases, section, max_length=encoding.max_length)
    log(f"saved {output_dir}: {len(kept)} of {len(run_dirs)} runs averaged, dev macro-F1 "
        f"{metrics['turn']['macro_f1']:.4f}")
    return description
