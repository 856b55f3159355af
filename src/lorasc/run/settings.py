"""A run's settings: built-in defaults < `--config FILE` (YAML or JSON) < flags.

Every value, from a flag or a file, is converted by the type of its dataclass field, not by the YAML
parser's guess (`lr: 1e-3` is a string to PyYAML) nor taken as it comes: numbers must be finite,
and an unknown key or a value of the wrong kind is refused as `<field>=<value> is not allowed: <what is>`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import yaml

from ..config import (DEFAULT_EXPERT, EXPERT_FIELDS, EXPERT_INITS, NOISE_KINDS, NOISE_TARGETS, OPTIMIZER_STATE_MODES, SLOW_OVERFLOW_MODES,
                      LoRASCConfig, require)
from .coerce import coerce
from .aliases import DERIVED, global_batch, layered, refuse_unimplemented, renamed
from .datasets import DATASETS
from .errors import CliError, refuse_special_file
from .models import default_targets, model_path
from .run_config import CHAT_TEMPLATES, CL_HEADS, DEVICES, DTYPES, QUANTIZE, REPORT_TO, RUN_METHODS, TASKS, RunConfig
from .run_files import write_file

# The main job's defaults: a 4-expert cascade over one epoch of 8,000 tweets (about 500 steps). The
# library's LoRASCConfig default is one cycle per epoch instead: the flag's help says so.
DEFAULT_LORASC = {"num_cycles": 4}
CHOICES = {"method": RUN_METHODS, "task": TASKS, "dataset": DATASETS, "device": DEVICES, "dtype": tuple(DTYPES), "noise_kind": NOISE_KINDS,
           "noise_targets": NOISE_TARGETS, "optimizer_state": OPTIMIZER_STATE_MODES, "expert_init": EXPERT_INITS, "report_to": REPORT_TO,
           "chat_template": CHAT_TEMPLATES, "quantize": (None, *QUANTIZE), "compute_dtype": (None, *DTYPES), "slow_overflow": SLOW_OVERFLOW_MODES,
           "cl_head": CL_HEADS, **{name: "items | None" for name in ("tasks", "task_names", "task_tests", "task_order")}}
RUN_FIELDS = {f.name: CHOICES.get(f.name, f.type) for f in dataclasses.fields(RunConfig)}
RUN_KINDS = {**RUN_FIELDS, **DERIVED}  # with the TrainingArguments names that set a run field by a rule (aliases.py)
# The seed has one home, the run's: the cascade takes run.seed (see resolve).
LORASC_FIELDS = {f.name: CHOICES.get(f.name, f.type) for f in dataclasses.fields(LoRASCConfig) if f.name not in ("expert", "seed")}
EXPERT_FLAGS = {name: kind for name, kind in EXPERT_FIELDS.items() if name not in ("modules_to_save", "task_type")}  # those follow the task
RUN_FLAGS = {name: kind for name, kind in RUN_FIELDS.items() if name not in ("method", "task", "model")}  # those have their own flags


def resolve(args: argparse.Namespace) -> tuple[RunConfig, LoRASCConfig]:
    """Defaults < config file < flags, typed by the dataclass fields and validated by the dataclasses."""
    run_values, lorasc_values = {}, dict(DEFAULT_LORASC)
    expert_values = dict(DEFAULT_EXPERT)
    flags = vars(args)
    refuse_unimplemented(flags)
    if args.config is not None:
        loaded = read_config(args.config)
        run_values = layered(run_values, loaded["run"])
        lorasc_values.update({k: v for k, v in loaded["lorasc"].items() if k != "expert"})
        expert_values.update(loaded["lorasc"].get("expert", {}))
    run_values = global_batch(layered(run_values, typed("run", {k: flags[k] for k in RUN_KINDS if k in flags}, RUN_KINDS)))
    lorasc_values.update(typed("lorasc", {k: flags[k] for k in LORASC_FIELDS if k in flags}, LORASC_FIELDS))
    expert_values.update(typed("expert", {k: flags["expert_" + k] for k in EXPERT_FLAGS if "expert_" + k in flags}, EXPERT_FIELDS))
    run = RunConfig(**run_values)
    if "target_modules" not in expert_values:
        expert_values["target_modules"] = default_targets(model_path(run))
    dropout = expert_values.get("lora_dropout", 0.0)
    require(0.0 <= dropout < 1.0, "expert.lora_dropout", dropout, "a float in [0, 1)")  # torch would refuse it only when building the model
    return run, LoRASCConfig.from_dict({**lorasc_values, "seed": run.seed, "expert": expert_values})


CONFIG_SIZE_LIMIT = 1 << 20  # far above any settings file; a data file passed by mistake would take minutes to parse as YAML


def read_config(path: Path) -> dict:
    """A config file's 'run' and 'lorasc' sections (each possibly empty), typed."""
    refuse_special_file(path, CliError, "pass an existing .yaml or .json file (RUN/config.yaml works)")
    if not path.is_file():
        raise CliError(f"config file not found: {path}; pass an existing .yaml or .json file (RUN/config.yaml works)")
    if path.stat().st_size > CONFIG_SIZE_LIMIT:
        raise CliError(f"{path} is {path.stat().st_size:,} bytes, too large for a settings file (RUN/config.yaml is about 1 KB); "
                       "pass the .yaml or .json file with the sections 'run' and 'lorasc'")
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        text = path.read_text(encoding="utf-8-sig")
        loaded = json.loads(text, object_pairs_hook=unique_keys) if kind == "JSON" else yaml.load(text, Loader=SettingsLoader)
    except RepeatedSetting as err:
        raise CliError(f"{path} names the setting {err} twice (the last value would win without a word); keep one of them") from None
    except AliasRefused as err:
        raise CliError(f"{path}:{err.problem_mark.line + 1} uses the YAML alias {err.problem}; lorasc expands no aliases (a few bytes of them "
                       "can expand to gigabytes): write the value out") from None
    except RecursionError:
        raise CliError(f"{path} nests too deeply to read; write it like RUN/config.yaml of any run: the sections 'run' and 'lorasc', "
                       "one value a setting") from None
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as err:
        raise CliError(f"{path} is not valid {kind} text ({' '.join(str(err).split())[:160]}); fix it or write it again") from None
    sections = {"run", "lorasc"}
    if not isinstance(loaded, dict) or not loaded or (set(loaded) - sections and (set(loaded) & sections or any(
            isinstance(value, dict) for name, value in loaded.items() if name != "expert"))):  # a flat file has no other sections
        raise CliError(f"{path} must be a mapping with the sections 'run' and/or 'lorasc' (see RUN/config.yaml of any run), or a flat one "
                       "with TrainingArguments names beside lorasc's (docs/cli.md); fix its top level")
    try:
        loaded = loaded if set(loaded) <= sections else nested(loaded)
        run, lorasc = one_seed(section(loaded, "run"), section(loaded, "lorasc"))
        expert = typed("lorasc.expert", section(lorasc, "expert"), EXPERT_FIELDS)
        return {"run": typed("run", run, RUN_KINDS), "lorasc": {**typed("lorasc", lorasc, LORASC_FIELDS, {"expert"}), "expert": expert},
                "output_dir": coerce("output_dir", loaded.get("output_dir"), "str | None")}
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None  # which file holds the value


def nested(flat: dict) -> dict:
    """A flat config file, TrainingArguments' way, as the sections run and lorasc (and its output_dir)."""
    values = renamed(flat)
    unknown = sorted(set(values) - set(RUN_KINDS) - set(LORASC_FIELDS) - {"expert", "output_dir"})
    require(not unknown, "keys", unknown, "lorasc's settings (as in RUN/config.yaml) or the TrainingArguments names of docs/cli.md")
    run = {name: value for name, value in values.items() if name in RUN_KINDS}
    lorasc = {name: value for name, value in values.items() if name in LORASC_FIELDS or name == "expert"}
    return {"run": run, "lorasc": lorasc, "output_dir": values.get("output_dir")}


def output_dir(args: argparse.Namespace) -> Path | None:
    """--output-dir, else the output_dir of a flat config file."""
    if args.output_dir is not None or args.config is None:
        return args.output_dir
    folder = read_config(args.config)["output_dir"]
    return None if folder is None else Path(folder)


def one_seed(run: dict, lorasc: dict) -> tuple[dict, dict]:
    """The sections with the seed in `run` only. A config.yaml written before the seed had one home
    repeats it as lorasc.seed: taken as the run's seed, unless it says another."""
    if "seed" not in lorasc:
        return run, lorasc
    lorasc = dict(lorasc)
    seed = lorasc.pop("seed")
    require(run.get("seed", seed) == seed, "lorasc.seed", seed, f"absent, or run.seed={run.get('seed')!r}: a run has one seed, run.seed")
    return {"seed": seed, **run}, lorasc


class RepeatedSetting(Exception):
    """A key named twice in one mapping of a settings file; the message is the key."""


def unique_keys(pairs: list[tuple]) -> dict:
    keys = [key for key, _ in pairs]
    repeated = next((key for key in keys if keys.count(key) > 1), None)
    if repeated is not None:
        raise RepeatedSetting(repr(repeated))
    return dict(pairs)


class AliasRefused(yaml.composer.ComposerError):
    """An alias in a settings file; its `problem` is the alias."""


class SettingsLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: 349 bytes of nested aliases expand to gigabytes (a "billion laughs")."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            alias = self.peek_event()
            raise AliasRefused(problem=f"*{alias.anchor}", problem_mark=alias.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            unique_keys([(key.value, None) for key, _ in node.value])
        return super().construct_mapping(node, deep)


def section(loaded: dict, name: str) -> dict:
    values = loaded.get(name) or {}
    require(isinstance(values, dict), name, values, "a mapping of settings")
    return values


def typed(where: str, values: dict, kinds: dict, nested: set = frozenset()) -> dict:
    unknown = sorted(set(values) - set(kinds) - nested)
    require(not unknown, f"{where} keys", unknown, f"keys among {sorted(kinds)}")
    return {name: value if name in nested else coerce(name if where in ("run", "lorasc") else f"expert.{name}", value, kinds[name])
            for name, value in values.items()}


def write_config(run_dir: Path, run: RunConfig, config: LoRASCConfig) -> None:
    lorasc = {name: value for name, value in config.to_dict().items() if name != "seed"}  # run.seed is the one seed
    write_file(run_dir / "config.yaml", yaml.safe_dump({"run": dataclasses.asdict(run), "lorasc": lorasc}, sort_keys=False))


# The library names fields; in the fix of its errors (after the last "; ") the CLI names the flags.
FIX_FLAGS = {**{name: "--" + name.replace("_", "-") for name in LORASC_FIELDS},
             **{f"expert.{name}": "--expert-" + name.replace("_", "-") for name in EXPERT_FLAGS},
             "total_steps": "--max-steps or --epochs", "rank": "--rank"}  # rank: `lorasc export --rank`
_FIX_NAME = re.compile(r"(?<![\w.-])(" + "|".join(sorted(map(re.escape, FIX_FLAGS), key=len, reverse=True)) + r")(?![\w])(?:=([^\s,;)]+))?")


def in_flags(message: str) -> str:
    """A setting's error (`field=value is not allowed: what is; fix`) with the flags named in its fix:
    'lower num_cycles' becomes 'lower --num-cycles', 'pass expert.r=8' becomes 'pass --expert-r 8'."""
    problem, separator, fix = message.rpartition("; ")
    if " is not allowed: " not in problem:
        return message
    return problem + separator + _FIX_NAME.sub(lambda m: " ".join(filter(None, (FIX_FLAGS[m[1]], m[2]))), fix)


def resume_conflict(args: argparse.Namespace, config_file: Path) -> str | None:
    """On resume: the first flag whose value differs from the run's config.yaml, with what to do instead."""
    stored, wanted = _flat(*resolve(argparse.Namespace(config=config_file))), _flat(*resolve(args))
    for name, value in wanted.items():
        if stored.get(name) != value:
            flag = "--data" if name == "train_file" else "--" + name.replace("_", "-")
            given = f"{flag} {' '.join(map(str, value)) if isinstance(value, list) else value}"
            return (f"{given} changes this run's {name.replace('expert_', 'expert.')}={stored.get(name)!r} ({config_file}); a resumed run keeps "
                    f"its settings: drop {flag} to resume, or start a new run with --config {config_file} --output-dir NEW {given}")
    return None


def _flat(run: RunConfig, config: LoRASCConfig) -> dict:
    """Every setting by the name of its flag (without --): run and method settings, and the expert's as expert_<name>."""
    method = config.to_dict()
    expert = method.pop("expert")
    return {**dataclasses.asdict(run), **method, **{f"expert_{k}": v for k, v in expert.items()}}
