"""Continual learning: one cascade through a sequence of tasks (docs/continual.md)."""

from .run import run_sequence
from .sequences import SEQUENCES, SequenceTask, load_sequence

__all__ = ["SEQUENCES", "SequenceTask", "load_sequence", "run_sequence"]
