"""The continual-learning benchmark (benchmarks/continual.py, continual_report.py): its plan, the LR choice on
validation, FWT from the `single` row, the section's verdicts from made-up results, and one real quick sweep
through subprocesses on MiniLM (2 tasks, a few steps, a few rows)."""

import dataclasses
import json

import pytest

from benchmarks import __main__ as cli
from benchmarks import continual
from benchmarks.continual import FULL, QUICK, Variant, chosen_lr, results_path, selection_specs, variant_specs
from benchmarks.continual_report import forward_transfer, write_report
from benchmarks.runner import read_results

TASKS = ["airline", "coachella"]


def test_the_plan_runs_the_main_table_seed_by_seed_then_the_extras():
    specs = variant_specs(FULL, 1e-3)
    main = [x for x in specs if x["group"] == "main"]
    assert len(main) == 4 * 5 + 2 and [x["seed"] for x in main] == sorted(x["seed"] for x in main)
    assert {x["group"] for x in specs[len(main):]} == {"extras"} and len(specs) == len(main) + len(FULL.extras)
    assert all(x["run"]["lr"] == 1e-3 and x["run"]["steps_per_task"] == 50 and x["data"]["split"] == "test" for x in specs)
    reverse = next(x for x in specs if x["label"] == "lorasc reverse")
    assert reverse["run"]["task_order"] == ["reverse"] and reverse["method"] == "lorasc"
    cut = [x for x in variant_specs(FULL, 1e-3, seeds=3) if x["group"] == "main"]
    assert len(cut) == 4 * 3 + 2


def test_the_lr_is_chosen_on_validation_aa_once_every_selection_run_was_tried():
    specs = selection_specs(FULL)
    assert [x["lr"] for x in specs] == list(FULL.lrs) and all(x["data"]["split"] == "val" and x["method"] == "inc-lora" for x in specs)
    scores = [0.6, 0.7, 0.7]  # a tie goes to the lower LR
    results = [{"key": x["key"], "continual": {"accuracy": {"AA": a}}} for x, a in zip(specs, scores)]
    assert chosen_lr(FULL, results[:2]) is None
    assert chosen_lr(FULL, results) == FULL.lrs[1]
    assert chosen_lr(FULL, [*results[:1], *({"key": x["key"], "error": "boom"} for x in specs[1:])]) == FULL.lrs[0]


def test_forward_transfer_matches_tasks_by_name_in_any_order():
    run = {"method": "lorasc", "continual": {"tasks": ["b", "a", "c"]}, "R": [[0.5, None, None], [0.4, 0.7, None], [0.3, 0.6, 0.9]]}
    assert forward_transfer(run, {"a": 0.6, "b": 0.0, "c": 0.8}) == pytest.approx(((0.7 - 0.6) + (0.9 - 0.8)) / 2)
    assert forward_transfer(run, {"a": 0.6}) is None
    multitask = {"method": "multitask", "continual": {"tasks": ["b", "a"]}, "R": [[None, None], [0.5, 0.6]]}
    assert forward_transfer(multitask, {"a": 0.6, "b": 0.0}) is None


def fake(s, group, label, seed, aa, f, lr=1e-3, sps=0.1):
    method = label.split()[0]
    block = {"tasks": TASKS, "R": [[0.8, None], [0.8 - f, 2 * aa - 0.8 + f]],
             "accuracy": {"AA": aa, "AIA": aa, "BWT": -f, "F": f}}
    if method == "single":
        block = {"tasks": TASKS, "R": [[0.8, None], [None, 0.7]], "reference": [0.8, 0.7], "accuracy": {"AA": 0.75}}
    return {"key": f"{group}/{label}/lr={lr:g}/seed={seed}", "group": group, "label": label, "method": method, "lr": lr, "seed": seed,
            "R": block["R"], "continual": block, "seconds_per_step": sps, "wall_seconds": 60.0, "environment": {"cores": 2, "cpu": "test"}}


def test_the_section_gives_the_verdicts_and_what_was_cut(tmp_path):
    s = dataclasses.replace(FULL, lrs=(1e-3,))
    results = [{**fake(s, "select", "inc-lora", 0, 0.6, 0.1), "key": selection_specs(s)[0]["key"]}]
    for seed in range(3):  # lorasc forgets less than inc-lora at every seed, by 5 to 7 points
        results += [fake(s, "main", "lorasc", seed, 0.70 + seed / 100, 0.05), fake(s, "main", "inc-lora", seed, 0.69, 0.11 + seed / 100),
                    fake(s, "main", "seq-lora", seed, 0.60 + seed / 50, 0.2, sps=0.05)]
    results += [fake(s, "main", "multitask", 0, 0.8, 0.0), fake(s, "extras", "single", 0, 0.75, 0.0),
                {"key": "extras/ema/lr=0.001/seed=0", "group": "extras", "label": "ema", "error": "exit code 1"}]
    results_path(tmp_path, s).write_text("".join(json.dumps(r) + "\n" for r in results))
    text = write_report(s, tmp_path).read_text()
    assert text.startswith("## Continual learning\n") and "$" not in text
    assert "**LoRASC forgets less than IncLoRA" in text and "| lorasc − inc-lora | F |" in text
    assert "seq-lora (3 of 5), inc-lora (3 of 5), o-lora (0 of 5), lorasc (3 of 5), multitask (1 of 2)" in text
    assert "| lorasc | 3 | 71.0 ± 1.0 |" in text and "| 2.00 |" in text  # lorasc's step time is twice seq-lora's
    assert "| multitask | 1 | 80.0 |" in text and "not run" in text and "| 43.7 | 76.0 |" in text
    assert "**Failed** (a rerun retries them; the errors are in the results file): `extras/ema/lr=0.001/seed=0`." in text
    assert "**lorasc**" in text and "| after coachella |" in text  # R averaged over seeds


@pytest.mark.slow
def test_the_quick_sweep_runs_for_real_resumes_and_writes_its_section(tmp_path, monkeypatch):
    tiny = dataclasses.replace(QUICK, steps_per_task=2, n_train=32, n_test=8, lrs=(2e-3,),
                               main=(Variant("lorasc", "lorasc", 1),), extras=())
    monkeypatch.setattr(continual, "QUICK", tiny)
    monkeypatch.setenv("LORASC_BENCH_THREADS", "1")
    cli.main(["--continual", "--quick", "--results-dir", str(tmp_path), "--jobs", "2"])
    lines = read_results(results_path(tmp_path, tiny))
    assert not [r["error"] for r in lines if "error" in r]
    by_key = {r["key"]: r for r in lines}
    assert sorted(by_key) == ["main/lorasc/lr=0.002/seed=0", "select/inc-lora/lr=0.002/seed=0"]
    lorasc = by_key["main/lorasc/lr=0.002/seed=0"]
    assert lorasc["continual"]["tasks"] == TASKS and len(lorasc["R"]) == 2 and lorasc["R"][0][1] is None
    assert 0 <= lorasc["continual"]["accuracy"]["AA"] <= 1 and lorasc["seconds_per_step"] > 0 and lorasc["wall_seconds"] > 0

    cli.main(["--continual", "--quick", "--report", "--results-dir", str(tmp_path)])  # no runs: the file is unchanged
    assert len(read_results(results_path(tmp_path, tiny))) == 2
    text = (tmp_path / "continual-quick.md").read_text()
    assert text.startswith("## Continual learning\n") and "Smoke test" in text and "$" not in text
    assert "| lorasc | 1 |" in text and "so **0.002**" in text and "No extras run yet." in text
