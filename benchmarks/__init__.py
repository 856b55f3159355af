"""The LoRASC benchmark: methods × learning rates × seeds on fixed data splits, chosen on validation,
compared on test and OOD with paired confidence intervals (`python -m benchmarks --help`).

    protocol   tasks, regimes, method entries and protocols, as data; the spec of one run
    planner    which runs a protocol needs next, given the results so far; the choices on validation
    study      LoRASC's settings, one factor at a time, on the same planner
    runner     one subprocess per run, several in parallel, results appended to a resumable JSONL
    child      what one subprocess does: train (or time the exports) and write the result
    stats      paired differences over seeds, 95 % t intervals, verdicts
    summary    results -> the numbers of the report
    report     the numbers -> Markdown through templates/*.md, and the plots
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
