import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

import lorasc.train
from lorasc.cli import main

pytestmark = pytest.mark.slow
TINY = ["--n-train", "64", "--n-test", "32", "--n-ood", "32", "--max-length", "32", "--expert-r", "2",
        "--expert-target-modules", "query", "value", "--warmup-steps", "2", "--no-progress"]


def cli(*args):
    return main([str(a) for a in args])


def test_train_writes_every_output_and_eval_export_use_them(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", "--output-dir", run, "--epochs", "2", "--num-cycles", "2", "--rewarmup-steps", "1", *TINY) == 0
    out = capsys.readouterr().out
    for expected in ("split", "test", "ood", "wall time", "peak memory", "trainable parameters", "effective rank"):
        assert expected in out
    for name in ("config.yaml", "metrics.json", "log.csv", "loss.png", "metric_per_cycle.png", "model/config.json", "adapter/adapter_config.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["cycles"] == 2 and {"train", "test", "ood"} <= set(metrics)
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [r["step"] for r in rows if r["cycle_end"] == "1"] == ["4", "8"]
    assert not list(run.glob("checkpoint-*"))  # finished runs keep their outputs, not their checkpoints

    dense = AutoModelForSequenceClassification.from_pretrained(run / "model")  # plain transformers
    assert dense.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(lorasc.train.default_model_path(), num_labels=3), run / "adapter")

    assert cli("eval", run) == 0
    again = json.loads((run / "eval.json").read_text())
    assert again["test"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])

    assert cli("export", run, "--rank", "2") == 0
    report = json.loads((run / "adapter-r2" / "compression.json").read_text())
    assert report["rank"] == 2 and len(report["relative_error"]) == 12
    assert "relative reconstruction error" in capsys.readouterr().out


def run_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lorasc.cli", *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_resume_after_kill_matches_the_uninterrupted_run(tmp_path):
    common = ["--epochs", "3", "--num-cycles", "3", "--checkpoint-every", "1", *TINY]
    killed = tmp_path / "killed"
    process = run_cli("train", "--output-dir", killed, *common)
    deadline = time.time() + 240
    while time.time() < deadline:  # kill it in the middle of cycle 2, noise on the backbone
        latest = killed / "LATEST"
        if latest.is_file() and int(latest.read_text().split("-")[1]) >= 5:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "metrics.json").exists(), "the run finished before it could be killed"
    state = torch.load(killed / (killed / "LATEST").read_text() / "state.pt", weights_only=False)
    assert state["cascade"]["in_cycle"] and state["cascade"]["noise"]["cycle"] is not None

    assert run_cli("train", "--resume", "--output-dir", killed).wait() == 0

    # the written config reproduces the run
    fresh = tmp_path / "fresh"
    assert cli("train", "--config", killed / "config.yaml", "--output-dir", fresh, "--no-progress") == 0
    assert yaml.safe_load((fresh / "config.yaml").read_text()) == yaml.safe_load((killed / "config.yaml").read_text())
    resumed, uninterrupted = load_file(killed / "model" / "model.safetensors"), load_file(fresh / "model" / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        torch.testing.assert_close(resumed[name], uninterrupted[name], atol=1e-6, rtol=1e-5, msg=name)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def expect_error(capsys, args, *fragments):
    assert cli(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lorasc: error: ") and "Traceback" not in err and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_bad_inputs_give_one_clear_line(tmp_path, capsys, minilm_path):
    good = write_csv(tmp_path / "good.csv", ["text", "label"], [["great flight", "pos"], ["awful", "neg"]] * 10)
    expect_error(capsys, ["train", "--data", tmp_path / "missing.csv", "--output-dir", tmp_path / "a"], "data file not found", "missing.csv")
    expect_error(capsys, ["train", "--data", write_csv(tmp_path / "cols.csv", ["tweet", "y"], [["a", "b"]]), "--output-dir", tmp_path / "b"],
                 "no column 'text'", "--text-column")
    expect_error(capsys, ["train", "--data", write_csv(tmp_path / "empty.csv", ["text", "label"], []), "--output-dir", tmp_path / "c"], "has no rows")
    (tmp_path / "notamodel").mkdir()
    expect_error(capsys, ["train", "--data", good, "--model", tmp_path / "notamodel", "--output-dir", tmp_path / "d"], "is not a model folder")
    five_class = tmp_path / "five"
    AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=5).save_pretrained(five_class)
    expect_error(capsys, ["train", "--data", good, "--model", five_class, "--output-dir", tmp_path / "e"], "5-class head", "2 labels")
    expect_error(capsys, ["train", "--slow-alpha", "2", "--output-dir", tmp_path / "f"], "slow_alpha=2.0 is not allowed")
    expect_error(capsys, ["train", "--expert-target-modules", "nothing", "--output-dir", tmp_path / "g", *TINY[:6]], "matches no layer")


def test_an_existing_run_is_never_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    expect_error(capsys, ["train", "--output-dir", run], "already holds a run", "--resume")
    assert (run / "metrics.json").read_text() == "{}"


def test_a_full_disk_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real_save = lorasc.train.save_file
    calls = []

    def save_then_fill_the_disk(tensors, path):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(tensors, path)

    monkeypatch.setattr(lorasc.train, "save_file", save_then_fill_the_disk)
    expect_error(capsys, ["train", "--output-dir", run, "--max-steps", "4", "--num-cycles", "2", "--checkpoint-every", "1", *TINY],
                 "no space left", "--resume")
    assert (run / "LATEST").read_text() == "checkpoint-1"
    assert load_file(run / "checkpoint-1" / "model.safetensors")  # intact and readable


def test_flags_override_the_config_file_which_overrides_defaults(tmp_path):
    from lorasc.cli import build_parser, resolve

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"run": {"lr": 0.002, "epochs": 3}, "lorasc": {"slow_alpha": 0.8, "expert": {"r": 4}}}))
    args = build_parser().parse_args(["train", "--config", str(config), "--lr", "0.005", "--expert-init", "orthogonal",
                                      "--expert-r", "6", "--seed", "7", "--cycle-steps", "none"])
    run, lorasc_config = resolve(args)
    assert (run.lr, run.epochs, run.seed) == (0.005, 3.0, 7)
    assert (lorasc_config.slow_alpha, lorasc_config.expert_init, lorasc_config.expert.r, lorasc_config.seed) == (0.8, "orthogonal", 6, 7)
    assert lorasc_config.cycle_steps is None and lorasc_config.num_cycles == 4  # the main job's default
    assert sorted(lorasc_config.expert.target_modules) == ["dense", "key", "query", "value"]


def test_full_fine_tuning_reference(tmp_path, minilm_path):
    run = tmp_path / "full"
    assert cli("train", "--method", "full", "--output-dir", run, "--max-steps", "3", *TINY) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    base = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=3)
    assert metrics["trainable_params"] == sum(p.numel() for p in base.parameters())
    assert metrics["cycles"] == 1 and "delta_effective_rank" not in metrics
    tuned = AutoModelForSequenceClassification.from_pretrained(run / "model")
    changed = tuned.state_dict()["bert.embeddings.word_embeddings.weight"] != base.state_dict()["bert.embeddings.word_embeddings.weight"]
    assert changed.any() and not (run / "adapter").exists()  # every weight trains; no adapter to export


def test_the_second_built_in_task_trains_a_five_topic_head(tmp_path):
    run = tmp_path / "bbc"
    assert cli("train", "--dataset", "bbc-news", "--output-dir", run, "--max-steps", "4", *TINY) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["dataset"] == "bbc-news"
    assert AutoModelForSequenceClassification.from_pretrained(run / "model").config.num_labels == 5
    assert 0.0 <= metrics["ood"]["accuracy"] <= 1.0 and metrics["ood"]["loss"] > 0
