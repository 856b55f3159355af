"""The end of a training run: its models exported, its final evaluation, the exports' model cards with
its figures, metrics.json, its checkpoints removed.

The dense model is exported in the run's dtype and the trained weights are cast to it before evaluating,
so that the metrics describe the model as exported (the stacked adapter stays float32: its factors are
the engine's slow state). metrics.json records the fingerprints of the base model files and of the
dense model, which `lorasc eval` and `lorasc export` check.
"""

from __future__ import annotations

import dataclasses
import json
import resource
from pathlib import Path
from typing import TYPE_CHECKING

from ..card import Origin, write_card
from ..config import LoRASCConfig
from ..methods import METHODS
from ..quantized import load_arguments
from .checkpoint import remove_checkpoints, set_trainable_dtype, trainable_parameters
from .metrics import evaluate
from .models import model_path
from .quantize import quantization_config
from .run_config import RunConfig
from .run_files import publish, remove, write_file
from .run_folder import model_fingerprints

if TYPE_CHECKING:
    from .train import Loop, Session

FIGURES = ("test", "ood")  # the splits whose figures the exports' cards show


def finish(run: RunConfig, session: Session, loop: Loop, run_dir: Path, wall_seconds: float, save_models: bool) -> dict:
    """Export, evaluate, write the exports' cards with the figures and publish them, write metrics.json;
    the run's checkpoints are then removed. Returns the metrics."""
    results = describe_run(run, session, loop, wall_seconds)
    staging = run_dir / ".exports.tmp"  # an export cut short leaves the earlier one or none, never half of one
    remove(staging)
    try:
        if save_models:
            METHODS[run.method].export(session.cascade, staging, session.tokenizer, run.torch_dtype)
        set_trainable_dtype(session.cascade.model, run.torch_dtype)
        results.update(evaluate_splits(run, session))
        if save_models:
            origin = run_origin(run, session.cascade.config, session.data.labels, results["cycles"])
            publish_exports(staging, run_dir, origin, run_figures(results))
    finally:
        remove(staging)
    results["config"] = {"run": dataclasses.asdict(run), "lorasc": session.cascade.config.to_dict()}  # as the method ran it, defaults resolved
    if save_models:
        results["fingerprints"] = model_fingerprints(run_dir, session.fingerprint)
    write_file(run_dir / "metrics.json", json.dumps(results, indent=2))
    remove_checkpoints(run_dir)
    return results


def describe_run(run: RunConfig, session: Session, loop: Loop, wall_seconds: float) -> dict:
    cascade = session.cascade
    return {
        "method": run.method,
        "steps": loop.total_steps,
        "cycles": cascade.num_cycles,
        "processes": loop.accelerator.num_processes,
        "device": str(loop.accelerator.device),
        "train_seconds": wall_seconds,  # the training loop's wall time, evaluations and checkpoints included
        "seconds_per_step": loop.step_seconds / loop.total_steps,  # forward, backward, optimizer and cascade steps only
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": sum(p.numel() for p in trainable_parameters(cascade.model).values()),
        **METHODS[run.method].describe(cascade),
        **loop.describe(),
    }


def publish_exports(staging: Path, run_dir: Path, origin: Origin, figures: dict) -> None:
    """The method's exports (model/, and adapter/ where it has one), each with its card, renamed into place."""
    for folder in sorted(staging.iterdir()):
        write_card(folder, origin, figures)
        publish(folder, run_dir / folder.name)


def run_origin(run: RunConfig, config: LoRASCConfig, labels: tuple[str, ...], cycles: int | None) -> Origin:
    """What the cards of a run's exports say about the run; `config` as the method ran it."""
    id2label = dict(enumerate(labels)) if run.task == "classification" else None
    if run.method == "full":
        return Origin(model_path(run), run.method, id2label=id2label)
    return Origin(model_path(run), run.method, cycles, config.slow_alpha, config.noise_lambda, config.expert.r, id2label,
                  load_arguments(quantization_config(run)))


def run_figures(metrics: dict) -> dict[str, dict[str, float]]:
    """The test and OOD figures of a run's metrics (as metrics.json holds them) that a card shows."""
    splits = {split: metrics.get(split) for split in FIGURES}
    return {split: {name: value for name, value in values.items() if isinstance(value, (int, float))}
            for split, values in splits.items() if isinstance(values, dict)}


def evaluate_splits(run: RunConfig, session: Session) -> dict[str, dict]:
    data = session.data
    splits = {"train": data.train[: len(data.test)], "val": data.val, "test": data.test, "ood": data.ood}  # train: as many as test, so both cost alike
    if data.tasks:  # a sequence: its tasks' test splits together; R (continual/loop.py) scored each after each task
        splits = {"test": data.test}
    return {split: evaluate(session.cascade.model, session.tokenizer, examples, run, len(data.labels), data.groups) for split, examples in splits.items()}
