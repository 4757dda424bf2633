"""Multi-process training under ``torchrun --nproc_per_node=N train.py ...``.

``init_distributed()`` reads the environment torchrun sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``) and returns a ``DistributedContext``. With no such environment, or a world size
of 1, no process group is created and every helper here is a no-op, so the same training code runs unchanged in a
single process. Backend: NCCL when the run is on CUDA, gloo on CPU (``device="cpu"`` forces gloo).

Every rank must call the collective helpers (``broadcast_object``, ``all_reduce_sum``, ``barrier``) in the same
order, as with ``torch.distributed`` itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistributedContext",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "cleanup",
    "init_distributed",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the run: global ``rank``, ``local_rank`` on its node, ``world_size`` and the
    ``device`` it computes on. ``world_size == 1`` means a plain single-process run (no process group)."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0 only: the process that logs, writes checkpoints, metrics and exports."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when there is more than one process (and so a process group)."""
        return self.world_size > 1


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        if default is None:
            raise ValueError(
                f"distributed run (WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}) but ${name} is not set; "
                "launch with `torchrun --nproc_per_node=N train.py ...`"
            )
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"${name}={raw!r} is not an integer") from None


def _device_type(device: str | torch.device) -> str:
    """'cuda' or 'cpu' for ``device`` ("auto", "cpu", "cuda", "cuda:N"), with a clear error for CUDA without CUDA."""
    if str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f"device={device!r} is not a device name (expected 'auto', 'cpu' or 'cuda')") from error
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: distributed training supports 'cpu' and 'cuda' only")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for, but CUDA is not available on this machine")
    return kind


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the torchrun process group (if there is one) and return this process's ``DistributedContext``.

    ``device``: ``"auto"`` (CUDA if available, else CPU), ``"cpu"`` or ``"cuda"``. On CUDA each process uses
    ``cuda:LOCAL_RANK`` (and makes it the current device); a distributed CUDA run uses NCCL, a CPU run gloo.
    Without torchrun's environment, or with ``WORLD_SIZE=1``, no process group is created. If a process group is
    already initialised (e.g. by the caller), it is reused.

    Raises ``ValueError`` for an inconsistent environment (``WORLD_SIZE > 1`` without ``RANK``, ``MASTER_ADDR`` or
    ``MASTER_PORT``; a rank outside ``[0, WORLD_SIZE)``; a local rank without a matching GPU) and ``RuntimeError``
    when ``torch.distributed`` is not available in this build of torch.
    """
    kind = _device_type(device)
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size < 1:
        raise ValueError(f"$WORLD_SIZE={world_size} must be >= 1")

    if world_size == 1:
        rank = _env_int("RANK", 0)
        local_rank = _env_int("LOCAL_RANK", 0)
        if rank != 0:
            raise ValueError(f"$RANK={rank} with $WORLD_SIZE=1; the only rank of a single-process run is 0")
    else:
        rank = _env_int("RANK")
        local_rank = _env_int("LOCAL_RANK", rank)
        if not 0 <= rank < world_size:
            raise ValueError(f"$RANK={rank} is outside [0, WORLD_SIZE={world_size})")
        if local_rank < 0:
            raise ValueError(f"$LOCAL_RANK={local_rank} must be >= 0")
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing and not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                f"$WORLD_SIZE={world_size} but {' and '.join('$' + m for m in missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set; launch with "
                "`torchrun --nproc_per_node=N train.py ...` (it sets them) or set them yourself"
            )

    if kind == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(
                f"$LOCAL_RANK={local_rank} but this machine has {count} CUDA device(s); "
                f"use --nproc_per_node <= {count} (or device=cpu)"
            )
        explicit = torch.device(device) if str(device) not in ("auto", "cuda") else None
        index = (
            explicit.index if (world_size == 1 and explicit is not None and explicit.index is not None) else local_rank
        )
        torch_device = torch.device("cuda", index)
        torch.cuda.set_device(torch_device)
    else:
        torch_device = torch.device("cpu")

    if world_size > 1:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build of torch")
        if dist.is_initialized():
            if dist.get_world_size() != world_size or dist.get_rank() != rank:
                raise RuntimeError(
                    f"a process group is already initialised with world size {dist.get_world_size()}"
                    f" and rank {dist.get_rank()}, but the environment says WORLD_SIZE={world_size}, "
                    f"RANK={rank}"
                )
        else:
            backend = "nccl" if kind == "cuda" else "gloo"
            dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=torch_device)


def _collective_device(ctx: DistributedContext) -> torch.device:
    """Where collective tensors must live: the GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return ctx.device if ctx.device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: Any, ctx: DistributedContext) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable object; other ranks' ``obj`` is ignored).

    Returns ``obj`` itself when the context is not distributed.
    """
    if not ctx.enabled:
        return obj
    box = [obj if ctx.rank == 0 else None]
    dist.broadcast_object_list(box, src=0, device=_collective_device(ctx))
    return box[0]


def all_reduce_sum(values: list[float] | torch.Tensor, ctx: DistributedContext) -> list[float] | torch.Tensor:
    """The element-wise sum of ``values`` over all ranks, computed in float64.

    A list of numbers gives a new list of Python floats; a tensor gives a new float64 tensor of the same shape on
    the input's device (the input is never modified). Every rank must pass the same number of values. When the
    context is not distributed the values come back unchanged (as floats / float64).
    """
    if isinstance(values, torch.Tensor):
        if not ctx.enabled:
            return values.detach().to(torch.float64)
        buffer = values.detach().to(_collective_device(ctx), torch.float64, copy=True)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        return buffer.to(values.device)
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"all_reduce_sum takes a list of numbers or a tensor, not {type(values).__name__}")
    numbers = [float(v) for v in values]
    if not ctx.enabled:
        return numbers
    buffer = torch.tensor(numbers, dtype=torch.float64, device=_collective_device(ctx))
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.cpu().tolist()


def all_gather_object(obj: Any, ctx: DistributedContext) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` when not distributed)."""
    if not ctx.enabled:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(ctx: DistributedContext) -> None:
    """Wait until every rank gets here; a no-op when the context is not distributed."""
    if not ctx.enabled:
        return
    if dist.get_backend() == "nccl" and ctx.device.type == "cuda":
        dist.barrier(device_ids=[ctx.device.index])
    else:
        dist.barrier()


def cleanup(ctx: DistributedContext) -> None:
    """Tear the process group down at the end of a run (a no-op when not distributed or already gone)."""
    if ctx.enabled and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
