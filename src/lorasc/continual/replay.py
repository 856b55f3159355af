"""Replay: a reservoir of training examples from finished tasks, half of each later batch.

The buffer is a function of the finished tasks and the seed alone (reservoir sampling, Vitter's algorithm R,
over their training examples in order), so a resumed run rebuilds it instead of storing data in checkpoints.
Methods with replay store data, and their results are reported apart.
"""

from __future__ import annotations

import random

import torch

from ..run.data_files import Example


def reservoir(streams: list[list[Example]], size: int, seed: int) -> list[Example]:
    """At most `size` examples, each of the streams' examples equally likely to be kept."""
    rng, kept, seen = random.Random(seed), [], 0
    for stream in streams:
        for example in stream:
            if len(kept) < size:
                kept.append(example)
            else:
                slot = rng.randrange(seen + 1)
                if slot < size:
                    kept[slot] = example
            seen += 1
    return kept


def replayed(buffer: list[Example], count: int, seed: int, step: int) -> list[Example]:
    """`count` examples of the buffer for optimizer step `step`, drawn with replacement, seeded by (seed, step)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return [buffer[i] for i in torch.randint(len(buffer), (count,), generator=generator).tolist()]
