"""`run_sequence`: one run through a sequence of tasks, with the method of the one registry (methods.py).

Each method says how it meets a sequence (`Method.sequence`): `sequential` trains the tasks one after the
other through one engine (the cascade, SeqLoRA, IncLoRA, O-LoRA, EMA); `joint` trains one LoRA on all of
them for the same total steps (multitask, the upper bound); `separate` trains each task alone from the
pretrained model (single: the reference accuracies ã_i of forward transfer). The cycles of `config` are
cut per task: `run.cycles_per_task`, unless the method fixes its own.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

from ..config import LoRASCConfig
from ..methods import METHODS
from ..run.datasets import TaskData
from ..run.errors import DataError
from ..run.run_config import RunConfig
from ..run.run_files import write_file
from ..run.train import train
from .heads import evaluate_task, head_mode, on_head, sequence_task_data, task_rows
from .loop import SequenceLoop, Stage
from .metrics import write_cl_matrix
from .sequences import SequenceTask, load_sequence


def sequence_data(run: RunConfig) -> TaskData:
    """The run's tasks (`run.tasks`, in `run.task_order`), each training set cut to `run.n_train`, on the run's head."""
    tasks = load_sequence(run.tasks, names=run.task_names, tests=run.task_tests, order=run.task_order, tasks_dir=run.tasks_dir,
                          task=run.task, text_column=run.text_column, label_column=run.label_column, encoding=run.encoding,
                          seed=run.data_seed)
    tasks = [dataclasses.replace(t, train=t.train[: run.n_train]) if run.n_train else t for t in tasks]
    return sequence_task_data(tasks, head_mode(run.cl_head, run.task))


def task_config(run: RunConfig, config: LoRASCConfig) -> LoRASCConfig:
    """The engine's config with a task's cycles: `run.cycles_per_task` (a method with one expert per task fixes 1)."""
    return dataclasses.replace(config, num_cycles=run.cycles_per_task, cycle_steps=None)


def task_steps(run: RunConfig, task: SequenceTask) -> int:
    """A task's optimizer steps: --steps-per-task, else --epochs-per-task, else --max-steps or --epochs of its data."""
    per_epoch, steps = run.steps(len(task.train))
    if run.steps_per_task is not None:
        return run.steps_per_task
    return max(1, round(run.epochs_per_task * per_epoch)) if run.epochs_per_task is not None else steps


def stages(sequence: str, data: TaskData, steps: list[int], eval_future: bool) -> list[Stage]:
    """The engine tasks a method runs, on the head's rows: one per task (sequential), or one over all of them (joint)."""
    tasks = [dataclasses.replace(t, train=on_head(data, j, t.train)) for j, t in enumerate(data.tasks)]
    if sequence == "joint":
        return [Stage("multitask", sum(steps), 0, [t.train for t in tasks], list(range(len(tasks))), len(tasks) - 1)]
    starts = [sum(steps[:j]) for j in range(len(tasks))]
    return [Stage(t.name, steps[j], starts[j], [t.train], list(range(len(tasks) if eval_future else j + 1)), j) for j, t in enumerate(tasks)]


def run_sequence(tasks: list[SequenceTask], run: RunConfig, config: LoRASCConfig, run_dir: str | Path, resume: bool = False,
                 progress: bool = True, save_models: bool = True, accelerator=None) -> dict:
    """Train `run.method` through `tasks` in order into `run_dir`; returns metrics.json's content, whose
    `continual` block holds R and AA, AIA, BWT, F (and FWT with `run.fwt_reference`)."""
    run_dir = Path(run_dir)
    data = sequence_task_data(tasks, head_mode(run.cl_head, run.task))
    config, steps = task_config(run, config), [task_steps(run, t) for t in tasks]
    reference = fwt_reference(run, [t.name for t in tasks])
    sequence = METHODS[run.method].sequence
    if sequence == "separate":
        return separately(data, run, config, run_dir, steps, resume, progress, accelerator)
    loop = functools.partial(SequenceLoop, stages=stages(sequence, data, steps, run.eval_future), reference=reference)
    metrics = train(run, config, run_dir, resume, progress, save_models, accelerator, data, make_loop=loop)
    if metrics and save_models:
        write_tasks_file(run_dir / "model" / "tasks.json", data)
        if (run_dir / "adapter").is_dir():
            write_rank_blocks(run_dir / "adapter" / "tasks.json", metrics["continual"]["cycles"], config.expert.r)
    return metrics


def separately(data: TaskData, run: RunConfig, config: LoRASCConfig, run_dir: Path, steps: list[int], resume: bool, progress: bool,
               accelerator) -> dict:
    """`single`: each task trained alone from the pretrained model, in RUN/single/<task>; R holds its diagonal."""
    names, diagonal = [t.name for t in data.tasks], []
    for j, name in enumerate(names):
        folder = run_dir / "single" / name
        done = folder / "metrics.json"
        if not (resume and done.is_file()):
            loop = functools.partial(SequenceLoop, stages=[Stage(name, steps[j], 0, [on_head(data, j, data.tasks[j].train)], [j], j)], reference=None)
            train(run, config, folder, resume and folder.is_dir(), progress, False, accelerator, data, make_loop=loop)
        diagonal.append(json.loads(done.read_text())["continual"]["R"][j][j])
    accuracy = [[diagonal[j] if i == j else None for i in range(len(names))] for j in range(len(names))]
    write_cl_matrix(run_dir / "cl_matrix.csv", names, accuracy)
    metrics = {"method": run.method, "continual": {"tasks": names, "R": accuracy, "reference": diagonal,
                                                   "accuracy": {"AA": sum(diagonal) / len(diagonal), "final": diagonal}},
               "config": {"run": dataclasses.asdict(run), "lorasc": config.to_dict()}}
    write_file(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def fwt_reference(run: RunConfig, names: list[str]) -> list[float] | None:
    """Each task's accuracy trained alone, from the finished `single` run `run.fwt_reference`, for FWT."""
    if run.fwt_reference is None:
        return None
    path = Path(run.fwt_reference) / "metrics.json"
    try:
        block = json.loads(path.read_text(encoding="utf-8"))["continual"]
        reference = dict(zip(block["tasks"], block["reference"]))
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"--fwt-reference {run.fwt_reference} is not a finished run of --method single (no readable {path} with its "
                        "reference accuracies); train one with --method single on the same --tasks") from None
    missing = [name for name in names if name not in reference or not math.isfinite(reference[name])]
    if missing:
        raise DataError(f"--fwt-reference {run.fwt_reference} has no accuracy for the tasks {missing}; train --method single on the same --tasks")
    return [reference[name] for name in names]


def evaluate_tasks(model, tokenizer, data: TaskData, run: RunConfig, name: str | None = None) -> dict[str, dict]:
    """Each task's test split (or task `name`'s only), on its head rows: {task: {"test": metrics}}."""
    names = [t.name for t in data.tasks]
    if name is not None and name not in names:
        raise DataError(f"--task {name} is not a task of this run; its tasks are {names}")
    return {t.name: {"test": evaluate_task(model, tokenizer, data, i, run)} for i, t in enumerate(data.tasks) if name in (None, t.name)}


def write_rank_blocks(path: Path, cycles: dict[str, list[int]], rank: int) -> None:
    """Which rank rows of the stacked adapter each task trained: cycle c's expert holds rows [(c-1)·r, c·r)."""
    blocks = {name: {"cycles": [first, last], "rank_rows": [(first - 1) * rank, last * rank]} for name, (first, last) in cycles.items()}
    write_file(path, json.dumps({"rank_per_cycle": rank, "tasks": blocks}, indent=2))


def write_tasks_file(path: Path, data: TaskData) -> None:
    """Which head rows (and labels) belong to which task: `lorasc eval --task NAME` reads it."""
    tasks = {t.name: {"labels": list(t.labels), "rows": task_rows(data, i)} for i, t in enumerate(data.tasks)}
    write_file(path, json.dumps({"head": "per-task" if data.groups else ("shared" if data.labels else "none"), "tasks": tasks}, indent=2))
