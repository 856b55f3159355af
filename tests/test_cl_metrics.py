"""Continual-learning metrics from a hand-written matrix R, the cl_matrix.csv file and its plots."""

import math

import pytest

from lorasc.continual.metrics import cl_block, cl_metrics, read_cl_matrix, write_cl_matrix
from lorasc.continual.plots import plot_cl_curves, plot_cl_matrix

N = None
R3 = [[0.9, N, N], [0.6, 0.8, N], [0.7, 0.5, 0.6]]
REFERENCE = [0.9, 0.85, 0.7]
NAMES = ["sst2", "ag_news", "mnli"]


def test_metrics_of_a_hand_written_matrix():
    m = cl_metrics(R3, REFERENCE)
    assert m["AA"] == pytest.approx(0.6)  # (0.7 + 0.5 + 0.6) / 3
    assert m["AIA"] == pytest.approx(2.2 / 3)  # (0.9 + (0.6 + 0.8)/2 + (0.7 + 0.5 + 0.6)/3) / 3 = (0.9 + 0.7 + 0.6) / 3
    assert m["BWT"] == pytest.approx(-0.25)  # ((0.7 - 0.9) + (0.5 - 0.8)) / 2
    assert m["F"] == pytest.approx(0.25)  # (max(0.9 - 0.7, 0.6 - 0.7) + (0.8 - 0.5)) / 2 = (0.2 + 0.3) / 2
    assert m["FWT"] == pytest.approx(-0.075)  # ((0.8 - 0.85) + (0.6 - 0.7)) / 2
    assert m["final"] == [0.7, 0.5, 0.6]


def test_fwt_only_with_a_reference():
    assert "FWT" not in cl_metrics(R3)


def test_forgetting_takes_the_largest_drop_from_any_earlier_evaluation():
    R = [[0.5, N, N], [0.9, 0.8, N], [0.6, 0.7, 0.7]]
    # task 1: max(0.5 - 0.6, 0.9 - 0.6) = 0.3 (at l = 2, not l = i = 1); task 2: 0.8 - 0.7 = 0.1
    assert cl_metrics(R)["F"] == pytest.approx(0.2)  # (0.3 + 0.1) / 2
    assert cl_metrics(R)["BWT"] == pytest.approx(0.0)  # ((0.6 - 0.5) + (0.7 - 0.8)) / 2


def test_future_evaluations_do_not_enter_the_metrics():
    future = [[0.9, 0.1, 0.2], [0.6, 0.8, 0.3], [0.7, 0.5, 0.6]]
    assert cl_metrics(future, REFERENCE) == pytest.approx(cl_metrics(R3, REFERENCE))


def test_one_task():
    assert cl_metrics([[0.8]], [0.7]) == pytest.approx({"AA": 0.8, "AIA": 0.8, "BWT": N, "F": N, "FWT": N, "final": [0.8]})


@pytest.mark.parametrize("R, reference, field", [
    ([[0.9, N], [0.6, 0.8], [0.7, 0.5]], N, r"R\[0\]"),  # not square
    ([], N, "R"),
    ([[0.9, N], [N, 0.8]], N, r"R\[1\]\[0\]"),  # lower triangle missing
    ([[0.9, N], [0.6, math.nan]], N, r"R\[1\]\[1\]"),
    ([[0.9, N], [0.6, math.inf]], N, r"R\[1\]\[1\]"),
    ([[0.9, "0.1"], [0.6, 0.8]], N, r"R\[0\]\[1\]"),
    ([[0.9, N], [0.6, 0.8]], [0.9], "reference"),
    ([[0.9, N], [0.6, 0.8]], [0.9, math.nan], "reference"),
])
def test_invalid_input_is_refused_in_one_line_naming_the_field(R, reference, field):
    with pytest.raises(ValueError, match=rf"^{field}=.* is not allowed: [^\n]+$"):
        cl_metrics(R, reference)


def test_block_of_accuracy_and_macro_f1():
    f1 = [[0.8, N, N], [0.5, 0.7, N], [0.6, 0.4, 0.5]]
    block = cl_block(R3, f1, REFERENCE)
    assert block["accuracy"] == cl_metrics(R3, REFERENCE)
    assert block["macro_f1"] == cl_metrics(f1)
    assert "macro_f1" not in cl_block(R3)
    with pytest.raises(ValueError, match=r"^macro_f1=.* is not allowed: a matrix of 3 tasks"):
        cl_block(R3, [[0.8, N], [0.5, 0.7]])


def test_csv_round_trip(tmp_path):
    f1 = [[0.8, N, N], [0.5, 0.7, 0.1], [1 / 3, 0.4, 0.5]]
    path = write_cl_matrix(tmp_path / "cl_matrix.csv", NAMES, R3, macro_f1=f1)
    lines = path.read_text().splitlines()
    assert lines[:2] == ["after_task,sst2,ag_news,mnli", "sst2,0.9,,"]
    assert lines[4:6] == ["", "after_task (macro_f1),sst2,ag_news,mnli"]
    assert read_cl_matrix(path) == (NAMES, R3)
    assert read_cl_matrix(path, "macro_f1") == (NAMES, f1)


def test_csv_of_a_run_in_progress_and_without_macro_f1(tmp_path):
    path = write_cl_matrix(tmp_path / "cl_matrix.csv", NAMES, R3[:2])
    assert read_cl_matrix(path) == (NAMES, R3[:2])
    with pytest.raises(ValueError, match=r"macro_f1=None is not allowed: "):
        read_cl_matrix(path, "macro_f1")


def test_csv_refuses_bad_cells(tmp_path):
    path = tmp_path / "cl_matrix.csv"
    path.write_text("after_task,a,b\na,0.9,\nb,x,0.8\n")
    with pytest.raises(ValueError, match=r"after_task\[1\]\[0\]='x' is not allowed: "):
        read_cl_matrix(path)
    with pytest.raises(ValueError, match=r"^R\[0\]=.* is not allowed: "):
        write_cl_matrix(path, ["a", "b"], [[0.9]])


def test_plots_write_png_files(tmp_path):
    for plot, name in ((plot_cl_matrix, "cl_matrix.png"), (plot_cl_curves, "cl_curves.png")):
        path = plot(tmp_path / name, NAMES, R3)
        assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 1000
    assert plot_cl_curves(tmp_path / "partial.png", NAMES, R3[:2]).stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cl_curves.png", "cl_matrix.png", "partial.png"]
