"""Synthetic results for the benchmark package's tests: what a run would return, with accuracies
given by a function of its spec, and no training."""

import dataclasses
import math

from benchmarks.planner import PLANS
from benchmarks.protocol import QUICK
from benchmarks.runner import HEADER


def metrics(accuracy: float) -> dict:
    return {"accuracy": accuracy, "macro_f1": accuracy - 0.01, "loss": 1.0}


def fake_result(spec: dict, accuracy, with_val: bool = True) -> dict:
    """A run's result; `accuracy(spec, split)` gives each split's accuracy."""
    header = {k: spec[k] for k in HEADER if k in spec}
    common = {"environment": {"cores": 2, "torch": "fake"}, "loadavg": [1.0, 1.0, 1.0], "wall_seconds": 1.0}
    if spec["kind"] == "latency":
        return {**header, **common, "steps": 4, "cycles": 2, "adapter_rank": 16,
                "latency": {"median_seconds": {}, "ratio": {"base": 1.0, "dense": 1.0, "adapter": 1.2}, "passes": spec["passes"],
                            "max_abs_logit_diff_dense_vs_adapter": 1e-7}}
    splits = ("val", "test", "ood", "train") if with_val else ("test", "ood", "train")
    return {**header, **common, **{split: metrics(accuracy(spec, split)) for split in splits}, "method": spec["run"]["method"],
            "seconds_per_step": 0.5, "peak_rss_mb": 1000.0, "trainable_params": 10, "delta_effective_rank": 5.0, "steps": 10, "cycles": 2,
            "log": [{"epoch": e, "eval_accuracy": accuracy(spec, "test") - 0.01 * (e == 1)} for e in (1, 2)]}


def install(monkeypatch, accuracy, with_val: bool = True, fail=lambda spec: False) -> list[dict]:
    """Replace the runner's subprocess by fake results; returns the specs it was given, in order."""
    from benchmarks import runner

    given = []

    def run(spec):
        given.append(spec)
        if fail(spec):
            return {k: spec[k] for k in HEADER if k in spec} | {"error": "exit code 1\nRuntimeError: boom"}
        return fake_result(spec, accuracy, with_val)

    monkeypatch.setattr(runner, "run_subprocess", run)
    return given


def settle(plan, accuracy, with_val: bool = True):
    """Run every spec `plan(board)` asks for on fake results until it asks for nothing new; the last Board."""
    from benchmarks.planner import Board

    results = []
    while True:
        board = Board(results)
        new = [spec for spec in plan(board) if spec["key"] not in board.tried]
        if not new:
            return board
        results += [fake_result(spec, accuracy, with_val) for spec in new]


def tiny(**changes):
    fields = {"labels": ("LoRA",), "grids": {"wide": (1e-3, 3e-3)}, "select_seeds": (0, 1), "final_seeds": 5, "finalists": ("LoRA",),
              "rivals": ("LoRA",), "max_extensions": 2}
    return dataclasses.replace(QUICK, **{**fields, **changes})


def peaked_at(peak):
    """Accuracy that falls off with the LR's distance (in decades) from `peak`."""
    return lambda spec, split: 0.8 - 0.05 * abs(math.log10(spec["lr"] / peak))


def settle_groups(p, groups, accuracy, with_val=True):
    return settle(lambda board: [spec for group in groups for spec in PLANS[group](p, board)], accuracy, with_val)
