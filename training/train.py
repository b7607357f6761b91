"""`hengwen train`: fine-tune the multi-label turn classifier, choose thresholds on dev, write metrics."""
import json
import math
import platform
import random
import time
from pathlib import Path

import numpy as np

from ..model.classifier import build_classifier, resolve_base, set_hengwen_settings
from ..model.labels import LABELS
from ..serving.runtime import pad_batch
from .args import TrainingConfig
from .card import write_model_card
from .dataset import data_file_hashes, gold_matrix, label_revisions, load_turn_dataset
from .metrics import choose_thresholds, conversation_level, multilabel_metrics


def length_grouped_batches(lengths, batch_size, rng):
    """Shuffled batches of similar length: pads little, still random across epochs."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def model_inputs(dataset):
    """The encoded features of a dataset as plain lists, read once: row access on Arrow is slow per step."""
    return dataset.select_columns(["input_ids", "token_type_ids", "attention_mask"]).to_list()


def to_tensors(features, indices, pad_id, device="cpu"):
    import torch
    return {k: torch.from_numpy(v).to(device) for k, v in pad_batch([features[i] for i in indices], pad_id).items()}


def resolve_device(name):
    """`auto`: the first CUDA GPU when torch sees one, else the CPU; otherwise a torch device string."""
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def predict(model, dataset, pad_id, batch_size=64):
    """Sigmoid probabilities for every example of an encoded dataset, in dataset order."""
    import torch
    model.eval()
    device = next(model.parameters()).device
    features = model_inputs(dataset)
    lengths = [len(f["input_ids"]) for f in features]
    order = sorted(range(len(dataset)), key=lambda i: lengths[i])
    probabilities = np.zeros((len(dataset), len(LABELS)), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            logits = model(**to_tensors(features, chunk, pad_id, device)).logits
            probabilities[chunk] = torch.sigmoid(logits).float().cpu().numpy()
    return probabilities


def evaluate(model, dataset, pad_id, thresholds=None):
    """Turn- and conversation-level metrics; thresholds chosen on this data when none are given."""
    probabilities = predict(model, dataset, pad_id)
    gold = gold_matrix(dataset)
    thresholds = thresholds or choose_thresholds(gold, probabilities)
    conversation_gold, conversation_scores = conversation_level(gold, probabilities, dataset["conversation"])
    return {"turn": multilabel_metrics(gold, probabilities, thresholds),
            "conversation": multilabel_metrics(conversation_gold, conversation_scores, thresholds)}, thresholds


def write_phase_metrics(output_dir, phases):
    """metrics_{phase}.json for every phase ("dev", "test") of a saved model folder."""
    for phase, metrics in phases.items():
        (Path(output_dir) / f"metrics_{phase}.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))


def positive_weights(gold, mode):
    import torch
    if mode == "none":
        return None
    if mode != "sqrt":
        raise ValueError(f"pos_weight must be none or sqrt, got {mode!r}")
    known = (~np.isnan(gold)).sum(axis=0)
    positives = np.nansum(gold, axis=0).clip(min=1)
    return torch.tensor(np.minimum(np.sqrt((known - positives) / positives), 8.0), dtype=torch.float32)


def loss_function(train_gold, args, device):
    """BCE per label (optionally with positive weights), or its focal form, which scales each term by
    (1 - p_t)^gamma so that the many easy clean turns weigh less than the rare hard ones. A NaN target (a label
    the example cannot show, see `dataset.STAGE_LABELS`) adds nothing; the loss is the mean over the others."""
    import torch
    weights = positive_weights(train_gold, args.pos_weight)
    weights = weights.to(device) if weights is not None else None
    if args.loss not in ("bce", "focal"):
        raise ValueError(f"loss must be bce or focal, got {args.loss!r}")

    def loss(logits, targets):
        known = ~torch.isnan(targets)
        targets = torch.nan_to_num(targets)
        terms = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights,
                                                                      reduction="none")
        if args.loss == "focal":
            probabilities = torch.sigmoid(logits)
            p_true = probabilities * targets + (1 - probabilities) * (1 - targets)
            terms = (1 - p_true) ** args.focal_gamma * terms
        return terms[known].mean()
    return loss


def train(config: TrainingConfig, log=print):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup
    from transformers import set_seed
    from tqdm.auto import tqdm

    args = config.train
    set_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    if config.model.init_from:
        tokenizer_dir = config.model.init_from
        model = AutoModelForSequenceClassification.from_pretrained(tokenizer_dir)
    else:
        tokenizer_dir = resolve_base(config.model.base_model)
        model = build_classifier(config.model.base_model, config.model.classifier_dropout)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    pad_id = tokenizer.pad_token_id
    device = resolve_device(args.device)
    model.to(device)
    if config.model.freeze_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)

    # hashed before reading, so that a data file edited while the run trains is not recorded as what it learned
    data_sha256 = data_file_hashes(config.data)
    copies = {"untimed_copies": config.data.untimed_copies, "reply_only_copies": config.data.reply_only_copies}
    revisions = label_revisions(config.data.label_revision_files,
                                [config.data.train_file] + config.data.extra_train_files)
    train_set = load_turn_dataset(config.data.train_file, tokenizer_dir, config.encoding,
                                  untimed_share=config.data.untimed_share, share=config.data.train_share,
                                  revisions=revisions[str(config.data.train_file)], **copies)
    if config.data.extra_train_files:
        from datasets import concatenate_datasets
        train_set = concatenate_datasets([train_set] + [
            load_turn_dataset(path, tokenizer_dir, config.encoding, revisions=revisions[str(path)], **copies)
            for path in config.data.extra_train_files])
    if args.max_train_examples:
        train_set = train_set.shuffle(seed=args.seed).select(range(min(args.max_train_examples, len(train_set))))
    dev_set = load_turn_dataset(config.data.dev_file, tokenizer_dir, config.encoding)
    log(f"train examples {len(train_set)}, dev examples {len(dev_set)}")

    train_gold = gold_matrix(train_set)
    loss_fn = loss_function(train_gold, args, device)
    train_features = model_inputs(train_set)
    lengths = [len(f["input_ids"]) for f in train_features]
    rng = random.Random(args.seed)
    steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * args.epochs))
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total_steps * args.warmup_ratio), total_steps)

    history, best = [], None
    step, epoch = 0, 0
    progress = tqdm(total=total_steps, desc="train", unit="step", mininterval=5)
    while step < total_steps:
        epoch += 1
        model.train()
        running = []
        for batch_indices in length_grouped_batches(lengths, args.batch_size, rng):
            if step >= total_steps:
                break
            batch = to_tensors(train_features, batch_indices, pad_id, device)
            targets = torch.from_numpy(train_gold[batch_indices]).to(device)
            loss = loss_fn(model(**batch).logits, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            running.append(loss.item())
            progress.update(1)
            if step % 25 == 0:
                log(f"epoch {epoch} step {step}/{total_steps} loss {np.mean(running[-25:]):.4f} "
                    f"elapsed {time.time() - started:.0f}s")
        if args.eval_every_epoch or step >= total_steps:
            metrics, thresholds = evaluate(model, dev_set, pad_id)
            entry = {"epoch": epoch, "step": step, "train_loss": round(float(np.mean(running)), 4),
                     "dev_macro_f1": metrics["turn"]["macro_f1"], "elapsed_s": round(time.time() - started)}
            history.append(entry)
            log(json.dumps(entry))
            if best is None or metrics["turn"]["macro_f1"] > best[0]:
                best = (metrics["turn"]["macro_f1"], {k: v.detach().clone() for k, v in model.state_dict().items()},
                        thresholds, metrics, epoch)
    progress.close()

    _, state, thresholds, dev_metrics, best_epoch = best
    model.load_state_dict(state)
    model.to("cpu")  # saved weights and the test evaluation below are device-independent
    set_hengwen_settings(model.config, thresholds, config.encoding)
    model.config.hengwen_base_model = config.model.base_model
    model.config.hengwen_model_version = output_dir.name
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    train_seconds = round(time.time() - started)

    phases = {"dev": dev_metrics}
    if config.data.test_file:
        test_set = load_turn_dataset(config.data.test_file, tokenizer_dir, config.encoding)
        phases["test"], _ = evaluate(model, test_set, pad_id, thresholds)
    write_phase_metrics(output_dir, phases)
    run_info = {
        "config": config.to_dict(), "best_epoch": best_epoch, "history": history, "train_seconds": train_seconds,
        "data_sha256": data_sha256,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch_threads": torch.get_num_threads(), "device": device,
                    "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None},
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    (output_dir / "run_info.json").write_text(json.dumps(run_info, indent=2, ensure_ascii=False))
    write_model_card(output_dir, run_info, phases)
    log(f"saved {output_dir} (best epoch {best_epoch}, dev macro-F1 {dev_metrics['turn']['macro_f1']}, "
        f"{train_seconds}s)")
    return output_dir, phases
