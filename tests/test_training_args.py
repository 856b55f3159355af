"""transformers' TrainingArguments names (aliases.py): flat config files and flags in both spellings give
lorasc's settings; names lorasc does not implement are refused; --max-grad-norm clips; --save-total-limit."""

import pytest
import torch
import yaml
from conftest import TINY_RUN, cli, refused, write_file
from safetensors.torch import load_file

import lorasc.run.train
from benchmarks.planner import PLANS, Board
from bench_fakes import tiny
from lorasc.run.checkpoint import checkpoint_folders, trainable_parameters
from lorasc.run.cli import build_parser
from lorasc.run.settings import resolve

TINY = [*TINY_RUN, "--num-cycles", "1", "--expert-r", "2", "--expert-target-modules", "query", "value", "--n-test", "8", "--n-ood", "8"]
FLAT = """learning_rate: 2.0e-3
num_train_epochs: 1
max_steps: 3
per_device_train_batch_size: 4
gradient_accumulation_steps: 2
warmup_ratio: 0.5
weight_decay: 0.01
max_grad_norm: 0.5
logging_steps: 1
eval_steps: 0
save_steps: 2
save_total_limit: 1
seed: 3
report_to: none
lr_scheduler_type: cosine
num_cycles: 3
n_train: 48
n_test: 8
n_ood: 8
max_length: 32
expert: {r: 2, target_modules: [query, value]}
"""
NATIVE = """run: {lr: 0.002, epochs: 1, max_steps: 3, batch_size: 8, grad_accum: 2, warmup_ratio: 0.5, weight_decay: 0.01, max_grad_norm: 0.5,
      log_every: 1, eval_every: 0, checkpoint_every: 2, save_total_limit: 1, seed: 3, report_to: none, n_train: 48, n_test: 8, n_ood: 8, max_length: 32}
lorasc: {num_cycles: 3, expert: {r: 2, target_modules: [query, value]}}
"""


def resolved(*argv):
    return resolve(build_parser().parse_args(["train", *map(str, argv)]))


@pytest.mark.slow
def test_a_flat_trainingarguments_file_is_the_native_config(tmp_path):
    flat = tmp_path / "flat-out"
    assert cli("train", "--config", write_file(tmp_path / "flat.yaml", FLAT + f"output_dir: {flat}\n"), "--no-progress") == 0
    assert cli("train", "--config", write_file(tmp_path / "native.yaml", NATIVE), "--output-dir", tmp_path / "native", "--no-progress") == 0
    assert (flat / "config.yaml").read_text() == (tmp_path / "native" / "config.yaml").read_text()
    stored = yaml.safe_load((flat / "config.yaml").read_text())["run"]
    assert (stored["batch_size"], stored["grad_accum"], stored["lr"], stored["log_every"]) == (8, 2, 0.002, 1)
    weights = [load_file(folder / "adapter" / "adapter_model.safetensors") for folder in (flat, tmp_path / "native")]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_flags_in_both_spellings_are_lorasc_settings(monkeypatch):
    names = resolved("--learning_rate", "2e-3", "--num-train-epochs", "2", "--per_device_train_batch_size", "4", "--gradient-accumulation-steps", "2",
                     "--bf16", "--logging_steps", "5", "--save-steps", "7", "--eval_steps", "3", "--save_total_limit", "4", "--max_grad_norm", "none",
                     "--warmup-ratio", "0.1", "--optim", "adamw_torch")
    native = resolved("--lr", "2e-3", "--epochs", "2", "--batch-size", "8", "--grad-accum", "2", "--dtype", "bfloat16", "--log-every", "5",
                      "--checkpoint-every", "7", "--eval-every", "3", "--save-total-limit", "4", "--max-grad-norm", "none", "--warmup-ratio", "0.1")
    assert names == native and native[0].max_grad_norm is None and native[0].warmup(50) == 5
    monkeypatch.setenv("WORLD_SIZE", "2")  # the global batch counts the launch's processes
    assert resolved("--per-device-train-batch-size", "4", "--gradient_accumulation_steps", "2")[0].batch_size == 16
    assert resolved("--fp16")[0].dtype == "float16" and resolved()[0].max_grad_norm == 1.0 and resolved()[0].save_total_limit == 2


def test_a_later_layer_replaces_the_other_batch_name(tmp_path):
    config = write_file(tmp_path / "flat.yaml", "per_device_train_batch_size: 4\ngradient_accumulation_steps: 2\n")
    assert resolved("--config", config)[0].batch_size == 8
    assert resolved("--config", config, "--batch-size", "6")[0].batch_size == 6
    assert resolved("--config", write_file(tmp_path / "b.yaml", "run: {batch_size: 6}\n"), "--per_device_train_batch_size", "5")[0].batch_size == 5


@pytest.mark.parametrize("args, fragments", [
    (["--lr_scheduler_type", "linear"], ["lr_scheduler_type='linear' is not allowed: cosine", "re-warmup after each cycle"]),
    (["--optim", "adafactor"], ["optim='adafactor' is not allowed: adamw_torch", "AdamW"]),
    (["--label-smoothing-factor", "0.1"], ["label_smoothing_factor='0.1' is not allowed", "plain cross-entropy"]),
    (["--bf16", "--fp16"], ["fp16=True is not allowed", "one precision"]),
    (["--per-device-train-batch-size", "4", "--batch-size", "8"], ["per_device_train_batch_size=", "keep one of them"]),
    (["--per-device-train-batch-size", "0"], ["per_device_train_batch_size=0 is not allowed: an integer >= 1"]),
    (["--max-grad-norm", "-1"], ["max_grad_norm=-1.0 is not allowed"]),
    (["--save-total-limit", "0"], ["save_total_limit=0 is not allowed: an integer >= 1"]),
    (["--warmup_ratio", "1.5"], ["warmup_ratio=1.5 is not allowed"]),
])
def test_unimplemented_or_contradictory_names_are_refused(tmp_path, capsys, args, fragments):
    refused(capsys, tmp_path, ["train", "--output-dir", tmp_path / "run", *args], *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, fragments", [
    ("lr_scheduler_type: linear\n", ["flat.yaml: lr_scheduler_type='linear' is not allowed: cosine"]),
    ("optim: sgd\n", ["optim='sgd' is not allowed", "AdamW"]),
    ("learning_rate: 0.1\nlr: 0.2\n", ["lr=0.2 is not allowed: absent beside lr", "keep one of them"]),
    ("learning_rate: 0.1\nrun: {lr: 0.2}\n", ["must be a mapping with the sections", "flat one"]),
    ("learnin_rate: 0.1\n", ["keys=['learnin_rate'] is not allowed", "TrainingArguments names"]),
])
def test_flat_files_with_refused_names_are_refused(tmp_path, capsys, text, fragments):
    config = write_file(tmp_path / "flat.yaml", text)
    refused(capsys, tmp_path, ["train", "--config", config, "--output-dir", tmp_path / "run"], *fragments)


def test_the_benchmark_protocol_keeps_its_published_results_unclipped():
    spec = PLANS["grid"](tiny(), Board([]))[0]
    assert spec["run"]["max_grad_norm"] == 0


def gradient_norm(loop) -> float:
    grads = [p.grad for p in trainable_parameters(loop.cascade.model).values() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()


@pytest.mark.slow
@pytest.mark.parametrize("limit", ["0.01", "0"])
def test_max_grad_norm_clips_the_trainable_gradients(tmp_path, monkeypatch, limit):
    norms, clip = [], lorasc.run.train.Loop.clip_gradients

    def recorded(loop):
        before = gradient_norm(loop)
        clip(loop)
        norms.append((before, gradient_norm(loop)))

    monkeypatch.setattr(lorasc.run.train.Loop, "clip_gradients", recorded)
    run = tmp_path / "run"
    assert cli("train", "--output-dir", run, "--max-steps", "3", "--grad-accum", "2", "--max-grad-norm", limit, *TINY) == 0
    assert len(norms) == 3 and all(before > 0.01 for before, _ in norms)
    if limit == "0":
        assert all(after == before for before, after in norms)
    else:
        assert all(after == pytest.approx(0.01, rel=1e-4) for _, after in norms)
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["max_grad_norm"] == float(limit)


@pytest.mark.slow
def test_the_default_clips_at_one_and_save_total_limit_keeps_that_many(tmp_path, monkeypatch):
    kept, save = [], lorasc.run.train.save_checkpoint

    def counted(run_dir, *args, **kwargs):
        save(run_dir, *args, **kwargs)
        kept.append(len(checkpoint_folders(run_dir)))

    monkeypatch.setattr(lorasc.run.train, "save_checkpoint", counted)
    run = tmp_path / "run"
    assert cli("train", "--output-dir", run, "--max-steps", "5", "--checkpoint-every", "1", "--save_total_limit", "3", *TINY) == 0
    assert kept == [1, 2, 3, 3]
    stored = yaml.safe_load((run / "config.yaml").read_text())["run"]
    assert (stored["max_grad_norm"], stored["save_total_limit"]) == (1.0, 3)
