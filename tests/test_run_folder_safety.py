"""Nothing saved is ever lost, and no command leaves a run folder its rerun cannot use: a fresh run that
fails leaves its folder as it found it, an export is whole or absent, eval and export check that the model
files are those the run trained with, and paths too long for the file system are refused up front.
"""

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import TINY_CASCADE, cli, refused
from safetensors import SafetensorError

import lorasc.export
import lorasc.run.preflight
import lorasc.run.run_files
import lorasc.run.train
from lorasc.run.errors import DataError

pytestmark = pytest.mark.slow


# ---- a fresh run that fails before its first checkpoint ----------------------------------------
FAILURES = {  # what loading the model raised -> the exit code (None: a traceback, as for a bug)
    "traceback": (RuntimeError("size mismatch for classifier.weight"), None),
    "bad input": (DataError("the head does not fit; use a base model"), 2),
    "read error": (OSError(errno.EIO, "Input/output error", "model.safetensors"), 2),
}


def fail_at(monkeypatch, name, error):
    """Make lorasc.run.train's `name` (a function or class it calls) raise `error`."""
    def fail(*args):
        raise error

    monkeypatch.setattr(lorasc.run.train, name, fail)


@pytest.mark.parametrize("existed", [True, False], ids=["empty folder", "absent folder"])
@pytest.mark.parametrize("failure", FAILURES)
def test_a_fresh_run_that_fails_leaves_its_folder_as_it_found_it(failure, existed, tmp_path, monkeypatch):
    error, code = FAILURES[failure]
    run = tmp_path / "runs" / "run"
    if existed:
        run.mkdir(parents=True)
    fail_at(monkeypatch, "load_model", error)
    if code is None:
        with pytest.raises(type(error)):
            cli("train", "--output-dir", run, *TINY_CASCADE)
    else:
        assert cli("train", "--output-dir", run, *TINY_CASCADE) == code
    assert sorted(tmp_path.rglob("*")) == ([tmp_path / "runs", run] if existed else [])


def test_the_corrected_command_trains_into_the_folder_of_a_failed_run(tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        fail_at(patch, "load_model", FAILURES["traceback"][0])
        with pytest.raises(RuntimeError):
            cli("train", "--output-dir", run, *TINY_CASCADE)
    assert cli("train", "--output-dir", run, *TINY_CASCADE) == 0


class Built(Exception):
    """Raised where the training loop would start: the run has loaded everything it trains on."""


def test_a_run_reads_its_data_once(tmp_path, monkeypatch):
    """The preflight's data goes on to training: one read per `lorasc train`."""
    calls, load = [], lorasc.run.preflight.load_task
    monkeypatch.setattr(lorasc.run.preflight, "load_task", lambda run: calls.append(run) or load(run))
    fail_at(monkeypatch, "Loop", Built())
    with pytest.raises(Built):
        cli("train", "--output-dir", tmp_path / "run", *TINY_CASCADE)
    assert len(calls) == 1


# ---- eval and export check the model files --------------------------------------------------------
def change_base(run, tmp_path, minilm_path):
    """Point the run at a copy of its base model whose config.json differs by one setting."""
    base, minilm_path = tmp_path / "base", Path(minilm_path)
    base.mkdir()
    for source in minilm_path.iterdir():
        (base / source.name).symlink_to(source)
    config = json.loads((minilm_path / "config.json").read_text())
    (base / "config.json").unlink()
    (base / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))
    settings = yaml.safe_load((run / "config.yaml").read_text())
    settings["run"]["model"] = str(base)
    (run / "config.yaml").write_text(yaml.safe_dump(settings))


def change_model(run, tmp_path, minilm_path):
    config = json.loads((run / "model" / "config.json").read_text())
    (run / "model" / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))


CHANGED = {
    "export after the base changed": ("export", change_base, ["the base model files in", "changed since", "would be wrong", "restore them"]),
    "export after the model changed": ("export", change_model, ["model changed since the run finished", "restore it from a copy"]),
    "eval after the model changed": ("eval", change_model, ["model changed since the run finished", "train again with `lorasc train --config"]),
}


@pytest.mark.parametrize("name", CHANGED)
def test_eval_and_export_refuse_model_files_that_changed(name, finished, tmp_path, capsys, minilm_path):
    command, change, fragments = CHANGED[name]
    change(finished, tmp_path, minilm_path)
    refused(capsys, tmp_path, [command, finished, *(["--rank", "2"] if command == "export" else [])], *fragments)


def test_eval_does_not_depend_on_the_base_model(finished, tmp_path, minilm_path):
    """eval reads the dense model only: after the base changed it gives the same results."""
    other = shutil.copytree(finished, tmp_path / "other")
    change_base(other, tmp_path, minilm_path)
    assert cli("eval", finished) == 0 and cli("eval", other) == 0
    assert json.loads((finished / "eval.json").read_text()) == json.loads((other / "eval.json").read_text())


@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_run_from_before_fingerprints_is_still_usable(command, finished, capsys):
    metrics = json.loads((finished / "metrics.json").read_text())
    del metrics["fingerprints"]
    (finished / "metrics.json").write_text(json.dumps(metrics))
    assert cli(command, finished, *(["--rank", "2"] if command == "export" else [])) == 0
    err = capsys.readouterr().err
    if command == "export":
        assert err.count("\n") == 1 and "records no fingerprint of its base model files" in err, err
    else:
        assert err == ""


DAMAGED_METRICS = {"not JSON": "{", "a list": "[]", "fingerprints a string": '{"fingerprints": "abc"}'}


@pytest.mark.parametrize("command", ["eval", "export"])
@pytest.mark.parametrize("content", DAMAGED_METRICS)
def test_a_damaged_metrics_json_is_refused(content, command, finished, capsys):
    (finished / "metrics.json").write_text(DAMAGED_METRICS[content])
    refused(capsys, finished, [command, finished, *(["--rank", "2"] if command == "export" else [])], "metrics.json is damaged", "restore it")


# ---- an export is whole or absent -----------------------------------------------------------------
def test_an_export_cut_short_by_a_kill_does_not_block_its_rerun(finished):
    leftover = finished / ".adapter-r2.tmp"  # what a kill after the first file leaves
    leftover.mkdir()
    (leftover / "adapter_config.json").write_text("{}")
    assert cli("export", finished, "--rank", "2") == 0
    assert sorted(p.name for p in (finished / "adapter-r2").iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                                         "compression.json", "tokenizer.json", "tokenizer_config.json"]
    assert not leftover.exists()


def test_an_export_never_replaces_a_folder_holding_a_file_of_the_users(finished, tmp_path, capsys):
    earlier = tmp_path / "export"
    assert cli("export", finished, "--rank", "2", "--output", earlier) == 0
    (earlier / "notes.txt").write_text("what this adapter is for")
    refused(capsys, tmp_path, ["export", finished, "--rank", "2", "--output", earlier], "already holds other files (notes.txt)", "pass a new folder")


def full_disk_in_safetensors(*args):
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")  # as on a full tmpfs


def full_disk_naming_no_file(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")  # as a flush at close reports it


FULL_DISK = {  # where the disk fills -> (command, module, the function there that fails, what the line names)
    "export: safetensors": ("export", lorasc.export, "save_file", full_disk_in_safetensors, "adapter-r2"),
    "export: compression.json": ("export", lorasc.export, "write_compression_report", full_disk_naming_no_file, "adapter-r2"),
    "eval: eval.json": ("eval", lorasc.run.run_files, "open", full_disk_naming_no_file, "eval.json"),
}


@pytest.mark.parametrize("where", FULL_DISK)
def test_a_full_disk_is_one_line_naming_the_path_and_leaves_nothing(where, finished, capsys, monkeypatch):
    command, module, name, fail, path = FULL_DISK[where]
    monkeypatch.setattr(module, name, fail, raising=False)  # run_files' open is the builtin until patched
    refused(capsys, finished, [command, finished, *(["--rank", "2"] if command == "export" else [])],
            f"no space left on the device while writing {finished / path}", "free space, then rerun the command")
    assert not list(finished.glob(f"*{path}*"))


# ---- paths longer than the file system takes --------------------------------------------------------
def long_path(root, length):
    """A path of `length` bytes under `root`, in folder names of at most 200."""
    left = length - len(str(root))
    names = ["d" * 200] * (left // 201)
    return root.joinpath(*names, "d" * (left - 201 * len(names) - 1))


LONG_PATHS = {
    "train: a path over the limit": (["train", "--output-dir", "{path_4000}", *TINY_CASCADE], ["is not allowed", "path limit of", "pass a shorter --output-dir"]),
    "train: a folder name over the limit": (["train", "--output-dir", "{name_300}", *TINY_CASCADE], ["is too long for the file system", "--output-dir"]),
    "export: --output over the limit": (["export", "{run}", "--rank", "2", "--output", "{name_300}"], ["is too long for the file system", "pass a shorter --output"]),
}


@pytest.mark.skipif(not hasattr(os, "pathconf"), reason="the limits are read with os.pathconf")
@pytest.mark.parametrize("name", LONG_PATHS)
def test_a_path_too_long_for_the_file_system_is_refused_before_anything_is_written(name, finished, tmp_path, capsys):
    args, fragments = LONG_PATHS[name]
    paths = {"path_4000": long_path(tmp_path, 4000), "name_300": tmp_path / ("n" * 300), "run": finished}
    before = sorted(tmp_path.rglob("*"))
    refused(capsys, tmp_path, [str(a).format(**paths) for a in args], *fragments)
    assert sorted(tmp_path.rglob("*")) == before  # no folder created either
