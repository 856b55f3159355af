#!/usr/bin/env python
"""Study: which LoRASC settings, if any, beat tuned LoRA, LoRA+ and DoRA?

    python benchmarks/study.py            # regime (a) on the benchmark's budget -> results/study.*
    python benchmarks/study.py --quick    # smoke test on the quick protocol -> results/study_quick.*
    python benchmarks/study.py --report   # only rewrite the report

The full grid (α × λ × cycles × init × optimizer state × LoRA+ ratio × LR) is far too large for a
2-core CPU, so the search is one factor at a time from a good base, on the benchmark's main budget
(regime (a): one epoch of `steps` batches from the full training pool). LoRA, LoRA+ and DoRA
need no runs here: their LR searches and seeds are the benchmark's (same specs, same results file).

  heatmap  α ∈ {0.5, 0.8, 1.0} × the benchmark's wide LR grid, λ = 0.15, kaiming init, reset state;
           α = 0.5 is the benchmark's own LoRASC grid
  factors  from the best (α, LR): λ ∈ {0, 0.05}, cycles ∈ {2, 8}, init ∈ {gradient, orthogonal},
           optimizer state ∈ {keep, prune}, LoRA+ ratio 16
  seeds    the best setting of all, with the benchmark's extra seeds

Not covered yet: regime (b) (1,000 training examples for many epochs, where LoRA overfits).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (the benchmark's specs, runner and statistics)

ALPHAS = (0.5, 0.8, 1.0)
FACTORS = {  # label -> LoRASCConfig fields changed from the base setting
    "λ=0": {"noise_lambda": 0.0},
    "λ=0.05": {"noise_lambda": 0.05},
    "2 cycles": {"num_cycles": 2},
    "8 cycles": {"num_cycles": 8},
    "init=gradient": {"expert_init": "gradient"},
    "init=orthogonal": {"expert_init": "orthogonal"},
    "state=keep": {"optimizer_state": "keep"},
    "state=prune": {"optimizer_state": "prune"},
    "LoRA+ ×16": {"loraplus_lr_ratio": 16.0},
}


def spec(protocol, label: str, lr: float, seed: int, fields: dict) -> dict:
    s = bench.train_spec(protocol, "study", "LoRASC", lr, seed)
    s["lorasc"].update(fields)
    return {**s, "key": f"study/{label}/lr={lr:g}/seed={seed}", "setting": label, "fields": fields}


def heatmap_specs(protocol, baseline: list[dict], study: list[dict]) -> list[dict]:
    return [spec(protocol, f"α={a}", lr, 0, {"slow_alpha": a}) for a in ALPHAS if a != 0.5 for lr in protocol.grids["wide"]]


def heatmap(protocol, baseline: list[dict], study: list[dict]) -> dict[tuple[float, float], dict]:
    """(α, LR) -> the seed-0 run; α = 0.5 from the benchmark's LoRASC grid."""
    cells = {(0.5, r["lr"]): r for r in bench.grid_runs(protocol, "LoRASC", baseline)}
    cells |= {(r["fields"]["slow_alpha"], r["lr"]): r for r in study if r["setting"].startswith("α=") and r["seed"] == 0}
    return cells


def settings(protocol, baseline: list[dict], study: list[dict]) -> dict[str, tuple[dict, dict]]:
    """Every seed-0 setting tried once the heatmap is complete: label -> (fields, run), the base first."""
    cells = heatmap(protocol, baseline, study)
    if len(cells) < len(ALPHAS) * len(protocol.grids["wide"]):
        return {}
    (alpha, _), run = max(cells.items(), key=lambda kv: kv[1]["test"]["accuracy"])
    found = {f"base α={alpha}": ({"slow_alpha": alpha}, run)}
    found |= {r["setting"]: (r["fields"], r) for r in study if r["setting"] in FACTORS and r["seed"] == 0}
    return found


def factor_specs(protocol, baseline: list[dict], study: list[dict]) -> list[dict]:
    tried = settings(protocol, baseline, study)
    if not tried:
        return []
    fields, base = next(iter(tried.values()))
    return [spec(protocol, label, base["lr"], 0, {**fields, **change}) for label, change in FACTORS.items()]


def best_setting(protocol, baseline: list[dict], study: list[dict]) -> tuple[str, dict, dict] | None:
    """The best seed-0 setting once every factor has been tried: (label, fields, run)."""
    tried = settings(protocol, baseline, study)
    if len(tried) < len(FACTORS) + 1:
        return None
    label, (fields, run) = max(tried.items(), key=lambda kv: kv[1][1]["test"]["accuracy"])
    return label, fields, run


def seed_specs(protocol, baseline: list[dict], study: list[dict]) -> list[dict]:
    best = best_setting(protocol, baseline, study)
    if best is None:
        return []
    label, fields, run = best
    return [spec(protocol, f"best: {label}", run["lr"], s, fields) for s in protocol.extra_seeds]


STAGES = (heatmap_specs, factor_specs, seed_specs)


def sweep(protocol, results_dir: Path) -> None:
    """Run every planned spec not yet in the results, one subprocess at a time, stage after stage."""
    baseline = bench.read_results(results_dir / f"{protocol.name}.jsonl")
    path = results_dir / f"study_{protocol.name}.jsonl"
    attempted: set[str] = set()
    for stage in STAGES:
        while True:
            study = list(bench.done(bench.read_results(path)).values())
            todo = [s for s in stage(protocol, baseline, study) if s["key"] not in {r["key"] for r in study} | attempted]
            if not todo:
                break
            attempted.add(todo[0]["key"])
            print(f"{todo[0]['key']} ...", flush=True)
            result = {**bench.run_subprocess(todo[0]), "setting": todo[0]["setting"], "fields": todo[0]["fields"]}
            print(f"    {bench.summary_line(result)}", flush=True)
            with open(path, "a") as f:
                f.write(json.dumps(result) + "\n")


# ---- report ---------------------------------------------------------------------------------------
def summarize(protocol, baseline: list[dict], study: list[dict]) -> dict:
    cells = heatmap(protocol, baseline, study)
    tried = settings(protocol, baseline, study)
    summary = {
        "heatmap": [{"alpha": a, "lr": lr, "test_accuracy": r["test"]["accuracy"], "ood_accuracy": r["ood"]["accuracy"]} for (a, lr), r in sorted(cells.items())],
        "settings": {label: {"lr": r["lr"], "fields": f, "test": r["test"], "ood": r["ood"], "seconds_per_step": r["seconds_per_step"],
                             "effective_rank": r.get("delta_effective_rank")} for label, (f, r) in tried.items()},
    }
    best = best_setting(protocol, baseline, study)
    if best is not None:
        label, fields, run = best
        seeds = [run] + [r for r in study if r["setting"] == f"best: {label}"]
        train_runs = [r for r in bench.done(baseline).values() if r["kind"] == "train"]
        table = bench.main_table(protocol, train_runs, {m: bench.best_lr(protocol, m, baseline) for m in protocol.methods})
        rivals = {m: table[m] for m in bench.BASELINES if m in table}
        ours = {"lr": run["lr"], "seeds": [r["seed"] for r in seeds]}
        for split in ("test", "ood"):
            for metric in ("accuracy", "macro_f1"):
                ours[f"{split}_{metric}"] = bench.stats([r[split][metric] for r in seeds])
        summary["best"] = {"label": label, "fields": fields, **ours}
        summary["verdict"] = {split: bench.headline({**rivals, "LoRASC": ours}, split) for split in ("test", "ood")}
        summary["rivals"] = rivals
    if "init=gradient" in tried and tried:
        base_run, grad_run = next(iter(tried.values()))[1], tried["init=gradient"][1]
        cycles = protocol.num_cycles
        summary["gradient_init_cost"] = {
            "extra_seconds_per_cycle": (grad_run["seconds_per_step"] - base_run["seconds_per_step"]) * protocol.steps / cycles,
            "relative_to_cycle_training": grad_run["seconds_per_step"] / base_run["seconds_per_step"] - 1,
        }
    return summary


def plot_heatmap(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = sorted({c["lr"] for c in summary["heatmap"]})
    grid = [[next((100 * c["test_accuracy"] for c in summary["heatmap"] if c["alpha"] == a and c["lr"] == lr), float("nan")) for lr in lrs] for a in ALPHAS]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", color="white")
    ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs]), ax.set_yticks(range(len(ALPHAS)), [f"α={a}" for a in ALPHAS])
    ax.set_xlabel("learning rate"), ax.set_title("LoRASC ID test accuracy (%), λ = 0.15, seed 0")
    fig.colorbar(image)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(summary: dict, heatmap_png: str) -> str:
    rows = [[label, f"{s['lr']:g}", bench.pct(s["test"]["accuracy"]), bench.pct(s["test"]["macro_f1"]), bench.pct(s["ood"]["accuracy"]),
             bench.pct(s["ood"]["macro_f1"]), f"{s['effective_rank']:.1f}" if s["effective_rank"] else "—"] for label, s in summary["settings"].items()]
    parts = ["## Study: the settings where LoRASC might beat tuned LoRA (regime (a))", "", __doc__.split("\n\n", 2)[2].strip(), "",
             f"![α × LR]({heatmap_png})", "", "One factor at a time from the best (α, LR), seed 0:", "",
             bench.md_table(["setting", "LR", "ID acc", "ID F1", "OOD acc", "OOD F1", "eff. rank"], rows)]
    if "best" in summary:
        b = summary["best"]
        rivals = [[m, f"{r['lr']:g}", bench.pm(r["test_accuracy"]), bench.pm(r["test_macro_f1"]), bench.pm(r["ood_accuracy"]), bench.pm(r["ood_macro_f1"])]
                  for m, r in summary["rivals"].items()]
        rivals.append([f"LoRASC, {b['label']}", f"{b['lr']:g}", bench.pm(b["test_accuracy"]), bench.pm(b["test_macro_f1"]), bench.pm(b["ood_accuracy"]), bench.pm(b["ood_macro_f1"])])
        parts += ["", "Each at its own best setting, mean ± std over seeds:", "",
                  bench.md_table(["method", "LR", "ID acc", "ID F1", "OOD acc", "OOD F1"], rivals), ""]
        for split, name in (("test", "in distribution"), ("ood", "out of distribution")):
            v = summary["verdict"][split]
            if v:
                parts.append(f"- {name}: best LoRASC minus {v['rival']} = {100 * v['diff']:+.1f} points, seed spread {100 * v['spread']:.1f}: **{v['verdict']}**.")
    if "gradient_init_cost" in summary:
        g = summary["gradient_init_cost"]
        parts += ["", f"Gradient initialisation adds {g['extra_seconds_per_cycle']:.1f} s per cycle, "
                      f"{100 * g['relative_to_cycle_training']:+.0f} % of a cycle's training time (step times side by side in one sweep)."]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=bench.RESULTS)
    args = parser.parse_args(argv)
    protocol = bench.QUICK if args.quick else bench.FULL
    if not args.report:
        sweep(protocol, args.results_dir)
    baseline = bench.read_results(args.results_dir / f"{protocol.name}.jsonl")
    study = list(bench.done(bench.read_results(args.results_dir / f"study_{protocol.name}.jsonl")).values())
    summary = summarize(protocol, baseline, study)
    stem = args.results_dir / f"study_{protocol.name}"
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    plot_heatmap(summary, stem.with_name(stem.name + "_heatmap.png"))
    stem.with_suffix(".md").write_text(render(summary, stem.name + "_heatmap.png"))
    print(f"report: {stem.with_suffix('.md')}")


if __name__ == "__main__":
    main()
