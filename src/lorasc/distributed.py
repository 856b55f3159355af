"""LoRASC under torch.distributed (DDP via torchrun, `accelerate launch` or the Trainer).

Every rank runs the same cascade: the noise and the fresh experts are drawn from seeds derived from
(seed, cycle, matrix name), not broadcast, and the merges are deterministic, so the in-place edits of
the frozen backbone stay identical across replicas while DDP keeps the trained weights in step.
`assert_replicas_identical` verifies that claim cheaply (see docs/distributed.md).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

# Bit patterns as signed integers of the same width: the checksum compares bits, not values.
INT_OF_WIDTH = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
POSITION_PRIME = 65_521  # position weights 1..P make the checksum sensitive to swapped elements


class Replica(Protocol):
    """What the check reads of a cascade (LoRASC): its model, where it stands, and what it edits or trains."""

    model: torch.nn.Module
    cycle: int
    in_cycle: bool

    def watched_tensors(self) -> dict[str, torch.Tensor]: ...


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def tensor_checksum(tensor: torch.Tensor) -> torch.Tensor:
    """Two int64 sums of the tensor's bit patterns, plain and position-weighted, on its device.
    Wrap-around on overflow is deterministic, so equal bits always give equal sums."""
    bits = tensor.detach().contiguous().view(-1).view(INT_OF_WIDTH[tensor.element_size()]).long()
    weights = torch.arange(bits.numel(), device=bits.device) % POSITION_PRIME + 1
    return torch.stack([bits.sum(), (bits * weights).sum()])


def assert_replicas_identical(cascade: Replica) -> None:
    """Raise RuntimeError unless every rank holds bitwise-identical watched tensors.
    A collective: call it on all ranks at the same point. No-op without torch.distributed."""
    if not is_distributed():
        return
    if any(isinstance(p, DTensor) for p in cascade.model.parameters()):
        raise RuntimeError("LoRASC does not support sharded (FSDP2 / DTensor) parameters yet; see docs/distributed.md")
    tensors = cascade.watched_tensors()
    local = torch.stack([tensor_checksum(t) for t in tensors.values()])
    if dist.get_backend() == "gloo":
        local = local.cpu()
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    differing = [r for r, sums in enumerate(gathered) if not torch.equal(sums, gathered[0])]
    if differing:
        mismatched = sorted({name for r in differing for name, ours, theirs in zip(tensors, gathered[0], gathered[r]) if not torch.equal(ours, theirs)})
        when = f"in cycle {cascade.cycle}" if cascade.in_cycle else f"after cycle {cascade.cycle}"
        raise RuntimeError(
            f"LoRASC replicas differ {when}: ranks {differing} disagree with rank 0 on {len(mismatched)} tensors, "
            f"e.g. {mismatched[:3]}; every rank must run the same cascade (same config and seed, same steps, "
            "the same checkpoint on resume)"
        )
