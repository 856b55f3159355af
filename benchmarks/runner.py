"""The sweep: one subprocess per run (`python -m benchmarks.child`), several in parallel.

Each run is its own process, so its peak memory is its own and a crash or a hang is recorded as a
failed result without ending the sweep. Each result is appended to RESULTS/<protocol>.jsonl as soon
as it finishes; a rerun skips the runs already there and retries the failed ones once. The plan is
asked again after every finished run, since later runs depend on earlier ones (chosen LRs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from lorasc.run.run_config import RunConfig

from . import ROOT
from .planner import Board

THREADS = int(os.environ.get("LORASC_BENCH_THREADS", "2"))  # torch threads per run; 1 lets two sweeps share two cores
# A run that outlasts its allowance is recorded as failed (hung): a fixed part for loading and evaluation, and a
# part per optimizer step, since a causal-LM run of regime (b) takes an hour on a CPU core (a SmolLM2 step up to 6 s)
RUN_TIMEOUT, STEP_TIMEOUT = 1800, 10  # seconds
ENV = {"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
HEADER = ("key", "kind", "group", "label", "lr", "seed")  # what names a run in its result

Plan = Callable[[Board], list[dict]]


def default_jobs() -> int:
    """As many runs at a time as the cores hold at THREADS threads each."""
    return max(1, (os.cpu_count() or 1) // THREADS)


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_missing(path: Path, plan: Plan, jobs: int, device: str) -> None:
    """Run every spec `plan` asks for that has no result in `path` yet, `jobs` at a time; a spec that
    fails is not retried within this call."""
    attempted: set[str] = set()
    running: dict[Future, str] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while True:
            board = Board(read_results(path))
            for spec in plan(board):
                if len(running) >= jobs:
                    break
                if spec["key"] not in board.finished and spec["key"] not in attempted:
                    attempted.add(spec["key"])
                    print(f"[{time.strftime('%H:%M:%S')}] {spec['key']} ...", flush=True)
                    running[pool.submit(timed_run, on_device(spec, device))] = spec["key"]
            if not running:
                return
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                result = future.result()
                print(f"    {running.pop(future)}: {summary_line(result)}", flush=True)
                with open(path, "a") as f:
                    f.write(json.dumps(result) + "\n")


def on_device(spec: dict, device: str) -> dict:
    return {**spec, "run": {**spec["run"], "device": device}}


def timed_run(spec: dict) -> dict:
    start = time.perf_counter()
    return {**run_subprocess(spec), "wall_seconds": time.perf_counter() - start}


def run_timeout(spec: dict) -> int:
    run = RunConfig(**spec["run"])
    return RUN_TIMEOUT + STEP_TIMEOUT * run.steps(run.n_train)[1]


def run_subprocess(spec: dict, module: str = "benchmarks.child", timeout: int | None = None, header: tuple[str, ...] = HEADER) -> dict:
    """`python -m module SPEC OUT` on `spec` (a run of the benchmark's child by default); a crash or a hang
    is a result with an error. The result carries the spec's `header` fields."""
    header, timeout = {k: spec[k] for k in header if k in spec}, timeout or run_timeout(spec)
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp, "spec.json"), Path(tmp, "result.json")
        spec_path.write_text(json.dumps(spec))
        command = [sys.executable, "-m", module, str(spec_path), str(out_path)]
        try:
            proc = subprocess.run(command, cwd=ROOT, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return {**header, "error": f"timed out after {timeout} s"}
        if proc.returncode != 0 or not out_path.is_file():
            return {**header, "error": f"exit code {proc.returncode}\n{proc.stderr[-3000:]}"}
        return {**json.loads(out_path.read_text()), **header}


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1][:200] if lines else ""


def summary_line(result: dict) -> str:
    if "error" in result:
        return "FAILED: " + last_line(result["error"])
    if result["kind"] == "latency":
        return f"latency ratios {result['latency']['ratio']}"
    splits = [split for split in ("val", "test", "ood") if split in result]
    return "  ".join(f"{split} {result[split]['accuracy']:.4f}" for split in splits) + f"  {result['seconds_per_step']:.2f} s/step"
