"""Tasks: one cascade trained through a sequence of tasks, each a run of whole cycles.

`LoRASC.begin_task` plans the task's cycles after the steps taken so far; what a task's end does is the
`task_boundary` strategy's:
- MergeBoundary ("merge"): a task boundary is a cycle boundary. `end_task` merges the running expert and
  starts nothing, so that between tasks the backbone holds W0 + S, with no noise; `begin_task` starts
  the task's first cycle.
- KeepBoundary ("keep", SeqLoRA): the running expert goes on into the next task. `end_task` only records
  the task's end (its last cycle is the running one) and `begin_task` stretches that cycle to the new
  task's first planned end; `finish()` merges. Between tasks the model is the backbone plus the
  unmerged expert (the config refuses noise with it).
The cascade's TaskLog records which cycles each task ran. `task_alpha` sets the slow step of the merges
in task t (1-based; t = 1 without tasks): slow_alpha, or slow_alpha/√t as SLAO steps.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from torch.optim import Optimizer

from .config import LoRASCConfig, require
from .schedule import cycle_ends

if TYPE_CHECKING:
    from .cascade import LoRASC


@dataclass
class Task:
    name: str
    first_cycle: int
    start_step: int  # optimizer steps taken before the task
    last_cycle: int | None = None  # None while the task runs


class TaskLog:
    """The tasks of a cascade in the order they ran; at most the last one is running."""

    def __init__(self, tasks: list[Task] | None = None):
        self.tasks = tasks or []

    def __iter__(self):
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def running(self) -> Task | None:
        return self.tasks[-1] if self.tasks and self.tasks[-1].last_cycle is None else None

    @property
    def start_step(self) -> int:
        """Where the last task (the run, without tasks) started: the step its learning-rate schedule restarts at."""
        return self.tasks[-1].start_step if self.tasks else 0

    def begin(self, name: str, first_cycle: int, start_step: int) -> None:
        if self.running is not None:
            raise RuntimeError(f"task {self.running.name!r} is still running; call end_task() first")
        names = [task.name for task in self.tasks]
        require(name not in names, "name", name, f"a name no earlier task has (the tasks so far: {names})")
        self.tasks.append(Task(name, first_cycle, start_step))

    def end(self, last_cycle: int) -> None:
        self.current().last_cycle = last_cycle

    def current(self) -> Task:
        """The running task; RuntimeError if none is."""
        if self.running is None:
            raise RuntimeError("no task is running; call begin_task() first")
        return self.running

    def state_dict(self) -> list[dict]:
        return [dataclasses.asdict(task) for task in self.tasks]

    @classmethod
    def from_state(cls, state: list[dict]) -> TaskLog:
        return cls([Task(**task) for task in state])


def task_ends(config: LoRASCConfig, start_step: int, total_steps: int, num_cycles: int | None, cycle_steps: int | None,
              steps_per_epoch: int | None) -> list[int]:
    """The optimizer-step counts, from the run's start, at which the cycles of a task of `total_steps`
    steps end: cut by `num_cycles` or `cycle_steps` when one is given, else as `config` cuts a run."""
    if num_cycles is not None or cycle_steps is not None:
        config = dataclasses.replace(config, num_cycles=num_cycles, cycle_steps=cycle_steps)
    return [start_step + end for end in cycle_ends(config, total_steps, steps_per_epoch, one_of_many=True)]


class MergeBoundary:
    def begin(self, cascade: LoRASC, name: str, plan: Callable[[], list[int]], optimizer: Optimizer | None) -> list[int]:
        """Start the task's first cycle, with `optimizer`'s state carried as at every new expert. `plan()` is the
        task's cycle ends (task_ends), asked for once the cascade is known to be able to begin a task."""
        if cascade.in_cycle:
            raise RuntimeError(f"cycle {cascade.cycle} is still running; call end_task() (or finish()) first")
        ends = plan()
        cascade.check_plan(len(ends))
        cascade.tasks.begin(name, cascade.cycle + 1, cascade.steps)
        cascade.ends = [*cascade.ends_so_far(), *ends]
        cascade.start_cycle(optimizer)
        return ends

    def end(self, cascade: LoRASC) -> None:
        """Merge the running expert, noise off; ended early, the task's unfinished cycles are dropped."""
        cascade.finish()
        cascade.ends = cascade.ends_so_far()
        cascade.tasks.end(cascade.cycle)

    def ends_cycle(self, cascade: LoRASC) -> bool:
        """Whether the step just taken ends the running cycle: at each planned end."""
        return cascade.steps in cascade.ends


class KeepBoundary(MergeBoundary):
    def begin(self, cascade: LoRASC, name: str, plan: Callable[[], list[int]], optimizer: Optimizer | None) -> list[int]:
        """After a task's end, stretch the running cycle to the new task's first end; the optimizer is the
        caller's (a fresh one per task, or the same one going on). The first task starts as with "merge"."""
        if not (cascade.in_cycle and cascade.tasks and cascade.tasks.running is None):
            return super().begin(cascade, name, plan, optimizer)
        ends = plan()
        cascade.check_plan(len(ends) - 1)
        cascade.tasks.begin(name, cascade.cycle, cascade.steps)
        cascade.ends = [*cascade.ends[: cascade.cycle - 1], *ends]
        return ends

    def end(self, cascade: LoRASC) -> None:
        """Record the task's end; the running expert is not merged. Its cycle ends here until a next task
        stretches it (or `finish()` merges it)."""
        cascade.ends = cascade.ends_so_far()
        cascade.tasks.end(cascade.cycle)

    def ends_cycle(self, cascade: LoRASC) -> bool:
        """At each planned end but a running task's last: there the expert goes on into the next task."""
        return super().ends_cycle(cascade) and not (cascade.tasks.running and cascade.steps == cascade.ends[-1])


TASK_BOUNDARIES = {"merge": MergeBoundary, "keep": KeepBoundary}
TASK_ALPHAS = {"constant": lambda alpha, task: alpha, "inv-sqrt": lambda alpha, task: alpha / math.sqrt(task)}


def merge_alpha(config: LoRASCConfig, tasks: TaskLog) -> float:
    """The slow step of a merge now: `task_alpha`'s for the running (or last) task, counted from 1."""
    return TASK_ALPHAS[config.task_alpha](config.slow_alpha, max(len(tasks), 1))
