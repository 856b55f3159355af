"""Evaluation (loss, accuracy, macro-F1), the run's log.csv, and the rows as trackers receive them."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from .batches import IGNORED, encode, summed_loss, to_device
from .data_files import Example
from .run_config import RunConfig
from .run_files import replacing

EVAL_BATCH = 64
LOG_FIELDS = ("step", "epoch", "cycle", "lr", "train_loss", "eval_loss", "eval_accuracy", "eval_macro_f1", "cycle_end", "slow_step", "experts_merged",
              "olora_penalty")
CYCLE_PREFIX = "lorasc/"  # LoRASC.cycle_metrics() names these columns so, as trackers receive them
CYCLE_COLUMNS = ("cycle", "slow_step", "experts_merged", "olora_penalty")


def macro_f1(pred: torch.Tensor, gold: torch.Tensor, classes: list[int]) -> float:
    scores = []
    for c in classes:
        tp = ((pred == c) & (gold == c)).sum().item()
        denominator = (pred == c).sum().item() + (gold == c).sum().item()
        scores.append(2 * tp / denominator if denominator else 0.0)
    return sum(scores) / len(classes)


@torch.no_grad()
def evaluate(model, tokenizer, examples: list[Example], run: RunConfig, num_classes: int, groups: tuple[int, ...] | None = None) -> dict[str, float]:
    """Loss and accuracy, on the model's device, under autocast in the run's dtype. Classification:
    accuracy and macro-F1. Causal LM: accuracy is the share of examples whose whole response (with its
    end-of-sequence token) is the greedy prediction, token_accuracy the share of response tokens. `groups`: the
    task of each head row (per-task heads): each example is scored on its task's rows, and macro-F1 averages over
    the rows of the tasks the examples come from."""
    if not examples:
        return {}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss, total_items, preds, golds, whole = 0.0, 0, [], [], []
    for i in range(0, len(examples), EVAL_BATCH):
        batch = to_device(encode(tokenizer, examples[i : i + EVAL_BATCH], run.task, run.max_length, run.chat_template, groups), device)
        with torch.autocast(device.type, dtype=run.torch_dtype, enabled=run.dtype != "float32"):
            loss, scored, labels = summed_loss(model, batch, run.task)
        kept, predicted = labels != IGNORED, scored.argmax(-1)
        total_loss += loss.item()
        total_items += int(kept.sum())
        preds.append(predicted[kept].cpu())
        golds.append(labels[kept].cpu())
        if run.task == "causal-lm":  # an example is right when every token of its response is
            whole.append(((predicted == labels) | ~kept).all(-1).cpu())
    model.train(was_training)
    pred, gold = torch.cat(preds), torch.cat(golds)
    loss, share_right = total_loss / max(1, total_items), (pred == gold).float().mean().item()
    if run.task == "classification":
        classes = list(range(num_classes)) if groups is None else [c for c in range(num_classes) if groups[c] in {groups[g] for g in gold.tolist()}]
        return {"loss": loss, "accuracy": share_right, "macro_f1": macro_f1(pred, gold, classes)}
    return {"loss": loss, "accuracy": torch.cat(whole).float().mean().item(), "token_accuracy": share_right}


def log_columns(cycle_metrics: dict) -> dict:
    """LoRASC.cycle_metrics() as log.csv's columns."""
    return {name.removeprefix(CYCLE_PREFIX): value for name, value in cycle_metrics.items()}


def tracker_values(row: dict) -> dict:
    """A log.csv row as trackers receive it (its step apart): the cycle's columns under `lorasc/`."""
    return {(CYCLE_PREFIX + key if key in CYCLE_COLUMNS else key): value for key, value in row.items()
            if value != "" and key not in ("step", "cycle_end")}


class CsvLog:
    """log.csv, rewritten from the checkpoint's rows on resume."""

    def __init__(self, path: Path, rows: list[dict]):
        self.path, self.rows = path, rows
        with replacing(path) as temporary, open(temporary, "x", newline="") as f:
            writer = csv.DictWriter(f, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:  # the file that __init__ wrote, not a link
            csv.DictWriter(f, LOG_FIELDS).writerow(row)
