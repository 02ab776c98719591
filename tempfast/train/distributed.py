"""Multi-process training: ``tempfast train --nproc-per-node K ...`` (or ``torchrun
--nproc_per_node=K -m tempfast train ...``).

torchrun (or :func:`launch_local`, which runs the same elastic launcher in-process) sets
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; with ``WORLD_SIZE > 1`` the process group uses
NCCL on CUDA devices and gloo on the CPU. Rank 0 logs and writes files; every rank trains on
its own shard of each epoch (see ``DataBundle.epoch_plan``).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from .. import backend
from ..errors import OutputError, UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """Where this process runs: its rank among ``world_size`` and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; then :func:`check_backend` on it.

    Raises:
        UsageError: ``cuda`` without a GPU, or a backend request that cannot run there.
    """
    if name not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    else:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    check_backend(device)
    return device


def check_backend(device: torch.device) -> str:
    """The backend (``"triton"`` or ``"torch"``) that runs the ops on ``device``.

    Raises:
        UsageError: (one line) ``TEMPFAST_BACKEND`` names no backend, or asks for Triton
            where it cannot run (not installed; CPU tensors without ``TRITON_INTERPRET=1``).
    """
    try:
        return backend.resolve(device)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None


def setup(device: str) -> Context:
    """Pick this process's device (:func:`resolve_device`, which also checks the backend),
    then join the torchrun process group if there is one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Context(rank, world_size, local_rank, dev)


def teardown(ctx: Context) -> None:
    """Leave the process group: every rank first waits for the others (no rank may exit while
    another still talks to it), then the group is destroyed. Garbage is collected first: a
    DDP model in a reference cycle keeps its reducer, and the reducer the gloo group, alive
    past ``destroy_process_group`` until the interpreter's exit, where destroying the group's
    worker threads can abort the process ("terminate called without an active exception",
    seen once in CI after a finished run)."""
    if ctx.distributed and dist.is_initialized():
        gc.collect()
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def all_reduce_sum(ctx: Context, t: Tensor) -> Tensor:
    """Sum ``t`` over ranks, in place (no-op for one process)."""
    if ctx.distributed:
        dist.all_reduce(t)
    return t


def all_reduce_max(ctx: Context, t: Tensor) -> Tensor:
    """Elementwise max of ``t`` over ranks, in place (no-op for one process)."""
    if ctx.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_gather(ctx: Context, obj: object) -> list:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast(ctx: Context, obj: object) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


_SHARED_ERRORS = {cls.__name__: cls for cls in (UsageError, OutputError)}


def run_on_main(ctx: Context, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Run ``fn`` on rank 0 and return its result on every rank; a :class:`UsageError` or
    :class:`OutputError` it raises is raised on every rank (so no rank waits forever)."""
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn(*args, **kwargs)
        except (UsageError, OutputError) as exc:
            error = (type(exc).__name__, str(exc))
    result, error = broadcast(ctx, (result, error))
    if error is not None:
        raise _SHARED_ERRORS[error[0]](error[1])
    return result


def broadcast_buffers(ctx: Context, module: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm statistics) on every rank, in place.

    DistributedDataParallel broadcasts them at the start of each training forward; anything
    that runs the model in eval mode before that (crafting PGD examples) would otherwise see
    each rank's own statistics of its last batch, which a checkpoint (rank 0's) cannot
    restore: a resumed run would then differ from an uninterrupted one."""
    if not ctx.distributed:
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=0)


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


EXIT_INTERRUPTED = 130


def launch_local(nproc: int, argv: list[str]) -> int:
    """Run ``python -m tempfast <argv>`` in ``nproc`` processes on this machine, as ``torchrun
    --standalone --nproc_per_node=nproc`` would, and return their exit status.

    Unlike torchrun, a Ctrl-C (the workers save a checkpoint and rank 0 says where) or a
    failing worker (rank 0 prints its one-line error) ends with that status and no traceback
    from the launcher: 130 when interrupted, else the first failure's exit code.
    """
    import logging
    import sys
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The elastic agent's loggers each set their own level (its warnings would add lines).
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc,
                          run_id=str(uuid.uuid4()), rdzv_backend="c10d",
                          rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.2)
    try:
        elastic_launch(config, sys.executable)("-m", "tempfast", *argv)
    except SignalException:
        return EXIT_INTERRUPTED
    except ChildFailedError as exc:
        codes = [f.exitcode for f in exc.failures.values()]
        return EXIT_INTERRUPTED if EXIT_INTERRUPTED in codes else (codes[0] or 1)
    return 0
