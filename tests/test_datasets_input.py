"""Data from `datasets`: a .parquet file and a `save_to_disk` folder give the examples the same data gives
as CSV, train like it, and bad input in these formats is refused in one line, as CSV and JSONL are."""

import csv
import hashlib
import json
import os
import shutil
import sys
import unicodedata

import datasets
import pytest
from conftest import GOOD_CSV, TINY_CASCADE, cli, refused, write_file

from lorasc.run.data_files import read_examples
from lorasc.run.run_folder import data_digest

# Quirks the strict path absorbs, as data frames hold them: NFC (é composed and decomposed), spaces
# around a label, and numeric labels in numeric order ("10" after "2").
SAME_AS_CSV = {  # the columns, and the class names they give
    "text labels": ({"text": ["great flight", "cafe\u0301 crème", "awful delay", "café crème"], "label": [" pos", "pos", "neg", "neg "]},
                    ("neg", "pos")),
    "numeric labels": ({"text": ["one", "two", "ten", "two again"], "label": [1, 2, 10, 2]}, ("1", "2", "10")),
}
CLASS_LABEL = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})


@pytest.fixture(autouse=True)
def quiet_datasets():
    """Writing the inputs shows progress bars on stderr, which `refused` reads as the command's output."""
    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


def as_csv(path, columns: dict):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(zip(*columns.values()))
    return path


def as_parquet(path, columns: dict, features=None):
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(path))
    return path


def as_saved(path, columns: dict, features=None):
    datasets.Dataset.from_dict(columns, features=features).save_to_disk(str(path))
    return path


WRITERS = {"parquet": (as_parquet, "data.parquet"), "save_to_disk": (as_saved, "saved")}  # how, and the path passed as --data


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("case", SAME_AS_CSV)
def test_the_same_examples_as_csv(tmp_path, case, writer):
    write, name = WRITERS[writer]
    columns, labels = SAME_AS_CSV[case]
    expected = read_examples(as_csv(tmp_path / "data.csv", columns), "text", "label")
    read = read_examples(write(tmp_path / name, columns), "text", "label")
    assert read == expected and read[1] == labels and all(unicodedata.is_normalized("NFC", e.text) for e in read[0])


@pytest.mark.parametrize("writer", WRITERS)
def test_a_class_label_column_is_read_as_its_names(tmp_path, writer):
    write, name = WRITERS[writer]
    columns = {"text": ["good", "bad", "fine"], "label": [1, 0, 1]}
    read = read_examples(write(tmp_path / name, columns, CLASS_LABEL), "text", "label")
    expected = read_examples(as_csv(tmp_path / "data.csv", {"text": columns["text"], "label": ["pos", "neg", "pos"]}), "text", "label")
    assert read == expected and read[1] == ("neg", "pos")


def test_a_causal_lm_target_stays_text(tmp_path):
    columns = {"text": ["Q: 2+2?", "Q: sky?"], "label": [" 4", " blue"]}
    examples, labels = read_examples(as_parquet(tmp_path / "lm.parquet", columns), "text", "label", ())
    assert labels == () and [e.label for e in examples] == [" 4", " blue"]


def test_a_tiny_run_on_parquet_files(tmp_path):
    rows = list(csv.DictReader(GOOD_CSV.splitlines()))
    columns = {"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]}
    data, ood = as_parquet(tmp_path / "data.parquet", columns), as_parquet(tmp_path / "ood.parquet", columns)
    test = as_saved(tmp_path / "test", columns)
    assert cli("train", "--data", data, "--test-file", test, "--ood-file", ood, "--output-dir", tmp_path / "run", *TINY_CASCADE) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["cycles"] == 2 and set(metrics["test"]) == set(metrics["ood"]) == {"loss", "accuracy", "macro_f1"}
    digests = json.loads((tmp_path / "run" / "data.sha256.json").read_text())  # what --resume checks
    assert digests == {str(path): data_digest(path) for path in (data, test, ood)}
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}


def damaged(path, columns):
    as_parquet(path, columns)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


GOOD = {"text": ["good", "bad"], "label": ["pos", "neg"]}
BAD = {  # file name, how it is written, its columns, the fragments of the one-line refusal
    "a missing column": ("data.parquet", as_parquet, {"text": ["good", "bad"], "sentiment": ["pos", "neg"]},
                         ["has no column 'label'", "--label-column"]),
    "an empty cell": ("data.parquet", as_parquet, {"text": ["good", None], "label": ["pos", "neg"]}, ["data.parquet row 2 has an empty 'text' cell"]),
    "a blank cell": ("data", as_saved, {"text": ["good", "  "], "label": ["pos", "neg"]}, ["data row 2 has an empty 'text' cell"]),
    "a list": ("data.parquet", as_parquet, {"text": ["good", "bad"], "label": [["pos"], ["neg"]]}, ["row 1 has a list in 'label'"]),
    "a struct": ("data", as_saved, {"text": [{"a": "good"}, {"a": "bad"}], "label": ["pos", "neg"]}, ["row 1 has a dict in 'text'"]),
    "binary": ("data.parquet", as_parquet, {"text": [b"good", b"bad"], "label": ["pos", "neg"]}, ["row 1 has a binary value in 'text'"]),
    "a single class": ("data.parquet", as_parquet, {"text": ["good", "bad"], "label": [1, 1.0]}, ["a single class '1'"]),
    "no label (-1)": ("data", lambda path, columns: as_saved(path, columns, CLASS_LABEL), {"text": ["good", "bad"], "label": [1, -1]},
                      ["data row 2 has an empty 'label' cell"]),
    "no rows": ("data.parquet", as_parquet, {"text": [], "label": []}, ["has no rows"]),
    "a damaged parquet file": ("data.parquet", damaged, GOOD, ["data.parquet is not a Parquet file that can be read", "Dataset.to_parquet"]),
    "a DatasetDict folder": ("data", lambda path, columns: datasets.DatasetDict(train=datasets.Dataset.from_dict(columns),
                                                                                 test=datasets.Dataset.from_dict(columns)).save_to_disk(str(path)),
                             GOOD, ["holds a DatasetDict (splits ['test', 'train'])", "pass one split's folder", f"e.g. {os.sep}"]),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_input_is_refused_in_one_line(tmp_path, capsys, name):
    file_name, write, columns, fragments = BAD[name]
    write(tmp_path / file_name, columns)
    refused(capsys, tmp_path, ["train", "--data", tmp_path / file_name, "--output-dir", tmp_path / "run", *TINY_CASCADE], *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("marker", ["dataset_info.json", "state.json"])
def test_a_folder_that_claims_to_be_a_saved_dataset_but_is_not(tmp_path, capsys, marker):
    write_file((tmp_path / "data").mkdir() or tmp_path / "data" / marker, "{not json")
    refused(capsys, tmp_path, ["train", "--data", tmp_path / "data", "--output-dir", tmp_path / "run", *TINY_CASCADE],
            "data is not a saved dataset that can be read", "Dataset.save_to_disk")


def test_a_plain_folder_of_parquet_files_is_still_a_folder(tmp_path, capsys):
    as_parquet((tmp_path / "data").mkdir() or tmp_path / "data" / "part-0.parquet", GOOD)
    refused(capsys, tmp_path, ["train", "--data", tmp_path / "data", "--output-dir", tmp_path / "run", *TINY_CASCADE],
            "data is a folder", "Dataset.save_to_disk")


def test_a_test_file_in_parquet_is_checked_like_the_training_file(tmp_path, capsys):
    data, test = write_file(tmp_path / "data.csv", GOOD_CSV), as_parquet(tmp_path / "test.parquet", {"text": ["meh"], "label": ["neutral"]})
    refused(capsys, tmp_path, ["train", "--data", data, "--test-file", test, "--output-dir", tmp_path / "run", *TINY_CASCADE],
            "test.parquet has labels ['neutral'] that the training data does not have")


@pytest.mark.parametrize("writer", WRITERS)
def test_without_datasets_installed_one_line_names_the_extra(tmp_path, capsys, monkeypatch, writer):
    write, name = WRITERS[writer]
    data = write(tmp_path / name, GOOD)
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now fails as if it were not installed
    refused(capsys, tmp_path, ["train", "--data", data, "--output-dir", tmp_path / "run", *TINY_CASCADE],
            "read through the datasets library, which is not installed", "pip install 'lorasc[datasets]'")


def test_csv_input_does_not_import_datasets(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    examples, labels = read_examples(write_file(tmp_path / "data.csv", GOOD_CSV), "text", "label")
    assert labels == ("neg", "pos") and len(examples) == 24


def test_a_saved_dataset_folder_has_one_digest_of_its_files(tmp_path):
    """What a resumed run compares: the same files give the same digest, a changed row another."""
    first, copy = as_saved(tmp_path / "first", GOOD), tmp_path / "copy"
    shutil.copytree(first, copy)
    changed = as_saved(tmp_path / "changed", {**GOOD, "label": ["pos", "pos"]})
    assert data_digest(first) == data_digest(copy) != data_digest(changed)
    data = as_parquet(tmp_path / "data.parquet", GOOD)
    assert data_digest(data) == hashlib.sha256(data.read_bytes()).hexdigest()  # a file's digest is as before the folders
