"""Continual-learning metrics from the accuracy matrix R, and the file that holds R (docs/continual.md).

R is a list of rows: R[j][i] is the metric on task i after training through task j (0-based here,
1-based in the docs), None where task i was not evaluated then (i > j unless the run evaluated future
tasks). The lower triangle, i <= j, is always evaluated.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from pathlib import Path

from ..config import require
from ..run.run_files import write_file

Matrix = list[list[float | None]]

HEADERS = {"accuracy": "after_task", "macro_f1": "after_task (macro_f1)"}


def _is_finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_rows(R: Matrix, tasks: int, name: str = "R", lower: bool = True) -> None:
    """Each row holds `tasks` values, the lower triangle is present (unless not `lower`: a multitask run is
    evaluated at its end only, a `single` run on the diagonal), and every present value is finite."""
    for j, row in enumerate(R):
        require(isinstance(row, (list, tuple)) and len(row) == tasks, f"{name}[{j}]", row,
                f"a row of {tasks} values, one per task")
        for i, value in enumerate(row):
            if value is None:
                require(i > j or not lower, f"{name}[{j}][{i}]", value, "the lower triangle (task i <= j) is always evaluated")
            else:
                require(_is_finite(value), f"{name}[{j}][{i}]", value, "a finite number or None")


def check_matrix(R: Matrix, name: str = "R") -> int:
    """Validate a square T×T matrix R (at least one task); returns T."""
    require(isinstance(R, (list, tuple)) and len(R) > 0, name, R, "a non-empty list of rows")
    check_rows(R, len(R), name)
    return len(R)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def forgetting(R: Matrix) -> float:
    """F: per earlier task, the largest drop from any evaluation after its own training to the last one."""
    last = len(R) - 1
    return _mean([max(R[l][i] - R[last][i] for l in range(i, last)) for i in range(last)])


def cl_metrics(R: Matrix, reference: list[float] | None = None, *, name: str = "R") -> dict:
    """AA, AIA, BWT, F and, given each task's accuracy when trained alone (`reference`), FWT.

    With one task, BWT, F and FWT are None. "final" is the last row, the metric on every task at the end.
    """
    T = check_matrix(R, name)
    last = T - 1
    out = {
        "AA": _mean(R[last]),
        "AIA": _mean([_mean(R[j][: j + 1]) for j in range(T)]),
        "BWT": _mean([R[last][i] - R[i][i] for i in range(last)]) if T > 1 else None,
        "F": forgetting(R) if T > 1 else None,
    }
    if reference is not None:
        require(isinstance(reference, (list, tuple)) and len(reference) == T
                and all(_is_finite(a) for a in reference), "reference", reference,
                f"a finite accuracy per task ({T}), each trained alone")
        out["FWT"] = _mean([R[i][i] - reference[i] for i in range(1, T)]) if T > 1 else None
    out["final"] = list(R[last])
    return out


def cl_block(acc: Matrix, macro_f1: Matrix | None = None, reference: list[float] | None = None) -> dict:
    """The metrics of the accuracy matrix and, when given, of the macro-F1 matrix (without FWT)."""
    block = {"accuracy": cl_metrics(acc, reference, name="accuracy")}
    if macro_f1 is not None:
        require(len(macro_f1) == len(acc), "macro_f1", macro_f1, f"a matrix of {len(acc)} tasks, as accuracy")
        block["macro_f1"] = cl_metrics(macro_f1, name="macro_f1")
    return block


def _cell(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _block(names: list[str], R: Matrix, metric: str) -> list[list[str]]:
    return [[HEADERS[metric], *names]] + [[names[j], *map(_cell, row)] for j, row in enumerate(R)]


def write_cl_matrix(path: str | Path, names: list[str], R: Matrix, macro_f1: Matrix | None = None) -> Path:
    """Write cl_matrix.csv: header `after_task,<name1>,...`, one row per task trained so far (a run writes
    it after each task, so R may have fewer rows than names), an empty cell where not evaluated. A
    macro-F1 matrix follows after a blank line as a second table headed `after_task (macro_f1),...`."""
    require(len(R) <= len(names), "R", R, f"at most one row per task ({len(names)})")
    check_rows(R, len(names), "R", lower=False)
    rows = _block(names, R, "accuracy")
    if macro_f1 is not None:
        require(len(macro_f1) == len(R), "macro_f1", macro_f1, f"as many rows as the accuracy matrix ({len(R)})")
        check_rows(macro_f1, len(names), "macro_f1", lower=False)
        rows += [[]] + _block(names, macro_f1, "macro_f1")
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    write_file(Path(path), text.getvalue())
    return Path(path)


def _number(cell: str, where: str) -> float | None:
    """A cell of the file: empty (not evaluated) or a number."""
    if cell == "":
        return None
    try:
        return float(cell)
    except ValueError:
        require(False, where, cell, "a number or an empty cell")


def _parse_block(path: Path, rows: list[list[str]]) -> tuple[list[str], Matrix]:
    names = rows[0][1:]
    require(len(rows) - 1 <= len(names), f"{path}:rows", len(rows) - 1, f"at most one row per task ({len(names)})")
    R = []
    for j, row in enumerate(rows[1:]):
        where = f"{path}:{rows[0][0]}[{j}]"
        require(len(row) == len(names) + 1 and row[0] == names[j], where, row,
                f"`{names[j]}` then one cell per task ({len(names)})")
        R.append([_number(cell, f"{where}[{i}]") for i, cell in enumerate(row[1:])])
    check_rows(R, len(names), str(path))
    return names, R


def read_cl_matrix(path: str | Path, metric: str = "accuracy") -> tuple[list[str], Matrix]:
    """Read back (names, R) from cl_matrix.csv: the accuracy table, or with metric="macro_f1" the second."""
    require(metric in HEADERS, "metric", metric, " or ".join(HEADERS))
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    tables, current = [], []
    for row in rows + [[]]:
        if row:
            current.append(row)
        elif current:
            tables.append(current)
            current = []
    found = {table[0][0]: table for table in tables}
    require(HEADERS[metric] in found, f"{path}:{metric}", None, f"a table headed `{HEADERS[metric]},...`")
    return _parse_block(path, found[HEADERS[metric]])
