"""The process group a data-parallel run trains in: set up from the launcher's environment (torchrun,
``accelerate launch``, or ``prompttune train --nproc``), and the few collectives the Trainer needs.

One process (no ``WORLD_SIZE`` above 1 in the environment) has no context: ``current()`` is None and the
Trainer runs exactly as before.
"""

from __future__ import annotations

import atexit
import datetime
import gc
import os
from collections.abc import Callable

import torch
import torch.distributed as dist

from prompttune.core.errors import PromptTuneError
from prompttune.distributed.env import env_world

DEFAULT_TIMEOUT_S = 1800.0  # a collective waits this long for the other processes (PROMPTTUNE_DIST_TIMEOUT)

_current: DistContext | None = None


class DistributedError(PromptTuneError):
    """Another training process failed or stopped answering; the run stops and can be resumed."""


class DistContext:
    """This process's rank in a data-parallel run of ``world`` processes."""

    def __init__(self, rank: int, world: int, local_rank: int = 0, device: torch.device | None = None):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.device = device or torch.device("cpu")  # where collectives' buffers live (NCCL: the rank's GPU)
        self.step = 0  # the step being trained, for error messages

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: list[int]) -> list[int]:
        """This rank's part of a global batch: contiguous, sizes differing by at most one (length-sorted batches
        keep similar rows together, so each part stays evenly padded)."""
        n, w = len(batch), self.world
        start = self.rank * (n // w) + min(self.rank, n % w)
        return batch[start : start + n // w + (1 if self.rank < n % w else 0)]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over every rank (in place, on this rank's device; the result is returned on the
        tensor's own device)."""
        buf = tensor.to(self.device)
        try:
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        except (RuntimeError, dist.DistBackendError) as e:  # a peer died, or the timeout passed
            raise self._lost(e) from e
        if buf is not tensor:
            tensor.copy_(buf)
        return tensor

    def agree(self, flag: bool) -> bool:
        """True on every rank when any rank says True (e.g. one rank's clock ran past the time budget)."""
        return bool(self.all_reduce_sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)

    def from_main(self, value: float) -> float:
        """Rank 0's value on every rank (e.g. its elapsed time, so every rank replans the same)."""
        t = torch.tensor([value if self.is_main else 0.0], dtype=torch.float64)
        return float(self.all_reduce_sum(t).item())

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Rank 0's values copied into every rank's tensors (in place)."""
        for t in tensors:
            buf = t.detach().to(self.device)
            try:
                dist.broadcast(buf, src=0)
            except (RuntimeError, dist.DistBackendError) as e:
                raise self._lost(e) from e
            if buf is not t:
                t.detach().copy_(buf)

    def barrier(self) -> None:
        try:
            dist.barrier()
        except (RuntimeError, dist.DistBackendError) as e:
            raise self._lost(e) from e

    def _lost(self, e: BaseException) -> DistributedError:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        return DistributedError(
            f"rank {self.rank} of {self.world}: lost contact with another training process at step {self.step} "
            f"({first}). The run stopped; its last checkpoint (written at every validation) is kept: rerun the same "
            "command with --resume, with this or any other number of processes."
        )


def main_writes(ctx: DistContext | None, write: Callable[[], object] | None) -> None:
    """``write()`` (None: nothing to write) in this process alone if it is rank 0 or runs alone; then every rank
    waits for it, so none reads what rank 0 writes, nor tears the group down, before it is written."""
    if write is not None and (ctx is None or ctx.is_main):
        write()
    if ctx is not None:
        ctx.barrier()


def current() -> DistContext | None:
    """The context of a data-parallel run set up by ``init_from_env`` (None: one process)."""
    return _current


def init_from_env(device: str | None = None, timeout_s: float | None = None) -> DistContext | None:
    """Join the process group the launcher described (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); gloo on the
    CPU, NCCL when ``device`` is a GPU (each rank then uses ``cuda:LOCAL_RANK``). None for a single process."""
    global _current
    if _current is not None:
        return _current
    world = env_world()
    if world == 1:
        return None
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise PromptTuneError(
            f"WORLD_SIZE={world} but {', '.join(missing)} unset: start through torchrun "
            "(torchrun --nproc-per-node N -m prompttune train ...) or prompttune train --nproc N."
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if timeout_s is None:
        timeout_s = float(os.environ.get("PROMPTTUNE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    from prompttune.core.backbone import resolve_device

    gpu = resolve_device(device).type == "cuda"  # --device / PROMPTTUNE_DEVICE, as the backbone will read it
    where = torch.device("cpu")
    if gpu:
        where = torch.device("cuda", local_rank)
        torch.cuda.set_device(where)
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                "nccl" if gpu else "gloo",
                rank=rank,
                world_size=world,
                timeout=datetime.timedelta(seconds=timeout_s),
            )
        except (RuntimeError, ValueError, dist.DistNetworkError) as e:
            raise PromptTuneError(
                f"rank {rank} of {world}: could not join the process group at "
                f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({str(e).splitlines()[0][:300]})."
            ) from e
    _current = DistContext(rank, world, local_rank, where)
    # Leave the group before the interpreter is torn down: a gloo group still alive then has worker threads that
    # abort the process ("terminate called without an active exception", SIGABRT) after a run that succeeded
    # (pytorch/pytorch#190489). Local work only: it waits for no other rank, so a lost rank cannot hang it.
    atexit.register(shutdown)
    return _current


def shutdown() -> None:
    """Leave the process group (after the last collective)."""
    global _current
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        gc.collect()  # free the group (and join its worker threads) now, while the interpreter is whole
    _current = None
