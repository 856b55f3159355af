"""One run in its own process: `python -m benchmarks.child SPEC.json OUT.json` (the runner starts it).

A train spec trains once through lorasc.run.train; a latency spec trains a short LoRASC run, then times
the base model, its merged dense export and the unmerged stacked adapter.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lorasc.config import LoRASCConfig
from lorasc.run.assets import default_model_path
from lorasc.run.plots import read_log
from lorasc.run.run_config import RunConfig
from lorasc.run.train import train

from .protocol import BATCH, MAX_LENGTH
from .runner import THREADS


def train_once(spec: dict, run_dir: Path | None = None) -> dict:
    """Train one spec; with `run_dir` the dense model and adapter are exported there."""
    run, config = RunConfig(**spec["run"]), LoRASCConfig.from_dict(spec["lorasc"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = run_dir or Path(tmp)
        metrics = train(run, config, folder, progress=False, save_models=run_dir is not None)
        log = read_log(folder / "log.csv")
    return {**metrics, "log": [{k: float(v) for k, v in row.items() if v != ""} for row in log]}


def measure_latency(spec: dict) -> dict:
    """Median of `passes` forward passes of each model on the same batch, interleaved pass by pass."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    def base():
        return AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=3)

    with tempfile.TemporaryDirectory() as tmp:
        metrics = train_once(spec, Path(tmp))
        models = {"base": base(), "dense": AutoModelForSequenceClassification.from_pretrained(Path(tmp, "model")),
                  "adapter": PeftModel.from_pretrained(base(), Path(tmp, "adapter"))}
    batch = {"input_ids": torch.randint(1000, 20000, (BATCH, MAX_LENGTH), generator=torch.Generator().manual_seed(0)),
             "attention_mask": torch.ones(BATCH, MAX_LENGTH, dtype=torch.long)}
    times = {name: [] for name in models}
    with torch.inference_mode():
        logits = {name: model.eval()(**batch).logits for name, model in models.items()}  # also the warm-up
        for i in range(spec["passes"]):
            for name in list(models)[i % 3 :] + list(models)[: i % 3]:  # rotate who goes first
                start = time.perf_counter()
                models[name](**batch)
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    rank = LoRASCConfig.from_dict(spec["lorasc"]).expert.r
    return {"steps": metrics["steps"], "cycles": metrics["cycles"], "adapter_rank": metrics["cycles"] * rank,
            "latency": {"median_seconds": medians, "ratio": {n: round(medians[n] / medians["base"], 3) for n in medians},
                        "passes": spec["passes"], "max_abs_logit_diff_dense_vs_adapter": (logits["dense"] - logits["adapter"]).abs().max().item()}}


def environment() -> dict:
    import peft
    import transformers

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "gpu": gpu}


def main(spec_path: Path, out_path: Path) -> None:
    torch.set_num_threads(THREADS)
    spec = json.loads(spec_path.read_text())
    loadavg = os.getloadavg()  # the machine may be shared: how busy it was when the run started
    result = measure_latency(spec) if spec["kind"] == "latency" else train_once(spec)
    out_path.write_text(json.dumps({**result, "environment": environment(), "loadavg": loadavg}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
