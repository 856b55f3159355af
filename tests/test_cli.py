import csv
import errno
import json

import pytest
import torch
import yaml
from conftest import GOOD_CSV, TINY_RUN, assert_error_line, cli, refused, run_cli, write_file
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

import lorasc.run.checkpoint
from lorasc.run.assets import default_model_path

pytestmark = pytest.mark.slow
TINY = [*TINY_RUN, "--expert-r", "2", "--expert-target-modules", "query", "value", "--warmup-steps", "2"]


def test_train_writes_every_output_and_eval_export_use_them(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", "--output-dir", run, "--num-cycles", "2", "--rewarmup-steps", "1", *TINY) == 0
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
    PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=3), run / "adapter")

    assert cli("eval", run) == 0
    again = json.loads((run / "eval.json").read_text())
    assert again["test"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])

    assert cli("export", run, "--rank", "2") == 0
    report = json.loads((run / "adapter-r2" / "compression.json").read_text())
    assert report["rank"] == 2 and len(report["relative_error"]) == 12
    assert "relative reconstruction error" in capsys.readouterr().out


def test_resume_after_a_kill_mid_cycle_matches_the_uninterrupted_run_bitwise(tmp_path):
    killed = tmp_path / "killed"
    common = ["--epochs", "2", "--num-cycles", "3", "--checkpoint-every", "1", *TINY]
    assert run_cli("train", "--output-dir", killed, *common, kill_at=8).returncode == -9  # cycles end at 5, 11, 16
    checkpoint = killed / (killed / "LATEST").read_text()
    assert checkpoint.name == "checkpoint-8" and not (killed / "metrics.json").exists()
    state = torch.load(checkpoint / "state.pt", weights_only=True)
    assert state["cascade"]["in_cycle"] and state["cascade"]["cycle"] == 2  # noise on the backbone
    trainable = load_file(checkpoint / "trainable.safetensors")
    assert trainable and all(".lora_" in name or ".modules_to_save." in name for name in trainable)  # no backbone

    resumed = run_cli("train", "--resume", "--output-dir", killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    fresh = tmp_path / "fresh"  # the written config reproduces the run
    assert run_cli("train", "--config", killed / "config.yaml", "--output-dir", fresh, "--no-progress").returncode == 0
    assert yaml.safe_load((fresh / "config.yaml").read_text()) == yaml.safe_load((killed / "config.yaml").read_text())
    for file in ("model/model.safetensors", "adapter/adapter_model.safetensors"):
        after_resume, uninterrupted = load_file(killed / file), load_file(fresh / file)
        assert after_resume and after_resume.keys() == uninterrupted.keys()
        for name in after_resume:
            assert torch.equal(after_resume[name], uninterrupted[name]), name


def test_bfloat16_run_on_the_cpu_exports_a_bfloat16_dense_model(tmp_path, capsys):
    run = tmp_path / "bf16"
    trained = run_cli("train", "--dtype", "bfloat16", "--output-dir", run, "--max-steps", "6", "--checkpoint-every", "2", *TINY)
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["run"]["dtype"] == "bfloat16" and metrics["test"]["loss"] > 0
    with safe_open(run / "model" / "model.safetensors", "pt") as dense:
        assert {dense.get_slice(k).get_dtype() for k in dense.keys()} == {"BF16"}
    with safe_open(run / "adapter" / "adapter_model.safetensors", "pt") as adapter:
        assert {adapter.get_slice(k).get_dtype() for k in adapter.keys()} == {"F32"}  # the exact float32 factors
    assert AutoModelForSequenceClassification.from_pretrained(run / "model").dtype == torch.bfloat16
    assert cli("eval", run) == 0
    assert json.loads((run / "eval.json").read_text())["test"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


def test_gradient_checkpointing_gives_the_same_weights(tmp_path):
    """Activations recomputed in the backward (dropout's RNG replayed) give bitwise the same model."""
    common = ["--max-steps", "4", "--num-cycles", "2", *TINY]
    plain, recomputed = tmp_path / "plain", tmp_path / "recomputed"
    assert cli("train", "--output-dir", plain, *common) == 0
    assert cli("train", "--output-dir", recomputed, "--gradient-checkpointing", *common) == 0
    assert yaml.safe_load((recomputed / "config.yaml").read_text())["run"]["gradient_checkpointing"] is True
    left, right = load_file(plain / "model" / "model.safetensors"), load_file(recomputed / "model" / "model.safetensors")
    assert left.keys() == right.keys() and all(torch.equal(left[name], right[name]) for name in left)


def five_class_model(folder):
    AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=5).save_pretrained(folder / "five")
    return folder / "five"


BAD_INPUTS = {  # the case's arguments, made in a temporary folder, and what its one line says
    "missing data file": (lambda tmp: ["--data", tmp / "missing.csv"], ["data file not found", "missing.csv"]),
    "not a model folder": (lambda tmp: ["--data", write_file(tmp / "good.csv", GOOD_CSV), "--model", tmp], ["is not a model folder"]),
    "a head of another size": (lambda tmp: ["--data", write_file(tmp / "good.csv", GOOD_CSV), "--model", five_class_model(tmp)],
                               ["5-class head", "2 labels"]),
    "slow alpha above 1": (lambda tmp: ["--slow-alpha", "2"], ["slow_alpha=2.0 is not allowed"]),
    "no micro-batches": (lambda tmp: ["--grad-accum", "0"], ["grad_accum=0 is not allowed"]),
    "more micro-batches than examples": (lambda tmp: ["--grad-accum", "32", "--batch-size", "16"], ["grad_accum=32 is not allowed", "batch_size=16"]),
    "cuda without a GPU": (lambda tmp: ["--device", "cuda", *TINY], ["device='cuda' is not allowed", "--device auto"]),
    "float16 on the CPU": (lambda tmp: ["--dtype", "float16", *TINY], ["dtype='float16' is not allowed", "bfloat16"]),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_inputs_give_one_clear_line(name, tmp_path, capsys):
    if name in ("cuda without a GPU", "float16 on the CPU") and torch.cuda.is_available():
        pytest.skip("a GPU is visible: CUDA and float16 are allowed")
    make_args, fragments = BAD_INPUTS[name]
    refused(capsys, tmp_path, ["train", *make_args(tmp_path), "--output-dir", tmp_path / "run"], *fragments)
    assert not (tmp_path / "run").exists()


def test_an_existing_run_is_never_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    refused(capsys, tmp_path, ["train", "--output-dir", run], "already holds a run", "--resume")


def test_a_full_disk_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real_save = lorasc.run.checkpoint.save_file
    calls = []

    def save_then_fill_the_disk(tensors, path):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(tensors, path)

    monkeypatch.setattr(lorasc.run.checkpoint, "save_file", save_then_fill_the_disk)
    assert cli("train", "--output-dir", run, "--max-steps", "4", "--num-cycles", "2", "--checkpoint-every", "1", *TINY) == 2
    assert_error_line(capsys.readouterr().err, "no space left", "--resume")
    assert (run / "LATEST").read_text() == "checkpoint-1"
    assert load_file(run / "checkpoint-1" / "trainable.safetensors")  # intact and readable


def test_flags_override_the_config_file_which_overrides_defaults(tmp_path):
    from lorasc.run.cli import build_parser, resolve

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"run": {"lr": 0.002, "epochs": 3}, "lorasc": {"slow_alpha": 0.8, "expert": {"r": 4}}}))
    args = build_parser().parse_args(["train", "--config", str(config), "--lr", "0.005", "--expert-init", "orthogonal",
                                      "--expert-r", "6", "--seed", "7", "--cycle-steps", "none"])
    run, lorasc_config = resolve(args)
    assert (run.lr, run.epochs, run.seed) == (0.005, 3.0, 7)
    assert (lorasc_config.slow_alpha, lorasc_config.expert_init, lorasc_config.expert.r, lorasc_config.seed) == (0.8, "orthogonal", 6, 7)
    assert lorasc_config.cycle_steps is None and lorasc_config.num_cycles == 4  # the main job's default
    assert sorted(lorasc_config.expert.target_modules) == ["dense", "key", "query", "value"]


@pytest.mark.parametrize("lorasc_seed, allowed", [(3, True), (4, False)])
def test_a_run_has_one_seed_even_in_an_older_config_file(lorasc_seed, allowed, tmp_path):
    """config.yaml no longer repeats the seed under lorasc; an older one that does is read when it agrees."""
    from lorasc.run.cli import build_parser
    from lorasc.run.settings import resolve, write_config

    older = tmp_path / "older.yaml"
    older.write_text(f"run:\n  seed: 3\nlorasc:\n  seed: {lorasc_seed}\n")
    args = build_parser().parse_args(["train", "--config", str(older)])
    if not allowed:
        with pytest.raises(ValueError, match="lorasc.seed=4 is not allowed: absent, or run.seed=3"):
            resolve(args)
        return
    run, config = resolve(args)
    assert run.seed == config.seed == 3
    write_config(tmp_path, run, config)
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["run"]["seed"] == 3 and "seed" not in written["lorasc"]


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


def test_metrics_record_the_config_the_method_ran_with(tmp_path):
    """ReLoRA fixes λ = 0 whatever --noise-lambda says; its metrics must not show the 0.3 it ignored."""
    run = tmp_path / "relora"
    assert cli("train", "--method", "relora", "--noise-lambda", "0.3", "--output-dir", run, "--max-steps", "2", "--num-cycles", "2", *TINY) == 0
    recorded = json.loads((run / "metrics.json").read_text())["config"]["lorasc"]
    assert (recorded["noise_lambda"], recorded["slow_alpha"], recorded["num_cycles"]) == (0.0, 1.0, 2)


def test_the_second_built_in_task_trains_a_five_topic_head(tmp_path):
    run = tmp_path / "bbc"
    assert cli("train", "--dataset", "bbc-news", "--output-dir", run, "--max-steps", "4", *TINY) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["dataset"] == "bbc-news"
    assert AutoModelForSequenceClassification.from_pretrained(run / "model").config.num_labels == 5
    assert 0.0 <= metrics["ood"]["accuracy"] <= 1.0 and metrics["ood"]["loss"] > 0


@pytest.mark.parametrize("command, args, says", [("train", [], "--resume"), ("eval", ["RUN"], "eval.json is as it was"),
                                                 ("export", ["RUN", "--rank", "2"], "leaves nothing behind")])
def test_ctrl_c_says_what_to_do_next(command, args, says, monkeypatch, capsys):
    import lorasc.run.cli

    def interrupted(parsed):
        raise KeyboardInterrupt

    monkeypatch.setattr(lorasc.run.cli, f"command_{command}", interrupted)
    assert cli(command, *args) == 130
    err = capsys.readouterr().err
    assert err.startswith("\ninterrupted; ") and says in err, err
