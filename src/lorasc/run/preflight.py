"""Checks of a run's inputs that load no model: `lorasc train` runs them before it writes anything."""

from __future__ import annotations

from ..config import LoRASCConfig
from ..methods import METHODS
from .chat import rendered, uses_chat_template
from .datasets import TaskData, load_task
from .errors import DataError
from .model_files import check_max_length, empty_model, weight_shapes
from .models import check_head, load_tokenizer, model_path
from .quantize import check_quantized_run
from .run_config import RunConfig


def check_run_inputs(run: RunConfig, config: LoRASCConfig) -> TaskData:
    """The data reads into examples, and the model folder is whole and fits the settings. Returns the
    data, which training then uses rather than reading it again."""
    data = training_data(run)
    path = model_path(run)
    weight_shapes(path)  # refuses damaged weight files
    check_max_length(path, run.max_length)
    if run.task == "classification":
        check_head(path, data.labels)
    check_rendering(run, data)
    config, steps = run_plan(run, config, data)
    METHODS[run.method].check_inputs(config, empty_model(path, run.task), *steps)
    check_quantized_run(run, config, path, *steps)
    return data


def run_plan(run: RunConfig, config: LoRASCConfig, data: TaskData) -> tuple[LoRASCConfig, tuple[int, int]]:
    """The engine's config and the (steps per epoch, steps) its cycles are cut in: the run's, or with a
    sequence of tasks, a task's (the shortest: every task must hold its cycles)."""
    if not data.tasks:
        return config, run.steps(len(data.train))
    from ..continual.run import task_config, task_steps

    shortest = min(data.tasks, key=lambda task: task_steps(run, task))
    config, steps = task_config(run, config), task_steps(run, shortest)
    if METHODS[run.method].config(config).num_cycles > steps:
        raise DataError(f"task {shortest.name} has {steps} optimizer steps, too few for --cycles-per-task {run.cycles_per_task} "
                        "(a cycle takes at least one step); lower --cycles-per-task or raise --steps-per-task or --epochs-per-task")
    return config, (run.steps(len(shortest.train))[0], steps)


def check_rendering(run: RunConfig, data: TaskData) -> None:
    """A conversation of several turns renders only with a chat template (chat.py); the tokenizer is read only for one."""
    longer = next((e for split in (data.train, data.val, data.test, data.ood) for e in split if e.context), None)
    if longer is not None:
        tokenizer = load_tokenizer(model_path(run))
        rendered(tokenizer, longer, uses_chat_template(tokenizer, run.chat_template))


def training_data(run: RunConfig) -> TaskData:
    if run.tasks:
        from ..continual.run import sequence_data

        return sequence_data(run)
    data = load_task(run)
    if not data.train:
        raise DataError("the training set is empty; check the data file and --n-train")
    return data
