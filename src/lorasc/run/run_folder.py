"""The run folder in each state a command can meet: absent, empty, running, interrupted, finished, damaged.

Each check refuses, in one line with a fix, a folder the command cannot use, before the command writes.
A training run holds RUN/.lock (an flock) while it writes, so a second process cannot write the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
from pathlib import Path

from ..config import LoRASCConfig
from .checkpoint import checkpoint_folders
from .errors import CliError
from .model_files import check_max_length, weight_shapes
from .run_config import RunConfig
from .settings import resolve, resume_conflict

DATA_DIGESTS = "data.sha256.json"  # the data files a run trains on, checked again on resume

try:
    import fcntl
except ImportError:  # Windows: no flock, no lock
    fcntl = None


def check_resumable(args: argparse.Namespace) -> None:
    """A run to resume exists, has not finished, and the flags given change none of its settings."""
    if args.output_dir is None:
        raise CliError("--resume needs --output-dir pointing at an earlier run folder (with config.yaml)")
    if args.config is not None:
        raise CliError("--config is not allowed with --resume: the run's own config.yaml defines it; drop --config, "
                       "or start a new run with --config FILE --output-dir NEW")
    config_file = args.output_dir / "config.yaml"
    if not config_file.is_file():
        raise CliError(f"{args.output_dir} holds no run to resume (no config.yaml); start it without --resume")
    if (args.output_dir / "metrics.json").is_file():
        raise CliError(f"{args.output_dir} is already finished (metrics.json exists), nothing to resume; "
                       f"use `lorasc eval {args.output_dir}`, or train more in a new run with --output-dir NEW")
    args.config = config_file
    conflict = resume_conflict(args, config_file)
    if conflict:
        raise CliError(conflict)


def check_output_dir(run_dir: Path, resume: bool) -> None:
    for folder in (run_dir, *run_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise CliError(f"--output-dir {run_dir} is not allowed: {folder} is a file, not a folder; pass a folder path")
            break
    if not resume and run_dir.is_dir() and any(run_dir.iterdir()):
        raise CliError(f"{run_dir} already holds a run; pass --resume to continue it or --output-dir for a new one")


def remove_unstarted(run_dir: Path) -> None:
    """A fresh run that stopped on bad input before its first checkpoint leaves its folder empty, so
    that the corrected command can use it (the folder was empty when the run started)."""
    if run_dir.is_dir() and not checkpoint_folders(run_dir):
        for path in run_dir.iterdir():
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def data_digests(run: RunConfig) -> dict[str, str]:
    return {name: hashlib.sha256(Path(name).read_bytes()).hexdigest() for name in (run.train_file, run.test_file, run.ood_file) if name}


def write_data_digests(run_dir: Path, run: RunConfig) -> None:
    (run_dir / DATA_DIGESTS).write_text(json.dumps(data_digests(run), indent=2))


def check_data_unchanged(run_dir: Path, run: RunConfig) -> None:
    """A resumed run continues on the data it started on: its batches are replayed by position."""
    path = run_dir / DATA_DIGESTS
    if not path.is_file():
        return  # a run from before the digests were kept
    started_on, now = json.loads(path.read_text()), data_digests(run)
    changed = sorted(name for name in started_on if now.get(name) != started_on[name])
    if changed:
        raise CliError(f"{changed[0]} changed since the run started (its sha256 differs); restore it to resume, or start a new run with --output-dir NEW")


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Held while this process trains into `run_dir`; refuses a run that another process is training."""
    with open(run_dir / ".lock", "a") as lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CliError(f"{run_dir} is being trained by another lorasc process; wait for it to finish, or stop it and rerun with --resume") from None
        yield


def finished_run(run_dir: Path) -> tuple[RunConfig, LoRASCConfig]:
    """The settings of a finished run whose dense model is whole."""
    new_run = f"train again with `lorasc train --config {run_dir / 'config.yaml'} --output-dir NEW`"
    if not run_dir.is_dir():
        raise CliError(f"{run_dir} is not a run folder; pass the --output-dir of a finished `lorasc train`")
    if not (run_dir / "config.yaml").is_file():
        raise CliError(f"{run_dir} is not a lorasc run (no config.yaml); pass the --output-dir of a finished `lorasc train`")
    if not (run_dir / "metrics.json").is_file():
        raise CliError(f"{run_dir} has not finished (no metrics.json); finish it with `lorasc train --resume --output-dir {run_dir}`")
    if not (run_dir / "model" / "config.json").is_file():
        raise CliError(f"{run_dir} has no dense model ({run_dir / 'model' / 'config.json'} is missing); restore it from a copy, or {new_run}")
    run, config = resolve(argparse.Namespace(config=run_dir / "config.yaml"))
    weight_shapes(run_dir / "model", fix=f"restore it from a copy, or {new_run}")
    check_max_length(run_dir / "model", run.max_length)
    return run, config


def check_export_folder(out: Path) -> None:
    """An export writes into a new folder or over an earlier export, never over other files (the run's model)."""
    if out.exists() and not out.is_dir():
        raise CliError(f"--output {out} is a file; pass a folder path")
    if out.is_dir() and any(out.iterdir()) and not (out / "compression.json").is_file():
        raise CliError(f"--output {out} already holds other files; pass a new folder")
