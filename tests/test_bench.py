"""The benchmark harness (benchmarks/run.py): planning on synthetic results, and a tiny sweep through the
real subprocess path into a temporary folder, then the report generated from it."""

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def fake_result(spec, accuracy):
    metrics = {"accuracy": accuracy, "macro_f1": accuracy, "loss": 1.0}
    return {**{k: spec[k] for k in ("key", "kind", "group", "method", "lr", "seed")}, "test": metrics, "ood": metrics,
            "train": metrics, "seconds_per_step": 0.5, "peak_rss_mb": 1000.0, "trainable_params": 1, "log": []}


def test_plans_follow_the_grid(bench):
    full = bench.FULL
    plan = bench.plan_grid(full, [])
    borrowed = [m for m, method in bench.METHODS.items() if not isinstance(method.lrs, str)]
    assert {s["method"] for s in plan} == set(full.methods) - set(borrowed)  # borrowed LRs are not known yet
    assert "LoRASC tuned" not in full.methods  # the study's setting: measured by the study and the second task
    assert sorted(s["lr"] for s in plan if s["method"] == "LoRASC") == list(full.grids["wide"])
    assert all(round(max(g) / min(g)) >= 30 and len(g) >= 4 for g in full.grids.values())  # every grid: 4 LRs over 30×
    assert all(s["run"]["n_train"] == full.steps * bench.BATCH for s in plan)
    assert bench.plan_at_best(full, [], "seeds", full.finalists, full.extra_seeds) == []

    # LoRASC is best at the highest LR, everything else at the lowest: the borrowed runs follow.
    results = [fake_result(s, s["lr"] if s["method"] == "LoRASC" else 1 - s["lr"]) for s in plan]
    by_key = {s["key"]: s for s in bench.plan_grid(full, results)}
    assert bench.best_lr(full, "LoRASC", results) == max(full.grids["wide"])
    assert "grid/NoisyTune/lr=0.0002/seed=0" in by_key  # LoRA's best
    assert {s["lr"] for s in by_key.values() if s["method"] == "LoRASC+LoRA+"} == {6e-3, min(full.grids["fast"])}
    seeds = bench.plan_at_best(full, results, "seeds", full.finalists, full.extra_seeds)
    assert len(seeds) == len(full.finalists) * len(full.extra_seeds)


def test_headline_needs_more_than_the_seed_spread(bench):
    def row(values):
        return {"seeds": list(range(len(values))), "test_accuracy": bench.stats(values)}

    main = {"LoRA": row([0.70, 0.71, 0.72]), "DoRA": row([0.69, 0.70, 0.71]), "LoRASC": row([0.705, 0.715, 0.725])}
    h = bench.headline(main, "test")
    assert h["rival"] == "LoRA" and h["verdict"] == "a tie within the seed spread"
    main["LoRASC"] = row([0.75, 0.76, 0.77])
    assert bench.headline(main, "test")["verdict"] == "LoRASC better"
    main["LoRA+"] = row([0.90])  # one lucky seed is not a rival's best: the seeded rivals are compared
    assert bench.headline(main, "test")["rival"] == "LoRA"


@pytest.mark.slow
def test_tiny_sweep_through_subprocesses_and_report(bench, tmp_path):
    tiny = dataclasses.replace(bench.QUICK, name="tiny", steps=4, n_test=16, n_ood=16, grids={"wide": (2e-3,)},
                               long_methods=(), rank1_methods=(), latency_passes=2)
    bench.sweep(tiny, ["grid", "latency"], tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "tiny.jsonl").read_text().splitlines()]
    assert [r["key"] for r in lines] == ["grid/LoRA/lr=0.002/seed=0", "grid/LoRASC/lr=0.002/seed=0", "latency"]
    assert not [r["error"] for r in lines if "error" in r]
    lora, lorasc, latency = lines
    assert lora["method"] == "LoRA" and lorasc["cycles"] == 2 and lora["cycles"] == 1
    for r in (lora, lorasc):
        assert 0 <= r["test"]["accuracy"] <= 1 and 0 <= r["ood"]["macro_f1"] <= 1
        assert r["seconds_per_step"] > 0 and r["peak_rss_mb"] > 100 and r["environment"]["threads"] == bench.THREADS
    assert 0 < lora["delta_effective_rank"] <= 8 and 0 < lorasc["delta_effective_rank"] <= 16  # rank ≤ r, ≤ T·r
    assert set(latency["latency"]["ratio"]) == {"base", "dense", "adapter"}
    assert latency["latency"]["max_abs_logit_diff_dense_vs_adapter"] < 1e-3  # the stacked adapter is exact

    bench.sweep(tiny, ["grid", "latency"], tmp_path)  # resume: everything is there, nothing reruns
    assert len((tmp_path / "tiny.jsonl").read_text().splitlines()) == 3

    summary = bench.write_report(tiny, tmp_path, tmp_path / "tiny.md")
    assert set(summary["main"]) == {"LoRA", "LoRASC"} and summary["best_lr"] == {"LoRA": 2e-3, "LoRASC": 2e-3}
    assert summary["cost"]["LoRA"]["step_ratio"] == 1.0
    assert json.loads((tmp_path / "tiny.json").read_text())["headline"]["test"]["rival"] == "LoRA"
    markdown = (tmp_path / "tiny.md").read_text()
    for text in ("## Headline", "| LoRASC | 0.002 | 1 |", "step time / LoRA", "forward latency / base", "torch 2."):
        assert text in markdown
    for plot in ("tiny_lr.png", "tiny_main.png", "tiny_cost.png"):
        assert (tmp_path / plot).stat().st_size > 1000 and plot in markdown
