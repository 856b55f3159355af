"""The run folder in each state a command can meet: absent, empty, running, interrupted, finished, damaged.

Each check refuses, in one line with a fix, a folder the command cannot use, before the command writes.
A training run holds RUN/.lock (an flock) while it writes, so a second process cannot write the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import sys
from pathlib import Path

from ..config import LoRASCConfig
from .checkpoint import checkpoint_folders, model_fingerprint
from .errors import CliError
from .model_files import check_max_length, weight_shapes
from .models import model_path
from .run_config import RunConfig
from .run_files import remove, unlinked, write_file
from .settings import resolve, resume_conflict

DATA_DIGESTS = "data.sha256.json"  # the data files a run trains on, checked again on resume
ROOM_INSIDE = 128  # bytes for the longest path lorasc writes inside a run folder: TensorBoard's event files are named after the host
NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                   "chat_template.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model"}
EXPORT_FILES = {"adapter_config.json", "adapter_model.safetensors", "compression.json", "README.md", *TOKENIZER_FILES}  # what `lorasc export` writes

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
    existing = next(folder for folder in (run_dir, *run_dir.parents) if folder.exists())
    if not existing.is_dir():
        raise CliError(f"--output-dir {run_dir} is not allowed: {existing} is a file, not a folder; pass a folder path")
    check_path_length(run_dir, existing)
    if not resume and run_dir.is_dir() and any(run_dir.iterdir()):
        raise CliError(f"{run_dir} already holds a run; pass --resume to continue it or --output-dir for a new one")


def check_path_length(run_dir: Path, existing: Path) -> None:
    """The paths lorasc writes in the run folder fit the file system's path limit, checked before the run
    starts rather than met at its first checkpoint ("File name too long"). A run folder's own path that is
    too long fails already in `exists()`, and cli.py names it."""
    if not hasattr(os, "pathconf"):  # Windows: Python reports no limits there
        return
    limit = os.pathconf(existing, "PC_PATH_MAX")
    if len(os.fsencode(run_dir)) + ROOM_INSIDE > limit:
        raise CliError(f"--output-dir {abridged(run_dir)} is not allowed: with the {ROOM_INSIDE} bytes that the paths inside a run folder "
                       f"take, it is over the file system's path limit of {limit} bytes; pass a shorter --output-dir")


def abridged(path: str | Path) -> str:
    """A path short enough for a one-line message, its start and its end kept."""
    text = str(path)
    return text if len(text) <= 80 else f"{text[:40]}…{text[-39:]}"


def missing_folders(run_dir: Path) -> list[Path]:
    """`run_dir` and those of its parents that do not exist yet, deepest first: what creating it makes."""
    return list(itertools.takewhile(lambda folder: not folder.exists(), (run_dir, *run_dir.parents)))


def remove_unstarted(run_dir: Path, created: list[Path]) -> None:
    """A fresh run that fails before its first checkpoint leaves its folder as it found it (empty, or
    absent with the parents it created), so that the corrected command can use it."""
    if checkpoint_folders(run_dir):
        return
    for path in run_dir.iterdir():
        remove(path)
    for folder in created:
        with contextlib.suppress(OSError):  # a folder that something else wrote into meanwhile stays
            folder.rmdir()


def data_digests(run: RunConfig) -> dict[str, str]:
    return {name: data_digest(Path(name)) for name in data_files(run)}


def data_files(run: RunConfig) -> list[str]:
    """The run's data files: --data and its test and OOD files, or each task's files (a built-in sequence has none)."""
    tasks = [path for task in run.tasks or [] for path in ([task.get("train"), task.get("test")] if isinstance(task, dict) else [task])]
    named = [run.train_file, run.test_file, run.ood_file, *tasks, *(run.task_tests or [])]
    return [name for name in named if name and (run.tasks is None or Path(name).exists())]


def data_digest(path: Path) -> str:
    """sha256 of a data file, or over the names and contents of the files in a saved dataset folder."""
    if not path.is_dir():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def write_data_digests(run_dir: Path, run: RunConfig) -> None:
    write_file(run_dir / DATA_DIGESTS, json.dumps(data_digests(run), indent=2))


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
    """Held while this process trains into `run_dir`; refuses a run that another process is training.
    A link at RUN/.lock is replaced, as every link at a path lorasc writes (run_files.py)."""
    with os.fdopen(os.open(unlinked(run_dir / ".lock"), os.O_WRONLY | os.O_CREAT | NO_FOLLOW, 0o644), "a") as lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CliError(f"{run_dir} is being trained by another lorasc process; wait for it to finish, or stop it and rerun with --resume") from None
        yield


def finished_run(run_dir: Path) -> tuple[RunConfig, LoRASCConfig]:
    """The settings of a finished run whose dense model is whole and, where the run recorded its
    fingerprint, unchanged since the run finished."""
    if not run_dir.is_dir():
        raise CliError(f"{run_dir} is not a run folder; pass the --output-dir of a finished `lorasc train`")
    if not (run_dir / "config.yaml").is_file():
        raise CliError(f"{run_dir} is not a lorasc run (no config.yaml); pass the --output-dir of a finished `lorasc train`")
    if not (run_dir / "metrics.json").is_file():
        raise CliError(f"{run_dir} has not finished (no metrics.json); finish it with `lorasc train --resume --output-dir {run_dir}`")
    if not (run_dir / "model" / "config.json").is_file():
        raise CliError(f"{run_dir} has no dense model ({run_dir / 'model' / 'config.json'} is missing); restore it from a copy, or {_new_run(run_dir)}")
    run, config = resolve(argparse.Namespace(config=run_dir / "config.yaml"))
    weight_shapes(run_dir / "model", fix=f"restore it from a copy, or {_new_run(run_dir)}")
    check_max_length(run_dir / "model", run.max_length)
    recorded = recorded_fingerprints(run_dir)
    if recorded and model_fingerprint(run_dir / "model") != recorded["model"]:
        raise CliError(f"{run_dir / 'model'} changed since the run finished (its sha256 fingerprint differs from the one in metrics.json); "
                       f"restore it from a copy, or {_new_run(run_dir)}")
    return run, config


def check_base_unchanged(run_dir: Path, run: RunConfig) -> None:
    """An adapter is the difference between the dense model and the base model: exported against other
    base files it is wrong. A run from before lorasc recorded fingerprints gets a note instead."""
    base, recorded = model_path(run), recorded_fingerprints(run_dir)
    if not recorded:
        print(f"lorasc: note: {run_dir} records no fingerprint of its base model files (it predates them); the export assumes "
              f"that {base} holds the files the run trained on, unchanged", file=sys.stderr)
    elif model_fingerprint(base) != recorded["base_model"]:
        raise CliError(f"the base model files in {base} changed since {run_dir} was trained (their sha256 fingerprint differs from the one "
                       f"in metrics.json): an adapter exported against them would be wrong; restore them, or {_new_run(run_dir)}")


def model_fingerprints(run_dir: Path, base: str) -> dict[str, str]:
    """What metrics.json records: the fingerprints of the base model files and of the dense model."""
    return {"base_model": base, "model": model_fingerprint(run_dir / "model")}


def recorded_fingerprints(run_dir: Path) -> dict[str, str] | None:
    """metrics.json's fingerprints; None for a run from before they were recorded."""
    path = run_dir / "metrics.json"
    damaged = CliError(f"{path} is damaged (not the JSON object that lorasc writes); restore it from a copy, or {_new_run(run_dir)}")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise damaged from None
    if not isinstance(metrics, dict):
        raise damaged
    recorded = metrics.get("fingerprints")
    if recorded is not None and not (isinstance(recorded, dict) and all(isinstance(recorded.get(key), str) for key in ("base_model", "model"))):
        raise damaged
    return recorded


def _new_run(run_dir: Path) -> str:
    return f"train again with `lorasc train --config {run_dir / 'config.yaml'} --output-dir NEW`"


def check_export_folder(out: Path) -> None:
    """An export replaces a new folder or an earlier export that holds nothing else, never other files
    (the run's model, a note kept beside an earlier export)."""
    if out.exists() and not out.is_dir():
        raise CliError(f"--output {out} is a file; pass a folder path")
    names = {path.name for path in out.iterdir()} if out.is_dir() else set()
    if names and not ("compression.json" in names and names <= EXPORT_FILES):
        raise CliError(f"--output {out} already holds other files ({sorted(names - EXPORT_FILES or names)[0]}); pass a new folder")
