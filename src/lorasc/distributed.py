"""LoRASC under torch.distributed (DDP via torchrun, `accelerate launch` or the Trainer).

Every rank runs the same cascade: the noise and the fresh experts are drawn from seeds derived from
(seed, cycle, matrix name), not broadcast, and the merges are deterministic, so the in-place edits of
the frozen backbone stay identical across replicas while DDP keeps the trained weights in step.
`assert_replicas_identical` verifies that claim cheaply (see docs/distributed.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

if TYPE_CHECKING:
    from .cascade import LoRASC

# Bit patterns as signed integers of the same width: the checksum compares bits, not values.
INT_OF_WIDTH = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
POSITION_PRIME = 65_521  # position weights 1..P make the checksum sensitive to swapped elements


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0, and in a run without torch.distributed: the process that writes checkpoints and logs."""
    return rank() == 0


def tensor_checksum(tensor: torch.Tensor) -> torch.Tensor:
    """Two int64 sums of the tensor's bit patterns, plain and position-weighted, on its device.
    Wrap-around on overflow is deterministic, so equal bits always give equal sums."""
    bits = tensor.detach().contiguous().view(-1).view(INT_OF_WIDTH[tensor.element_size()]).long()
    weights = torch.arange(bits.numel(), device=bits.device) % POSITION_PRIME + 1
    return torch.stack([bits.sum(), (bits * weights).sum()])


def watched_tensors(cascade: LoRASC) -> dict[str, torch.Tensor]:
    """What LoRASC edits in place or trains: the adapted backbone weights, the noise targets, the
    expert weights and the head, in the model's own (rank-independent) parameter order."""
    watched = {id(p) for p in cascade.backbone.params.values()}
    watched |= {id(layer.get_base_layer().weight) for layer in cascade.layers.values()}
    watched |= {id(p) for p in cascade.expert_params}
    watched |= {id(p) for p in cascade.head_params.values()}
    return {name: p for name, p in cascade.model.named_parameters() if id(p) in watched}


def assert_replicas_identical(cascade: LoRASC) -> None:
    """Raise RuntimeError unless every rank holds bitwise-identical watched tensors.
    A collective: call it on all ranks at the same point. No-op without torch.distributed."""
    if not is_distributed():
        return
    if any(isinstance(p, DTensor) for p in cascade.model.parameters()):
        raise RuntimeError("LoRASC does not support sharded (FSDP2 / DTensor) parameters yet; see docs/distributed.md")
    tensors = watched_tensors(cascade)
    local = torch.stack([tensor_checksum(t) for t in tensors.values()])
    if dist.get_backend() == "gloo":
        local = local.cpu()
    gathered = [torch.empty_like(local) for _ in range(world_size())]
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
