"""Numbers -> Markdown table cells and tables (the report's prose is in templates/*.md)."""

from __future__ import annotations

from .runner import last_line
from .summary import OPPONENTS, REPORTED

DASH = "—"


def pct(x: float | None) -> str:
    return DASH if x is None else f"{100 * x:.1f}"


def signed(x: float | None) -> str:
    return DASH if x is None else f"{100 * x:+.1f}"


def pm(d: dict) -> str:
    """Mean ± std in %, or the mean alone for one seed."""
    return f"{pct(d['mean'])} ± {pct(d['std'])}" if d["std"] is not None else pct(d["mean"])


def lr_list(lrs) -> str:
    return ", ".join(f"{lr:g}" for lr in lrs)


def seed_list(seeds) -> str:
    return ", ".join(map(str, seeds))


def interval(c: dict | None) -> str:
    """A paired difference with its 95 % interval, in points."""
    if c is None or c["diff"] is None:
        return DASH
    return signed(c["diff"]) if c["low"] is None else f"{signed(c['diff'])} [{signed(c['low'])}, {signed(c['high'])}]"


def verdict_cell(c: dict | None) -> str:
    """A headline comparison: the difference with its 95 % interval, then its verdict."""
    return DASH if c is None else f"{interval(c)} {c['verdict']}"


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


COMPARISON = ["method", "chosen LR", "seeds", "val acc %", "ID acc %", "Δ LoRA ID [95 % CI]", "OOD acc %", "Δ LoRA OOD [95 % CI]"]


def comparison_cells(s: dict, label: str) -> list:
    r, versus = s["rows"][label], s["against_baseline"][label]
    return [label, f"{r['lr']:g}", len(r["seeds"]), pm(r["val"]["accuracy"]) if "val" in r else DASH, pm(r["test"]["accuracy"]),
            interval(versus["test"]), pm(r["ood"]["accuracy"]), interval(versus["ood"])]


def main_table(s: dict) -> str:
    rows = [comparison_cells(s, label) + [pct(r["test"]["macro_f1"]["mean"]), pct(r["ood"]["macro_f1"]["mean"]), pm(r["gap"]),
                                          DASH if r["effective_rank"] is None else f"{r['effective_rank']:.1f}"] for label, r in s["rows"].items()]
    return md_table(COMPARISON + ["ID macro-F1", "OOD macro-F1", "train−test gap (pts)", "eff. rank of ΔW"], rows)


def finalists_table(s: dict, labels, baseline: str = "LoRA") -> str:
    """The rows of `labels` with their paired differences to the protocol's baseline (the study's and the further tasks' table)."""
    header = [column.replace("LoRA", baseline) if column.startswith("Δ") else column for column in COMPARISON]
    return md_table(header, [comparison_cells(s, label) for label in s["rows"] if label in labels])


VERDICTS_HEADER = ["task", "regime", "seeds", "best rival", "ID: LoRASC − LoRA", "ID: LoRASC − best rival", "OOD: LoRASC − LoRA",
                   "OOD: LoRASC − best rival"]


def verdicts_table(rows: list[tuple[str, str, dict]], no_rival: str) -> str:
    """Per (task, regime, summary): LoRASC − LoRA and LoRASC − the best rival, ID then OOD, each with its
    interval and verdict; the seeds are those of the ID comparison with LoRA."""
    cells = []
    for task, regime, s in rows:
        first = s["headline"][REPORTED[0]][OPPONENTS[0]]
        cells.append([task, regime, len(first["seeds"]) if first else DASH, s["rival"] or no_rival,
                      *(verdict_cell(s["headline"][split][opponent]) for split in REPORTED for opponent in OPPONENTS)])
    return md_table(VERDICTS_HEADER, cells)


def per_lr(accuracies) -> str:
    return " / ".join(pct(a) for a in accuracies)


def grid_table(s: dict) -> str:
    split = s["selection_split"]
    rows = [[label, lr_list(g["lrs"]), f"{max(g['lrs']) / min(g['lrs']):.0f}×", pct(g["best"]), pct(g["mean"]), pct(g["spread"]),
             per_lr(g["accuracy"][split]), per_lr(g["accuracy"]["ood"])] for label, g in s["grids"].items()]
    return md_table(["method", "LRs", "span", "best %", "mean %", "spread (pts)", f"{split} acc % per LR", "OOD acc % per LR"], rows)


def long_table(s: dict) -> str:
    rows = [[label, f"{c['lr']:g}", f"{pct(c['peak'])} (epoch {c['peak_epoch']:g})", pct(c["final"]), pct(c["drop"]), pct(c["gap"])]
            for label, c in s["long"].items()]
    return md_table(["method", "LR", "peak test acc % (epoch)", "final test acc %", "drop after peak (pts)", "final train−test gap (pts)"], rows)


def rank1_table(s: dict, rank: int) -> str:
    rows = [[label, pct(r["test_accuracy"]), pct(r["ood_accuracy"]), DASH if r["effective_rank"] is None else f"{r['effective_rank']:.2f}",
             pct(s["rows"][label]["test"]["accuracy"]["mean"]) if label in s["rows"] else DASH] for label, r in s["rank1"].items()]
    return md_table(["method", "ID acc % (r=1)", "OOD acc % (r=1)", "eff. rank of ΔW (r=1)", f"ID acc % (r={rank}, table 1)"], rows)


def cost_table(s: dict) -> str:
    rows = [[label, f"{c['step_ratio']:.2f}", f"{c['rss_ratio']:.2f}", c["runs"], f"{c['trainable_params']:,}"] for label, c in s["cost"].items()]
    return md_table(["method", "step time / LoRA", "peak RSS / LoRA", "runs", "trainable params"], rows)


def latency_table(latency: dict) -> str:
    return md_table(["model", "forward latency / base"], [[name, f"{ratio:.3f}"] for name, ratio in latency["ratio"].items()])


def failures_table(s: dict) -> str:
    return md_table(["run", "error (tail)"], [[f["key"], last_line(f["error"])] for f in s["failures"]])


def settings_table(s: dict, labels) -> str:
    """The study's settings at their chosen LR: the score each choice compared (the selection split over
    the selection seeds), then mean accuracy over every seed the setting ran."""
    rows = [[label, f"{r['lr']:g}", pct(s["selection_scores"][label]), len(r["seeds"]), pct(r["val"]["accuracy"]["mean"]) if "val" in r else DASH,
             pct(r["test"]["accuracy"]["mean"]), pct(r["ood"]["accuracy"]["mean"]), DASH if r["effective_rank"] is None else f"{r['effective_rank']:.1f}"]
            for label, r in s["rows"].items() if label in labels]
    return md_table(["setting", "chosen LR", "chosen on (%)", "seeds", "val acc %", "ID acc %", "OOD acc %", "eff. rank"], rows)
