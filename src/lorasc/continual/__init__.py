"""Continual learning: one cascade through a sequence of tasks (docs/continual.md)."""
