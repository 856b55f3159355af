"""Continual learning on a sequence of tasks (issue 30): SeqLoRA, IncLoRA, O-LoRA, LoRASC and the multitask
bound on tweets-domains, MiniLM, per-task heads, the same budget per task; the report is continual_report.py.

    python -m benchmarks --continual             # LR choice, main table, extras, then the section of BENCHMARKS.md
    python -m benchmarks --continual --seeds 3   # the main table at 3 seeds (multitask at min(2, 3)); the report says so
    python -m benchmarks --continual --olora4    # also the main methods on olora4 at 1 seed (max length 128)
    python -m benchmarks --continual --report    # no runs: rewrite the section from results/continual-*.jsonl
    python -m benchmarks --continual --quick     # 2 tasks × 6 steps, 32 test rows: results/continual-quick.*

One learning rate for every method: IncLoRA's best validation AA over `lrs` at seed 0 (those runs score each
task's validation split in place of its test split; the test split makes no choice). Each run is its own
process (`python -m benchmarks.continual SPEC OUT`), `--jobs` at a time; results are appended to
results/continual-<setting>.jsonl as they finish and a rerun runs only what is missing or failed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .protocol import WARMUP_SHARE
from .runner import RUN_TIMEOUT, STEP_TIMEOUT, last_line, on_device, read_results, run_subprocess


@dataclasses.dataclass(frozen=True)
class Variant:
    label: str  # the row's name, unique in its setting
    method: str  # lorasc.methods.METHODS
    seeds: int
    run: dict = dataclasses.field(default_factory=dict)  # RunConfig fields beyond the setting's
    lorasc: dict = dataclasses.field(default_factory=dict)  # LoRASCConfig fields


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str  # results/continual-<name>.jsonl
    sequence: str = "tweets-domains"
    tasks: int | None = None  # the first tasks of the sequence only
    steps_per_task: int = 50
    batch_size: int = 16
    max_length: int = 64
    n_train: int | None = None  # each task's training rows cut to this
    n_test: int | None = None  # and its test (and validation) rows
    # The grid was 5e-4, 1e-3, 2e-3: there every method stayed at each task's majority class (macro-F1 ≈ 0.26)
    # in 50 steps; 3e-3 is the first LR at which a task is learned, 6e-3 and 1e-2 fall back to the majority class
    lrs: tuple[float, ...] = (1e-3, 2e-3, 3e-3)
    warmup_ratio: float = WARMUP_SHARE  # of each task's steps, then cosine, as every benchmark of the package
    select: str = "inc-lora"  # the method whose validation AA at seed 0 chooses the one LR
    main: tuple[Variant, ...] = ()
    extras: tuple[Variant, ...] = ()


MAX_TASKS = 6  # the longest built-in sequence (tweets-domains-6): a run's allowance grows with its steps
METHODS = ("seq-lora", "inc-lora", "o-lora", "lorasc")
MULTITASK, REFERENCE = "multitask", "single"  # the upper bound; each task alone (FWT's ã_i)
MAIN = (*(Variant(m, m, 5) for m in METHODS), Variant(MULTITASK, MULTITASK, 2))
EXTRAS = (
    Variant("ema", "ema", 1), Variant("ema replay=500", "ema", 1, run={"replay": 500}),
    Variant("lorasc slow_alpha=0.5", "lorasc", 1, lorasc={"slow_alpha": 0.5}),
    Variant("lorasc task_alpha=inv-sqrt", "lorasc", 1, lorasc={"task_alpha": "inv-sqrt"}),
    Variant("lorasc expert_init=orthogonal", "lorasc", 1, lorasc={"expert_init": "orthogonal"}),
    Variant("lorasc noise_lambda=0", "lorasc", 1, lorasc={"noise_lambda": 0.0}),
    Variant("seq-lora cl_head=shared", "seq-lora", 1, run={"cl_head": "shared"}),
    Variant("lorasc cl_head=shared", "lorasc", 1, run={"cl_head": "shared"}),
    *(Variant(f"{m} reverse", m, 1, run={"task_order": ["reverse"]}) for m in ("seq-lora", "inc-lora", "lorasc")),
    Variant(REFERENCE, REFERENCE, 1),
)
FULL = Setting("tweets-domains", main=MAIN, extras=EXTRAS)
OLORA4 = Setting("olora4", sequence="olora4", max_length=128, n_train=1000, n_test=500, main=tuple(Variant(m, m, 1) for m in (*METHODS, MULTITASK)))
QUICK = Setting("quick", tasks=2, steps_per_task=6, n_train=96, n_test=32, lrs=(1e-3, 2e-3),
                main=(*(Variant(m, m, 2) for m in ("seq-lora", "inc-lora", "lorasc")), Variant(MULTITASK, MULTITASK, 1)),
                extras=(Variant(REFERENCE, REFERENCE, 1), Variant("lorasc reverse", "lorasc", 1, run={"task_order": ["reverse"]})))


def results_path(results_dir: Path, s: Setting) -> Path:
    return results_dir / f"continual-{s.name}.jsonl"


def with_seeds(variants: tuple[Variant, ...], seeds: int | None) -> tuple[Variant, ...]:
    """The main table cut to at most `seeds` seeds per method (None: as planned)."""
    return variants if seeds is None else tuple(dataclasses.replace(v, seeds=min(v.seeds, seeds)) for v in variants)


# ---- specs --------------------------------------------------------------------------------------------
def spec(s: Setting, group: str, v: Variant, lr: float, seed: int, split: str = "test") -> dict:
    run = {"method": v.method, "tasks": [s.sequence], "steps_per_task": s.steps_per_task, "batch_size": s.batch_size, "warmup_ratio": s.warmup_ratio,
           "max_length": s.max_length, "lr": lr, "seed": seed, **v.run}
    data = {"sequence": s.sequence, "tasks": s.tasks, "n_train": s.n_train, "n_test": s.n_test, "split": split}
    return {"key": f"{group}/{v.label}/lr={lr:g}/seed={seed}", "group": group, "label": v.label, "method": v.method, "lr": lr,
            "seed": seed, "variant": {"run": v.run, "lorasc": v.lorasc}, "run": run, "lorasc": v.lorasc, "data": data}


def selection_specs(s: Setting) -> list[dict]:
    return [spec(s, "select", Variant(s.select, s.select, 1), lr, 0, split="val") for lr in s.lrs]


def chosen_lr(s: Setting, results: list[dict]) -> float | None:
    """The LR of the best validation AA of the selection runs (a tie: the lowest LR); None until each was tried
    or if none finished."""
    runs = {r["key"]: r for r in results}
    specs = selection_specs(s)
    if not all(x["key"] in runs for x in specs):
        return None
    scores = {x["lr"]: runs[x["key"]]["continual"]["accuracy"]["AA"] for x in specs if "error" not in runs[x["key"]]}
    return max(sorted(scores), key=scores.get) if scores else None


def variant_specs(s: Setting, lr: float, seeds: int | None = None) -> list[dict]:
    """The main table seed after seed (a sweep cut short has whole paired seeds), then the extras."""
    main = [spec(s, "main", v, lr, seed) for v in with_seeds(s.main, seeds) for seed in range(v.seeds)]
    return sorted(main, key=lambda x: x["seed"]) + [spec(s, "extras", v, lr, seed) for v in s.extras for seed in range(v.seeds)]


# ---- one run, in its own process -------------------------------------------------------------------------
def sequence_of(data: dict, order: list | None) -> list:
    """The setting's tasks (the first `tasks`, cut), reversed for order ["reverse"]; a selection run's
    test split is each task's validation split."""
    from lorasc.continual import load_sequence

    tasks = load_sequence([data["sequence"]])[: data["tasks"]]
    if order == ["reverse"]:
        tasks = tasks[::-1]
    test = "val" if data["split"] == "val" else "test"
    return [dataclasses.replace(t, train=t.train[: data["n_train"]], test=getattr(t, test)[: data["n_test"]]) for t in tasks]


def run_spec(x: dict) -> dict:
    import torch

    from lorasc.config import LoRASCConfig
    from lorasc.continual import run_sequence
    from lorasc.run.run_config import RunConfig

    from .child import environment
    from .runner import THREADS

    torch.set_num_threads(THREADS)
    loadavg = os.getloadavg()
    run, config = RunConfig(**x["run"]), LoRASCConfig.from_dict(x["lorasc"])
    with tempfile.TemporaryDirectory() as tmp:
        metrics = run_sequence(sequence_of(x["data"], run.task_order), run, config, tmp, progress=False, save_models=False)
    block = metrics["continual"]
    return {"R": block["R"], "continual": block, "seconds_per_step": metrics.get("seconds_per_step"),
            "train_seconds": metrics.get("train_seconds"), "environment": environment(), "loadavg": loadavg}


HEADER = ("key", "group", "label", "method", "lr", "seed", "variant")


def run_child(x: dict) -> dict:
    """`x` in its own process, timed; a crash or a hang is a result with an error."""
    timeout = RUN_TIMEOUT + STEP_TIMEOUT * x["run"]["steps_per_task"] * (x["data"]["tasks"] or MAX_TASKS)
    start = time.perf_counter()
    result = run_subprocess(x, "benchmarks.continual", timeout, HEADER)
    return result if "error" in result else {**result, "wall_seconds": time.perf_counter() - start}


def run_all(path: Path, specs: list[dict], jobs: int, device: str) -> None:
    """Each spec without a finished result in `path`, `jobs` at a time, in order; each result appended as it comes."""
    finished = {r["key"] for r in read_results(path) if "error" not in r}
    todo = [on_device(x, device) for x in specs if x["key"] not in finished]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {}
        for x in todo:
            futures[pool.submit(run_child, x)] = x["key"]
            print(f"[{time.strftime('%H:%M:%S')}] queued {x['key']}", flush=True)
        for future in as_completed(futures):
            result = future.result()
            done = "FAILED: " + last_line(result["error"]) if "error" in result else f"AA {result['continual']['accuracy']['AA']:.4f}"
            print(f"    {futures[future]}: {done}", flush=True)
            with open(path, "a") as f:
                f.write(json.dumps(result) + "\n")


def sweep(s: Setting, results_dir: Path, jobs: int, device: str, seeds: int | None = None, selection: Setting | None = None) -> None:
    """The LR choice (in `selection`'s file: olora4 takes tweets-domains' LR), then `s`'s main table and extras."""
    selection = selection or s
    run_all(results_path(results_dir, selection), selection_specs(selection), jobs, device)
    lr = chosen_lr(selection, read_results(results_path(results_dir, selection)))
    if lr is None:
        raise SystemExit(f"continual: no learning rate chosen, every selection run of {results_path(results_dir, selection)} failed")
    run_all(results_path(results_dir, s), variant_specs(s, lr, seeds), jobs, device)


def main(results_dir: Path, *, quick: bool = False, report_only: bool = False, olora4: bool = False, seeds: int | None = None,
         jobs: int = 2, device: str = "auto") -> Path:
    """Run what is missing (unless `report_only`), then write results_dir/continual[-quick].md."""
    from .continual_report import write_report

    s = QUICK if quick else FULL
    if not report_only:
        sweep(s, results_dir, jobs, device, seeds)
        if olora4:
            sweep(OLORA4, results_dir, jobs, device, selection=FULL)
    return write_report(s, results_dir)


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(json.dumps(run_spec(json.loads(Path(sys.argv[1]).read_text()))))
