"""PNG plots of a run, from its log.csv: loss curves with the cycle boundaries, and per cycle the metric
and the relative size of the slow step that merged it."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .run_files import replacing  # noqa: E402


def read_log(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in ("", None)]
    return [p[0] for p in points], [p[1] for p in points]


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    with replacing(path) as temporary:
        fig.savefig(temporary, format="png", dpi=110)
    plt.close(fig)
    return path


def plot_run(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    rows = read_log(run_dir / "log.csv")
    boundaries = [int(r["step"]) for r in rows if r.get("cycle_end") == "1"]

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*_series(rows, "train_loss"), label="train loss (mean since last point)")
    ax.plot(*_series(rows, "eval_loss"), "o-", label="test loss")
    for step in boundaries[:-1]:
        ax.axvline(step, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="optimizer step", ylabel="cross-entropy", title="Loss (dotted lines: a new expert starts)")
    ax.legend()
    loss_png = save(fig, run_dir / "loss.png")

    cycle_rows = [r for r in rows if r.get("cycle_end") == "1"]
    fig, ax = plt.subplots(figsize=(7, 4))
    cycles = [int(r["cycle"]) for r in cycle_rows]
    for key, label in (("eval_accuracy", "test accuracy"), ("eval_macro_f1", "test macro-F1")):
        values = [float(r[key]) for r in cycle_rows if r.get(key) not in ("", None)]
        if values:
            ax.plot(cycles[: len(values)], values, "o-", label=label)
    ax.set(xlabel="cycle (after its merge)", ylabel="metric", title="Test metric after each cycle")
    ax.set_xticks(cycles)
    if ax.get_legend_handles_labels()[0]:  # a run evaluated only between tasks has no point here
        ax.legend(loc="upper left")
    slow_steps = [float(r["slow_step"]) for r in cycle_rows if r.get("slow_step") not in ("", None)]
    if slow_steps:  # log.csv of a run before the column, or of full fine-tuning, has none
        step_axis = ax.twinx()
        step_axis.plot(cycles[: len(slow_steps)], slow_steps, "s--", color="grey", label="slow step ‖α·ΔW‖/‖W‖")
        step_axis.set(ylabel="relative slow step")
        step_axis.legend(loc="upper right")
    metric_png = save(fig, run_dir / "metric_per_cycle.png")
    return [loss_png, metric_png]
