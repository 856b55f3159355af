"""The end of a training run: its models exported, its final evaluation, metrics.json, its checkpoints removed.

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

from ..methods import METHODS
from .checkpoint import remove_checkpoints, set_trainable_dtype, trainable_parameters
from .metrics import evaluate
from .run_config import RunConfig
from .run_files import publish, remove, write_file
from .run_folder import model_fingerprints

if TYPE_CHECKING:
    from .train import Loop, Session


def finish(run: RunConfig, session: Session, loop: Loop, run_dir: Path, wall_seconds: float, save_models: bool) -> dict:
    """Export, evaluate and write metrics.json; the run's checkpoints are then removed. Returns the metrics."""
    results = describe_run(run, session, loop, wall_seconds)
    if save_models:
        export_models(run, session, run_dir)
    set_trainable_dtype(session.cascade.model, run.torch_dtype)
    results.update(evaluate_splits(run, session))
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
    }


def export_models(run: RunConfig, session: Session, run_dir: Path) -> None:
    """The method's exports (model/, and adapter/ where it has one), written into a temporary folder and
    then renamed into place: an export cut short leaves the earlier one or none, never half of one."""
    staging = run_dir / ".exports.tmp"
    remove(staging)
    try:
        METHODS[run.method].export(session.cascade, staging, session.tokenizer, run.torch_dtype)
        for folder in sorted(staging.iterdir()):
            publish(folder, run_dir / folder.name)
    finally:
        remove(staging)


def evaluate_splits(run: RunConfig, session: Session) -> dict[str, dict]:
    data = session.data
    splits = {"train": data.train[: len(data.test)], "val": data.val, "test": data.test, "ood": data.ood}  # train: as many as test, so both cost alike
    return {split: evaluate(session.cascade.model, session.tokenizer, examples, run, len(data.labels)) for split, examples in splits.items()}
