"""Bad input to `lorasc train --tasks …` (issue 30, item 9): one line naming the problem and the fix, exit code 2,
and no file of an earlier run changed."""

import shutil

import pytest
from conftest import GOOD_CSV, TINY_RUN, refused, write_file
from run_fixtures import train_interrupted

OTHER_CSV = "text,label\n" + "red sky,red\nblue sea,blue\ngreen grass,green\nred wine,red\n" * 5
SEQUENCE = [*TINY_RUN, "--steps-per-task", "4", "--cycles-per-task", "2", "--expert-r", "2", "--expert-target-modules", "query", "value",
            "--warmup-steps", "1", "--checkpoint-every", "2"]


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Task files in the test's folder (its working directory), and an earlier run beside them."""
    monkeypatch.chdir(tmp_path)
    write_file(tmp_path / "flights.csv", GOOD_CSV)
    write_file(tmp_path / "colours.csv", OTHER_CSV)
    write_file(tmp_path / "flights_copy.csv", GOOD_CSV)
    write_file(tmp_path / "empty.csv", "")
    write_file(tmp_path / "no_text.csv", "words,label\na,b\nc,d\n")
    write_file(tmp_path / "one_class.csv", "text,label\na,b\nc,b\n")
    write_file(tmp_path / "colours_test.csv", "text,label\npurple rain,purple\n")
    (tmp_path / "earlier").mkdir()
    write_file(tmp_path / "earlier" / "metrics.json", "{}")
    return tmp_path


TWO = ["--tasks", "flights.csv,colours.csv"]
CASES = {
    "one task": (["--tasks", "flights.csv"], ["at least two tasks", "use --data"]),
    "the same file twice": (["--tasks", "flights.csv,flights.csv"], ["flights.csv", "its own file"]),
    "the same name twice": ([*TWO, "--task-names", "a,a"], ["two tasks are named a", "its own name"]),
    "tasks and data": ([*TWO, "--data", "flights.csv"], ["unset with --data", "drop one"]),
    "a missing file": (["--tasks", "flights.csv,missing.csv"], ["task missing", "missing.csv"]),
    "an empty file": (["--tasks", "flights.csv,empty.csv"], ["task empty", "has no rows"]),
    "a missing column": (["--tasks", "flights.csv,no_text.csv"], ["task no_text", "no column 'text'"]),
    "a single class": (["--tasks", "flights.csv,one_class.csv"], ["task one_class", "single class"]),
    "fewer test files": ([*TWO, "--task-tests", "flights.csv"], ["1 test files for 2 tasks"]),
    "an unknown test label": ([*TWO, "--task-tests", "flights.csv,colours_test.csv"], ["task colours", "purple"]),
    "shared head, other labels": ([*TWO, "--cl-head", "shared"], ["--cl-head shared", "colours", "pass --cl-head per-task"]),
    "per-task head on a causal LM": ([*TWO, "--cl-head", "per-task", "--task", "causal-lm"], ["cl_head='per-task'", "drop --cl-head"]),
    "an unknown sequence": (["--tasks", "tweets-domain"], ["unknown built-in sequence 'tweets-domain'", "tweets-domains"]),
    "an order that omits a task": (["--tasks", "tweets-domains", "--task-order", "airline,coachella"], ["omits self-driving"]),
    "an order that invents a task": ([*TWO, "--task-order", "flights,colours,mars"], ["mars"]),
    "olora4 without its folder": (["--tasks", "olora4", "--tasks-dir", "nowhere"], ["olora4", "agnews/train.json", "yelp/labels.json"]),
    "more cycles than steps": ([*TWO, "--steps-per-task", "2", "--cycles-per-task", "3"], ["cycles_per_task=3", "--cycles-per-task"]),
    "more cycles than epochs give": ([*TWO, "--steps-per-task", "none", "--epochs-per-task", "0.01", "--cycles-per-task", "3"], ["task flights has 1 optimizer steps"]),
    "no steps": ([*TWO, "--steps-per-task", "0"], ["steps_per_task=0"]),
    "a negative O-LoRA lambda": ([*TWO, "--method", "o-lora", "--olora-lambda=-1"], ["olora_lambda=-1.0"]),
    "an infinite O-LoRA lambda": ([*TWO, "--method", "o-lora", "--olora-lambda", "inf"], ["olora_lambda='inf'"]),
    "an EMA decay of 1": ([*TWO, "--method", "ema", "--expert-ema", "1"], ["expert_ema=1.0", "[0, 1)"]),
    "a negative replay": ([*TWO, "--replay=-1"], ["replay=-1"]),
}
WITHOUT_TASKS = {
    "a sequence method": (["--method", "multitask"], ["method='multitask'", "pass --tasks"]),
    "a sequence flag": (["--replay", "8"], ["replay=8", "only with --tasks"]),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_sequence_input_is_refused_in_one_line(name, files, capsys):
    flags, fragments = CASES[name]
    refused(capsys, files, ["train", *SEQUENCE, *flags, "--output-dir", "run"], *fragments)
    assert not (files / "run").exists()


@pytest.mark.parametrize("name", WITHOUT_TASKS)
def test_sequence_settings_without_tasks_are_refused(name, files, capsys):
    flags, fragments = WITHOUT_TASKS[name]
    refused(capsys, files, ["train", "--data", "flights.csv", *TINY_RUN, *flags, "--output-dir", "run"], *fragments)


@pytest.fixture(scope="module")
def interrupted_sequence(tmp_path_factory):
    """A 2-task run stopped (as by Ctrl-C) right after its checkpoint at step 6, in the middle of its second task."""
    folder = tmp_path_factory.mktemp("interrupted-sequence")
    write_file(folder / "flights.csv", GOOD_CSV)
    write_file(folder / "colours.csv", OTHER_CSV)
    train_interrupted(folder, 6, *TWO, *SEQUENCE)
    return folder


RESUME_CHANGES = {
    "task list": (["--tasks", "colours.csv,flights.csv"], ["--tasks", "changes this run's tasks", "--output-dir NEW"]),
    "order": (["--task-order", "colours,flights"], ["--task-order", "--output-dir NEW"]),
    "head": (["--cl-head", "shared"], ["--cl-head shared changes this run's cl_head", "--output-dir NEW"]),
}


@pytest.mark.parametrize("name", RESUME_CHANGES)
def test_resume_refuses_a_changed_sequence(name, interrupted_sequence, tmp_path, monkeypatch, capsys):
    folder = shutil.copytree(interrupted_sequence, tmp_path / "copy")
    monkeypatch.chdir(folder)
    flags, fragments = RESUME_CHANGES[name]
    refused(capsys, folder, ["train", "--resume", "--output-dir", "run", *flags], *fragments)
