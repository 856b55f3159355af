"""The training loop through a sequence of tasks: the run's one loop (run/train.py), driven task by task.

Each stage is one task of the engine (`LoRASC.begin_task` … `end_task`): a fresh optimizer, a learning-rate
schedule that restarts (warm-up, cosine, the re-warm-up after each cycle), the task's batches (half of them
replayed from finished tasks with `--replay`), then, on the clean merged weights, the test split of every
task the R matrix needs. A checkpoint follows every task end, so a resumed run goes on from the next task.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..run.batches import batch_at
from ..run.checkpoint import Checkpoint
from ..run.data_files import Example
from ..run.train import Loop
from .heads import evaluate_task
from .metrics import cl_block, write_cl_matrix
from .plots import plot_cl_curves, plot_cl_matrix
from .replay import replayed, reservoir


@dataclass
class Stage:
    """One task of the engine: its name, steps, and the first step after the steps before it; the training
    examples it draws from (one list, or one per task for multitask, each batch from one of them), the
    tasks whose test split is evaluated at its end, and the row of the R matrix that evaluation fills."""

    name: str
    steps: int
    start: int
    train: list[list[Example]]
    evaluated: list[int]
    row: int


class SequenceLoop(Loop):
    def __init__(self, run, session, accelerator, run_dir, stages: list[Stage], reference: list[float] | None):
        self.stages, self.reference, self.evaluations, self.stages_done = stages, reference, [], 0
        self.stage, self.buffer = stages[0], []
        super().__init__(run, session, accelerator, run_dir)

    def begin(self) -> None:
        """Nothing is planned before a task begins: each stage plans its own cycles."""
        self.total_steps = self.stages[-1].start + self.stages[-1].steps

    def train(self, progress: bool) -> float:
        self.start(progress)
        for number, stage in enumerate(self.stages[self.stages_done :], self.stages_done):
            self.enter(stage)
            self.train_until(stage.start + stage.steps)
            self.cascade.end_task()
            self.evaluate_stage(stage)
            self.stages_done = number + 1
            if self.run.checkpoint_every and self.stages_done < len(self.stages):
                self.checkpoint()
        return self.stop()

    def enter(self, stage: Stage) -> None:
        """Begin `stage`'s task, unless a resumed run is in its middle (the cascade then runs it already)."""
        self.stage = stage
        self.steps_per_epoch = math.ceil(len(stage.train[0]) / self.run.batch_size)
        finished = [examples for earlier in self.stages[: self.stages.index(stage)] for examples in earlier.train]
        self.buffer = reservoir(finished, self.run.replay, self.run.seed) if self.run.replay else []
        if self.cascade.tasks.running is None:
            self.cascade.begin_task(stage.name, stage.steps)
            self.new_optimizer(stage.steps)

    def restore_optimizer(self, checkpoint: Checkpoint) -> None:
        """A checkpoint inside a task restores that task's optimizer and schedule; one at a task's end has
        nothing to restore (the next task starts a fresh optimizer)."""
        progress = checkpoint.progress["continual"]
        self.evaluations, self.stages_done = progress["evaluations"], progress["stages_done"]
        running = self.cascade.tasks.running
        if running is not None:
            self.new_optimizer(self.stages[self.stages_done].steps)
            super().restore_optimizer(checkpoint)

    def progress_state(self) -> dict:
        return {"continual": {"evaluations": self.evaluations, "stages_done": self.stages_done}}

    def batch_examples(self) -> list[Example]:
        """The stage's batch of this step: from its task (multitask: from one task, drawn by the seed and the
        step), and half from the replay buffer once it holds examples."""
        stage, step = self.stage, self.cascade.steps
        examples = stage.train[0]
        if len(stage.train) > 1:
            generator = torch.Generator().manual_seed(self.run.seed * 7_919 + step)
            examples = stage.train[int(torch.randint(len(stage.train), (1,), generator=generator))]
        if not self.buffer:
            return batch_at(step - stage.start, examples, self.run)
        replay = self.run.batch_size // 2
        own = batch_at(step - stage.start, examples, dataclasses.replace(self.run, batch_size=self.run.batch_size - replay))
        return own + replayed(self.buffer, replay, self.run.seed, step)

    def evaluate_due(self, cycle_ended: bool) -> bool:
        """Between tasks the loop evaluates what the R matrix needs; during one, only every --eval-every steps."""
        return bool(self.run.eval_every and self.cascade.steps % self.run.eval_every == 0)

    def evaluate_stage(self, stage: Stage) -> None:
        """The test split of each task `stage.evaluated` names, on the clean weights, in length-sorted batches."""
        if not self.accelerator.is_main_process:
            return
        data = self.session.data
        for task in stage.evaluated:
            scores = evaluate_task(self.cascade.model, self.session.tokenizer, data, task, self.run)
            self.evaluations.append({"after": stage.row, "task": task, "accuracy": scores["accuracy"], "macro_f1": scores.get("macro_f1")})
        self.write_matrix()

    @property
    def names(self) -> list[str]:
        return [task.name for task in self.session.data.tasks]

    def matrix(self, metric: str) -> list[list[float | None]]:
        """R (`metric` after each task, per task) so far: None where nothing was evaluated."""
        rows = [[None] * len(self.names) for _ in self.names]
        for e in self.evaluations:
            rows[e["after"]][e["task"]] = e[metric]
        return rows

    def write_matrix(self) -> None:
        rows = 1 + max((e["after"] for e in self.evaluations), default=-1)
        accuracy = self.matrix("accuracy")[:rows]
        macro_f1 = self.matrix("macro_f1")[:rows] if self.run.task == "classification" else None
        write_cl_matrix(self.run_dir / "cl_matrix.csv", self.names, accuracy, macro_f1)

    def describe(self) -> dict:
        """The `continual` block of metrics.json: the tasks, R, and the metrics of docs/continual.md."""
        accuracy = self.matrix("accuracy")
        macro_f1 = self.matrix("macro_f1") if self.run.task == "classification" else None
        cycles = {task.name: [task.first_cycle, task.last_cycle] for task in self.cascade.tasks}
        return {"continual": {"tasks": self.names, "cycles": cycles, "R": accuracy, "R_macro_f1": macro_f1, **sequence_metrics(accuracy, macro_f1, self.reference)}}

    def stop(self) -> float:
        seconds = super().stop()
        if self.accelerator.is_main_process:
            self.plot()
        return seconds

    def plot(self) -> None:
        names, accuracy = self.names, self.matrix("accuracy")
        plot_cl_matrix(self.run_dir / "cl_matrix.png", names, accuracy)
        if all(accuracy[j][i] is not None for j in range(len(names)) for i in range(j + 1)):
            plot_cl_curves(self.run_dir / "cl_curves.png", names, accuracy)


def sequence_metrics(accuracy: list, macro_f1: list | None, reference: list[float] | None = None) -> dict:
    """The metrics of docs/continual.md when every task was evaluated after each task up to it; a run
    evaluated once (multitask at its end, a `single` task alone) gets that row and the mean of its scores."""
    complete = all(accuracy[j][i] is not None for j in range(len(accuracy)) for i in range(j + 1))
    if complete:
        return cl_block(accuracy, macro_f1, reference)
    last = max(j for j, row in enumerate(accuracy) if any(v is not None for v in row))

    def evaluated(matrix: list) -> dict:
        scores = [v for v in matrix[last] if v is not None]
        return {"AA": sum(scores) / len(scores), "final": matrix[last]}

    return {"accuracy": evaluated(accuracy), **({"macro_f1": evaluated(macro_f1)} if macro_f1 is not None else {})}
