"""The settings study: which LoRASC settings, if any, beat the tuned rivals? (`python -m benchmarks --study`)

The full grid (α × λ × cycles × init × optimizer state × LoRA+ ratio × LR) is too large, so the
search goes one factor at a time, on the planner of the benchmark and with its choices on
validation: the rivals over their LR grids; LoRASC's slow step α over its LR grid (the heatmap);
from the best cell, each factor of protocol.Study alone, then the two best factors that each beat
the base and change different fields, together; finally the best setting of all and the rivals run
the finalists' seeds. A regime's runs share RESULTS/<task>-<regime>.jsonl with the benchmark, so
regime (a) reuses the benchmark's runs of the same entries.
"""

from __future__ import annotations

import dataclasses

from lorasc.config import LoRASCConfig

from .planner import Board, finalist_specs, grid, grid_specs
from .protocol import ENTRIES, Entry, Protocol, Study
from .summary import chosen_rows, comparisons, grid_curves, run_facts


def study_protocol(benchmark: Protocol) -> Protocol:
    """The benchmark's task, regime, grids, seeds and rivals; the study's own labels."""
    return dataclasses.replace(benchmark, labels=benchmark.rivals, finalists=benchmark.rivals, groups=("grid", "seeds"))


def alpha_label(alpha: float) -> str:
    return "LoRASC" if alpha == LoRASCConfig.slow_alpha else f"LoRASC α={alpha}"


def heatmap_entries(study: Study) -> dict[str, Entry]:
    return {alpha_label(a): ENTRIES["LoRASC"] if alpha_label(a) == "LoRASC" else Entry("lorasc", "wide", {"slow_alpha": a}) for a in study.alphas}


def derived(base_label: str, base: Entry, changes: list[dict]) -> Entry:
    """The base setting with `changes`, at the base's chosen LR times their "lr_scale"."""
    fields, scale = dict(base.fields), 1.0
    for change in changes:
        fields |= {k: v for k, v in change.items() if k != "lr_scale"}
        scale *= change.get("lr_scale", 1.0)
    return Entry("lorasc", (base_label,), fields, base.expert, scale)


def best_label(p: Protocol, entries: dict[str, Entry], labels: list[str], board: Board) -> str | None:
    """The label of the best selection score at its chosen LR, once every one of `labels` has chosen."""
    chosen = {label: grid(p, entries, label, board)[1] for label in labels}
    if None in chosen.values():
        return None
    return max(labels, key=lambda label: board.score(label, chosen[label], p.select_seeds))


def combination(p: Protocol, study: Study, entries: dict[str, Entry], base: str, board: Board) -> list[str]:
    """The two best factors that each beat the base on their own and change different fields."""
    score = {label: board.score(label, grid(p, entries, label, board)[1], p.select_seeds) for label in (base, *study.factors)}
    better = sorted((label for label in study.factors if score[label] > score[base]), key=score.get, reverse=True)
    picks: list[str] = []
    for label in better:
        if not any(set(study.factors[label]) & set(study.factors[pick]) for pick in picks):
            picks.append(label)
    return picks[:2] if len(picks) >= 2 else []


def explore(p: Protocol, study: Study, board: Board) -> tuple[dict[str, Entry], str | None]:
    """The study's entries as far as the results reach, and the best setting once every one has chosen."""
    entries = {label: ENTRIES[label] for label in p.rivals} | heatmap_entries(study)
    base = best_label(p, entries, list(heatmap_entries(study)), board)
    if base is None:
        return entries, None
    entries |= {label: derived(base, entries[base], [change]) for label, change in study.factors.items()}
    if best_label(p, entries, list(study.factors), board) is None:
        return entries, None
    picks = combination(p, study, entries, base, board)
    if picks:
        entries[" + ".join(picks)] = derived(base, entries[base], [study.factors[pick] for pick in picks])
    settings = [base, *study.factors, *([" + ".join(picks)] if picks else [])]
    return entries, best_label(p, entries, settings, board)


def plan(p: Protocol, study: Study, board: Board) -> list[dict]:
    entries, best = explore(p, study, board)
    finalists = (*p.rivals, best) if best else p.rivals
    return grid_specs(p, entries, board) + finalist_specs(p, entries, finalists, board)


def summarize(p: Protocol, study: Study, board: Board) -> dict:
    entries, best = explore(p, study, board)
    rows = chosen_rows(p, entries, board)
    lorasc = dataclasses.replace(p, lorasc=best or alpha_label(LoRASCConfig.slow_alpha))
    return {
        "protocol": p.name, "selection_split": board.split, "best": best, "rows": rows,
        "selection_scores": {label: board.score(label, r["lr"], p.select_seeds) for label, r in rows.items()},  # what each choice compared
        "heatmap": [*heatmap_entries(study), *p.rivals],
        "settings": [label for label in entries if label not in p.rivals],
        "finalists": [*p.rivals, *([best] if best else [])],
        **comparisons(lorasc, rows, board.split),
        "grids": grid_curves(p, entries, board),
        **run_facts(board),
    }
