"""Tasks: one cascade trained through a sequence of tasks, each a run of whole cycles.

A task boundary is a cycle boundary. `LoRASC.begin_task` plans the task's cycles after the steps taken
so far and starts its first one; `LoRASC.end_task` merges the running expert and starts nothing, so that
between tasks the backbone holds W0 + S, with no noise. The cascade's TaskLog records which cycles
each task ran.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import LoRASCConfig, require
from .schedule import cycle_ends


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
    return [start_step + end for end in cycle_ends(config, total_steps, steps_per_epoch)]
