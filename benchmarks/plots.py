"""The report's PNGs, from a summary: accuracy per LR, accuracy at the chosen LR, the long run's
curve, cost ratios, and the study's α × LR heatmap."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HIGHLIGHT = ("LoRA", "LoRASC")


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def lr_curves(s: dict, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), sharey=True)
    for label, g in s["grids"].items():
        style = "--" if label.startswith("LoRASC") else "-"
        for ax, split in zip(axes, (s["selection_split"], "ood")):
            ax.plot(g["lrs"], [100 * a for a in g["accuracy"][split]], style, marker="o", label=label, lw=2.5 if label in HIGHLIGHT else 1.2)
    for ax, split in zip(axes, (s["selection_split"], "ood")):
        ax.set_xscale("log"), ax.set_xlabel("learning rate"), ax.set_title(f"{split} accuracy, mean over the selection seeds"), ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save(fig, path)


def chosen_bars(s: dict, path: Path) -> Path:
    labels = list(s["rows"])
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for j, (split, name) in enumerate((("test", "ID"), ("ood", "OOD"))):
        stats = [s["rows"][label][split]["accuracy"] for label in labels]
        ax.bar([i + 0.4 * j for i in range(len(labels))], [100 * d["mean"] for d in stats], 0.4, label=name,
               yerr=[100 * (d["std"] or 0) for d in stats], capsize=3)
    lows = [100 * s["rows"][label][split]["accuracy"]["mean"] for label in labels for split in ("test", "ood")]
    ax.set_xticks([i + 0.2 for i in range(len(labels))], labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(max(0, min(lows) - 10), min(100, max(lows) + 5))
    ax.set_ylabel("accuracy (%) at the chosen LR, mean ± std over seeds"), ax.legend(), ax.grid(axis="y", alpha=0.3)
    return save(fig, path)


def long_curves(s: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, c in s["long"].items():
        ax.plot(c["epochs"], [100 * a for a in c["test_accuracy"]], "o-", label=f"{label} (lr {c['lr']:g})")
    ax.set_xlabel("epoch"), ax.set_ylabel("ID test accuracy (%)"), ax.set_title("long run: small training set, many epochs")
    ax.legend(), ax.grid(alpha=0.3)
    return save(fig, path)


def cost_bars(s: dict, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    labels = list(s["cost"])
    for j, (key, name) in enumerate((("step_ratio", "step time"), ("rss_ratio", "peak RSS"))):
        axes[0].bar([i + 0.4 * j for i in range(len(labels))], [s["cost"][label][key] for label in labels], 0.4, label=name)
    axes[0].axhline(1.0, color="black", lw=0.8)
    axes[0].set_xticks([i + 0.2 for i in range(len(labels))], labels, rotation=30, ha="right", fontsize=8)
    axes[0].set_ylabel("ratio to LoRA (median over runs)"), axes[0].legend(), axes[0].set_title("training cost")
    if s["latency"]:
        ratio = s["latency"]["ratio"]
        axes[1].bar(list(ratio), list(ratio.values()), color=["gray", "tab:green", "tab:red"])
        axes[1].axhline(1.0, color="black", lw=0.8)
        axes[1].set_ylabel("forward latency / base"), axes[1].set_title("inference")
    return save(fig, path)


def heatmap(s: dict, labels, title: str, path: Path) -> Path:
    """Selection-split accuracy of `labels` (rows) at every LR of their grids (columns)."""
    grids = {label: s["grids"][label] for label in labels if label in s["grids"]}
    rows = {label: dict(zip(g["lrs"], g["accuracy"][s["selection_split"]])) for label, g in grids.items()}
    lrs = sorted({lr for row in rows.values() for lr in row})
    grid = [[100 * row[lr] if lr in row else math.nan for lr in lrs] for row in rows.values()]
    fig, ax = plt.subplots(figsize=(1.3 * len(lrs) + 3, 0.5 * len(rows) + 1.5))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for i, line in enumerate(grid):
        for j, value in enumerate(line):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", color="white")
    ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs]), ax.set_yticks(range(len(rows)), list(rows))
    ax.set_xlabel("learning rate"), ax.set_title(f"{s['selection_split']} accuracy (%), {title}", fontsize=9)
    fig.colorbar(image)
    return save(fig, path)
