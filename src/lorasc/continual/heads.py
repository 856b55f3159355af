"""The classifier of a sequence of tasks, and each task's examples on its rows.

`per-task` (the default): one head over the union of (task, label), each task's logits masked to its own
rows in training and evaluation (task-incremental learning; the encoder analogue of O-LoRA's instruction
with its label options). A masked row gets no probability and so exactly no gradient: with a fresh
optimizer per task, an earlier task's rows stay bitwise as its task left them, and every point of
forgetting is the backbone's drift. `shared`: one head for all tasks, which must have the same label set
(domain-incremental). A causal LM's tasks have no head.
"""

from __future__ import annotations

import dataclasses

from ..run.data_files import Example
from ..run.datasets import TaskData
from ..run.errors import DataError
from ..run.metrics import evaluate


def head_mode(cl_head: str | None, task: str) -> str:
    """The run's head: `cl_head`, or its default (per-task for a classifier; none for a causal LM)."""
    return "none" if task == "causal-lm" else cl_head or "per-task"


def sequence_task_data(tasks: list, mode: str) -> TaskData:
    """The sequence as one run's data: every task's examples on the rows of the head `mode` gives it, with the
    labels (and per-task heads' groups) of that head; `TaskData.tasks` keeps the tasks as given."""
    if mode == "per-task":
        labels = tuple(f"{t.name}:{label}" for t in tasks for label in t.labels)
        groups = tuple(j for j, t in enumerate(tasks) for _ in t.labels)
    else:
        labels, groups = (_shared_labels(tasks) if mode == "shared" else ()), None
    data = TaskData([], [], [], labels, [], groups, tasks)
    for split in ("train", "test", "val"):
        setattr(data, split, [e for i in range(len(tasks)) for e in on_head(data, i, getattr(tasks[i], split))])
    return data


def task_rows(data: TaskData, task: int) -> list[int]:
    """The head row of each of task `task`'s labels (empty for a causal LM)."""
    labels = data.tasks[task].labels
    if data.groups is not None:
        first = data.groups.index(task)
        return list(range(first, first + len(labels)))
    return [data.labels.index(label) for label in labels] if data.labels else []


def on_head(data: TaskData, task: int, examples: list[Example]) -> list[Example]:
    """Task `task`'s examples with each label moved to its head row."""
    if not data.labels:
        return examples
    rows = task_rows(data, task)
    return [dataclasses.replace(e, label=rows[e.label]) for e in examples]


def evaluate_task(model, tokenizer, data: TaskData, task: int, run) -> dict[str, float]:
    """Task `task`'s test split on its head rows, in length-sorted batches (less padding; the scores are the same)."""
    examples = sorted(on_head(data, task, data.tasks[task].test), key=lambda e: len(e.text))
    return evaluate(model, tokenizer, examples, run, len(data.labels), data.groups)


def _shared_labels(tasks: list) -> tuple[str, ...]:
    """The label set every task shares, in the first task's order; refused when they differ."""
    first = set(tasks[0].labels)
    differing = [f"{t.name} {sorted(set(t.labels) ^ first)}" for t in tasks[1:] if set(t.labels) != first]
    if differing:
        raise DataError(f"--cl-head shared needs one label set for all tasks, and these differ from {tasks[0].name}'s "
                        f"{sorted(first)} by: {'; '.join(differing)}; pass --cl-head per-task")
    return tuple(tasks[0].labels)
