"""Data from the `datasets` ecosystem: a .parquet file, or a folder written by `Dataset.save_to_disk`, read
through the optional extra (pip install 'lorasc[datasets]') as rows for data_files.py's strict checks.

`datasets` is imported only when such an input is given. A class-label column (`ClassLabel`) is read as
its class names, as `datasets` shows it; -1, its "no label", is an empty cell. A folder written by
`DatasetDict.save_to_disk` holds one saved dataset per split: it is refused, naming the split folders
to pass instead (e.g. `--data saved/train --test-file saved/test`).
"""

from __future__ import annotations

from pathlib import Path

from .errors import DataError

DATASET_DICT = "dataset_dict.json"
SAVED_DATASET_FILES = ("dataset_info.json", "state.json", DATASET_DICT)  # what save_to_disk writes into a folder
EXTRA = "pip install 'lorasc[datasets]'"


def is_saved_dataset(path: Path) -> bool:
    """A folder that `save_to_disk` wrote (or that claims to be one); any other folder is not data."""
    return path.is_dir() and any((path / name).is_file() for name in SAVED_DATASET_FILES)


def dataset_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) pairs ("file row N") of a .parquet file or a saved dataset folder."""
    if (path / DATASET_DICT).is_file():
        splits = sorted(p.name for p in path.iterdir() if is_saved_dataset(p))
        example = path / ("train" if "train" in splits else (splits or ["SPLIT"])[0])
        raise DataError(f"{path} holds a DatasetDict (splits {splits}), not one dataset; pass one split's folder, e.g. {example}")
    datasets = _import_datasets(path)
    try:
        table, features = _parquet(datasets, path) if path.is_file() else _saved(datasets, path)
    except (ValueError, OSError, KeyError) as err:  # pyarrow's ArrowInvalid is a ValueError, a damaged page an OSError
        kind, writer = ("a Parquet file", "Dataset.to_parquet") if path.is_file() else ("a saved dataset", "Dataset.save_to_disk")
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f"{path} is not {kind} that can be read ({reason}); write it again with {writer}") from None
    class_names = {column: feature.names for column, feature in features.items() if isinstance(feature, datasets.ClassLabel)}
    return [(f"{path} row {number}", {column: _class_name(class_names.get(column), value) for column, value in row.items()})
            for number, row in enumerate(table.to_pylist(), 1)]


def _import_datasets(path: Path):
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path} is read through the datasets library, which is not installed; {EXTRA}") from None
    return datasets


def _parquet(datasets, path: Path):
    """The file's table, and its features as `datasets` wrote them into the schema (plain types otherwise)."""
    import pyarrow.parquet

    table = pyarrow.parquet.read_table(path)
    return table, datasets.Features.from_arrow_schema(table.schema)


def _saved(datasets, path: Path):
    dataset = datasets.load_from_disk(str(path))
    return dataset.with_format("arrow")[:], dataset.features  # [:] applies a kept selection or shuffle


def _class_name(names: list[str] | None, value):
    if names is None or value is None:
        return value
    return names[value] if 0 <= value < len(names) else None
