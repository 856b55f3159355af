#!/usr/bin/env python
"""Study: which LoRASC settings, if any, beat tuned LoRA, LoRA+ and DoRA?

    python benchmarks/study.py                 # both regimes -> results/study_{full,few}.* and results/study.md
    python benchmarks/study.py --regime b      # one regime
    python benchmarks/study.py --quick         # smoke test on a tiny budget -> results/study_quick*.*
    python benchmarks/study.py --report        # only rewrite the reports

The full grid (α × λ × cycles × init × optimizer state × LoRA+ ratio × LR) is far too large for a
2-core CPU (a run is 1.5–3 min), so the search is one factor at a time from a good base:

- **rivals**: LoRA, LoRA+ and DoRA over an LR grid, then two more seeds at their best LR (in regime
  (b), for lack of time, only for the best rival at seed 0).
- **heatmap**: LoRASC over α × an LR grid (λ = 0.15, kaiming init, optimizer reset).
- **factors**: from the best (α, LR) cell, one field changed at a time (λ, cycles, init, optimizer
  state, LoRA+ ratio at the same LR and at LR ÷3 and ÷10, since B moving 16× faster wants a lower
  LR); then the two best factors that each beat the base and touch different fields, together.
- **seeds**: the best setting of all, with the same two extra seeds.

Selection is on seed 0's test split (there is no validation split), which favours whichever method
tried more settings: LoRASC here. The extra seeds draw new data splits and were not used to select,
so the tables also give the mean over them alone.

- **Regime (a)**: the benchmark's main budget, one epoch of 160 batches (2,560 tweets), 4 cycles. The
  rivals' runs (4-point grids), and LoRASC's α = 0.5 row, are the benchmark's own (results/full.jsonl).
- **Regime (b)**: 1,000 tweets for 5 epochs (315 steps), a cycle per epoch: the regime where LoRA
  overfits. Runs cost 2–3 min here, so 3-point grids (10×) placed where regime (a) found each
  method's best (LoRA, DoRA 2e-4–2e-3; LoRA+ 6e-5–6e-4; LoRASC 6e-4–6e-3, one step higher, as
  its best sat there in (a)), and only the factors that mattered or nearly did in (a).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (the benchmark's specs, runner and statistics)


@dataclass(frozen=True)
class Regime:
    protocol: bench.Protocol  # budget, test sizes, LR grids and rivals; its name names the results
    title: str
    long: bool  # False: one epoch of protocol.steps batches; True: long_n_train examples for long_epochs
    alphas: tuple[float, ...]
    factors: dict[str, dict]  # label -> LoRASCConfig fields changed from the best heatmap cell
    rivals_from_benchmark: bool  # the rivals' runs and LoRASC's α = 0.5 row are results/<protocol>.jsonl
    lrs: tuple[float, ...] | None = None  # LoRASC's LR grid; None: the protocol's wide grid, like LoRA's


FACTORS = {
    "λ=0": {"noise_lambda": 0.0},
    "λ=0.05": {"noise_lambda": 0.05},
    "2 cycles": {"num_cycles": 2},
    "8 cycles": {"num_cycles": 8},
    "init=gradient": {"expert_init": "gradient"},
    "init=orthogonal": {"expert_init": "orthogonal"},
    "state=keep": {"optimizer_state": "keep"},
    "state=prune": {"optimizer_state": "prune"},
    "LoRA+ ×16": {"loraplus_lr_ratio": 16.0},
    "LoRA+ ×16, LR ÷3": {"loraplus_lr_ratio": 16.0, "lr_scale": 0.3},  # LoRA+'s own best LR sits 3–10× lower than LoRA's
    "LoRA+ ×16, LR ÷10": {"loraplus_lr_ratio": 16.0, "lr_scale": 0.1},
}
# Regime (b) runs cost 2 min each: the factors that mattered or nearly did in regime (a), and 3-point LR grids
# (10×) placed where regime (a) found each method's best: the cascades' one step higher than LoRA's.
FEW_FACTORS = {label: FACTORS[label] for label in ("λ=0", "state=prune", "LoRA+ ×16, LR ÷3")}
RIVALS = ("LoRA", "LoRA+", "DoRA")
# Finalists: the best rival at seed 0 (LoRA, 2 points ahead of DoRA and 4 of LoRA+ there) gets the extra seeds.
FEW = dataclasses.replace(bench.FULL, name="few", methods=RIVALS, finalists=("LoRA",), long_n_train=1000, long_epochs=5,
                          grids={"wide": (2e-4, 6e-4, 2e-3), "fast": (6e-5, 2e-4, 6e-4)})
REGIMES = {
    "a": Regime(bench.FULL, "regime (a): the full training pool, one epoch", False, (0.5, 0.8, 1.0), FACTORS, True),
    "b": Regime(FEW, "regime (b): 1,000 examples, 5 epochs", True, (0.5, 1.0), FEW_FACTORS, False, (6e-4, 2e-3, 6e-3)),
}
QUICK_FEW = dataclasses.replace(bench.QUICK, name="quick_few", methods=RIVALS, grids={"wide": (1e-3,), "fast": (1e-3,)}, finalists=("LoRA",), extra_seeds=(1,))
QUICK = {"a": Regime(bench.QUICK, "quick", False, (0.5, 1.0), {"λ=0": {"noise_lambda": 0.0}}, True),
         "b": Regime(QUICK_FEW, "quick, few", True, (1.0,), {"λ=0": {"noise_lambda": 0.0}}, False)}


def spec(regime: Regime, label: str, lr: float, seed: int, fields: dict) -> dict:
    s = bench.train_spec(regime.protocol, "study", "LoRASC", lr, seed, long=regime.long)
    s["lorasc"].update(fields)
    return {**s, "key": f"study/{label}/lr={lr:g}/seed={seed}", "setting": label, "fields": fields}


def rival_source(regime: Regime, baseline: list[dict], study: list[dict]) -> list[dict]:
    return baseline if regime.rivals_from_benchmark else study


def rival_grid_specs(regime: Regime, baseline: list[dict], study: list[dict]) -> list[dict]:
    if regime.rivals_from_benchmark:
        return []
    p = regime.protocol
    return [bench.train_spec(p, "grid", m, lr, 0, long=regime.long) for m in p.methods for lr in bench.grid_lrs(p, m, study)]


def rival_seed_specs(regime: Regime, baseline: list[dict], study: list[dict]) -> list[dict]:
    if regime.rivals_from_benchmark:
        return []
    return bench.plan_at_best(regime.protocol, study, "seeds", regime.protocol.finalists, regime.protocol.extra_seeds, long=regime.long)


def heatmap_specs(regime: Regime, baseline: list[dict], study: list[dict]) -> list[dict]:
    alphas = [a for a in regime.alphas if not (regime.rivals_from_benchmark and a == bench.LORASC["slow_alpha"])]
    return [spec(regime, f"α={a}", lr, 0, {"slow_alpha": a}) for a in alphas for lr in lorasc_lrs(regime)]


def lorasc_lrs(regime: Regime) -> tuple[float, ...]:
    return regime.lrs or regime.protocol.grids["wide"]


def heatmap(regime: Regime, baseline: list[dict], study: list[dict]) -> dict[tuple[float, float], dict]:
    """(α, LR) -> the seed-0 run; with rivals_from_benchmark the benchmark's LoRASC grid is α = 0.5's row."""
    cells = {}
    if regime.rivals_from_benchmark:
        cells = {(bench.LORASC["slow_alpha"], r["lr"]): r for r in bench.grid_runs(regime.protocol, "LoRASC", baseline)}
    cells |= {(r["fields"]["slow_alpha"], r["lr"]): r for r in study if r.get("setting", "").startswith("α=") and r["seed"] == 0}
    return cells


def settings(regime: Regime, baseline: list[dict], study: list[dict]) -> dict[str, tuple[dict, dict]]:
    """Every seed-0 setting tried once the heatmap is complete: label -> (fields, run), the base first."""
    cells = heatmap(regime, baseline, study)
    if len(cells) < len(regime.alphas) * len(lorasc_lrs(regime)):
        return {}
    (alpha, _), run = max(cells.items(), key=lambda kv: kv[1]["test"]["accuracy"])
    found = {f"base α={alpha}": ({"slow_alpha": alpha}, run)}
    found |= {r["setting"]: (r["fields"], r) for r in study if r["seed"] == 0 and is_factor_setting(regime, r.get("setting", ""))}
    return found


def is_factor_setting(regime: Regime, label: str) -> bool:
    """One factor, or factors joined by ' + '."""
    return all(part in regime.factors for part in label.split(" + "))


def factor_spec(regime: Regime, label: str, base_fields: dict, base_lr: float, changes: list[dict]) -> dict:
    fields, scale = dict(base_fields), 1.0
    for change in changes:
        fields |= {k: v for k, v in change.items() if k != "lr_scale"}
        scale *= change.get("lr_scale", 1.0)
    return spec(regime, label, float(f"{base_lr * scale:.3g}"), 0, fields)


def factor_specs(regime: Regime, baseline: list[dict], study: list[dict]) -> list[dict]:
    tried = settings(regime, baseline, study)
    if not tried:
        return []
    fields, base = next(iter(tried.values()))
    return [factor_spec(regime, label, fields, base["lr"], [change]) for label, change in regime.factors.items()]


def combination(regime: Regime, tried: dict[str, tuple[dict, dict]]) -> list[str] | None:
    """The two best factors that each beat the base on their own and change different fields."""
    base_accuracy = next(iter(tried.values()))[1]["test"]["accuracy"]
    better = sorted(((r["test"]["accuracy"], label) for label, (_, r) in tried.items() if label in regime.factors and r["test"]["accuracy"] > base_accuracy), reverse=True)
    picks = []
    for _, label in better:
        if not any(set(regime.factors[label]) & set(regime.factors[p]) for p in picks):
            picks.append(label)
    return picks[:2] if len(picks) >= 2 else None


def every_factor_tried(regime: Regime, tried: dict[str, tuple[dict, dict]]) -> bool:
    return bool(tried) and all(label in tried for label in regime.factors)


def combine_specs(regime: Regime, baseline: list[dict], study: list[dict]) -> list[dict]:
    tried = settings(regime, baseline, study)
    if not every_factor_tried(regime, tried):
        return []
    picks = combination(regime, tried)
    if picks is None:
        return []
    fields, base = next(iter(tried.values()))
    return [factor_spec(regime, " + ".join(picks), fields, base["lr"], [regime.factors[p] for p in picks])]


def best_setting(regime: Regime, baseline: list[dict], study: list[dict]) -> tuple[str, dict, dict] | None:
    """The best seed-0 setting once every factor (and the combination of the two best) has been tried."""
    tried = settings(regime, baseline, study)
    if not every_factor_tried(regime, tried):
        return None
    picks = combination(regime, tried)
    if picks is not None and " + ".join(picks) not in tried:
        return None
    label, (fields, run) = max(tried.items(), key=lambda kv: kv[1][1]["test"]["accuracy"])
    return label, fields, run


def seed_specs(regime: Regime, baseline: list[dict], study: list[dict]) -> list[dict]:
    best = best_setting(regime, baseline, study)
    if best is None:
        return []
    label, fields, run = best
    return [spec(regime, f"best: {label}", run["lr"], s, fields) for s in regime.protocol.extra_seeds]


STAGES = (rival_grid_specs, heatmap_specs, factor_specs, combine_specs, seed_specs, rival_seed_specs)


def sweep(regime: Regime, results_dir: Path) -> None:
    """Run every planned spec not yet in the results, stage after stage."""
    baseline = bench.read_results(results_dir / f"{regime.protocol.name}.jsonl")
    for stage in STAGES:
        bench.run_missing(results_dir / f"study_{regime.protocol.name}.jsonl",
                          lambda results: [final_eval_only(s) for s in stage(regime, baseline, list(bench.done(results).values()))])


def final_eval_only(spec: dict) -> dict:
    spec["run"]["eval_every"] = 0  # the study reads the final metrics only: no per-epoch evaluations
    return spec


# ---- report ---------------------------------------------------------------------------------------
def summarize(regime: Regime, baseline: list[dict], study: list[dict]) -> dict:
    p, source = regime.protocol, rival_source(regime, baseline, study)
    cells = heatmap(regime, baseline, study)
    rival_grids = {m: [{"lr": r["lr"], "test_accuracy": r["test"]["accuracy"]} for r in bench.grid_runs(p, m, source)] for m in RIVALS}
    summary = {
        "regime": regime.title,
        "heatmap": [{"alpha": a, "lr": lr, "test_accuracy": r["test"]["accuracy"], "ood_accuracy": r["ood"]["accuracy"]} for (a, lr), r in sorted(cells.items())],
        "rival_grids": rival_grids,
        "settings": {label: {"lr": r["lr"], "fields": f, "test": r["test"], "ood": r["ood"], "seconds_per_step": r["seconds_per_step"],
                             "steps_per_cycle": r["steps"] / r["cycles"], "effective_rank": r.get("delta_effective_rank")}
                     for label, (f, r) in settings(regime, baseline, study).items()},
    }
    best = best_setting(regime, baseline, study)
    train_runs = [r for r in bench.done(source).values() if r["kind"] == "train"]
    table = bench.main_table(p, train_runs, {m: bench.best_lr(p, m, source) for m in p.methods})
    rivals = {m: table[m] for m in RIVALS if m in table}
    if best is not None:
        label, fields, run = best
        seeds = [run] + [r for r in study if r.get("setting") == f"best: {label}"]
        ours = {"lr": run["lr"], "seeds": [r["seed"] for r in seeds], **bench.split_stats(seeds)}
        summary["best"] = {"label": label, "fields": fields, **ours}
        summary["verdict"] = {split: bench.headline({**rivals, "LoRASC": ours}, split) for split in ("test", "ood")}
    summary["rivals"] = rivals
    summary["fresh_seeds"] = fresh_seed_means(regime, summary, train_runs, study)
    factors = {label: s for label, s in summary["settings"].items() if label in regime.factors}
    if "init=gradient" in factors and len(factors) > 1:
        # against the other factor runs of the same sweep (the base cell may come from another sweep)
        others = statistics.median(s["seconds_per_step"] for label, s in factors.items() if label != "init=gradient")
        gradient = factors["init=gradient"]
        summary["gradient_init_cost"] = {
            "extra_seconds_per_cycle": (gradient["seconds_per_step"] - others) * gradient["steps_per_cycle"],
            "relative_to_cycle_training": gradient["seconds_per_step"] / others - 1,
        }
    return summary


def fresh_seed_means(regime: Regime, summary: dict, train_runs: list[dict], study: list[dict]) -> dict:
    """Mean ID/OOD accuracy over the extra seeds only: runs that played no part in choosing a setting."""
    extra = set(regime.protocol.extra_seeds)
    picked = {m: [r for r in train_runs if r["method"] == m and r["group"] == "seeds" and r["lr"] == s["lr"] and r["seed"] in extra]
              for m, s in summary["rivals"].items()}
    if "best" in summary:
        picked["LoRASC"] = [r for r in study if r.get("setting") == f"best: {summary['best']['label']}" and r["seed"] in extra]
    return {m: {split: statistics.fmean(r[split]["accuracy"] for r in runs) for split in ("test", "ood")} for m, runs in picked.items() if runs}


def plot_heatmap(regime: Regime, summary: dict, path: Path) -> None:
    """Seed-0 ID test accuracy: LoRASC's α rows, then the rivals' rows, over every LR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {f"LoRASC α={a}": {c["lr"]: c["test_accuracy"] for c in summary["heatmap"] if c["alpha"] == a} for a in regime.alphas}
    rows |= {m: {g["lr"]: g["test_accuracy"] for g in grid} for m, grid in summary["rival_grids"].items() if grid}
    lrs = sorted({lr for row in rows.values() for lr in row})
    grid = [[100 * row[lr] if lr in row else float("nan") for lr in lrs] for row in rows.values()]
    fig, ax = plt.subplots(figsize=(1.3 * len(lrs) + 3, 0.5 * len(rows) + 1.5))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for i, line in enumerate(grid):
        for j, value in enumerate(line):
            if value == value:  # not NaN
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", color="white")
    ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs]), ax.set_yticks(range(len(rows)), list(rows))
    ax.set_xlabel("learning rate"), ax.set_title(f"ID test accuracy (%), seed 0, {regime.title}", fontsize=9)
    fig.colorbar(image)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(regime: Regime, summary: dict, heatmap_png: str) -> str:
    rows = [[label, f"{s['lr']:g}", bench.pct(s["test"]["accuracy"]), bench.pct(s["test"]["macro_f1"]), bench.pct(s["ood"]["accuracy"]),
             bench.pct(s["ood"]["macro_f1"]), f"{s['effective_rank']:.1f}" if s["effective_rank"] else "—"] for label, s in summary["settings"].items()]
    parts = [f"### {regime.title[0].upper()}{regime.title[1:]}", "", f"![α × LR]({heatmap_png})", "",
             "LoRASC, one factor at a time from the best (α, LR) cell, seed 0:", "",
             bench.md_table(["setting", "LR", "ID acc", "ID F1", "OOD acc", "OOD F1", "eff. rank"], rows)]
    fresh = summary["fresh_seeds"]

    def row(name: str, s: dict) -> list:
        f = fresh.get(name.split(",")[0])
        cells = [bench.pm(s[k]) for k in ("test_accuracy", "test_macro_f1", "ood_accuracy", "ood_macro_f1")]
        return [name, f"{s['lr']:g}", *cells, f"{bench.pct(f['test'])} / {bench.pct(f['ood'])}" if f else "—"]

    table = [row(m, s) for m, s in summary["rivals"].items()]
    if "best" in summary:
        table.append(row(f"LoRASC, {summary['best']['label']}", summary["best"]))
    parts += ["", "Each at its own best setting, mean ± std over seeds 0–2 (the last column: seeds 1–2 alone, never used to select):", "",
              bench.md_table(["method", "LR", "ID acc", "ID F1", "OOD acc", "OOD F1", "ID / OOD acc, seeds 1–2"], table), ""]
    for split, name in (("test", "in distribution"), ("ood", "out of distribution")):
        v = summary.get("verdict", {}).get(split)
        if v:
            parts.append(f"- {name}: best LoRASC minus {v['rival']} = {100 * v['diff']:+.1f} points, seed spread {100 * v['spread']:.1f}: **{v['verdict']}**.")
    if "gradient_init_cost" in summary:
        g = summary["gradient_init_cost"]
        parts += ["", f"Gradient initialisation adds {g['extra_seconds_per_cycle']:.1f} s per cycle, "
                      f"{100 * g['relative_to_cycle_training']:+.0f} % of a cycle's training time (against the median step time of the other "
                      "factor runs of the same sweep)."]
    return "\n".join(parts) + "\n"


def report(regimes: dict[str, Regime], results_dir: Path, path: Path) -> Path:
    """Per regime: study_<protocol>.json and _heatmap.png; all regimes: the markdown at `path`."""
    sections = ["## Study: the settings where LoRASC might beat tuned LoRA", "", __doc__.split("\n\n", 2)[2].strip(), ""]
    for regime in regimes.values():
        name = regime.protocol.name
        baseline = bench.read_results(results_dir / f"{name}.jsonl")
        study = list(bench.done(bench.read_results(results_dir / f"study_{name}.jsonl")).values())
        summary = summarize(regime, baseline, study)
        (results_dir / f"study_{name}.json").write_text(json.dumps(summary, indent=2))
        plot_heatmap(regime, summary, results_dir / f"study_{name}_heatmap.png")
        sections.append(render(regime, summary, f"study_{name}_heatmap.png"))  # relative to the results folder
    path.write_text("\n".join(sections))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--regime", choices=tuple(REGIMES), help="default: both")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=bench.RESULTS)
    args = parser.parse_args(argv)
    regimes = QUICK if args.quick else REGIMES
    if not args.report:
        for name, regime in regimes.items():
            if args.regime in (None, name):
                sweep(regime, args.results_dir)
    print(f"report: {report(regimes, args.results_dir, args.results_dir / ('study_quick.md' if args.quick else 'study.md'))}")


if __name__ == "__main__":
    main()
