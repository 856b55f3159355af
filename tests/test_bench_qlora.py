"""The QLoRA method comparison (protocol bbc-lm-nf4-a): its specs load the backbone in NF4 and give the
cascades their stack budget, its entries are registry methods, and the "Quantized backbones" section
shows its verdicts and table once its summary exists. Synthetic results only, no training."""

import json

from bench_fakes import settle

from benchmarks import quantized_report
from benchmarks.planner import PLANS, Board
from benchmarks.protocol import ENTRIES, LM, LM_NF4, PROTOCOLS, QLORA_ENTRIES, SLOW_BUDGET
from benchmarks.report import fragments, summarize_file
from lorasc.config import LoRASCConfig
from lorasc.methods import METHODS
from lorasc.run.run_config import RunConfig


def accuracy(spec, split):
    """Higher at the higher LR, the cascade 5 points above the rest, seeds apart by a point and a little noise."""
    return 0.5 + spec["lr"] + 0.05 * (spec["label"] == "QLoRA cascade") + 0.01 * spec["seed"] + 0.001 * (spec["seed"] * len(spec["label"]) % 3)


def every_spec(p):
    board = settle(lambda b: PLANS["grid"](p, b) + PLANS["seeds"](p, b), accuracy)
    return board, board.results


def test_its_specs_carry_quantize_and_the_stack_budget_into_the_run_config():
    board, results = every_spec(LM_NF4)
    assert all(ENTRIES[label].lrs == "qlora" for label in LM_NF4.labels)  # every method chooses its own LR of the two
    assert len(results) == 2 * len(LM_NF4.labels) + (LM_NF4.final_seeds - 1) * len(LM_NF4.finalists)
    for spec in PLANS["grid"](LM_NF4, board) + PLANS["seeds"](LM_NF4, board):
        assert spec["run"]["quantize"] == "nf4" and spec["lorasc"]["slow_budget"] == SLOW_BUDGET
        assert RunConfig(**spec["run"]).quantize == "nf4" and LoRASCConfig.from_dict(spec["lorasc"]).slow_budget == SLOW_BUDGET
    cascade = PLANS["grid"](LM_NF4, board)[2]
    assert cascade["label"] == "QLoRA cascade" and cascade["lorasc"]["noise_lambda"] == 0.0
    float_lm = PLANS["grid"](LM, Board([]))[0]
    assert "quantize" not in float_lm["run"] and "slow_budget" not in float_lm["lorasc"]  # the other protocols are as they were


def test_its_entries_are_registry_methods_and_a_new_protocol():
    assert {label: ENTRIES[label].method for label in LM_NF4.labels} == {"QLoRA": "lora", "QLoRA cascade": "lorasc",
                                                                         "re-quantized ReLoRA": "qrelora", "QLoRA COLA": "cola"}
    assert all(ENTRIES[label].method in METHODS for label in QLORA_ENTRIES)
    assert METHODS["qrelora"].fields["quantized_merge"] == "requantize"
    assert PROTOCOLS["bbc-lm-nf4-a"] is LM_NF4 and LM_NF4.baseline == "QLoRA" and LM_NF4.lorasc == "QLoRA cascade"
    assert not set(QLORA_ENTRIES) & set(PROTOCOLS["empythy-a"].labels)  # the full protocol does not run them


def test_the_quantized_section_shows_the_comparison_once_summarized(tmp_path):
    parts = fragments(quantized_report.TEMPLATE)[1]
    assert "Not measured yet" in quantized_report.comparison(parts, tmp_path)
    _, results = every_spec(LM_NF4)
    (tmp_path / f"{LM_NF4.name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    s = summarize_file(LM_NF4, tmp_path)
    assert set(s["rows"]) == set(LM_NF4.labels) and all(len(row["seeds"]) == LM_NF4.final_seeds for row in s["rows"].values())
    text = quantized_report.comparison(parts, tmp_path)
    assert "(#6-quantized-backbone-bbc-lm-nf4-the-method-comparison-of-qlora)" in text  # the first further task's section
    assert "Δ QLoRA ID [95 % CI]" in text and "QLoRA cascade beats QLoRA" in text and "Not measured yet" not in text
