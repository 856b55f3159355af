"""Two tiny runs for the tests of run folders: one finished, one interrupted. Each module that uses
them trains them once (conftest registers this module as a plugin); each test gets a copy of its own."""

import shutil

import pytest
from conftest import GOOD_CSV, TINY_CASCADE, cli, write_file

import lorasc.run.train


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert cli("train", "--output-dir", run, *TINY_CASCADE) == 0
    return run


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A run on data.csv stopped (as by Ctrl-C) right after its checkpoint at step 4 of 6: the checkpoints
    of step 3 (the first cycle's end) and 4 are kept. Its data path is relative, so a copy of the folder
    holding both is a run of its own."""
    folder = tmp_path_factory.mktemp("interrupted")
    write_file(folder / "data.csv", GOOD_CSV)
    train_interrupted(folder, 4, "--data", "data.csv", *TINY_CASCADE)
    assert sorted(p.name for p in (folder / "run").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    return folder / "run"


def train_interrupted(folder, step: int, *args) -> None:
    """`lorasc train ARGS --output-dir run` in `folder`, stopped (as by Ctrl-C) right after its checkpoint of `step`."""
    write = lorasc.run.train.save_checkpoint

    def write_then_interrupt(run_dir, at, *rest):
        write(run_dir, at, *rest)
        if at == step:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(lorasc.run.train, "save_checkpoint", write_then_interrupt)
        assert cli("train", *args, "--output-dir", "run") == 130


@pytest.fixture
def finished(finished_run, tmp_path):
    return shutil.copytree(finished_run, tmp_path / "finished")


@pytest.fixture
def interrupted(interrupted_run, tmp_path, monkeypatch):
    """A copy of the interrupted run and its data; the test runs in the folder that holds both."""
    shutil.copy(interrupted_run.parent / "data.csv", tmp_path)
    monkeypatch.chdir(tmp_path)
    return shutil.copytree(interrupted_run, tmp_path / "interrupted")
