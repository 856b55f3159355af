"""The LoRASC settings study (benchmarks/study.py): its stages on synthetic results, from the
benchmark's baselines to the seed runs of the best setting and the report."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("study", BENCHMARKS / "study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def accuracy_of(spec):
    """LoRASC likes α = 0.8 (then 1.0), the second LR, orthogonal experts and kept optimizer state; seeds move it a little."""
    fields = spec["lorasc"]
    score = 0.6 + 0.05 * (fields.get("slow_alpha") == 0.8) + 0.03 * (fields.get("slow_alpha") == 1.0) + 0.01 * (spec["lr"] == 0.0006)
    score += 0.04 * (fields.get("expert_init") == "orthogonal") + 0.01 * (fields.get("optimizer_state") == "keep")
    return score + 0.002 * spec["seed"]


SPECS = {}  # key -> the spec it ran, to check what the planner asked for


def spec_of(result):
    return SPECS[result["key"]]


def fake_run(spec):
    SPECS[spec["key"]] = spec
    rival = 0.62 + 0.01 * (spec["lr"] == 0.002)
    metrics = {"accuracy": accuracy_of(spec) if spec["method"] == "LoRASC" else rival, "macro_f1": 0.5, "loss": 1.0}
    return {**{k: spec[k] for k in ("key", "kind", "group", "method", "lr", "seed", "setting", "fields") if k in spec}, "test": metrics, "ood": metrics, "train": metrics,
            "seconds_per_step": 0.6 if spec["lorasc"].get("expert_init") == "gradient" else 0.5, "delta_effective_rank": 5.0, "steps": 160, "cycles": 4,
            "peak_rss_mb": 1.0, "trainable_params": 1, "log": []}


def test_stages_find_the_best_setting_and_report_it(study, tmp_path, monkeypatch):
    bench, protocol = study.bench, study.bench.FULL
    baseline = [fake_run(s) for s in bench.plan_grid(protocol, [])]
    baseline += [fake_run(s) for s in bench.plan_at_best(protocol, baseline, "seeds", protocol.finalists, protocol.extra_seeds)]
    (tmp_path / "full.jsonl").write_text("\n".join(json.dumps(r) for r in baseline))
    monkeypatch.setattr(bench, "run_subprocess", fake_run)

    study.main(["--results-dir", str(tmp_path)])
    runs = [json.loads(line) for line in (tmp_path / "study_full.jsonl").read_text().splitlines()]
    heatmap = [r for r in runs if r["setting"].startswith("α=")]
    assert len(heatmap) == 2 * len(protocol.grids["wide"])  # α = 0.5 came from the benchmark
    factors = [r for r in runs if r["setting"] in study.FACTORS]
    assert len(factors) == len(study.FACTORS) and {r["lr"] for r in factors} == {0.0006, 0.00018, 0.00006}  # LoRA+ also ÷3, ÷10
    assert all(r["fields"]["slow_alpha"] == 0.8 for r in factors)  # from the best heatmap cell
    seeds = [r for r in runs if r["setting"].startswith("best")]
    combined = [r for r in runs if r["setting"] == "init=orthogonal + state=keep"]  # the two factors that beat the base
    assert len(combined) == 1 and combined[0]["fields"] == {"slow_alpha": 0.8, "expert_init": "orthogonal", "optimizer_state": "keep"}
    assert {r["setting"] for r in seeds} == {"best: init=orthogonal + state=keep"} and sorted(r["seed"] for r in seeds) == list(protocol.extra_seeds)

    summary = json.loads((tmp_path / "study_full.json").read_text())
    assert summary["best"]["label"] == "init=orthogonal + state=keep"
    assert summary["verdict"]["test"]["verdict"] == "LoRASC better"
    assert summary["gradient_init_cost"]["relative_to_cycle_training"] == pytest.approx(0.2)
    assert summary["fresh_seeds"]["LoRASC"]["test"] == pytest.approx(0.6 + 0.05 + 0.01 + 0.04 + 0.01 + 0.003)  # seeds 1 and 2 only
    report = (tmp_path / "study.md").read_text()
    assert "init=orthogonal" in report and "LoRASC better" in report and (tmp_path / "study_full_heatmap.png").is_file()


def test_the_few_shot_regime_searches_the_rivals_lr_too(study, tmp_path, monkeypatch):
    monkeypatch.setattr(study.bench, "run_subprocess", fake_run)
    study.main(["--results-dir", str(tmp_path), "--regime", "b"])
    runs = [json.loads(line) for line in (tmp_path / "study_few.jsonl").read_text().splitlines()]
    assert all(r["run"]["n_train"] == 1000 and r["run"]["epochs"] == 5 for r in map(spec_of, runs))
    grid = {(r["method"], r["lr"]) for r in runs if r["group"] == "grid"}
    assert {m for m, _ in grid} == set(study.RIVALS) and len(grid) == 9
    seeds = [r for r in runs if r["group"] == "seeds"]
    assert {(r["method"], r["lr"]) for r in seeds} == {("LoRA", 0.002)} and len(seeds) == 2  # the finalist at its best LR
    factors = [r for r in runs if r.get("setting") in study.FEW_FACTORS]
    assert len(factors) == len(study.FEW_FACTORS) and all(r["fields"]["slow_alpha"] == 1.0 for r in factors)
    assert {r["lr"] for r in factors} == {0.0006, 0.00018}  # from the best cell (α = 1.0, 6e-4); LoRA+ at ÷3
    summary = json.loads((tmp_path / "study_few.json").read_text())
    assert set(summary["rivals"]) == set(study.RIVALS) and summary["verdict"]["test"]["rival"] in study.RIVALS
    assert "Regime (b)" in (tmp_path / "study.md").read_text()
