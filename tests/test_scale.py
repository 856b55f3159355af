"""The scale benchmark (benchmarks/scale.py) at its tiny size on the CPU, in float32 and bfloat16:
its JSON fields, the merge and noise exactness it measures, and the "At scale" section it writes."""

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import scale, scale_checks

DTYPES = ("float32", "bfloat16")


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale")
    for dtype in DTYPES:
        scale.main(["--size", "tiny", "--dtype", dtype, "--device", "cpu", "--results-dir", str(out)])
    return out


def result(results_dir: Path, dtype: str) -> dict:
    return json.loads((results_dir / f"scale-cpu-{dtype}-tiny.json").read_text())


@pytest.mark.parametrize("dtype", DTYPES)
def test_costs_are_measured(results_dir, dtype):
    r = result(results_dir, dtype)
    assert (r["size"], r["dtype"], r["device"], r["random_weights"]) == ("tiny", dtype, "cpu", True)
    assert 1e5 < r["params"] < 1e6 and 0 < r["adapted_params"] < r["params"]
    assert r["timed_steps"] == len(r["lora_steps_s"]) == len(r["lorasc_steps_s"]) > 0
    assert math.isfinite(r["step_time_ratio"]) and r["step_time_ratio"] > 0
    assert r["boundary_s"] > 0 and r["boundary_steps"] == pytest.approx(r["boundary_s"] / r["lorasc_step_s"])
    assert r["boundary_fastest_steps"] >= r["boundary_steps"]
    assert r["end_cycle_s"] > 0 and r["start_cycle_s"] > 0
    assert r["peak_memory_ratio"] is None  # not measured on the CPU
    assert len(r["per_cycle"]) == r["setting"]["cycles"] == 3
    assert r["command"] == f"python benchmarks/scale.py --size tiny --dtype {dtype} --device cpu"


@pytest.mark.parametrize("dtype", DTYPES)
def test_noise_leaves_no_trace_and_the_stacked_adapter_is_exact(results_dir, dtype):
    r = result(results_dir, dtype)
    assert r["noise_exact_fraction"] >= 0.99
    assert r["stacked_relative_error"] < 1e-6
    assert 0 < r["delta_norm_ratio"] < 1  # the experts trained: a non-trivial delta


def test_bfloat16_merges_are_one_rounding_of_the_exact_result(results_dir):
    r = result(results_dir, "bfloat16")
    assert r["merge_exact_fraction"] >= 0.99
    assert r["delta_relative_error"] == pytest.approx(r["delta_relative_error_floor"], rel=0.05)


def test_float32_merges_are_at_the_rounding_floor(results_dir):
    """In float32 the slow state's own float32 rounding shows at the weights' precision, so the bitwise
    share against the float64 reference is below 1; the realised delta is as good as one rounding."""
    r = result(results_dir, "float32")
    assert r["delta_relative_error"] < 1e-5
    assert r["delta_relative_error"] == pytest.approx(r["delta_relative_error_floor"], rel=0.05)
    assert r["merge_within_one_ulp_fraction"] >= 0.95


def test_report_says_the_gpu_numbers_are_missing(results_dir):
    text = (results_dir / "scale.md").read_text()
    assert text.startswith("## At scale")
    assert "not measured yet" in text and "tiny, 0.5M parameters" in text
    assert "| tiny · bfloat16 · cpu | tiny · float32 · cpu |" in text
    assert "$" not in text.replace("$$", "")  # every placeholder filled


def test_device_memory_splits_one_device_between_runs(monkeypatch):
    """Each run's peak is its own resident bytes plus its operation's transient, whatever the other holds
    (checked against a fake CUDA allocator: this machine has no GPU)."""
    allocator = {"allocated": 0, "peak": 0}

    def allocate(nbytes):
        allocator["allocated"] += nbytes
        allocator["peak"] = max(allocator["peak"], allocator["allocated"])

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *args: allocator["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *args: allocator["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *args: allocator.update(peak=allocator["allocated"]))
    memory = scale_checks.DeviceMemory(torch.device("cuda"))
    with memory.track("lora"):
        allocate(100)
    with memory.track("lorasc"):
        allocate(100)
    with memory.track("lora"):
        allocate(50), allocate(-50)
    with memory.track("lorasc"):
        allocate(30), allocate(-30), allocate(5)
    assert dict(memory.peak) == {"lora": 150, "lorasc": 130} and dict(memory.resident) == {"lora": 100, "lorasc": 105}
    assert memory.ratio("lorasc", "lora") == pytest.approx(130 / 150)
