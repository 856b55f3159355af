"""`lorasc train --quantize`: the CLI on 4-bit and 8-bit backbones (the engine's exactness: test_quantized.py)."""

import json

import pytest
import torch
import yaml
from conftest import TINY_RUN, cli, refused, run_cli, tiny_llama, word_tokenizer
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

pytest.importorskip("bitsandbytes")
from lorasc.quantized import is_quantized  # noqa: E402
from lorasc.run.datasets import load_task  # noqa: E402
from lorasc.run.models import load_model  # noqa: E402
from lorasc.run.run_folder import finished_run  # noqa: E402

pytestmark = pytest.mark.slow
QUANTIZED = ["--quantize", "nf4", "--noise-lambda", "0", "--slow-budget", "10"]
SMALL = [*TINY_RUN, "--expert-r", "2", "--expert-target-modules", "query", "value", "--warmup-steps", "1"]


def test_a_classifier_on_a_4bit_backbone_trains_its_head_and_exports_plain_models(tmp_path):
    run = tmp_path / "run"
    assert cli("train", *QUANTIZED, "--output-dir", run, "--max-steps", "4", "--num-cycles", "2", *SMALL) == 0
    settings = yaml.safe_load((run / "config.yaml").read_text())
    assert (settings["run"]["quantize"], settings["run"]["quantize_double_quant"], settings["lorasc"]["slow_budget"]) == ("nf4", False, 10.0)
    dense = AutoModelForSequenceClassification.from_pretrained(run / "model")
    settings, _ = finished_run(run)
    initial = load_model(settings, load_task(settings).labels, torch.device("cpu"))[0]  # the same seeded new head, on the 4-bit backbone
    assert initial.classifier.weight.dtype == torch.float32 and not torch.equal(initial.classifier.weight, dense.classifier.weight)
    assert not any(is_quantized(m) for m in dense.modules()) and getattr(dense.config, "quantization_config", None) is None
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert "exact" not in json.loads((run / "metrics.json").read_text())  # nothing was truncated

    assert cli("export", run, "--requantize", "nf4") == 0
    report = json.loads((run / "model-nf4" / "requantization.json").read_text())
    assert len(report["surviving_fraction"]) == 2 * 6  # query and value of MiniLM's 6 layers
    assert is_quantized(AutoModelForSequenceClassification.from_pretrained(run / "model-nf4").bert.encoder.layer[0].attention.self.query)


def test_a_causal_lm_on_a_4bit_backbone(tmp_path):
    folder = tmp_path / "llama"
    tiny_llama().save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    rows = [{"prompt": f"w{10 + i % 7} w{20 + i % 5}", "response": f"w{40 + i % 7}"} for i in range(24)]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    run = tmp_path / "run"
    assert cli("train", "--task", "causal-lm", "--model", folder, "--data", data, "--text-column", "prompt", "--label-column", "response",
               *QUANTIZED, "--quantize", "fp4", "--quantize-double-quant", "--output-dir", run, "--max-steps", "4", "--num-cycles", "2",
               "--batch-size", "4", "--warmup-steps", "1", "--no-progress") == 0
    assert json.loads((run / "metrics.json").read_text())["test"]["loss"] > 0
    assert not any(is_quantized(m) for m in AutoModelForCausalLM.from_pretrained(run / "model").modules())


def test_resume_after_a_kill_mid_cycle_on_a_4bit_backbone_is_bitwise(tmp_path):
    args = [*QUANTIZED, "--max-steps", "6", "--num-cycles", "2", "--checkpoint-every", "1", *SMALL]
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    assert run_cli("train", "--output-dir", killed, *args, kill_at=4).returncode == -9  # cycle 2 runs from step 4 to 6
    resumed = run_cli("train", "--resume", "--output-dir", killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert run_cli("train", "--output-dir", fresh, *args).returncode == 0
    for export in ("adapter/adapter_model.safetensors", "model/model.safetensors"):
        after_resume, uninterrupted = load_file(killed / export), load_file(fresh / export)
        assert after_resume.keys() == uninterrupted.keys()
        assert all(torch.equal(after_resume[name], uninterrupted[name]) for name in after_resume), export


@pytest.mark.parametrize("flags, fragments", [
    (["--quantize", "nf4"], ["noise_lambda=0.15 is not allowed: 0 on a quantized backbone", "pass --noise-lambda 0"]),
    ([*QUANTIZED, "--method", "dora"], ["expert.use_dora=True is not allowed"]),
    ([*QUANTIZED, "--expert-init", "gradient"], ["expert_init='gradient' is not allowed", "pass --expert-init kaiming"]),
    ([*QUANTIZED, "--noise-targets", "all"], ["noise_targets='all' is not allowed"]),
    ([*QUANTIZED, "--method", "full"], ["method='full' is not allowed"]),
    (["--quantize", "int8", "--quantize-double-quant", "--noise-lambda", "0"], ["quantize_double_quant=True is not allowed"]),
    (["--method", "qrelora"], ["quantized_merge='requantize' is not allowed: 'carry' without --quantize", "pass --quantize nf4"]),
    (["--method", "qrelora", "--quantize", "int8"], ["quantized_merge='requantize' is not allowed: 'carry' with --quantize int8"]),
    (["--quantize", "nf4", "--noise-lambda", "0", "--num-cycles", "8"],  # rank 16 × 768 × 4 bytes > 0.5 × 384²/2, per layer
     ["slow_budget=0.5 is not allowed", "raise --slow-budget to at least", "or set --slow-overflow compress"]),
])
def test_what_a_quantized_run_cannot_do_is_refused_before_any_file(flags, fragments, tmp_path, capsys):
    refused(capsys, tmp_path, ["train", *flags, "--output-dir", tmp_path / "run", *SMALL], *fragments)


def test_without_bitsandbytes_quantize_names_the_extra(monkeypatch, tmp_path, capsys):
    import lorasc.run.quantize

    monkeypatch.setattr(lorasc.run.quantize, "bitsandbytes_installed", lambda: False)
    refused(capsys, tmp_path, ["train", *QUANTIZED, "--output-dir", tmp_path / "run", *SMALL], "needs bitsandbytes", "pip install 'lorasc[qlora]'")


def test_a_stack_past_its_budget_is_compressed_on_request_and_reported(tmp_path):
    run = tmp_path / "run"
    assert cli("train", "--quantize", "nf4", "--noise-lambda", "0", "--slow-budget", "0.1", "--slow-overflow", "compress",
               "--output-dir", run, "--max-steps", "4", "--num-cycles", "4", *SMALL) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["exact"] is False and metrics["slow_compressions"]
    assert all(0 < error < 1 for record in metrics["slow_compressions"] for error in record.values())


def test_two_processes_on_a_4bit_backbone_give_the_weights_of_one(minilm_without_dropout, tmp_path):
    """DDP over the same frozen NF4 weights, the replica check covering the carried stack: bitwise the
    run of one process that cuts each batch into the same two halves (as in test_distributed.py)."""
    common = [*QUANTIZED, "--model", minilm_without_dropout, "--max-steps", "4", "--num-cycles", "2", *SMALL]
    two, one = tmp_path / "two", tmp_path / "one"
    trained = run_cli("train", "--output-dir", two, *common, processes=2)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert run_cli("train", "--output-dir", one, "--grad-accum", "2", *common).returncode == 0
    assert json.loads((two / "metrics.json").read_text())["processes"] == 2
    for export in ("adapter/adapter_model.safetensors", "model/model.safetensors"):
        left, right = load_file(two / export), load_file(one / export)
        assert left.keys() == right.keys() and all(torch.equal(left[name], right[name]) for name in left), export
