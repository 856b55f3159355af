"""PNG plots of a continual run's matrix R (docs/continual.md): the matrix as a heat map, and each task's
metric along the sequence of tasks."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

from ..config import require  # noqa: E402
from ..run.plots import save  # noqa: E402
from .metrics import Matrix, check_rows  # noqa: E402


def _checked(names: list[str], R: Matrix) -> None:
    require(0 < len(R) <= len(names), "R", R, f"one to {len(names)} rows, one per task trained")
    check_rows(R, len(names), "R", lower=False)


def plot_cl_matrix(path: str | Path, names: list[str], R: Matrix, metric: str = "accuracy") -> Path:
    """Heat map of R: rows the task trained through (y), columns the task evaluated (x), values in %,
    cells not evaluated left blank."""
    _checked(names, R)
    values = [[math.nan if v is None else v for v in row] for row in R]
    size = max(4.0, 0.9 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size * len(R) / len(names) + 1))
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for j, row in enumerate(R):
        for i, v in enumerate(row):
            if v is not None:
                ax.text(i, j, f"{100 * v:.1f}%", ha="center", va="center", color="white" if v < 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(R)), names[: len(R)])
    ax.set(xlabel="evaluated on task", ylabel="after training through task", title=f"Test {metric} after each task")
    fig.colorbar(image, ax=ax, format=PercentFormatter(1.0))
    return save(fig, Path(path))


def plot_cl_curves(path: str | Path, names: list[str], R: Matrix, metric: str = "accuracy",
                   boundaries_label: str = "end of a task") -> Path:
    """Each task's metric after each task of the sequence (x = after task j), one line per task from
    its own task on, a dotted vertical line at each task boundary."""
    _checked(names, R)
    fig, ax = plt.subplots(figsize=(8, 4))
    after = range(1, len(R) + 1)
    for j in after:
        ax.axvline(j, color="grey", linestyle=":", linewidth=1, label=boundaries_label if j == 1 else None)
    for i, name in enumerate(names[: len(R)]):
        ax.plot(after[i:], [R[j][i] for j in range(i, len(R))], "o-", label=name)
    ax.set_xticks(list(after), names[: len(R)], rotation=30, ha="right")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set(xlabel="after training through task", ylabel=f"test {metric}", title=f"Test {metric} along the sequence")
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1, 0.5))
    return save(fig, Path(path))
