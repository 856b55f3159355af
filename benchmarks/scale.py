"""LoRASC at scale: step time, cycle-boundary cost, peak device memory and exactness against LoRA, in one process.

    python benchmarks/scale.py --size tiny --dtype float32 --device cpu     # seconds (CI runs tiny)
    python benchmarks/scale.py --size 350m --dtype bfloat16 --device cpu    # a CPU column of BENCHMARKS.md
    python benchmarks/scale.py --size 1b --dtype bfloat16 --device cuda     # the GPU row
    python benchmarks/scale.py --size minilm                                # boundary cost vs a MiniLM step, CPU
    python benchmarks/scale.py --report                                     # only rewrite results/scale.md

The Llama sizes are built from a LlamaConfig with random weights (cost and exactness do not need a
trained model); `minilm` is the packaged all-MiniLM-L6-v2. Batches are random tokens. LoRA is the
same engine with one cycle and no noise, stepped in the same process, interleaved with LoRASC.
Each configuration writes results/scale-<device>-<dtype>-<size>.json, then results/scale.md
(from scale_template.md) is rewritten from every such file; `python -m benchmarks --report` inlines it
into BENCHMARKS.md as the section "At scale".
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from peft import LoraConfig  # noqa: E402

if __package__:  # imported as benchmarks.scale
    from .scale_checks import DeviceMemory, MergeReference, copy_experts, noise_check, snapshot_linears, timed
    from .scale_models import PRESETS, build_model, random_batches
    from .scale_report import write_report
else:  # python benchmarks/scale.py: this folder is sys.path[0]
    from scale_checks import DeviceMemory, MergeReference, copy_experts, noise_check, snapshot_linears, timed
    from scale_models import PRESETS, build_model, random_batches
    from scale_report import write_report

from lorasc import LoRASC, LoRASCConfig  # noqa: E402
from lorasc.export import stacked_factors  # noqa: E402
from lorasc.run.run_config import DTYPES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


# ---- runs ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    name: str
    cascade: LoRASC
    optimizer: torch.optim.Optimizer
    step_s: list[float] = dataclasses.field(default_factory=list)


def make_run(name: str, base: torch.nn.Module, config: LoRASCConfig, args, memory: DeviceMemory) -> Run:
    """A private copy of the base model, wrapped, begun and given its AdamW, all counted as `name`'s memory."""
    with memory.track(name):
        cascade = LoRASC(copy.deepcopy(base), config)
        cascade.begin(total_steps=args.cycles * args.steps_per_cycle)
        optimizer = cascade.optimizer(lr=args.lr)
    return Run(name, cascade, optimizer)


def configs(args, targets: list[str], task: str) -> dict[str, LoRASCConfig]:
    expert = LoraConfig(r=args.rank, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules=targets, task_type=task)
    cascade = dict(num_cycles=args.cycles, slow_alpha=args.slow_alpha, seed=args.seed, expert=expert)
    return {
        "lora": LoRASCConfig(num_cycles=1, noise_lambda=0.0, slow_alpha=1.0, seed=args.seed, expert=expert),
        "lorasc": LoRASCConfig(noise_lambda=args.noise_lambda, **cascade),
        "twin": LoRASCConfig(noise_lambda=0.0, **cascade),  # same experts handed over: the noise-free reference
    }


def train_step(run: Run, batch: dict) -> None:
    run.cascade.model(**batch).loss.backward()
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)


def train_interleaved(runs: list[Run], batches: list[dict], steps: int, untimed: int, memory: DeviceMemory, device) -> None:
    """`steps` steps of every run, alternating which goes first; the first `untimed` are warm-up."""
    for k in range(steps):
        batch = batches[k % len(batches)]
        for run in runs if k % 2 == 0 else runs[::-1]:
            with memory.track(run.name):
                seconds = timed(lambda: train_step(run, batch), device)
            if k >= untimed:
                run.step_s.append(seconds)


# ---- the measurement --------------------------------------------------------------------------------
def measure(args) -> dict:
    preset, device, dtype = PRESETS[args.size], resolve_device(args.device), DTYPES[args.dtype]
    started = time.perf_counter()
    base, targets, task = build_model(preset, dtype, device, args.seed)
    pristine = snapshot_linears(base, targets)
    batches = random_batches(4, args.batch, args.seq, base.config.vocab_size, task, device, args.seed)
    memory = DeviceMemory(device)
    runs = {name: make_run(name, base, config, args, memory) for name, config in configs(args, targets, task).items()}
    params = sum(p.numel() for p in base.parameters())
    del base
    lora, lorasc, twin = runs["lora"], runs["lorasc"], runs["twin"]
    reference = MergeReference(lorasc.cascade.layers, pristine)
    cycles = []
    for cycle in range(args.cycles):
        train_interleaved([lora, lorasc], batches, args.steps_per_cycle, args.warmup if cycle == 0 else 0, memory, device)
        cycles.append(end_and_check(lorasc, twin, reference, args, memory, device))
        log_cycle(cycle, args.cycles, cycles[-1], time.perf_counter() - started)
        if cycle < args.cycles - 1:
            cycles[-1]["start_cycle_s"] = boundary_half(lorasc, memory, device, lambda: lorasc.cascade.start_cycle(lorasc.optimizer))
            twin.cascade.start_cycle()
    stacked_error = reference.stacked_relative_error(stacked_factors(lorasc.cascade))
    return summarize(args, device, params, reference, runs, memory, cycles, stacked_error, time.perf_counter() - started)


def log_cycle(cycle: int, total: int, result: dict, elapsed: float) -> None:
    print(f"[{elapsed:6.0f} s] cycle {cycle + 1}/{total}: end_cycle {result['end_cycle_s']:.3f} s, merge exact "
          f"{result['merge']['exact_fraction']:.6f}, noise exact {result['noise']['exact_fraction']:.6f}", file=sys.stderr, flush=True)


def boundary_half(run: Run, memory: DeviceMemory, device, fn) -> float:
    with memory.track(run.name):
        return timed(fn, device)


def end_and_check(lorasc: Run, twin: Run, reference: MergeReference, args, memory: DeviceMemory, device) -> dict:
    """Record the expert, hand it to the twin, end both cycles (timing LoRASC's), check both exactnesses."""
    reference.record_experts(args.slow_alpha)
    copy_experts(lorasc.cascade.layers, twin.cascade.layers)
    end_s = boundary_half(lorasc, memory, device, lorasc.cascade.end_cycle)
    twin.cascade.end_cycle()
    return {"end_cycle_s": end_s, "merge": reference.check(), "noise": noise_check(lorasc.cascade.layers, twin.cascade.layers)}


def summarize(args, device, params, reference, runs, memory, cycles, stacked_error, wall_s) -> dict:
    return {
        "benchmark": "scale", "size": args.size, "dtype": args.dtype, "device": device.type,
        "device_name": device_name(device), "model": "packaged all-MiniLM-L6-v2" if args.size == "minilm" else "LlamaForCausalLM",
        "random_weights": args.size != "minilm", "params": params,
        "adapted_params": sum(w.numel() for w in reference.w0.values()),
        "setting": {k: getattr(args, k) for k in ("batch", "seq", "rank", "lora_alpha", "slow_alpha", "noise_lambda",
                                                   "cycles", "steps_per_cycle", "warmup", "lr", "seed")},
        **costs(runs, memory, cycles), **exactness(cycles), "stacked_relative_error": stacked_error, "per_cycle": cycles,
        "wall_s": wall_s, "command": command_line(args.argv), "environment": environment(),
    }


def costs(runs: dict[str, Run], memory: DeviceMemory, cycles: list[dict]) -> dict:
    """Median steps; the step-time ratio as the median of the ratios of each interleaved pair of steps (on a
    shared machine both steps of a pair see the same load, while the medians of each need not); the
    boundaries (every cycle but the last has an end and a next start) in seconds, in median LoRASC
    steps and in its fastest step (the larger count when other work slows some steps down)."""
    lora_step, lorasc_step = (statistics.median(runs[n].step_s) for n in ("lora", "lorasc"))
    ends = [c["end_cycle_s"] for c in cycles[:-1]]
    starts = [c["start_cycle_s"] for c in cycles[:-1]]
    boundary = statistics.median(e + s for e, s in zip(ends, starts))
    pair_ratios = [s / l for l, s in zip(runs["lora"].step_s, runs["lorasc"].step_s)]  # neighbours in time
    return {
        "timed_steps": len(runs["lorasc"].step_s), "lora_steps_s": runs["lora"].step_s, "lorasc_steps_s": runs["lorasc"].step_s,
        "lora_step_s": lora_step, "lorasc_step_s": lorasc_step,
        "step_time_ratio": statistics.median(pair_ratios), "median_step_ratio": lorasc_step / lora_step,
        "boundary_s": boundary, "boundary_steps": boundary / lorasc_step,
        "boundary_fastest_steps": boundary / min(runs["lorasc"].step_s),
        "end_cycle_s": statistics.median(ends), "start_cycle_s": statistics.median(starts),
        "peak_memory_bytes": dict(memory.peak) if memory.cuda else None, "peak_memory_ratio": memory.ratio("lorasc", "lora"),
    }


def exactness(cycles: list[dict]) -> dict:
    """The worst cycle of each measure (the norm ratio: after the last cycle)."""
    merge, noise = [c["merge"] for c in cycles], [c["noise"] for c in cycles]
    return {
        "merge_exact_fraction": min(m["exact_fraction"] for m in merge),
        "merge_within_one_ulp_fraction": min(m["within_one_ulp_fraction"] for m in merge),
        "delta_relative_error": max(m["delta_relative_error"] for m in merge),
        "delta_relative_error_floor": max(m["delta_relative_error_floor"] for m in merge),
        "delta_norm_ratio": merge[-1]["delta_norm_ratio"],
        "noise_exact_fraction": min(n["exact_fraction"] for n in noise),
        "noise_max_relative_difference": max(n["max_relative_difference"] for n in noise),
    }


# ---- environment and command line -------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")] if cpuinfo.is_file() else []
    return f"{models[0] if models else platform.machine()}, {torch.get_num_threads()} threads"


def environment() -> dict:
    import peft
    import transformers

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version(), "commit": commit or None}


def command_line(argv: list[str]) -> str:
    """The command that reproduces a run (its output folder left out)."""
    if "--results-dir" in argv:
        at = argv.index("--results-dir")
        argv = argv[:at] + argv[at + 2:]
    return " ".join(["python benchmarks/scale.py", *argv])


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(PRESETS), default="tiny", help="Llama size (random weights) or the packaged MiniLM")
    parser.add_argument("--dtype", choices=list(DTYPES), help="the frozen backbone's dtype (default: the preset's)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--batch", type=int, help="sequences per batch (default: the preset's)")
    parser.add_argument("--seq", type=int, help="tokens per sequence (default: the preset's)")
    parser.add_argument("--steps-per-cycle", type=int, help="training steps per cycle (default: the preset's)")
    parser.add_argument("--cycles", type=int, default=3, help="cycles; boundaries between them are timed")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps of each run")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--slow-alpha", type=float, default=0.5, help="α of the slow step (0.5 exercises the scaled merge)")
    parser.add_argument("--noise-lambda", type=float, default=0.15)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--report", action="store_true", help="no run: only rewrite scale.md from the JSON files")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    preset = PRESETS[args.size]
    for name in ("batch", "seq", "steps_per_cycle", "dtype"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(preset, name))
    if args.cycles < 2 or args.steps_per_cycle <= args.warmup:
        parser.error("--cycles must be >= 2 (a boundary between two cycles) and --steps-per-cycle > --warmup")
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse(argv)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    result = None
    if not args.report:
        result = measure(args)
        path = args.results_dir / f"scale-{result['device']}-{args.dtype}-{args.size}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{path}: step ratio {result['step_time_ratio']:.3f}, boundary {result['boundary_s']:.3f} s "
              f"({result['boundary_steps']:.2f} steps), merge exact {result['merge_exact_fraction']:.4f}, "
              f"noise exact {result['noise_exact_fraction']:.4f}")
    print(f"report: {write_report(args.results_dir)}")
    return result


if __name__ == "__main__":
    main()
