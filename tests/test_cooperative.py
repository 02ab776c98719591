"""The cooperative one-read launch of the slices kernels (``PHASE = 0``), both outcomes of its
bounded wait, under the interpreter.

The interpreter runs one program at a time, so in a forced cooperative launch
(``TEMPFAST_COOPERATIVE=1``) every slice of a row but the last one to arrive waits in vain:
its wait gives up after ``max_polls`` polls, the item goes to the repair list and the repair
launch finishes it. The other outcome, a wait that succeeds after polling, is produced by the
test hook of :func:`tempfast.ops.launch.wait_hook`: a ``PHASE = 1`` launch publishes every
slice's partials first (standing in for the row's other programs) and each poll then counts
one more arrival. Both must give what the two-launch path gives, and the fp64 reference.
Every kernel that waits: the cross-entropy (mean, sum, per-row, in-place, learnable scalar and
per-row T), the softmax and log-softmax forward and their backward with dL/dT, and the
distillation (plain, and with a target, the teacher's gradient and a learnable per-row T).
"""

from __future__ import annotations

import pytest
import torch

import tempfast
from tempfast import reference
from tempfast.kernels.common import WS_GAVE_UP
from tempfast.kernels.heuristics import LaunchConfig
from tempfast.ops import launch
from tempfast.ops.cross_entropy import triton_path as ce_path
from tempfast.ops.distillation import triton_path as kd_path
from tempfast.ops.softmax import triton_path as softmax_path

from .harness import assert_close, logits_like, raises_one_line

N_ROWS, N_COLS, BLOCK_C = 3, 1000, 256  # 4 slices per row, the last one partial
N_SLICES = 4
CONFIG = LaunchConfig("slices", 1, BLOCK_C, N_SLICES, 4)


class _Spy:
    """Wraps ``run_slices``: records each slices launch's grid, its give-ups and its row
    counters; with ``publish_first`` a cooperative launch is preceded by a ``PHASE = 1``
    launch that publishes every slice's partials (the hook's "other programs")."""

    def __init__(self, original, publish_first: bool):
        self.original = original
        self.publish_first = publish_first
        self.launches: list[dict] = []

    def __call__(self, kernel, args, kw, grid, items, stats_kw=None):
        named = dict(zip(kernel.arg_names, args, strict=False))
        if self.publish_first and grid is not None:
            kernel[(items,)](*args, 0, 0, 0, **(stats_kw or kw), PHASE=1)
        self.original(kernel, args, kw, grid, items, stats_kw)
        ints = named["ws_ptr"].view(torch.int32)
        start, n_rows = named["sync_off"], named["n_rows"]
        self.launches.append({"kernel": kernel.fn.__name__, "grid": grid,
                              "gave_up": int(ints[WS_GAVE_UP.value]),
                              "counters": ints[start:start + n_rows].clone()})


def _run(monkeypatch, fn, cooperative: str, publish_first: bool = False):
    """``fn()`` on the Triton backend with 4-slice rows, ``TEMPFAST_COOPERATIVE`` set to
    ``cooperative``; returns its outputs and the recorded slices launches."""
    monkeypatch.setenv("TEMPFAST_COOPERATIVE", cooperative)
    spy = _Spy(launch.run_slices, publish_first)
    with monkeypatch.context() as m:
        m.setattr(launch, "run_slices", spy)
        m.setattr(ce_path, "run_slices", spy)
        m.setattr(kd_path, "run_slices", spy)
        m.setattr(ce_path, "config_for", lambda *a, **k: CONFIG)
        m.setattr(kd_path, "config_for", lambda *a, **k: CONFIG)
        m.setattr(kd_path.kernels, "coop_config", lambda *a, **k: CONFIG)
        m.setattr(softmax_path, "config_for", lambda *a, **k: CONFIG)
        hook = (1000, 1) if publish_first else (2, 0)
        with launch.wait_hook(*hook), tempfast.use_backend("triton"):
            out = fn()
    return out, spy.launches


def _inputs(target_in_last_slice: bool = False):
    x = logits_like(N_ROWS, N_COLS, torch.float32, seed=3)
    gen = torch.Generator().manual_seed(4)
    low = (N_SLICES - 1) * BLOCK_C if target_in_last_slice else 0
    y = torch.randint(low, N_COLS, (N_ROWS,), generator=gen)
    y[1] = -100 if not target_in_last_slice else y[1]
    return x, y


def _ce_case(option: str, target_in_last_slice: bool = False):
    """A cross-entropy call with ``option``: returns ``(fn, reference_fn)``, each giving the
    loss and the gradients (logits, temperature)."""
    x0, y = _inputs(target_in_last_slice)
    per_row = option == "per_row_t"
    t0 = torch.linspace(0.5, 4.0, N_ROWS) if per_row else torch.tensor(2.0)
    learnable = option in ("learnable_t", "per_row_t")
    reduction = {"sum": "sum", "none": "none"}.get(option, "mean")

    def run(op, dtype=torch.float32):
        leaf = x0.clone().to(dtype).requires_grad_(True)
        t = t0.clone().to(dtype).requires_grad_(learnable) if learnable else 2.0
        inplace = {"inplace_backward": True} if option == "inplace" and op is not \
            reference.cross_entropy else {}
        x = leaf * 1.0 if inplace else leaf  # the gradient goes over a layer's output
        loss = op(x, y, t, reduction=reduction, **inplace)
        upstream = torch.linspace(0.5, 1.5, N_ROWS, dtype=loss.dtype) if loss.dim() else 1.0
        (loss * upstream).sum().backward()
        return loss.detach(), leaf.grad, (t.grad if learnable else None)

    return (lambda: run(tempfast.cross_entropy),
            lambda: run(reference.cross_entropy, torch.float64))


def _softmax_case(option: str):
    x0 = logits_like(N_ROWS, N_COLS, torch.float32, seed=5)
    dy = logits_like(N_ROWS, N_COLS, torch.float32, seed=6, scale=1.0)
    t0 = torch.linspace(0.5, 4.0, N_ROWS)
    log = option == "log_softmax"

    def run(mod, dtype=torch.float32):
        x = x0.clone().to(dtype).requires_grad_(True)
        t = t0.clone().to(dtype).requires_grad_(True)
        y = (mod.log_softmax if log else mod.softmax)(x, t)
        (y * dy.to(dtype)).sum().backward()
        return y.detach(), x.grad, t.grad

    return lambda: run(tempfast), lambda: run(reference, torch.float64)


def _kd_case(option: str):
    """A distillation call: plain KD, or with everything (a hard-label target, the teacher's
    gradient, a learnable per-row T)."""
    s0 = logits_like(N_ROWS, N_COLS, torch.float32, seed=7)
    t0 = logits_like(N_ROWS, N_COLS, torch.float32, seed=8, scale=4.0)
    y = torch.randint(0, N_COLS, (N_ROWS,), generator=torch.Generator().manual_seed(9))
    extras = option == "everything"

    def run(op, dtype=torch.float32):
        s = s0.clone().to(dtype).requires_grad_(True)
        teacher = t0.clone().to(dtype).requires_grad_(extras)
        temp = torch.linspace(0.5, 4.0, N_ROWS, dtype=dtype).requires_grad_(True) if extras \
            else 2.0
        kw = {"target": y, "reduction": "none"} if extras else {}
        loss = op(s, teacher, temp, **kw)
        upstream = torch.linspace(0.5, 1.5, N_ROWS, dtype=loss.dtype) if loss.dim() else 1.0
        (loss * upstream).sum().backward()
        return loss.detach(), s.grad, (temp.grad if extras else None)

    return (lambda: run(tempfast.distillation_loss),
            lambda: run(reference.distillation_loss, torch.float64))


CASES = [("ce", o) for o in ("mean", "sum", "none", "inplace", "learnable_t", "per_row_t")] + \
    [("softmax", o) for o in ("softmax", "log_softmax")] + \
    [("kd", o) for o in ("plain", "everything")]
WAITING = {"ce": {"ce_slices_kernel"},
           "softmax": {"softmax_slices_kernel", "softmax_bwd_slices_kernel"},
           "kd": {"kd_coop_slices_kernel"}}


def _case(op: str, option: str, **kw):
    if op == "kd":
        return _kd_case(option)
    return _ce_case(option, **kw) if op == "ce" else _softmax_case(option)


def _assert_same(actual, expected, rel, what):
    for name, a, e in zip(("output", "d/dx", "d/dT"), actual, expected, strict=True):
        if e is None:
            assert a is None
            continue
        assert_close(a, e.to(a.dtype), rel, f"{what}: {name}", floor=1e-6)


@pytest.mark.parametrize(("op", "option"), CASES)
def test_waits_that_give_up_are_repaired_exactly(monkeypatch, op, option):
    """Forced cooperative launches on the interpreter: all slices of a row but the last give
    up, the repair launch finishes them; results as the two-launch path's and the fp64
    reference's."""
    fn, ref_fn = _case(op, option)
    two_launch, plain = _run(monkeypatch, fn, "0")
    cooperative, launches = _run(monkeypatch, fn, "1")
    assert {lc["kernel"] for lc in launches} == WAITING[op]
    assert all(lc["grid"] is None for lc in plain)
    for lc in launches:  # every row: N_SLICES - 1 slices gave up, the last one completed
        assert lc["grid"] == 1 and lc["gave_up"] == N_ROWS * (N_SLICES - 1), lc
        assert lc["counters"].tolist() == [N_SLICES] * N_ROWS
    _assert_same(cooperative, two_launch, 1e-6, "cooperative vs two launches")
    _assert_same(cooperative, ref_fn(), 2e-5, "cooperative vs fp64 reference")


@pytest.mark.parametrize(("op", "option"), [("ce", "mean"), ("ce", "inplace"),
                                            ("ce", "per_row_t"), ("softmax", "log_softmax"),
                                            ("kd", "everything")])
def test_waits_that_succeed_after_polling_finish_in_the_one_read_launch(monkeypatch, op,
                                                                        option):
    """The hook's polls bring each row's first slice to completion after ``N_SLICES`` polls
    (its counter then reads twice the slices); no item gives up, and the results are the
    two-launch path's. (In-place: the targets lie in the last slice, which the hook's
    sequential order writes last, as concurrent programs of a row would only write after all
    had read.)"""
    fn, ref_fn = _case(op, option, **({"target_in_last_slice": True} if op == "ce" else {}))
    two_launch, _ = _run(monkeypatch, fn, "0")
    cooperative, launches = _run(monkeypatch, fn, "1", publish_first=True)
    assert {lc["kernel"] for lc in launches} == WAITING[op]
    for lc in launches:
        assert lc["gave_up"] == 0, lc
        assert lc["counters"].tolist() == [2 * N_SLICES] * N_ROWS
    _assert_same(cooperative, two_launch, 1e-6, "polled cooperative vs two launches")
    _assert_same(cooperative, ref_fn(), 2e-5, "polled cooperative vs fp64 reference")


def test_the_switch_is_checked_and_zero_forces_the_two_launches(monkeypatch):
    fn, _ = _case("softmax", "softmax")
    monkeypatch.setenv("TEMPFAST_COOPERATIVE", "yes")
    with tempfast.use_backend("triton"), monkeypatch.context() as m:
        m.setattr(softmax_path, "config_for", lambda *a, **k: CONFIG)
        raises_one_line(ValueError, "TEMPFAST_COOPERATIVE", tempfast.softmax,
                        torch.zeros(2, N_COLS), 2.0)
    monkeypatch.setattr(launch, "resident_override", lambda kernel, args, kw: 10**6)
    _, launches = _run(monkeypatch, fn, "0")
    assert launches and all(lc["grid"] is None for lc in launches)
    _, launches = _run(monkeypatch, fn, "")  # unset: residency decides (here: enough)
    assert launches and all(lc["grid"] == N_ROWS * N_SLICES for lc in launches)
