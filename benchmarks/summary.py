"""Results -> the numbers of the report (also written as RESULTS/<protocol>.json).

Every row is an entry at its chosen LR over all the seeds it ran there; differences are paired over
seeds (stats.paired). The rival of the headline is the best of the protocol's rivals on the
selection split, like every other choice.
"""

from __future__ import annotations

import json
import statistics

from .planner import MAIN, Board, chosen_lrs, grid
from .protocol import Entry, Protocol
from .stats import describe, paired

SPLITS = ("val", "test", "ood")
METRICS = ("accuracy", "macro_f1")  # a causal LM has no macro-F1
REPORTED = ("test", "ood")  # the splits the headline weighs; validation only chooses
NOISE_FREE = "COLA"  # LoRASC's chain without its noise: LoRASC against it is what the noise adds
OPPONENTS = ("baseline", "rival")  # whom the headline weighs LoRASC against: LoRA, then the best rival


def runs_at(board: Board, label: str, lr: float, group: str = MAIN) -> dict[int, dict]:
    runs = [r for r in board.finished.values() if r["kind"] == "train" and r["group"] == group and r["label"] == label and r["lr"] == lr]
    return {r["seed"]: r for r in sorted(runs, key=lambda r: r["seed"])}


def accuracy_by_seed(runs: dict[int, dict], split: str) -> dict[int, float]:
    return {seed: r[split]["accuracy"] for seed, r in runs.items() if r.get(split)}


def row(board: Board, label: str, lr: float) -> dict:
    runs = runs_at(board, label, lr)
    splits = [s for s in SPLITS if all(r.get(s) for r in runs.values())]
    first = next(iter(runs.values()))
    return {
        "lr": lr, "seeds": list(runs),
        **{split: {metric: describe([r[split][metric] for r in runs.values()]) for metric in METRICS if metric in first[split]}
           for split in splits},
        "accuracy_by_seed": {split: accuracy_by_seed(runs, split) for split in splits},
        "gap": describe([r["train"]["accuracy"] - r["test"]["accuracy"] for r in runs.values()]),
        "effective_rank": first.get("delta_effective_rank"),
    }


def best_rival(p: Protocol, rows: dict[str, dict], split: str) -> str | None:
    rivals = [label for label in p.rivals if label in rows and label != p.lorasc]
    return max(rivals, key=lambda label: rows[label][split]["accuracy"]["mean"], default=None)


def versus(rows: dict[str, dict], ours: str, theirs: str | None, split: str) -> dict | None:
    if ours not in rows or theirs not in rows:
        return None
    return {"ours": ours, "theirs": theirs, **paired(rows[ours]["accuracy_by_seed"][split], rows[theirs]["accuracy_by_seed"][split])}


def decided(c: dict | None, seeds: int) -> dict | None:
    """A headline comparison is decided on the finalists' `seeds` seeds. With fewer (a sweep cut short) it is
    undecided whatever its interval: two seeds whose accuracies differ alike give a zero-width interval."""
    if c is None or len(c["seeds"]) >= seeds:
        return c
    return {**c, "verdict": "undecided", "seeds_needed": seeds}


def comparisons(p: Protocol, rows: dict[str, dict], selection_split: str) -> dict:
    """LoRASC against LoRA, against the best rival and against the noise-free chain; every row against LoRA."""
    rival = best_rival(p, rows, selection_split)

    def headline(theirs: str | None, split: str) -> dict | None:
        return decided(versus(rows, p.lorasc, theirs, split), p.final_seeds)

    return {
        "rival": rival,
        "headline": {split: {"baseline": headline(p.baseline, split), "rival": headline(rival, split), "noise_free": headline(NOISE_FREE, split)}
                     for split in REPORTED},
        "against_baseline": {label: {split: None if label == p.baseline else versus(rows, label, p.baseline, split) for split in REPORTED}
                             for label in rows},
    }


def verdict_counts(summaries: list[dict], opponent: str) -> dict[str, int]:
    """How many headline comparisons against `opponent` (OPPONENTS) each verdict has, over the summaries and
    the reported splits; `decided` counts beats, ties and loses, `open` the undecided and unmeasured."""
    verdicts = [(s["headline"][split][opponent] or {}).get("verdict", "missing") for s in summaries for split in REPORTED]
    counts = {verdict: verdicts.count(verdict) for verdict in ("beats", "ties", "loses")}
    return {**counts, "decided": sum(counts.values()), "open": len(verdicts) - sum(counts.values())}


def chosen_rows(p: Protocol, entries: dict[str, Entry], board: Board) -> dict[str, dict]:
    chosen = chosen_lrs(p, entries, board)
    return {label: row(board, label, lr) for label, lr in chosen.items() if runs_at(board, label, lr)}


def grid_curves(p: Protocol, entries: dict[str, Entry], board: Board) -> dict[str, dict]:
    """Each entry's selection-split and OOD accuracy at every LR of its grid, mean over the selection seeds."""
    curves = {}
    for label in entries:
        lrs = [lr for lr in grid(p, entries, label, board)[0] if board.by_seed(label, lr, p.select_seeds)]
        if lrs:
            means = {split: [mean_accuracy(board, label, lr, p.select_seeds, split) for lr in lrs] for split in (board.split, "ood")}
            selected = means[board.split]
            curves[label] = {"lrs": lrs, "accuracy": means, "best": max(selected), "mean": statistics.fmean(selected),
                             "spread": max(selected) - min(selected)}
    return curves


def mean_accuracy(board: Board, label: str, lr: float, seeds, split: str) -> float:
    return statistics.fmean(r[split]["accuracy"] for r in board.by_seed(label, lr, seeds).values())


def long_curve(run: dict) -> dict:
    points = [(row["epoch"], row["eval_accuracy"]) for row in run["log"] if "eval_accuracy" in row]
    peak_epoch, peak = max(points, key=lambda point: point[1])
    return {"lr": run["lr"], "epochs": [e for e, _ in points], "test_accuracy": [a for _, a in points], "peak": peak, "peak_epoch": peak_epoch,
            "final": points[-1][1], "drop": peak - points[-1][1], "gap": run["train"]["accuracy"] - run["test"]["accuracy"]}


def group_runs(board: Board, group: str) -> list[dict]:
    return [r for r in board.finished.values() if r["kind"] == "train" and r["group"] == group]


def cost_table(runs: list[dict], baseline: str) -> dict:
    """Median step time and peak RSS per entry over its main runs, relative to the baseline's."""
    per_label: dict[str, list[dict]] = {}
    for r in runs:
        per_label.setdefault(r["label"], []).append(r)
    medians = {label: {"step": statistics.median(r["seconds_per_step"] for r in rs), "rss": statistics.median(r["peak_rss_mb"] for r in rs),
                       "runs": len(rs), "trainable_params": rs[0]["trainable_params"]} for label, rs in per_label.items()}
    if baseline not in medians:
        return {}
    base = medians[baseline]
    return {label: {"step_ratio": m["step"] / base["step"], "rss_ratio": m["rss"] / base["rss"], "runs": m["runs"],
                    "trainable_params": m["trainable_params"]} for label, m in medians.items()}


def run_facts(board: Board) -> dict:
    """The machine, its load, and what the sweep cost."""
    finished = list(board.finished.values())
    environments = list({json.dumps(r["environment"], sort_keys=True): r["environment"] for r in finished if "environment" in r}.values())
    return {
        "environment": environments[0] if environments else {},
        "environments": environments,
        "load_average_median": statistics.median(r["loadavg"][0] for r in finished) if finished else None,
        "runs": len(board.results),
        "sweep_minutes": sum(r.get("wall_seconds", 0.0) for r in board.results) / 60,
        "failures": [{"key": r["key"], "error": r["error"][-300:]} for r in board.results if "error" in r and r["key"] not in board.finished],
    }


def summarize(p: Protocol, entries: dict[str, Entry], board: Board) -> dict:
    rows = chosen_rows(p, entries, board)
    latency = next((r for r in board.finished.values() if r["kind"] == "latency"), None)
    return {
        "protocol": p.name,
        "selection_split": board.split,
        "rows": rows,
        **comparisons(p, rows, board.split),
        "grids": grid_curves(p, entries, board),
        "long": {r["label"]: long_curve(r) for r in group_runs(board, "long")},
        "rank1": {r["label"]: {"test_accuracy": r["test"]["accuracy"], "ood_accuracy": r["ood"]["accuracy"],
                               "effective_rank": r.get("delta_effective_rank")} for r in group_runs(board, "rank1")},
        "cost": cost_table([r for r in group_runs(board, MAIN) if r["label"] in entries], p.baseline),
        "latency": latency and {**latency["latency"], "adapter_rank": latency["adapter_rank"]},
        **run_facts(board),
    }
