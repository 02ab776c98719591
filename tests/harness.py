"""The shared harness of the op tests (``tests/test_<op>.py``): inputs, dtype-aware comparisons
with the float64 oracle, and the switches that make each path of an op run.

Paths (:data:`PATHS`; every op test runs each of them):

* ``torch``: the chunked PyTorch path (``torch_path.py``), even for small calls, whose default
  is the ``aten`` route (stock aten ops: the oracle's own code, so a test on it would compare
  aten with aten);
* ``triton``: the Triton kernels (``triton_path.py``), under the interpreter on CPU tensors;
* ``aten``: the default torch backend, where small calls take the ``aten`` route (tested on
  purpose by a few tests, and by every test that runs without choosing a path).

:func:`force_config` forces a launch configuration of an op's Triton path (rows, slices, one
slice), so the interpreter runs the paths that large shapes would take.
"""

from __future__ import annotations

import contextlib

import torch

import tempfast
from tempfast.kernels.heuristics import LaunchConfig, cdiv, next_pow2
from tempfast.ops import dispatch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PATHS = ("torch", "triton")

# Absolute tolerances relative to the largest magnitude of the expected tensor. fp32: the
# kernels and the oracle differ only by fp32 rounding; fp16 / bf16: outputs are rounded to the
# dtype's 11 / 8 significant bits, the oracle is float64 on the same (rounded) inputs.
REL_TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2,
           torch.float64: 1e-10}
# The fp32 loss / lse / dT are compared with this tolerance whatever the input dtype.
LOSS_TOL = 2e-5


@contextlib.contextmanager
def on_path(name: str):
    """Run the ops on path ``name`` (``torch``, ``triton`` or ``aten``; see the module
    docstring) inside the block."""
    if name == "triton":
        with tempfast.use_backend("triton"):
            yield
        return
    if name not in ("torch", "aten"):
        raise ValueError(f"unknown path {name!r}")
    small = dispatch.SMALL_CPU_ELEMENTS
    if name == "torch":
        dispatch.SMALL_CPU_ELEMENTS = -1  # no call is small: the chunked path
    try:
        with tempfast.use_backend("torch"):
            yield
    finally:
        dispatch.SMALL_CPU_ELEMENTS = small


def run_path(name: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on path ``name``."""
    with on_path(name):
        return fn(*args, **kwargs)


def forced(path: str, n_cols: int, block_c: int = 256) -> LaunchConfig:
    """A launch configuration of the kernel path ``path`` for rows of ``n_cols``: ``rows``
    (two whole rows per program), ``slices`` (slices of ``block_c`` columns; under the
    interpreter, the two-phase fallback) or ``one_slice`` (the cooperative one-read launch of a
    row that is one slice: the ticket loop, the counters and the combine run)."""
    if path == "rows":
        return LaunchConfig("rows", 2, max(16, next_pow2(n_cols)), 1, 4)
    if path == "one_slice":
        return LaunchConfig("slices", 1, max(16, next_pow2(n_cols)), 1, 4)
    return LaunchConfig("slices", 1, block_c, cdiv(n_cols, block_c), 4)


KERNEL_PATHS = ("rows", "slices", "one_slice")


def force_config(monkeypatch, triton_path, cfg: LaunchConfig) -> None:
    """Make ``triton_path`` (an op's ``triton_path`` module) launch with ``cfg``."""
    monkeypatch.setattr(triton_path, "config_for", lambda x, *args, **kwargs: cfg)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str,
                 floor: float = 1.0) -> None:
    """``|actual - expected| <= rel * max(floor, max|expected|)`` elementwise; NaN and
    infinities must match exactly.

    ``floor=1`` suits losses; gradients, which can be tiny, use a tiny floor so that the
    tolerance follows their own scale.
    """
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    a, e = actual.double(), expected.double()
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    assert torch.equal(nan_a, nan_e), f"{what}: NaN pattern differs"
    infinite = torch.isinf(e)
    assert torch.equal(a[infinite], e[infinite]), f"{what}: infinities differ"
    keep = ~nan_e & ~infinite
    a, e = a[keep], e[keep]
    if e.numel() == 0:
        return
    scale = max(floor, e.abs().max().item())
    err = (a - e).abs().max().item()
    assert err <= rel * scale, f"{what}: max abs error {err:.3g} > {rel * scale:.3g}"


def raises_one_line(exc_type, match: str, fn, *args, **kwargs) -> str:
    """``fn(*args, **kwargs)`` raises ``exc_type`` whose one-line message matches ``match``;
    returns the message."""
    import pytest

    with pytest.raises(exc_type, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, f"multi-line error: {message!r}"
    return message


def assert_refuses_double_backward(loss: torch.Tensor, inputs) -> None:
    """``create_graph=True`` through ``loss`` raises, naming an oracle that exists
    (``tempfast.reference.<name>``, twice differentiable)."""
    import re

    import pytest

    with pytest.raises(RuntimeError, match="double backward") as info:
        torch.autograd.grad(loss.sum(), inputs, create_graph=True)
    (name,) = re.findall(r"tempfast\.reference\.(\w+)", str(info.value))
    assert callable(getattr(tempfast.reference, name, None)), str(info.value)


def logits_like(n: int, c: int, dtype: torch.dtype, seed: int = 0, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g) * scale).to(dtype)


def targets(n: int, c: int, seed: int = 0) -> torch.Tensor:
    """``n`` uniform class indices in ``[0, c)``."""
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


def temperature_for(kind, n_rows: int, seed: int = 0):
    """A float, or for ``"rows"`` one temperature per row in [0.25, 4]."""
    if kind == "rows":
        g = torch.Generator().manual_seed(seed + 1)
        return torch.rand(n_rows, generator=g) * 3.75 + 0.25
    return kind


def _gloo_worker(rank: int, world: int, init_file: str, cases, args: tuple, errors) -> None:
    """One rank: its cases, then a clean exit. A rank whose cases passed leaves with
    ``os._exit(0)`` once its group is destroyed: the interpreter's own teardown, with gloo's
    threads still being joined, has aborted ("terminate called without an active exception",
    SIGABRT) on this machine after every check had passed; nothing after the checks is
    needed."""
    import datetime
    import os
    import traceback

    import torch.distributed as dist

    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=120))
        torch.set_num_threads(1)
        cases(rank, *args)
        dist.barrier()
    except BaseException:
        errors.put(f"rank {rank}: {traceback.format_exc()}")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    os._exit(0)


def run_on_gloo_ranks(world: int, init_file: str, cases, *args) -> None:
    """``cases(rank, *args)`` on ``world`` spawned gloo processes (one thread each); fails with
    every failing rank's traceback."""
    import contextlib

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    with contextlib.suppress(mp.ProcessRaisedException):  # the queue says what failed
        mp.spawn(_gloo_worker, args=(world, init_file, cases, args, errors), nprocs=world,
                 join=True)
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    assert not messages, "\n".join(messages)
