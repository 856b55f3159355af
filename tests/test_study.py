"""The settings study (benchmarks/study.py) on synthetic results: the α × LR heatmap, each factor from
the best cell, the combination of the two best, the finalists' seeds, and its report."""

import dataclasses

import pytest
from bench_fakes import install, settle

from benchmarks import __main__ as cli
from benchmarks import study
from benchmarks.planner import Board
from benchmarks.protocol import QUICK, Study
from benchmarks.runner import read_results
from benchmarks.study_report import write_study

FACTORS = {
    "λ=0": {"noise_lambda": 0.0},
    "init=orthogonal": {"expert_init": "orthogonal"},
    "state=keep": {"optimizer_state": "keep"},
    "state=prune": {"optimizer_state": "prune"},
    "LoRA+ ×16, LR ÷3": {"loraplus_lr_ratio": 16.0, "lr_scale": 1 / 3},
}
SETTINGS = Study(alphas=(0.5, 0.8, 1.0), factors=FACTORS)


def accuracy(spec, split):
    """LoRASC likes α = 0.8, the higher LR, orthogonal experts, then kept (or pruned) optimizer state; rivals sit at 0.70."""
    if spec["run"]["method"] != "lorasc":
        return 0.70 + 0.001 * spec["seed"]
    fields = spec["lorasc"]
    score = 0.66 + 0.05 * (fields.get("slow_alpha") == 0.8) + 0.01 * (spec["lr"] == 3e-3) + 0.001 * spec["seed"]
    return score + 0.02 * (fields.get("expert_init") == "orthogonal") + {"keep": 0.01, "prune": 0.005}.get(fields.get("optimizer_state"), 0)


def protocol():
    base = dataclasses.replace(QUICK, grids={"wide": (1e-3, 3e-3)}, select_seeds=(0, 1), final_seeds=5, rivals=("LoRA", "DoRA", "COLA"),
                               max_extensions=0)
    return study.study_protocol(base)


def test_stages_find_the_best_setting_and_give_it_the_finalists_seeds():
    p = protocol()
    board = settle(lambda b: study.plan(p, SETTINGS, b), accuracy)
    runs = list(board.finished.values())
    heatmap = {(r["label"], r["lr"]) for r in runs if r["label"].startswith("LoRASC")}
    assert heatmap == {(label, lr) for label in ("LoRASC α=0.5", "LoRASC α=0.8", "LoRASC") for lr in (1e-3, 3e-3)}
    factors = [r for r in runs if r["label"] in FACTORS]
    assert {(r["label"], r["lr"]) for r in factors if r["seed"] == 0} == {(label, 1e-3 if "÷3" in label else 3e-3) for label in FACTORS}
    entries, best = study.explore(p, SETTINGS, board)
    assert best == "init=orthogonal + state=keep"  # the two best factors that beat the base, on different fields
    assert entries[best].fields == {"slow_alpha": 0.8, "expert_init": "orthogonal", "optimizer_state": "keep"}
    for label in (best, "LoRA", "DoRA", "COLA"):
        assert sorted(r["seed"] for r in runs if r["label"] == label and r["lr"] == study.grid(p, entries, label, board)[1]) == [0, 1, 2, 3, 4]
    factor_seeds = {r["seed"] for r in runs if r["label"] in FACTORS}
    assert factor_seeds and factor_seeds <= set(p.select_seeds)


def test_summary_and_report(tmp_path):
    p = protocol()
    s = study.summarize(p, SETTINGS, settle(lambda b: study.plan(p, SETTINGS, b), accuracy))
    assert s["best"] == "init=orthogonal + state=keep" and s["rival"] == "LoRA"  # the rivals tie: the first of them
    assert s["headline"]["test"]["baseline"]["verdict"] == "beats"
    assert s["headline"]["test"]["baseline"]["diff"] == pytest.approx(0.66 + 0.05 + 0.01 + 0.02 + 0.01 - 0.70)
    markdown = write_study([(p, s)], tmp_path, tmp_path / "study.md").read_text()
    assert "**ID: init=orthogonal + state=keep beats LoRA**" in markdown and "| state=prune | 0.003 | 72.5 | 2 |" in markdown
    assert "- **OOD: init=orthogonal + state=keep beats COLA** by +5.0 points (95 % CI +5.0 to +5.0, paired over 5 seeds)." in markdown  # noise-free
    assert "COLA is a chain of experts like LoRASC's (α = 1), without its noise" in markdown
    assert "| init=orthogonal + state=keep | 0.003 | 75.1 | 5 | 75.2 |" in markdown  # chosen on seeds 0-1; then all 5
    assert (tmp_path / f"study-{p.name}_heatmap.png").stat().st_size > 1000
    assert "The best setting of all, on validation: **init=orthogonal + state=keep**." in markdown


def test_a_study_cut_short_says_what_it_has_not_chosen(tmp_path):
    p = protocol()
    board = settle(lambda b: [spec for spec in study.plan(p, SETTINGS, b) if spec["label"] != "LoRASC α=0.8"], accuracy)
    markdown = write_study([(p, study.summarize(p, SETTINGS, board))], tmp_path, tmp_path / "study.md").read_text()
    assert "**The search has not finished**: LoRASC α=0.8 has no chosen LR yet." in markdown and "The best setting of all" not in markdown


def test_nothing_is_chosen_before_the_heatmap_is_complete():
    p = protocol()
    assert study.explore(p, SETTINGS, Board([])) == ({**{label: study.ENTRIES[label] for label in p.rivals}, **study.heatmap_entries(SETTINGS)}, None)


def test_quick_study_runs_regime_b_with_its_own_rivals(tmp_path, monkeypatch):
    given = install(monkeypatch, accuracy)
    cli.main(["--study", "--quick", "--regime", "b", "--results-dir", str(tmp_path)])
    assert given and all(s["run"]["n_train"] == 48 and s["run"]["epochs"] == 3 for s in given)
    results = read_results(tmp_path / "quick-b.jsonl")
    assert {r["label"] for r in results} >= {"LoRA", "LoRASC", "λ=0"} and not (tmp_path / "quick-a.jsonl").exists()
    assert "Regime (b)" in (tmp_path / "study-quick.md").read_text()


def test_the_study_runs_both_regimes_by_default(tmp_path, monkeypatch):
    given = install(monkeypatch, accuracy)
    cli.main(["--study", "--quick", "--results-dir", str(tmp_path)])
    assert {(s["run"]["n_train"], s["run"]["epochs"]) for s in given} == {(QUICK.task.n_train, 1), (48, 3)}
    assert (tmp_path / "quick-a.jsonl").exists() and (tmp_path / "quick-b.jsonl").exists()
