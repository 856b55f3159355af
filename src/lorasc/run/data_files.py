"""User data files (CSV, JSONL, a JSON list; Parquet and saved datasets through dataset_files.py) read strictly:
every row a clean example, or one line naming the fix.

Quirks that spreadsheets and editors produce are absorbed where the meaning is clear (a UTF-8 byte
order mark, CRLF line ends, blank lines, Excel's "sep=," first line, labels written "1", "1.0" or " 1")
and refused where it is not (another encoding, compressed or binary files, duplicate columns, short or
long rows, empty cells, a JSON object that names a key twice).

Class names: every text and label is read in Unicode NFC, so "café" typed two ways is one class, and a
label's surrounding spaces are dropped. A label that is then a plain decimal number (an optional sign,
digits 0-9 with an optional decimal point, or a point and digits, then an optional exponent: e or E,
an optional sign, digits) is named by its value: an integer value as an integer ("1", "1.0", "01",
"1e0" and "+1" are the class "1"), any other value as Python's shortest repr of the float ("0.5" and
"0.50" are "0.5"). Anything else is text as written: "1_0", "inf", "nan", "0x1", a number too large
for a float. Labels that differ only in case ("Pos", "pos") stay two classes, and a note says so.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from .dataset_files import dataset_rows, is_saved_dataset
from .errors import DataError, refuse_special_file
from .messages import conversation, is_conversational


@dataclass
class Example:
    text: str
    label: int | str  # class index, or the response text for causal LM
    context: tuple[tuple[str, str], ...] = ()  # causal LM: the (role, content) turns before the prompt (messages.py)


BINARY_SIGNATURES = {b"\x1f\x8b": "gzip-compressed", b"PK\x03\x04": "a zip archive (an .xlsx or .zip?)", b"BZh": "bzip2-compressed",
                     b"\xfd7zXZ": "xz-compressed"}
DECIMAL_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
EXCEL_SEPARATOR_LINE = re.compile(r"sep=.")  # Excel's first line "sep=," names the separator


def read_examples(path: str | Path, text_column: str, target_column: str, labels: tuple[str, ...] | None = None,
                  encoding: str = "utf-8") -> tuple[list[Example], tuple[str, ...]]:
    """Rows of a data file (or saved dataset folder) as examples. With `labels=None` the class names are the distinct
    values of `target_column` (numbers in numeric order); with `labels=()` the target is kept as
    text (causal LM), and rows with a `messages` column and no text column are conversations (messages.py)."""
    path = Path(path)
    rows = read_rows(path, encoding)
    if not rows:
        raise DataError(f"{path} has no rows; add examples with columns {text_column!r} and {target_column!r}")
    if labels == () and is_conversational(rows[0][1], text_column):
        return [Example(prompt, response, context) for prompt, response, context in (conversation(where, row) for where, row in rows)], ()
    missing = [c for c in (text_column, target_column) if c not in rows[0][1]]
    if missing:
        raise DataError(f"{path} has no column {missing[0]!r} (it has {sorted(rows[0][1])}); rename it or pass --text-column/--label-column")
    pairs = [(_cell(where, row, text_column), _cell(where, row, target_column)) for where, row in rows]
    if labels == ():
        return [Example(text, target) for text, target in pairs], ()
    named = [(text, normal_label(target)) for text, target in pairs]
    found = {label for _, label in named}
    if labels is None:
        labels = tuple(sorted(found, key=_label_order))
        if len(labels) < 2:
            raise DataError(f"{path} has a single class {labels[0]!r} in column {target_column!r}; a classifier needs at least 2: "
                            "add examples of the other classes or pass --label-column")
        note_case_variants(path, labels)
    unknown = sorted(found - set(labels))
    if unknown:
        raise DataError(f"{path} has labels {unknown[:5]} that the training data does not have ({list(labels)}); fix the file or the label column")
    return [Example(text, labels.index(label)) for text, label in named], labels


def normal_label(value: str) -> str:
    """One name per class, by the rule in the module docstring."""
    text = value.strip()
    if not DECIMAL_NUMBER.fullmatch(text) or not math.isfinite(float(text)):
        return text
    exact = Decimal(text)  # exact: two integers that one float would round alike stay two classes
    return str(int(exact)) if exact == exact.to_integral_value() else repr(float(text))


def _label_order(label: str) -> tuple:
    return (0, float(label), label) if DECIMAL_NUMBER.fullmatch(label) else (1, 0.0, label)


def note_case_variants(path: Path, labels: tuple[str, ...]) -> None:
    """Labels that differ only in case stay classes of their own: said in one note, since few users mean it."""
    spellings = {}
    for label in labels:
        spellings.setdefault(label.casefold(), []).append(label)
    alike = [" and ".join(map(repr, names)) for names in spellings.values() if len(names) > 1]
    if alike:
        print(f"lorasc: note: {path} has labels that differ only in case ({'; '.join(alike[:3])}): each is a class of its own "
              "(write them alike to make them one class)", file=sys.stderr)


def _cell(where: str, row: dict, column: str) -> str:
    if column not in row:
        raise DataError(f"{where} has no {column!r} (it has {sorted(map(str, row))}); add it, or pass --text-column/--label-column")
    value = row[column]
    if isinstance(value, bool):
        value = str(value).lower()
    if isinstance(value, (dict, list, bytes)):
        kind = "binary value" if isinstance(value, bytes) else type(value).__name__  # bytes: a Parquet binary column
        raise DataError(f"{where} has a {kind} in {column!r}; write text or a number there")
    if value is None or not str(value).strip():
        raise DataError(f"{where} has an empty {column!r} cell; fill it in or remove the row")
    return unicodedata.normalize("NFC", str(value))


def read_rows(path: Path, encoding: str) -> list[tuple[str, dict]]:
    """(where, row) pairs ("file:line", "file item N" or "file row N") of a .csv, .jsonl, .json or .parquet file,
    or of a folder written by `Dataset.save_to_disk`."""
    if is_saved_dataset(path):
        return dataset_rows(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder; pass a .csv or .jsonl file, or a folder written by Dataset.save_to_disk")
    refuse_special_file(path, DataError, "pass a .csv or .jsonl file")
    if not path.is_file():
        raise DataError(f"data file not found: {path}; pass an existing .csv or .jsonl file")
    if path.suffix not in (".csv", ".jsonl", ".json", ".parquet"):
        raise DataError(f"unsupported data file type {path.suffix!r} for {path}; use .csv or .jsonl (or .parquet)")
    if path.suffix == ".parquet":
        return dataset_rows(path)
    text = decode(path, path.read_bytes(), encoding)
    if path.suffix == ".csv":
        return _csv_rows(path, text)
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return _json_list_rows(path, text)
    return _jsonl_rows(path, text)


def decode(path: Path, raw: bytes, encoding: str) -> str:
    for signature, kind in BINARY_SIGNATURES.items():
        if raw.startswith(signature):
            raise DataError(f"{path} is {kind}, not text; decompress or export it as a plain .csv/.jsonl file")
    utf16 = raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))  # a spreadsheet's "Unicode text"
    if b"\0" in raw[:4096] and not utf16:
        raise DataError(f"{path} is a binary file, not text; export it as a plain .csv/.jsonl file")
    if utf16:
        encoding = "utf-16"
    elif codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"  # a byte order mark (Excel's "CSV UTF-8") is not part of the first column's name
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line} is not valid {encoding.removesuffix('-sig')} (byte {raw[err.start]:#04x}); "
                        "pass --encoding with the file's encoding (e.g. --encoding latin-1 or cp1252), or save it as UTF-8") from None


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header and EXCEL_SEPARATOR_LINE.fullmatch(",".join(header)):
            header = next(reader, None)  # a separator other than a comma is then refused with the header
        if header is None:
            return []
        _check_header(path, header)
        rows = []
        for fields in reader:
            if not fields or fields == [""] * len(fields):
                continue  # a blank line, or a spreadsheet's row of empty cells
            if len(fields) != len(header):
                raise DataError(f"{path}:{reader.line_num} has {len(fields)} field(s) but the header has {len(header)}; "
                                "quote fields that contain commas and give every row all columns")
            rows.append((f"{path}:{reader.line_num}", dict(zip(header, fields))))
    except csv.Error as err:
        if str(err).startswith("field larger than field limit"):
            raise DataError(f"{path}:{reader.line_num} has a cell longer than {csv.field_size_limit():,} characters, far more than a model reads; "
                            "shorten it, or close the quote left open before it") from None
        raise DataError(f"{path}:{reader.line_num} is not valid CSV ({err}); fix the quoting on that line") from None
    return rows


def _check_header(path: Path, header: list[str]) -> None:
    names = [name.strip() for name in header]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise DataError(f"{path} has the column {duplicated[0]!r} more than once; rename or remove the copy")
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        separator = "';'" if ";" in header[0] else "a tab"
        raise DataError(f"{path} looks separated by {separator}, not by commas; save it as comma-separated CSV")
    header[:] = names


class _RepeatedKey(Exception):
    """A JSON object that names a key twice; the message is the key."""


def _parse_json(text: str, where: str, fix: str):
    """The JSON value of `text`, or one DataError that names `where` (json.loads would keep the last of two
    equal keys without a word, and crash on deep nesting)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise DataError(f"{where} is not valid JSON ({err.msg}, line {err.lineno} column {err.colno}); {fix}") from None
    except _RepeatedKey as err:
        raise DataError(f"{where} has the key {err} twice in one object; keep one of its values") from None
    except RecursionError:
        raise DataError(f"{where} nests arrays or objects too deeply to read; write flat objects like {{\"text\": ..., \"label\": ...}}") from None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    twice = [key for key, count in Counter(key for key, _ in pairs).items() if count > 1]
    if twice:
        raise _RepeatedKey(repr(twice[0]))
    return dict(pairs)


def _jsonl_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            where = f"{path}:{number}"
            rows.append((where, _object(where, _parse_json(line, where, "write one JSON object per line"))))
    return rows


def _json_list_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    values = _parse_json(text, str(path), "fix it, or write one JSON object per line (.jsonl)")
    places = [f"{path} item {number}" for number in range(1, len(values) + 1)]
    return [(where, _object(where, value)) for where, value in zip(places, values)]


def _object(where: str, value) -> dict:
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string"}.get(type(value), type(value).__name__)
        raise DataError(f"{where} is {kind}, not a JSON object; write one object per line, like {{\"text\": ..., \"label\": ...}}")
    return value
