"""Which runs a protocol needs next, given the results so far, and every choice made on validation.

A plan is a function of the results: the runner runs what it asks for and asks again, since later
runs depend on earlier ones. Each entry's grid runs the protocol's selection seeds at every LR; the
chosen LR has the best validation accuracy averaged over those seeds (a tie goes to the lowest of the
tied LRs), and a choice at the edge of the grid first extends it by one LR (×3 or ÷3) until the choice
is interior or the limit is hit.
Finalists then run their remaining seeds at the chosen LR.
"""

from __future__ import annotations

import statistics

from .protocol import ENTRIES, LR_STEP, Entry, Protocol, Regime, latency_spec, round_lr, run_key, train_spec

MAIN = "main"  # the group of the grid and finalist runs: a finalist's seed 0 is its grid run


class Board:
    """The results of one file, indexed; `split` is what choices are made on: validation, or the test
    split where results have no validation metrics (runs from before lorasc's fixed split, or n_val=0)."""

    def __init__(self, results: list[dict]):
        self.results = results
        self.tried = {r["key"] for r in results}
        self.finished = {r["key"]: r for r in results if "error" not in r}
        train = [r for r in self.finished.values() if r["kind"] == "train"]
        self.split = "val" if all(r.get("val") for r in train) else "test"  # n_val=0 gives an empty "val"

    def run(self, group: str, label: str, lr: float, seed: int) -> dict | None:
        return self.finished.get(run_key(group, label, lr, seed))

    def by_seed(self, label: str, lr: float, seeds, group: str = MAIN) -> dict[int, dict]:
        runs = {seed: self.run(group, label, lr, seed) for seed in seeds}
        return {seed: r for seed, r in runs.items() if r is not None}

    def score(self, label: str, lr: float, seeds) -> float | None:
        """Mean accuracy on the selection split over the seeds that finished."""
        runs = self.by_seed(label, lr, seeds).values()
        return statistics.fmean(r[self.split]["accuracy"] for r in runs) if runs else None

    def best(self, label: str, lrs, seeds) -> float | None:
        """The LR of the best score, once every (LR, seed) has been tried; failed runs do not count."""
        if not all(run_key(MAIN, label, lr, seed) in self.tried for lr in lrs for seed in seeds):
            return None
        scores = {lr: self.score(label, lr, seeds) for lr in lrs}
        scores = {lr: s for lr, s in scores.items() if s is not None}
        return max(sorted(scores), key=scores.get) if scores else None  # max keeps the first of equals


def outward_step(lrs: tuple[float, ...], best: float | None) -> float | None:
    """×LR_STEP or ÷LR_STEP when `best` sits at an edge of a grid of several LRs; else None."""
    if best is None or len(lrs) < 2:
        return None
    return LR_STEP if best == max(lrs) else 1 / LR_STEP if best == min(lrs) else None


def grid(p: Protocol, entries: dict[str, Entry], label: str, board: Board) -> tuple[tuple[float, ...], float | None]:
    """The LRs `label` runs, and its chosen LR (None until its runs are in)."""
    entry = entries[label]
    if not isinstance(entry.lrs, str):
        parents = [grid(p, entries, parent, board)[1] for parent in entry.lrs]
        if None in parents:
            return (), None
        lrs = tuple(sorted({round_lr(lr * entry.lr_scale) for lr in parents}))
        return lrs, board.best(label, lrs, p.select_seeds)
    lrs = p.grids[entry.lrs]
    best = board.best(label, lrs, p.select_seeds)
    for _ in range(p.max_extensions):
        step = outward_step(lrs, best)
        if step is None:
            break
        lrs = tuple(sorted((*lrs, round_lr(best * step))))
        best = board.best(label, lrs, p.select_seeds)
    return lrs, best


def chosen_lrs(p: Protocol, entries: dict[str, Entry], board: Board) -> dict[str, float]:
    chosen = {label: grid(p, entries, label, board)[1] for label in entries}
    return {label: lr for label, lr in chosen.items() if lr is not None}


def grid_specs(p: Protocol, entries: dict[str, Entry], board: Board) -> list[dict]:
    specs = []
    for label, entry in entries.items():
        lrs = grid(p, entries, label, board)[0]
        specs += [train_spec(p.task, p.regime, MAIN, label, entry, lr, seed) for lr in lrs for seed in p.select_seeds]
    return specs


def finalist_specs(p: Protocol, entries: dict[str, Entry], finalists, board: Board) -> list[dict]:
    """Seeds 0 … final_seeds − 1 of each finalist at its chosen LR (the selection seeds among them are its grid runs)."""
    chosen = chosen_lrs(p, entries, board)
    return [train_spec(p.task, p.regime, MAIN, label, entries[label], chosen[label], seed)
            for seed in range(p.final_seeds) for label in finalists if label in chosen]


def at_chosen_specs(p: Protocol, board: Board, group: str, labels, regime: Regime | None = None, rank: int | None = None) -> list[dict]:
    """One run of each of `labels` at its chosen LR, in another regime or at another rank."""
    chosen = chosen_lrs(p, protocol_entries(p), board)
    return [train_spec(p.task, regime or p.regime, group, label, ENTRIES[label], chosen[label], p.select_seeds[0], rank)
            for label in labels if label in chosen]


def protocol_entries(p: Protocol) -> dict[str, Entry]:
    return {label: ENTRIES[label] for label in p.labels}


PLANS = {
    "grid": lambda p, board: grid_specs(p, protocol_entries(p), board),
    "seeds": lambda p, board: finalist_specs(p, protocol_entries(p), p.finalists, board),
    "long": lambda p, board: at_chosen_specs(p, board, "long", p.long_labels, regime=p.long),
    "rank1": lambda p, board: at_chosen_specs(p, board, "rank1", p.rank1_labels, rank=1),
    "latency": lambda p, board: [latency_spec(p)],
}
