"""`lorasc train --resume`, `eval` and `export` on a run in every state: interrupted, finished, damaged,
being trained, swapped. Each refusal is one line with a fix, exit code 2, and no file of the run changed.
Two tiny runs are shared by the module (run_fixtures.py: one finished, one interrupted) and copied for each test.
"""

import json
import os
import shutil

import pytest
import torch
import yaml
from conftest import DAMAGE, GOOD_CSV, cli, refused, truncate, write_file
from safetensors.torch import load_file

from lorasc.run.assets import default_model_path
from lorasc.run.checkpoint import load_checkpoint, model_fingerprint

pytestmark = pytest.mark.slow


RESUME_FLAGS = {
    "lr": (["--lr", "0.5"], ["--lr 0.5 changes this run's lr=0.001", "drop --lr to resume", "--output-dir NEW --lr 0.5"]),
    "data": (["--data", "other.csv"], ["--data other.csv changes this run's train_file='data.csv'"]),
    "expert rank": (["--expert-r", "4"], ["--expert-r 4 changes this run's expert.r=2"]),
    "seed": (["--seed", "3"], ["--seed 3 changes this run's seed=0"]),
    "chat template": (["--chat-template", "none"], ["--chat-template none changes this run's chat_template='auto'"]),
    "quantization": (["--quantize", "nf4"], ["--quantize nf4 changes this run's quantize=None"]),
    "config": (["--config", "x.yaml"], ["--config is not allowed with --resume", "drop --config"]),
}


@pytest.mark.parametrize("name", RESUME_FLAGS)
def test_resume_refuses_a_changed_setting_and_changes_no_file(name, interrupted, capsys):
    flags, fragments = RESUME_FLAGS[name]
    refused(capsys, interrupted, ["train", "--resume", "--output-dir", interrupted, *flags], *fragments)


def edit_progress(checkpoint, **entries):
    path = checkpoint / "progress.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **entries}))


def edit_state(checkpoint, **entries):
    path = checkpoint / "state.pt"
    torch.save({**torch.load(path, weights_only=True), **entries}, path)


DAMAGED_CHECKPOINT = {  # truncated files, and well-formed ones that are not what lorasc writes
    "state.pt truncated": lambda checkpoint: truncate(checkpoint / "state.pt"),
    "trainable.safetensors truncated": lambda checkpoint: truncate(checkpoint / "trainable.safetensors"),
    "progress.json truncated": lambda checkpoint: truncate(checkpoint / "progress.json"),
    "rows a number": lambda checkpoint: edit_progress(checkpoint, rows=5),
    "rows of another table": lambda checkpoint: edit_progress(checkpoint, rows=[{"score": 1}]),
    "elapsed a word": lambda checkpoint: edit_progress(checkpoint, elapsed="soon"),
    "fingerprint missing": lambda checkpoint: edit_progress(checkpoint, fingerprint=None),
}


@pytest.mark.parametrize("name", DAMAGED_CHECKPOINT)
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(name, interrupted, capsys):
    DAMAGED_CHECKPOINT[name](interrupted / "checkpoint-4")
    checkpoint = load_checkpoint(interrupted, model_fingerprint(default_model_path()), restore=lambda checkpoint: None)
    assert checkpoint.progress["step"] == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint-4 is unreadable" in err and "resuming from checkpoint-3" in err, err


def test_resume_after_the_latest_checkpoint_was_truncated_finishes_from_the_previous(interrupted, capsys):
    """Flags that repeat the run's own settings are accepted on resume."""
    truncate(interrupted / "checkpoint-4" / "state.pt")
    assert cli("train", "--resume", "--output-dir", interrupted, "--lr", "0.001", "--expert-r", "2", "--no-progress") == 0
    assert "resuming from checkpoint-3" in capsys.readouterr().err
    assert json.loads((interrupted / "metrics.json").read_text())["steps"] == 6


@pytest.fixture(scope="module")
def resumed_from_checkpoint_3(interrupted_run, tmp_path_factory):
    """The dense model of the interrupted run resumed from checkpoint-3 (checkpoint-4 removed)."""
    folder = tmp_path_factory.mktemp("from-3")
    shutil.copy(interrupted_run.parent / "data.csv", folder)
    run = shutil.copytree(interrupted_run, folder / "run")
    shutil.rmtree(run / "checkpoint-4")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert cli("train", "--resume", "--output-dir", "run", "--no-progress") == 0
    return load_file(run / "model" / "model.safetensors")


WRONG_STATE = {"cascade state empty": {"cascade": {}}, "optimizer state a list": {"optimizer": []}, "rng states empty": {"rng": {}}}


@pytest.mark.parametrize("name", WRONG_STATE)
def test_a_wrong_state_falls_back_to_the_previous_checkpoint_as_if_it_were_the_latest(name, interrupted, resumed_from_checkpoint_3, capsys):
    """Restoring the wrong state fails part way; the earlier checkpoint's restore undoes every part of it."""
    edit_state(interrupted / "checkpoint-4", **WRONG_STATE[name])
    assert cli("train", "--resume", "--output-dir", interrupted, "--no-progress") == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint-4 is unreadable (its state does not fit this run" in err and "resuming from checkpoint-3" in err, err
    model = load_file(interrupted / "model" / "model.safetensors")
    assert model.keys() == resumed_from_checkpoint_3.keys()
    assert model and all(torch.equal(model[name], resumed_from_checkpoint_3[name]) for name in model)


@pytest.mark.parametrize("how", ["emptied", "wrong state"])
def test_resume_refuses_when_no_checkpoint_is_readable_and_keeps_the_log(how, interrupted, capsys):
    for step in (3, 4):
        if how == "emptied":
            (interrupted / f"checkpoint-{step}" / "state.pt").write_bytes(b"")
        else:
            edit_state(interrupted / f"checkpoint-{step}", cascade={})
    refused(capsys, interrupted, ["train", "--resume", "--output-dir", interrupted], "has no readable checkpoint", "start a new run")


def test_resume_refuses_data_that_changed_since_the_run_started(interrupted, capsys):
    write_file(interrupted.parent / "data.csv", GOOD_CSV.replace("pos", "neg", 1))
    refused(capsys, interrupted, ["train", "--resume", "--output-dir", interrupted], "data.csv changed since the run started", "restore it")


def test_resume_of_a_run_whose_config_yaml_was_cut_short(interrupted, capsys):
    config = interrupted / "config.yaml"
    config.write_text(config.read_text()[:40])
    refused(capsys, interrupted, ["train", "--resume", "--output-dir", interrupted], "config.yaml", "is not allowed")


def test_a_run_being_trained_by_another_process_is_refused(interrupted, capsys):
    fcntl = pytest.importorskip("fcntl")
    with open(interrupted / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the other process holds it
        refused(capsys, interrupted, ["train", "--resume", "--output-dir", interrupted], "being trained by another lorasc process", "--resume")


def test_a_checkpoint_swapped_in_from_another_run_is_refused(interrupted, capsys):
    from safetensors.torch import load_file, save_file

    for step in (3, 4):
        path = interrupted / f"checkpoint-{step}" / "trainable.safetensors"
        weights = load_file(path)
        save_file({name: tensor[..., :1].contiguous() for name, tensor in weights.items()}, path)  # another rank, another head
    refused(capsys, interrupted, ["train", "--resume", "--output-dir", interrupted], "do not match this run's model", "start a new run")


RUN_STATES = {
    "resume a finished run": (["train", "--resume", "--output-dir", "{run}"], ["already finished", "nothing to resume"]),
    "train into a finished run": (["train", "--output-dir", "{run}"], ["already holds a run", "--resume"]),
    "eval an interrupted run": (["eval", "{interrupted}"], ["has not finished", "lorasc train --resume --output-dir"]),
    "export an interrupted run": (["export", "{interrupted}", "--rank", "2"], ["has not finished"]),
    "eval a missing folder": (["eval", "{run}/nowhere"], ["is not a run folder", "--output-dir of a finished"]),
    "eval a file": (["eval", "{run}/metrics.json"], ["is not a run folder"]),
    "eval an empty folder": (["eval", "{empty}"], ["is not a lorasc run (no config.yaml)"]),
    "export an empty folder": (["export", "{empty}", "--rank", "2"], ["is not a lorasc run (no config.yaml)"]),
    "resume an empty folder": (["train", "--resume", "--output-dir", "{empty}"], ["holds no run to resume", "without --resume"]),
    "export rank huge": (["export", "{run}", "--rank", "100000"], ["rank=100000 is not allowed: the adapted layers have full rank at most 384", "pass --rank 384 or lower"]),
    "export rank zero": (["export", "{run}", "--rank", "0"], ["--rank 0 is not allowed: an integer >= 1"]),
    "export rank text": (["export", "{run}", "--rank", "two"], ["argument --rank: invalid int value: 'two'", "--help"]),
    "export over the model": (["export", "{run}", "--rank", "2", "--output", "{run}/model"], ["already holds other files", "new folder"]),
    "export onto a file": (["export", "{run}", "--rank", "2", "--output", "{run}/metrics.json"], ["is a file", "folder path"]),
    "no subcommand": ([], ["the following arguments are required", "--help"]),
}


@pytest.mark.parametrize("name", RUN_STATES)
def test_each_subcommand_on_a_run_in_the_wrong_state(name, finished, interrupted, capsys):
    args, fragments = RUN_STATES[name]
    (finished.parent / "empty").mkdir()
    args = [a.format(run=finished, interrupted=interrupted, empty=finished.parent / "empty") for a in args]
    refused(capsys, finished.parent, args, *fragments)


def damage_run(run, how):
    if how in DAMAGE:
        DAMAGE[how](run / "model" / "model.safetensors")
    elif how == "no config":
        (run / "model" / "config.json").unlink()
    elif how == "config.yaml emptied":
        (run / "config.yaml").write_text("")
    elif how == "config.yaml wrong type":
        settings = yaml.safe_load((run / "config.yaml").read_text())
        settings["run"]["max_length"] = "long"
        (run / "config.yaml").write_text(yaml.safe_dump(settings))


DAMAGED_RUN = {
    "truncated": ["model.safetensors is truncated or not a safetensors file", "train again with `lorasc train --config"],
    "random": ["model.safetensors is truncated or not a safetensors file"],
    "emptied": ["model.safetensors is truncated"],
    "no config": ["has no dense model", "restore it from a copy"],
    "config.yaml emptied": ["config.yaml must be a mapping", "fix its top level"],
    "config.yaml wrong type": ["max_length='long' is not allowed: an integer"],
}


@pytest.mark.parametrize("command", ["eval", "export"])
@pytest.mark.parametrize("how", DAMAGED_RUN)
def test_eval_and_export_of_a_damaged_run(command, how, finished, capsys):
    damage_run(finished, how)
    refused(capsys, finished, [command, finished, *(["--rank", "2"] if command == "export" else [])], *DAMAGED_RUN[how])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("command, fix", [("eval", "copy the run folder somewhere writable"), ("export", "pass --output with a writable folder")])
def test_a_read_only_run_names_a_fix_the_command_has(command, fix, finished, capsys):
    os.chmod(finished, 0o555)
    try:
        refused(capsys, finished, [command, finished, *(["--rank", "2"] if command == "export" else [])], "cannot write", fix)
    finally:
        os.chmod(finished, 0o755)


