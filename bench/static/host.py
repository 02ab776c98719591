"""Host-side cost of a call: torch ops dispatched, Triton launches, and Python time.

:class:`OpCounter` is a ``TorchDispatchMode`` that counts every aten op dispatched below
autograd, including those inside tempfast's ``torch.library`` custom ops (a custom op is
counted once under its own name and its implementation is re-dispatched with the counter still
active, so the ops it runs are counted too). The op layer takes a traced route under any
dispatch mode (``autograd.is_eager``); the counter hides itself from that test so that the
eager route, the one a training step takes, is what gets counted.

:func:`host_time` measures the wall time per call on tiny CPU tensors (64 x 10, one thread),
median of many calls (tempfast's and eager's alternating), for tempfast's CPU path and for
eager ``F.cross_entropy(x / T, y)`` / ``torch.softmax(x / T, -1)``: a GPU step pays the same Python
and dispatch cost, and at small
class counts that cost is the op's time.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import tempfast

_CUSTOM_KEYS = ("CompositeExplicitAutograd", "CPU")


HOST_VALUE_CHECKS = ("check_temperature_values", "check_class_indices")


def _in_host_value_check() -> bool:
    """Whether the op runs inside one of ``tempfast._checks``' value checks, which read
    host-memory tensors only (on CUDA tensors they return at once): the recording runs on CPU
    tensors, so their ops are counted apart from what a GPU call dispatches."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name in HOST_VALUE_CHECKS and \
                frame.f_globals.get("__name__") == "tempfast._checks":
            return True
        frame = frame.f_back
    return False


def _tensor_bytes(*trees) -> int:
    return sum(x.numel() * x.element_size() for tree in trees
               for x in pytree.tree_leaves(tree) if isinstance(x, torch.Tensor))


class OpCounter(TorchDispatchMode):
    """Counts aten ops (``ops``) and tempfast custom ops (``custom``) per phase, and the bytes
    of the tensors that the ops which compute on a GPU (:func:`bench.static.model.
    launches_kernel`, matrix products apart: the model times those from their shapes) read
    and write (``side_bytes``: each positional argument and the result once)."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = ""
        self.ops: Counter[tuple[str, str]] = Counter()
        self.custom: Counter[tuple[str, str]] = Counter()
        self.host_checks: Counter[tuple[str, str]] = Counter()  # value checks (host tensors)
        self.side_bytes: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from .model import is_gemm, launches_kernel

        kwargs = kwargs or {}
        if func.namespace in ("aten", "prim", "prims"):
            name = str(func)
            self.ops[(self.phase, name)] += 1
            host_check = _in_host_value_check()
            if host_check:
                self.host_checks[(self.phase, name)] += 1
            out = func(*args, **kwargs)
            if not host_check and launches_kernel(name) and not is_gemm(name):
                self.side_bytes[self.phase] += _tensor_bytes(args, out)  # out= is the result
            return out
        self.custom[(self.phase, str(func))] += 1
        for key in _CUSTOM_KEYS:
            if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), key):
                keyset = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))
                with self:
                    return func.redispatch(keyset, *args, **kwargs)
        return func(*args, **kwargs)

    def total(self, phase: str) -> int:
        return sum(n for (p, _), n in self.ops.items() if p == phase)

    def by_op(self, phase: str, on_gpu: bool = False) -> dict[str, int]:
        """Ops of ``phase`` by name; ``on_gpu``: without the host-memory value checks, which a
        call on CUDA tensors skips."""
        ops = Counter({op: n for (p, op), n in self.ops.items() if p == phase})
        if on_gpu:
            ops -= Counter({op: n for (p, op), n in self.host_checks.items() if p == phase})
        return dict(sorted(ops.items(), key=lambda kv: -kv[1]))

    @contextlib.contextmanager
    def counting(self) -> Iterator[OpCounter]:
        from tempfast.ops import autograd

        original = autograd._get_current_dispatch_mode

        def hidden():
            mode = original()
            return None if mode is self else mode

        autograd._get_current_dispatch_mode = hidden
        try:
            with self:
                yield self
        finally:
            autograd._get_current_dispatch_mode = original


def _ce_steps(rows: int, classes: int) -> dict[str, Callable[[], object]]:
    gen = torch.Generator().manual_seed(0)
    x = (8.0 * torch.randn(rows, classes, generator=gen)).requires_grad_(True)
    y = torch.randint(0, classes, (rows,), generator=gen)

    def fwd_bwd(loss_fn):
        def step():
            x.grad = None
            loss_fn().backward()
        return step

    return {
        "tempfast ce fwd": lambda: tempfast.cross_entropy(x.detach(), y, 8.0),
        "eager ce fwd": lambda: F.cross_entropy(x.detach() / 8.0, y),
        "tempfast ce fwd+bwd": fwd_bwd(lambda: tempfast.cross_entropy(x, y, 8.0)),
        "eager ce fwd+bwd": fwd_bwd(lambda: F.cross_entropy(x / 8.0, y)),
        "tempfast softmax fwd": lambda: tempfast.softmax(x.detach(), 8.0),
        "eager softmax fwd": lambda: torch.softmax(x.detach() / 8.0, -1),
    }


def _paired_medians(a: Callable[[], object], b: Callable[[], object], calls: int,
                    warmup: int = 50) -> tuple[float, float]:
    """Median seconds per call of ``a`` and of ``b``, their calls alternating, so that both see
    the same load on a shared machine (timed one after the other, a busy neighbour moves the
    ratio by 2x)."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for _ in range(calls):
        start = time.perf_counter()
        a()
        mid = time.perf_counter()
        b()
        ta.append(mid - start)
        tb.append(time.perf_counter() - mid)
    return statistics.median(ta), statistics.median(tb)


def host_time(rows: int = 64, classes: int = 10, calls: int = 2000) -> dict[str, float]:
    """Median seconds per call on ``rows x classes`` fp32 CPU tensors, one thread, for
    tempfast's CPU path (``TEMPFAST_BACKEND=torch``) and eager PyTorch, the two calls of each
    pair alternating."""
    from tempfast import backend

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with backend.use_backend("torch"):
            steps = _ce_steps(rows, classes)
            out: dict[str, float] = {}
            for what in ("ce fwd", "ce fwd+bwd", "softmax fwd"):
                ours, eager = _paired_medians(steps[f"tempfast {what}"], steps[f"eager {what}"],
                                              calls)
                out[f"tempfast {what}"], out[f"eager {what}"] = ours, eager
            return out
    finally:
        torch.set_num_threads(threads)


def cpu_path_op_counts(rows: int = 64, classes: int = 10) -> dict[str, dict[str, int]]:
    """Aten ops per call of tempfast's CPU path and of eager PyTorch (forward, backward)."""
    from tempfast import backend

    gen = torch.Generator().manual_seed(0)
    x = (8.0 * torch.randn(rows, classes, generator=gen)).requires_grad_(True)
    y = torch.randint(0, classes, (rows,), generator=gen)
    out: dict[str, dict[str, int]] = {}
    calls = {"tempfast": lambda: tempfast.cross_entropy(x, y, 8.0),
             "eager": lambda: F.cross_entropy(x / 8.0, y)}
    with backend.use_backend("torch"):
        for name, call in calls.items():
            counter = OpCounter()
            with counter.counting():
                counter.phase = "forward"
                loss = call()
                counter.phase = "backward"
                loss.backward()
            x.grad = None
            out[name] = {"forward": counter.total("forward"),
                         "backward": counter.total("backward")}
    return out
