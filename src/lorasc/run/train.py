"""One training run on Hugging Face Accelerate: the cascade, the loop, checkpoints, resume, exports.

Shared by `lorasc train` and the benchmark. Accelerate places the model and batches on the device,
autocasts in the run's dtype, wraps the model in DDP under `torchrun` or `accelerate launch`, and
accumulates gradients. `batch_size` is the global batch of one optimizer step: each process trains
on its contiguous share, cut into `grad_accum` micro-batches, and each share's summed loss is
weighted so that the gradients add up to those of the global batch's mean loss. Every source of
randomness is seeded: the head by `seed`, the data order by (`seed`, epoch), noise and experts by
the cascade, dropout by the RNG states that checkpoints carry. A resumed run therefore reaches the
same weights, and 2 processes reach the weights of 1 process with 2 micro-batches.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..config import LoRASCConfig
from ..methods import METHODS, Trained
from ..targets import task_type_of
from .batches import batch_at, count_items, encode, summed_loss, to_device
from .checkpoint import (Checkpoint, DamagedCheckpoint, load_checkpoint, model_fingerprint, restore_rng_states, rng_states, save_checkpoint,
                         set_trainable_dtype, trainable_parameters)
from .datasets import TaskData
from .finish import finish
from .metrics import CsvLog, evaluate, log_columns, tracker_values
from .models import load_model, model_path
from .preflight import training_data
from .run_config import RunConfig
from .run_files import unlinked
from .accelerator import PROJECT, make_accelerator, tracker_config

@dataclass
class Session:
    """What a run trains: its data, tokenizer and cascade (LoRASC, or full fine-tuning) on the device,
    and the model as Accelerate prepared it (DDP-wrapped under several processes)."""

    data: TaskData
    tokenizer: object
    cascade: Trained
    prepared: torch.nn.Module
    fingerprint: str


def build(run: RunConfig, config: LoRASCConfig, accelerator: Accelerator, data: TaskData | None = None) -> Session:
    data = training_data(run) if data is None else data
    model, tokenizer = load_model(run, data.labels, accelerator.device)
    if run.gradient_checkpointing:
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(accelerator.device)  # before the method, which draws noise on the weights' device
    cascade = build_method(run, config, model, tokenizer, data, accelerator)
    set_trainable_dtype(cascade.model, torch.float32)  # a new head keeps float32, like PEFT's adapters
    # Prepared before `begin`: the forward then autocasts, also where the engine runs it (gradient init).
    prepared = accelerator.prepare_model(cascade.model)
    return Session(data, tokenizer, cascade, prepared, model_fingerprint(model_path(run)))


def build_method(run: RunConfig, config: LoRASCConfig, model, tokenizer, data: TaskData, accelerator: Accelerator) -> Trained:
    """The run's method set up on `model` (methods.py), its expert named after the model's head."""
    if config.expert.task_type is None:  # for a classifier, PEFT then trains the new head in full
        config = dataclasses.replace(config, expert=dataclasses.replace(config.expert, task_type=task_type_of(model)))

    def upcoming_batches():  # LoRA-GA's estimate: the global batches the new expert trains on first, the same on every rank
        steps = range(trained.steps, trained.steps + config.gradient_batches)
        return [to_device(encode(tokenizer, batch_at(s, data.train, run), run.task, run.max_length, run.chat_template, data.groups), accelerator.device)
                for s in steps]

    trained = METHODS[run.method].build(model, config, grad_batches=upcoming_batches, check_replicas=accelerator.num_processes > 1)
    return trained


def micro_batches(batch: dict[str, torch.Tensor], run: RunConfig, accelerator: Accelerator):
    """This process's `grad_accum` micro-batches of a global batch, each with the factor that turns
    its summed loss into its share of the global mean (Accelerate divides by `grad_accum` and DDP
    averages over processes, so the factor multiplies both back)."""
    processes, rank = accelerator.num_processes, accelerator.process_index
    scale = processes * run.grad_accum / max(1, count_items(batch["labels"], run.task))
    parts = torch.arange(len(batch["labels"])).tensor_split(processes * run.grad_accum)
    for rows in parts[rank * run.grad_accum : (rank + 1) * run.grad_accum]:
        if len(rows):
            yield {k: v[rows] for k, v in batch.items()}, scale
        else:  # a short last batch left this one empty: a zero-weight pass keeps DDP's all-reduce in step
            yield {k: v[:1] for k, v in batch.items()}, 0.0


class Loop:
    """The training loop of one process; only the main process logs, evaluates and writes checkpoints."""

    def __init__(self, run: RunConfig, session: Session, accelerator: Accelerator, run_dir: Path):
        self.run, self.session, self.accelerator, self.run_dir = run, session, accelerator, run_dir
        self.cascade, self.model = session.cascade, session.prepared
        self.rows, self.elapsed, self.step_seconds = [], 0.0, 0.0
        self.steps_per_epoch, self.total_steps = run.steps(len(session.data.train))
        self.begin()

    def begin(self) -> None:
        """Plan the run's cycles and start the first."""
        self.cascade.begin(self.total_steps, self.steps_per_epoch)
        self.new_optimizer(self.total_steps)

    def new_optimizer(self, steps: int) -> None:
        """A fresh optimizer, and the schedule of the next `steps` steps (the cascade's cycles in them)."""
        self.optimizer = self.cascade.optimizer(lr=self.run.lr, weight_decay=self.run.weight_decay)
        self.scheduler = self.cascade.scheduler(self.optimizer, warmup_steps=self.run.warmup(steps))
        # The jagged scheduler stays out of Accelerate, which would step it once per process.
        self.prepared_optimizer = self.accelerator.prepare_optimizer(self.optimizer)

    def resume(self, checkpoint: Checkpoint) -> None:
        """The engine rebuilds the backbone from the pristine weights and its state; then the trained
        weights, the optimizer, the scheduler and the RNG continue where they were. Every part is set,
        so that resuming from an earlier checkpoint undoes a failed resume (checkpoint.load_checkpoint)."""
        self.cascade.load_state_dict(checkpoint.state["cascade"])
        parameters = trainable_parameters(self.cascade.model)
        if {n: p.shape for n, p in parameters.items()} != {n: t.shape for n, t in checkpoint.trainable.items()}:
            raise DamagedCheckpoint("its trainable weights do not match this run's model")
        with torch.no_grad():
            for name, tensor in checkpoint.trainable.items():
                parameters[name].copy_(tensor)
        self.restore_optimizer(checkpoint)
        if self.accelerator.scaler is not None:  # float16's loss scale decides which steps are skipped
            self.accelerator.scaler.load_state_dict(checkpoint.state["scaler"])
        restore_rng_states(checkpoint.state["rng"])
        self.rows, self.elapsed, self.step_seconds = checkpoint.progress["rows"], checkpoint.progress["elapsed"], checkpoint.progress["step_seconds"]

    def restore_optimizer(self, checkpoint: Checkpoint) -> None:
        self.optimizer.load_state_dict(checkpoint.state["optimizer"])
        self.scheduler.load_state_dict(checkpoint.state["scheduler"])

    def train(self, progress: bool) -> float:
        """Run the remaining steps; returns the wall time of the whole run, earlier sessions included."""
        self.start(progress)
        self.train_until(self.total_steps)
        return self.stop()

    def start(self, progress: bool) -> None:
        """The log, the trackers and the progress bar of this session of the run."""
        main = self.accelerator.is_main_process
        self.model.train()
        self.log = CsvLog(self.run_dir / "log.csv", self.rows) if main else None
        self.start_trackers()
        self.started = time.perf_counter()
        self.bar = tqdm(total=self.total_steps, initial=self.cascade.steps, disable=not (progress and main), desc=self.run.method, unit="step",
                        dynamic_ncols=True)

    def seconds(self) -> float:
        """The run's wall time so far, earlier sessions included."""
        return self.elapsed + time.perf_counter() - self.started

    def stop(self) -> float:
        """Merge what still runs, and give back the plain model; returns the run's wall time."""
        self.bar.close()
        self.cascade.finish()
        self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=False)  # the plain forward again, for evaluation and export
        return self.seconds()

    def train_until(self, end: int) -> None:
        """Optimizer steps until the cascade has taken `end`, with logs, evaluations and checkpoints as due."""
        main, window = self.accelerator.is_main_process, []
        while self.cascade.steps < end:
            lr, cycle = self.scheduler.get_last_lr()[0], self.cascade.cycle
            loss, cycle_ended = self.step()
            if not math.isfinite(loss) and self.accelerator.scaler is None:  # float16's scaler skips such steps itself
                raise ValueError(f"the training loss is {loss} at step {self.cascade.steps}: the run diverged; "
                                 "lower --lr (or --noise-lambda) and start a new run")
            window.append(loss)
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", cycle=f"{cycle}/{self.cascade.num_cycles}")
            if main and self.log_due(cycle_ended):
                row = self.log_row(lr, cycle, cycle_ended, window)
                self.log.add(row)
                self.accelerator.log(tracker_values(row), step=row["step"])
                window = []
            if self.run.checkpoint_every and (self.cascade.steps % self.run.checkpoint_every == 0 or cycle_ended) and self.cascade.steps < end:
                self.checkpoint()

    def start_trackers(self) -> None:
        """Accelerate's trackers (a resumed run adds to the same ones); lorasc replaces a link where TensorBoard writes."""
        if self.accelerator.is_main_process and self.accelerator.log_with:
            for folder in (Path(self.accelerator.logging_dir), Path(self.accelerator.logging_dir) / PROJECT):
                unlinked(folder)
        self.accelerator.init_trackers(PROJECT, config=tracker_config(self.run, self.cascade.config))

    def step(self) -> tuple[float, bool]:
        """One optimizer step on the global batch; returns its mean loss and whether a cycle ended."""
        started = time.perf_counter()
        batch = encode(self.session.tokenizer, self.batch_examples(), self.run.task, self.run.max_length, self.run.chat_template,
                       self.session.data.groups)
        loss = torch.zeros((), device=self.accelerator.device)
        for micro, scale in micro_batches(batch, self.run, self.accelerator):
            with self.accelerator.accumulate(self.model):
                summed = summed_loss(self.model, to_device(micro, self.accelerator.device), self.run.task)[0]
                self.accelerator.backward(summed * scale)
            loss += summed.detach() * scale / (self.accelerator.num_processes * self.run.grad_accum)
        self.cascade.before_optimizer_step()  # a method's own gradient term (O-LoRA's loss), before clipping
        self.clip_gradients()
        self.prepared_optimizer.step()
        self.scheduler.step()
        self.prepared_optimizer.zero_grad(set_to_none=True)
        cycle_ended = self.cascade.step(self.optimizer)  # merges and fresh experts count as training time
        self.step_seconds += time.perf_counter() - started
        return self.accelerator.reduce(loss, reduction="sum").item(), cycle_ended

    def batch_examples(self) -> list:
        """The examples of the next optimizer step's global batch."""
        return batch_at(self.cascade.steps, self.session.data.train, self.run)

    def describe(self) -> dict:
        """What the loop adds to metrics.json beyond every run's figures."""
        return {}

    def clip_gradients(self) -> None:
        """Clip the trainable parameters' global gradient norm to `max_grad_norm`, as Trainer does: once
        the gradients are synchronized (after the last micro-batch; DDP has averaged them), unscaled for float16."""
        if self.run.max_grad_norm:
            self.accelerator.clip_grad_norm_(list(trainable_parameters(self.cascade.model).values()), self.run.max_grad_norm)

    def log_due(self, cycle_ended: bool) -> bool:
        return cycle_ended or self.evaluate_due(cycle_ended) or self.cascade.steps % self.run.log_every == 0

    def evaluate_due(self, cycle_ended: bool) -> bool:
        steps = self.cascade.steps
        return cycle_ended or bool(self.run.eval_every and steps % self.run.eval_every == 0) or steps == self.total_steps

    def log_row(self, lr: float, cycle: int, cycle_ended: bool, window: list[float]) -> dict:
        steps = self.cascade.steps
        row = {"step": steps, "epoch": round(steps / self.steps_per_epoch, 3), "cycle": cycle, "lr": lr,
               "train_loss": sum(window) / len(window), "cycle_end": int(cycle_ended)}
        if cycle_ended:
            row.update(log_columns(self.cascade.cycle_metrics()))
        if self.evaluate_due(cycle_ended):
            data = self.session.data
            metrics = evaluate(self.cascade.model, self.session.tokenizer, data.test, self.run, len(data.labels), data.groups)
            row.update(eval_loss=metrics["loss"], eval_accuracy=metrics["accuracy"], eval_macro_f1=metrics.get("macro_f1", ""))
        return row

    def checkpoint(self) -> None:
        if self.accelerator.is_main_process:
            elapsed = self.seconds()
            scaler = self.accelerator.scaler
            state = {"cascade": self.cascade.state_dict(), "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "scaler": None if scaler is None else scaler.state_dict(), "rng": rng_states()}
            progress = {"fingerprint": self.session.fingerprint, "rows": self.rows, "elapsed": elapsed, "step_seconds": self.step_seconds,
                        **self.progress_state()}
            save_checkpoint(self.run_dir, self.cascade.steps, trainable_parameters(self.cascade.model), state, progress,
                            self.run.save_total_limit)
        self.accelerator.wait_for_everyone()  # nobody reads a half-written checkpoint

    def progress_state(self) -> dict:
        """What a checkpoint keeps of the loop's own progress beyond the log's rows and the times."""
        return {}


def train(run: RunConfig, config: LoRASCConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
          save_models: bool = True, accelerator: Accelerator | None = None, data: TaskData | None = None, make_loop=None) -> dict:
    """Train, evaluate, export. Returns the metrics written to `metrics.json` (on the main process;
    the others return {}). `data`: the run's data if the caller has loaded it already (preflight);
    `make_loop`: the loop's class, Loop by default (a sequence of tasks drives the same loop task by task, continual/loop.py)."""
    run_dir = Path(run_dir)
    accelerator = accelerator or make_accelerator(run, run_dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    session = build(run, config, accelerator, data)
    loop = (make_loop or Loop)(run, session, accelerator, run_dir)
    if resume and load_checkpoint(run_dir, session.fingerprint, loop.resume) is not None:
        loop.cascade.verify_replicas()  # a collective: every rank loaded the same files (DDP broadcast before)
    wall_seconds = loop.train(progress)
    results = {}
    if accelerator.is_main_process:
        results = finish(run, session, loop, run_dir, wall_seconds, save_models)
    accelerator.wait_for_everyone()
    return results
