"""Checks of a run's inputs that load no model: `lorasc train` runs them before it writes anything."""

from __future__ import annotations

import math

from .config import LoRASCConfig, require
from .data import DataError
from .methods import METHODS
from .model_files import check_max_length, check_targets, weight_shapes
from .run_config import RunConfig
from .task import check_head, load_task, model_path

MAX_CYCLES = 1_000_000  # a plan beyond this is a typo, and its list of cycle ends alone could fill the memory


def check_run_inputs(run: RunConfig, config: LoRASCConfig) -> None:
    """The data reads into examples, and the model folder is whole and fits the settings."""
    data = load_task(run)
    if not data.train:
        raise DataError("the training set is empty; check the data file and --n-train")
    path = model_path(run)
    weight_shapes(path)
    check_max_length(path, run.max_length)
    if run.task == "classification":
        check_head(path, data.labels)
    if run.method != "full":
        check_targets(path, config.expert.target_modules, config.expert.r)
        check_cycle_plan(run, METHODS[run.method].config(config), len(data.train))


def check_cycle_plan(run: RunConfig, config: LoRASCConfig, examples: int) -> None:
    per_epoch, total = run.steps(examples)
    require(config.num_cycles is None or config.num_cycles <= total, "num_cycles", config.num_cycles,
            f"at most the run's {total} optimizer steps; lower --num-cycles, or raise --max-steps or --epochs")
    cycles = config.num_cycles or math.ceil(total / (config.cycle_steps or per_epoch))
    require(cycles <= MAX_CYCLES, "cycles", cycles, f"at most {MAX_CYCLES:,}; pass a larger --cycle-steps or a smaller --num-cycles")
