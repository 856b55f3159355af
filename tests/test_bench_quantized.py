"""The quantized-backbone benchmark (benchmarks/quantized.py) on a tiny NF4 Llama in seconds: the JSON's shape,
the carried stack keeping every expert while PEFT's merge into NF4 loses most of it, and the section's rendering."""

import json

import pytest
from conftest import tiny_llama

pytest.importorskip("bitsandbytes")
from benchmarks import __main__ as cli  # noqa: E402
from benchmarks.quantized import Setting, measure  # noqa: E402
from benchmarks.quantized_report import write_report  # noqa: E402
from benchmarks.report import refresh_section  # noqa: E402

SETTING = Setting(cycles=2, rank=4, sizes=(0.003, 0.01), stack_ranks=(0, 8), batch=2, seq=8, steps=3, warmup=1)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama().save_pretrained(folder)
    return {**measure(str(folder), SETTING, "a tiny Llama"), "command": "python -m benchmarks --quantized"}


def test_the_result_has_every_cycle_size_and_rank(result):
    assert [k["size"] for k in result["kept"]] == list(SETTING.sizes)
    for k in result["kept"]:
        assert len(k["peft_merge"]) == len(k["carried"]) == SETTING.cycles
        assert set(k["peft_merge"][0]) == {"kept", "layer_min", "layer_max"}
    cost = result["cost"]
    assert list(cost["ranks"]) == ["0", "8"] and cost["timed_steps"] == SETTING.steps - SETTING.warmup
    for rank, r in cost["ranks"].items():
        assert len(r["pair_ratios"]) == cost["timed_steps"] and r["step_ratio"] > 0
        assert r["stack_bytes"] == r["stack_bytes_formula"] == int(rank) * cost["sum_in_out"] * 4
        assert r["analytic_flop_ratio"] == pytest.approx(int(rank) * cost["sum_in_out"] / cost["sum_weights"])
    assert cost["ranks"]["0"]["stack_bytes"] == 0 and cost["ranks"]["8"]["stack_over_packed"] > 0
    json.dumps(result)  # all of it is JSON


def test_the_carried_stack_keeps_each_expert_and_peft_merge_loses_it(result):
    for k in result["kept"]:
        assert k["carried_packed_unchanged"]
        assert all(c["kept"] == pytest.approx(1.0, abs=1e-5) for c in k["carried"])
        assert k["carried_median"] == pytest.approx(1.0, abs=1e-5)
        assert all(c["kept"] < 0.5 for c in k["peft_merge"])  # a delta this small rounds back to the NF4 code points


def test_the_section_renders_and_replaces_itself_in_the_report(result, tmp_path):
    (tmp_path / "quantized.json").write_text(json.dumps(result))
    section = write_report(tmp_path)
    text = section.read_text()
    assert text.startswith("## Quantized backbones\n") and "$" not in text
    assert "| **median** |" in text and "| 8 | **" in text and "python -m benchmarks --quantized" in text
    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text("# Benchmark\n\n## Quantized backbones\n\nold\n\n## Later\n\nkept\n")
    assert refresh_section(markdown, section) and refresh_section(markdown, section)
    assert markdown.read_text() == "# Benchmark\n\n" + text + "\n## Later\n\nkept\n"


def test_the_cli_rewrites_the_section_from_the_json_without_runs(result, tmp_path, capsys):
    (tmp_path / "quantized.json").write_text(json.dumps(result))
    cli.main(["--quantized", "--report", "--results-dir", str(tmp_path)])
    assert (tmp_path / "quantized.md").read_text().startswith("## Quantized backbones")
    assert str(tmp_path / "quantized.md") in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["--quantized", "--study"])
