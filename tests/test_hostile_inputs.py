"""Bad and hostile input, as a new user or a broken disk produces it: every case runs the real CLI
in-process and must exit 2 with one line `lorasc: error: <problem>; <fix>`, leaving every file it
found unchanged. Most cases are refused before a model is loaded, so each takes well under a second.
"""

import gzip
import hashlib
import json
import os
import shutil

import pytest
import yaml
from conftest import TINY_RUN

import lorasc.train
from lorasc.cli import main

pytestmark = pytest.mark.slow
TINY = [*TINY_RUN, "--n-train", "32", "--n-test", "16", "--n-ood", "16", "--max-steps", "6", "--checkpoint-every", "2", "--num-cycles", "2",
        "--expert-r", "2", "--expert-target-modules", "query", "value", "--warmup-steps", "1"]
ROWS = [["great flight", "pos"], ["awful delay", "neg"], ["fine crew", "pos"], ["lost my bag", "neg"]] * 6


def cli(*args) -> int:
    return main([str(a) for a in args])


def tree_digest(folder) -> dict:
    """sha256 of every file under `folder`, by relative path: what "no earlier file changed" compares."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, folder, args, *fragments):
    """`lorasc ARGS` exits 2 with one line naming the problem and the fix, and no file under `folder` changed."""
    before = tree_digest(folder)
    assert cli(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lorasc: error: ") and err.count("\n") == 1 and ("; " in err or " is not allowed: " in err), err
    for fragment in fragments:
        assert fragment in err, err
    assert tree_digest(folder) == before


def write_csv(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


GOOD_CSV = "text,label\n" + "".join(f"{t},{y}\n" for t, y in ROWS)

# ---- train: data files, refused before anything is written ----
DATA_FILES = {
    "latin-1": (("data.csv", ("text,label\n" + "café crème,pos\n" * 3 + "awful,neg\n" * 3).encode("latin-1")), ["data.csv:2", "--encoding latin-1"]),
    "gzip named .csv": (("data.csv", gzip.compress(GOOD_CSV.encode())), ["data.csv is gzip-compressed", "decompress"]),
    "xlsx named .csv": (("data.csv", b"PK\x03\x04" + bytes(100)), ["data.csv is a zip archive", "export it"]),
    "binary": (("data.csv", bytes(range(256)) * 4), ["data.csv is a binary file", "export it"]),
    "header only": (("data.csv", "text,label\n"), ["has no rows", "add examples"]),
    "empty file": (("data.csv", ""), ["has no rows"]),
    "single class": (("data.csv", "text,label\n" + "good,pos\n" * 10), ["single class 'pos'", "at least 2"]),
    "empty label cell": (("data.csv", GOOD_CSV + "no label here,\n"), ["data.csv:26 has an empty 'label' cell", "fill it in"]),
    "empty text cell": (("data.csv", GOOD_CSV + ",pos\n"), ["data.csv:26 has an empty 'text' cell"]),
    "too few fields": (("data.csv", GOOD_CSV + "just text\n"), ["data.csv:26 has 1 field(s) but the header has 2", "quote fields"]),
    "too many fields": (("data.csv", GOOD_CSV + "a, b,pos\n"), ["data.csv:26 has 3 field(s)", "quote fields that contain commas"]),
    "duplicate column": (("data.csv", "text,label,text\n" + "a,pos,b\n" * 4), ["column 'text' more than once", "rename"]),
    "semicolons": (("data.csv", "text;label\n" + "a;pos\n" * 4), ["separated by ';'", "comma-separated"]),
    "wrong columns": (("data.csv", "tweet,y\na,b\n"), ["no column 'text'", "--text-column"]),
    "bad quoting": (("data.csv", 'text,label\n"unclosed,pos\n'), ["data.csv"]),
    "jsonl array line": (("data.jsonl", '{"text": "a", "label": "x"}\n[1, 2]\n'), ["data.jsonl:2 is an array, not a JSON object", "one object per line"]),
    "jsonl lacks label": (("data.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n'), ["data.jsonl:2 has no 'label'", "--label-column"]),
    "jsonl null label": (("data.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n'), ["data.jsonl:2 has an empty 'label'"]),
    "jsonl nested label": (("data.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": {"y": 1}}\n'), ["has a dict in 'label'"]),
    "jsonl broken line": (("data.jsonl", '{"text": "a", "label": "x"}\n{"text": \n'), ["data.jsonl:2 is not valid JSON"]),
    "json not a list": (("data.json", '[{"text": "a", "label": "x"}, 3]'), ["data.json item 2 is int"]),
    "text file": (("data.txt", "a\n"), ["unsupported data file type '.txt'", "use .csv or .jsonl"]),
    "a folder": (("data.csv/inner.csv", GOOD_CSV), ["data.csv is a folder", "pass a .csv or .jsonl file"]),
}


@pytest.mark.parametrize("name", DATA_FILES)
def test_a_bad_data_file_is_refused_before_anything_is_written(name, tmp_path, capsys):
    (file_name, content), fragments = DATA_FILES[name]
    (tmp_path / file_name).parent.mkdir(exist_ok=True)
    write_csv(tmp_path / file_name, content)
    data = tmp_path / file_name.split("/")[0]  # "a folder" passes the folder that holds its file
    refused(capsys, tmp_path, ["train", "--data", data, "--output-dir", tmp_path / "run", *TINY], *fragments)
    assert not (tmp_path / "run").exists()


QUIRKS = {
    "byte order mark and CRLF": b"\xef\xbb\xbftext,label\r\ngood,1\r\nbad,0\r\n",
    "blank lines and empty rows": b"text,label\n\ngood,1\n,\nbad,0\n\n",
    "one class written three ways": b"text,label\ngood,1\nnice, 1\nfine,1.0\nbad,0\n",
    "spaces around the header": b" text , label \ngood,1\nbad,0\n",
    "utf-16 from a spreadsheet": "text,label\ngood,1\nbad,0\n".encode("utf-16"),
}


@pytest.mark.parametrize("name", QUIRKS)
def test_harmless_file_quirks_read_as_the_clean_file(name, tmp_path):
    from lorasc.data_files import read_examples

    examples, labels = read_examples(write_csv(tmp_path / "data.csv", QUIRKS[name]), "text", "label")
    assert labels == ("0", "1") and [e.label for e in examples if e.text == "good"] == [1]


def test_numeric_labels_number_the_classes_in_numeric_order(tmp_path):
    from lorasc.data_files import read_examples

    labels = read_examples(write_csv(tmp_path / "data.jsonl", "".join(f'{{"text": "t{y}", "label": {y}}}\n' for y in (10, 2, 1.0))), "text", "label")[1]
    assert labels == ("1", "2", "10")


def test_a_trained_head_given_other_label_names_says_so_in_one_line(tmp_path, capsys):
    from lorasc.task import note_relabelled_head

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForSequenceClassification"],
                                                      "id2label": {"0": "neg", "1": "neu", "2": "pos"}}))
    note_relabelled_head(str(tmp_path), ("a", "b", "c"))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trained for ['neg', 'neu', 'pos']" in err and "now mean ['a', 'b', 'c']" in err
    note_relabelled_head(str(tmp_path), ("neg", "neu", "pos"))
    assert capsys.readouterr().err == ""


# ---- train: flags and config files ----
FLAGS = {
    "lr inf": (["--lr", "inf"], ["lr='inf' is not allowed: a finite number"]),
    "lr nan": (["--lr", "nan"], ["lr='nan' is not allowed"]),
    "epochs inf": (["--epochs", "inf"], ["epochs='inf' is not allowed"]),
    "lr zero": (["--lr", "0"], ["lr=0.0 is not allowed: a finite float > 0"]),
    "lr negative": (["--lr=-1e-3"], ["lr=-0.001 is not allowed"]),
    "negative value without =": (["--lr", "-1e-3"], ["argument --lr: expected one argument", "--flag=-1e-3"]),
    "lr text": (["--lr", "fast"], ["lr='fast' is not allowed: a finite number"]),
    "slow alpha nan": (["--slow-alpha", "nan"], ["slow_alpha='nan' is not allowed"]),
    "noise lambda inf": (["--noise-lambda", "inf"], ["noise_lambda='inf' is not allowed"]),
    "batch size zero": (["--batch-size", "0"], ["batch_size=0 is not allowed: an integer >= 1"]),
    "batch size fraction": (["--batch-size", "2.5"], ["batch_size='2.5' is not allowed: an integer"]),
    "max steps negative": (["--max-steps", "-3"], ["max_steps=-3 is not allowed"]),
    "n-train zero": (["--n-train", "0"], ["n_train=0 is not allowed"]),
    "max length zero": (["--max-length", "0"], ["max_length=0 is not allowed"]),
    "max length above positions": (["--max-length", "100000"], ["max_length=100000 is not allowed: at most 512", "--max-length 512"]),
    "seed negative": (["--seed", "-1"], ["seed=-1 is not allowed"]),
    "seed huge": (["--seed", str(2**64)], ["seed=18446744073709551616 is not allowed"]),
    "weight decay negative": (["--weight-decay", "-0.1"], ["weight_decay=-0.1 is not allowed"]),
    "warmup negative": (["--warmup-steps", "-1"], ["warmup_steps=-1 is not allowed"]),
    "expert rank huge": (["--expert-r", "100000"], ["--expert-r 100000 is not allowed: the adapted layers have full rank at most 384", "--expert-r 384"]),
    "more cycles than steps": (["--num-cycles", "50"], ["num_cycles=50 is not allowed: at most the run's 6 optimizer steps", "lower --num-cycles"]),
    "a cycle per step for ever": (["--num-cycles", "none", "--cycle-steps", "1", "--max-steps", str(10**12)],
                                  ["cycles=1000000000000 is not allowed: at most 1,000,000", "--cycle-steps"]),
    "expert dropout above 1": (["--expert-lora-dropout", "1.5"], ["expert.lora_dropout=1.5 is not allowed: a float in [0, 1)"]),
    "targets match nothing": (["--expert-target-modules", "nothing"], ["matches no layer", "--expert-target-modules"]),
    "same text and label column": (["--text-column", "label"], ["label_column='label' is not allowed"]),
    "unknown encoding": (["--encoding", "klingon"], ["encoding='klingon' is not allowed"]),
    "unknown flag": (["--learning-rate", "1"], ["unrecognized arguments: --learning-rate", "--help"]),
    "bad choice": (["--dtype", "float8"], ["invalid choice: 'float8'", "--help"]),
    "config missing": (["--config", "nowhere.yaml"], ["config file not found", "nowhere.yaml"]),
}


@pytest.mark.parametrize("name", FLAGS)
def test_a_bad_flag_is_refused_before_anything_is_written(name, tmp_path, capsys):
    flags, fragments = FLAGS[name]
    data = write_csv(tmp_path / "data.csv", GOOD_CSV)
    refused(capsys, tmp_path, ["train", "--data", data, "--output-dir", tmp_path / "run", *TINY, *flags], *fragments)
    assert not (tmp_path / "run").exists()


CONFIGS = {
    "unknown run key": ("run:\n  learning_rate: 0.1\n", ["run keys=['learning_rate'] is not allowed: keys among"]),
    "unknown lorasc key": ("lorasc:\n  alpha: 0.5\n", ["lorasc keys=['alpha'] is not allowed"]),
    "unknown expert key": ("lorasc:\n  expert:\n    rank: 4\n", ["lorasc.expert keys=['rank'] is not allowed"]),
    "wrong type": ("run:\n  batch_size: [8]\n", ["batch_size=[8] is not allowed: an integer"]),
    "boolean as number": ("run:\n  gradient_checkpointing: 3\n", ["gradient_checkpointing=3 is not allowed: true or false"]),
    "section not a mapping": ("run: 5\n", ["run=5 is not allowed: a mapping of settings"]),
    "top level list": ("- run\n", ["must be a mapping with the sections", "fix its top level"]),
    "unknown section": ("training:\n  lr: 0.1\n", ["must be a mapping with the sections"]),
    "not yaml": ("run: [unclosed\n", ["is not valid YAML", "fix it"]),
    "infinite lr": ("run:\n  lr: .inf\n", ["lr=inf is not allowed: a finite number"]),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_a_bad_config_file_is_refused(name, tmp_path, capsys):
    text, fragments = CONFIGS[name]
    config = tmp_path / "config.yaml"
    config.write_text(text)
    refused(capsys, tmp_path, ["train", "--config", config, "--output-dir", tmp_path / "run", *TINY], *fragments)


def test_config_values_take_the_type_of_their_field(tmp_path):
    """PyYAML reads `lr: 1e-3` as a string and `epochs: 2` as an int: both become the fields' floats."""
    from lorasc.cli import build_parser
    from lorasc.settings import resolve

    config = tmp_path / "config.yaml"
    config.write_text("run:\n  lr: 1e-3\n  epochs: 2\n  n_train: '16'\nlorasc:\n  num_cycles: 2.0\n  expert:\n    r: 4\n    init_lora_weights: 'true'\n")
    run, method = resolve(build_parser().parse_args(["train", "--config", str(config)]))
    assert (run.lr, run.epochs, run.n_train) == (1e-3, 2.0, 16) and isinstance(run.epochs, float)
    assert method.num_cycles == 2 and method.expert.r == 4 and method.expert.init_lora_weights is True


# ---- the run folder given to train ----
def test_output_dir_that_is_a_file(tmp_path, capsys):
    data = write_csv(tmp_path / "data.csv", GOOD_CSV)
    refused(capsys, tmp_path, ["train", "--data", data, "--output-dir", data, *TINY], "is a file, not a folder", "pass a folder path")
    refused(capsys, tmp_path, ["train", "--data", data, "--output-dir", data / "run", *TINY], "is a file, not a folder")


def test_debug_is_accepted_after_the_subcommand(tmp_path):
    with pytest.raises(ValueError, match="lr='inf' is not allowed"):
        cli("train", "--debug", "--lr", "inf", "--output-dir", tmp_path / "run")
    with pytest.raises(ValueError, match="lr='inf' is not allowed"):
        cli("--debug", "train", "--lr", "inf", "--output-dir", tmp_path / "run")


def test_a_run_that_failed_on_bad_input_leaves_its_folder_free_for_the_corrected_rerun(tmp_path, capsys):
    """An embedding matrix as a LoRA target is found only once the model is built, after config.yaml was written."""
    run = tmp_path / "run"
    assert cli("train", "--output-dir", run, *TINY, "--expert-target-modules", "word_embeddings") == 2
    assert "expert.target_modules={'word_embeddings'} is not allowed" in capsys.readouterr().err
    assert not list(run.iterdir())
    assert cli("train", "--output-dir", run, *TINY, "--max-steps", "2") == 0
    assert (run / "metrics.json").is_file()


def test_a_diverging_run_stops_at_the_first_non_finite_loss(tmp_path, capsys):
    data = write_csv(tmp_path / "data.csv", GOOD_CSV)
    refused(capsys, tmp_path, ["train", "--data", data, "--output-dir", tmp_path / "run", *TINY, "--noise-lambda", "1e30"],
            "the training loss is nan at step 1: the run diverged", "lower --lr")


# ---- runs in every state: finished, interrupted, damaged ----
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert cli("train", "--output-dir", run, *TINY) == 0
    return run


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A run on data.csv stopped (as by Ctrl-C) right after its checkpoint at step 4 of 6: the checkpoints
    of step 3 (the first cycle's end) and 4 are kept. Its data path is relative, so a copy of the folder
    holding both is a run of its own."""
    folder = tmp_path_factory.mktemp("interrupted")
    write_csv(folder / "data.csv", GOOD_CSV)
    write = lorasc.train.save_checkpoint

    def write_then_interrupt(run_dir, step, *args):
        write(run_dir, step, *args)
        if step == 4:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(lorasc.train, "save_checkpoint", write_then_interrupt)
        assert cli("train", "--data", "data.csv", "--output-dir", "run", *TINY) == 130
    assert sorted(p.name for p in (folder / "run").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    return folder / "run"


@pytest.fixture
def finished(finished_run, tmp_path):
    return shutil.copytree(finished_run, tmp_path / "finished")


@pytest.fixture
def interrupted(interrupted_run, tmp_path, monkeypatch):
    """A copy of the interrupted run and its data; the test runs in the folder that holds both."""
    shutil.copy(interrupted_run.parent / "data.csv", tmp_path)
    monkeypatch.chdir(tmp_path)
    return shutil.copytree(interrupted_run, tmp_path / "interrupted")


def truncate(path, keep: float = 0.5):
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


RESUME_FLAGS = {
    "lr": (["--lr", "0.5"], ["--lr 0.5 changes this run's lr=0.001", "drop --lr to resume", "--output-dir NEW --lr 0.5"]),
    "data": (["--data", "other.csv"], ["--data other.csv changes this run's train_file='data.csv'"]),
    "expert rank": (["--expert-r", "4"], ["--expert-r 4 changes this run's expert.r=2"]),
    "seed": (["--seed", "3"], ["--seed 3 changes this run's seed=0"]),
    "config": (["--config", "x.yaml"], ["--config is not allowed with --resume", "drop --config"]),
}


@pytest.mark.parametrize("name", RESUME_FLAGS)
def test_resume_refuses_a_changed_setting_and_changes_no_file(name, interrupted, capsys):
    flags, fragments = RESUME_FLAGS[name]
    refused(capsys, interrupted, ["train", "--resume", "--output-dir", interrupted, *flags], *fragments)


DAMAGED_CHECKPOINT = {
    "state.pt truncated": "state.pt",
    "trainable.safetensors truncated": "trainable.safetensors",
    "progress.json truncated": "progress.json",
}


@pytest.mark.parametrize("name", DAMAGED_CHECKPOINT)
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(name, interrupted, capsys):
    truncate(interrupted / "checkpoint-4" / DAMAGED_CHECKPOINT[name])
    from lorasc.checkpoint import load_checkpoint, model_fingerprint
    from lorasc.data import default_model_path

    checkpoint = load_checkpoint(interrupted, model_fingerprint(default_model_path()))
    assert checkpoint.progress["step"] == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint-4 is unreadable" in err and "resuming from checkpoint-3" in err, err


def test_resume_after_the_latest_checkpoint_was_truncated_finishes_from_the_previous(interrupted, capsys):
    """Flags that repeat the run's own settings are accepted on resume."""
    truncate(interrupted / "checkpoint-4" / "state.pt")
    assert cli("train", "--resume", "--output-dir", interrupted, "--lr", "0.001", "--expert-r", "2", "--no-progress") == 0
    assert "resuming from checkpoint-3" in capsys.readouterr().err
    assert json.loads((interrupted / "metrics.json").read_text())["steps"] == 6


def test_resume_refuses_when_no_checkpoint_is_readable(interrupted, capsys):
    for step in (3, 4):
        (interrupted / f"checkpoint-{step}" / "state.pt").write_bytes(b"")
    refused(capsys, interrupted, ["train", "--resume", "--output-dir", interrupted], "has no readable checkpoint", "start a new run")


def test_resume_refuses_data_that_changed_since_the_run_started(interrupted, capsys):
    write_csv(interrupted.parent / "data.csv", GOOD_CSV.replace("pos", "neg", 1))
    refused(capsys, interrupted, ["train", "--resume", "--output-dir", interrupted], "data.csv changed since the run started", "restore it")


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
    "export rank huge": (["export", "{run}", "--rank", "100000"], ["--rank 100000 is not allowed: the adapted layers have full rank at most 384", "--rank 384"]),
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


DAMAGE = {"truncated": truncate, "random": lambda path: path.write_bytes(os.urandom(4096)), "emptied": lambda path: path.write_bytes(b"")}


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


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_base_model_is_refused_before_training(how, tmp_path, capsys, minilm_path):
    model = shutil.copytree(minilm_path, tmp_path / "base")
    DAMAGE[how](model / "model.safetensors")
    data = write_csv(tmp_path / "data.csv", GOOD_CSV)
    refused(capsys, tmp_path, ["train", "--model", model, "--data", data, "--output-dir", tmp_path / "run", *TINY],
            "model.safetensors is truncated or not a safetensors file", "copy it again")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("command, fix", [("eval", "copy the run folder somewhere writable"), ("export", "pass --output with a writable folder")])
def test_a_read_only_run_names_a_fix_the_command_has(command, fix, finished, capsys):
    os.chmod(finished, 0o555)
    try:
        refused(capsys, finished, [command, finished, *(["--rank", "2"] if command == "export" else [])], "cannot write", fix)
    finally:
        os.chmod(finished, 0o755)


def test_a_full_disk_in_torch_save_is_one_line_pointing_at_resume(tmp_path, capsys, monkeypatch):
    """torch.save reports a full disk as a RuntimeError that names no cause; the free space does."""
    import lorasc.checkpoint

    def full_disk(*args):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(lorasc.checkpoint.torch, "save", full_disk)
    monkeypatch.setattr(lorasc.checkpoint.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
    assert cli("train", "--output-dir", tmp_path / "run", *TINY) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left" in err and "--resume" in err, err
    assert not list((tmp_path / "run").glob(".checkpoint-*"))  # the half-written checkpoint gave its space back
