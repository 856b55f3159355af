"""Bad and hostile input to `lorasc train`, as a new user, a spreadsheet or a full disk produces it: every
case runs the real CLI in-process and must exit 2 with one line `lorasc: error: <problem>; <fix>`, writing
nothing. Most cases are refused before a model is loaded, so each takes well under a second.
Runs in every state (interrupted, finished, damaged) are in test_hostile_runs.py.
"""

import gzip
import json
import shutil

import pytest
from conftest import DAMAGE, GOOD_CSV, TINY_CASCADE, assert_error_line, cli, refused, write_file

pytestmark = pytest.mark.slow


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
    "jsonl duplicate key": (("data.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "x", "label": "y"}\n'),
                            ["data.jsonl:2 has the key 'label' twice in one object", "keep one"]),
    "json duplicate key": (("data.json", '[{"text": "a", "text": "b", "label": "x"}]'), ["data.json has the key 'text' twice", "keep one"]),
    "jsonl nested deep": (("data.jsonl", '{"text": "a", "label": "x"}\n' + "[" * 10**5 + "]" * 10**5), ["data.jsonl:2 nests", "write flat objects"]),
    "json nested deep": (("data.json", "[" * 10**5 + "]" * 10**5), ["data.json nests arrays or objects too deeply", "write flat objects"]),
    "cell over 128 KB": (("data.csv", GOOD_CSV + "x" * 140_000 + ",pos\n"), ["data.csv:26 has a cell longer than 131,072 characters", "shorten it"]),
    "excel sep line, semicolons": (("data.csv", "sep=;\ntext;label\n" + "a;pos\n" * 4), ["separated by ';'", "comma-separated"]),
    "text file": (("data.txt", "a\n"), ["unsupported data file type '.txt'", "use .csv or .jsonl"]),
    "a folder": (("data.csv/inner.csv", GOOD_CSV), ["data.csv is a folder", "pass a .csv or .jsonl file"]),
}


@pytest.mark.parametrize("name", DATA_FILES)
def test_a_bad_data_file_is_refused_before_anything_is_written(name, tmp_path, capsys):
    (file_name, content), fragments = DATA_FILES[name]
    (tmp_path / file_name).parent.mkdir(exist_ok=True)
    write_file(tmp_path / file_name, content)
    data = tmp_path / file_name.split("/")[0]  # "a folder" passes the folder that holds its file
    refused(capsys, tmp_path, ["train", "--data", data, "--output-dir", tmp_path / "run", *TINY_CASCADE], *fragments)
    assert not (tmp_path / "run").exists()


def test_a_test_file_with_labels_the_training_file_lacks(tmp_path, capsys):
    data, test = write_file(tmp_path / "data.csv", GOOD_CSV), write_file(tmp_path / "test.csv", "text,label\nmeh,neutral\n")
    refused(capsys, tmp_path, ["train", "--data", data, "--test-file", test, "--output-dir", tmp_path / "run", *TINY_CASCADE],
            "test.csv has labels ['neutral'] that the training data does not have", "fix the file")


QUIRKS = {
    "byte order mark and CRLF": b"\xef\xbb\xbftext,label\r\ngood,1\r\nbad,0\r\n",
    "blank lines and empty rows": b"text,label\n\ngood,1\n,\nbad,0\n\n",
    "one class written three ways": b"text,label\ngood,1\nnice, 1\nfine,1.0\nbad,0\n",
    "spaces around the header": b" text , label \ngood,1\nbad,0\n",
    "utf-16 from a spreadsheet": "text,label\ngood,1\nbad,0\n".encode("utf-16"),
    "excel's sep=, line": b"sep=,\ntext,label\ngood,1\nbad,0\n",
}


@pytest.mark.parametrize("name", QUIRKS)
def test_harmless_file_quirks_read_as_the_clean_file(name, tmp_path):
    from lorasc.run.data_files import read_examples

    examples, labels = read_examples(write_file(tmp_path / "data.csv", QUIRKS[name]), "text", "label")
    assert labels == ("0", "1") and [e.label for e in examples if e.text == "good"] == [1]


def test_numeric_labels_number_the_classes_in_numeric_order(tmp_path):
    from lorasc.run.data_files import read_examples

    labels = read_examples(write_file(tmp_path / "data.jsonl", "".join(f'{{"text": "t{y}", "label": {y}}}\n' for y in (10, 2, 1.0))), "text", "label")[1]
    assert labels == ("1", "2", "10")


def test_a_trained_head_given_other_label_names_says_so_in_one_line(tmp_path, capsys):
    from lorasc.run.models import note_relabelled_head

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
    "expert rank huge": (["--expert-r", "100000"], ["expert.r=100000 is not allowed: the adapted layers have full rank at most 384", "pass --expert-r 384 or lower"]),
    "more cycles than steps": (["--num-cycles", "50"], ["num_cycles=50 is not allowed: at most the run's 6 optimizer steps", "lower --num-cycles"]),
    "a cycle per step for ever": (["--num-cycles", "none", "--cycle-steps", "1", "--max-steps", str(10**12)],
                                  ["cycles=1000000000000 is not allowed: at most 1,000,000", "--cycle-steps"]),
    "expert dropout above 1": (["--expert-lora-dropout", "1.5"], ["expert.lora_dropout=1.5 is not allowed: a float in [0, 1)"]),
    "targets match nothing": (["--expert-target-modules", "nothing"], ["matches no layer", "--expert-target-modules"]),
    "same text and label column": (["--text-column", "label"], ["label_column='label' is not allowed"]),
    "unknown encoding": (["--encoding", "klingon"], ["encoding='klingon' is not allowed"]),
    "unknown flag": (["--learning-speed", "1"], ["unrecognized arguments: --learning-speed", "--help"]),
    "bad choice": (["--dtype", "float8"], ["invalid choice: 'float8'", "--help"]),
    "config missing": (["--config", "nowhere.yaml"], ["config file not found", "nowhere.yaml"]),
}


@pytest.mark.parametrize("name", FLAGS)
def test_a_bad_flag_is_refused_before_anything_is_written(name, tmp_path, capsys):
    flags, fragments = FLAGS[name]
    data = write_file(tmp_path / "data.csv", GOOD_CSV)
    refused(capsys, tmp_path, ["train", "--data", data, "--output-dir", tmp_path / "run", *TINY_CASCADE, *flags], *fragments)
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
    refused(capsys, tmp_path, ["train", "--config", config, "--output-dir", tmp_path / "run", *TINY_CASCADE], *fragments)


def test_config_values_take_the_type_of_their_field(tmp_path):
    """PyYAML reads `lr: 1e-3` as a string and `epochs: 2` as an int: both become the fields' floats."""
    from lorasc.run.cli import build_parser
    from lorasc.run.settings import resolve

    config = tmp_path / "config.yaml"
    config.write_text("run:\n  lr: 1e-3\n  epochs: 2\n  n_train: '16'\nlorasc:\n  num_cycles: 2.0\n  expert:\n    r: 4\n    init_lora_weights: 'true'\n")
    run, method = resolve(build_parser().parse_args(["train", "--config", str(config)]))
    assert (run.lr, run.epochs, run.n_train) == (1e-3, 2.0, 16) and isinstance(run.epochs, float)
    assert method.num_cycles == 2 and method.expert.r == 4 and method.expert.init_lora_weights is True


# ---- the run folder given to train ----
def test_output_dir_that_is_a_file(tmp_path, capsys):
    data = write_file(tmp_path / "data.csv", GOOD_CSV)
    refused(capsys, tmp_path, ["train", "--data", data, "--output-dir", data, *TINY_CASCADE], "is a file, not a folder", "pass a folder path")
    refused(capsys, tmp_path, ["train", "--data", data, "--output-dir", data / "run", *TINY_CASCADE], "is a file, not a folder")


def test_debug_is_accepted_after_the_subcommand(tmp_path):
    with pytest.raises(ValueError, match="lr='inf' is not allowed"):
        cli("train", "--debug", "--lr", "inf", "--output-dir", tmp_path / "run")
    with pytest.raises(ValueError, match="lr='inf' is not allowed"):
        cli("--debug", "train", "--lr", "inf", "--output-dir", tmp_path / "run")


def test_a_run_that_failed_on_bad_input_leaves_its_folder_free_for_the_corrected_rerun(tmp_path, capsys):
    """An embedding matrix as a LoRA target is found only once the model is built, after config.yaml was written."""
    run = tmp_path / "run"
    assert cli("train", "--output-dir", run, *TINY_CASCADE, "--expert-target-modules", "word_embeddings") == 2
    assert "expert.target_modules={'word_embeddings'} is not allowed" in capsys.readouterr().err
    assert not run.exists()  # the run created the folder, so it takes it away again
    assert cli("train", "--output-dir", run, *TINY_CASCADE, "--max-steps", "2") == 0
    assert (run / "metrics.json").is_file()


def test_a_diverging_run_stops_at_the_first_non_finite_loss(tmp_path, capsys):
    data = write_file(tmp_path / "data.csv", GOOD_CSV)
    refused(capsys, tmp_path, ["train", "--data", data, "--output-dir", tmp_path / "run", *TINY_CASCADE, "--noise-lambda", "1e30"],
            "the training loss is nan at step 1: the run diverged", "lower --lr")


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_base_model_is_refused_before_training(how, tmp_path, capsys, minilm_path):
    model = shutil.copytree(minilm_path, tmp_path / "base")
    DAMAGE[how](model / "model.safetensors")
    data = write_file(tmp_path / "data.csv", GOOD_CSV)
    refused(capsys, tmp_path, ["train", "--model", model, "--data", data, "--output-dir", tmp_path / "run", *TINY_CASCADE],
            "model.safetensors is truncated or not a safetensors file", "copy it again")


def test_a_full_disk_in_torch_save_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    """torch.save reports a full disk as a RuntimeError that names no cause; the free space does."""
    import lorasc.run.checkpoint

    def full_disk(*args):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(lorasc.run.checkpoint.torch, "save", full_disk)
    monkeypatch.setattr(lorasc.run.checkpoint.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
    assert cli("train", "--output-dir", tmp_path / "run", *TINY_CASCADE) == 2
    assert_error_line(capsys.readouterr().err, "no space left", "--resume")
    assert not (tmp_path / "run").exists()  # a fresh run cut short before its first checkpoint leaves nothing behind  # the half-written checkpoint gave its space back
