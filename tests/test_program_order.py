"""No kernel depends on the order its programs run in, except through a documented protocol.

The Triton interpreter runs a grid's programs one after another, in order; a GPU runs them in
any order and at once. Here the interpreter's grid iteration is permuted (reversed, shuffled)
and every kernel -- every path of softmax and cross-entropy, forward and backward, the prep
kernel, the last-program reduction, the slices' two phases and the cooperative launch's ticket
loop, the gradient apply -- must give bit-identical results to the in-order run. (The
protocols that make this hold, tickets and a last-arriving program that sums partials in a
fixed order, are in ``kernels/README.md``.)
"""

from __future__ import annotations

import contextlib
import random
import sys

import pytest
import torch

import tempfast
from tempfast.kernels.heuristics import LaunchConfig
from tempfast.ops.cross_entropy import triton_path as ce_path
from tempfast.ops.distillation import triton_path as distillation_path
from tempfast.ops.softmax import triton_path as softmax_path

from .harness import KERNEL_PATHS, force_config, forced, logits_like

ORDERS = ("reversed", "shuffled")


@contextlib.contextmanager
def program_order(order: str, seed: int = 0):
    """Permute the interpreter's programs: ``GridExecutor.__call__`` iterates
    ``range(grid[i])`` for each axis; inside that frame ``range`` is replaced by a permuted
    list (the module global shadows the builtin)."""
    from triton.runtime import interpreter

    executor = interpreter.GridExecutor.__call__.__code__
    rng = random.Random(seed)
    builtin_range = range

    def permuted(*args):
        r = builtin_range(*args)
        if sys._getframe(1).f_code is not executor:
            return r
        items = list(r)
        if order == "reversed":
            items.reverse()
        else:
            rng.shuffle(items)
        return items

    interpreter.range = permuted
    try:
        yield
    finally:
        del interpreter.range


def test_the_permutation_reaches_the_grid():
    """The hook really reorders programs (a kernel that records its program ids)."""
    import triton
    import triton.language as tl

    @triton.jit
    def order_kernel(out_ptr, count_ptr):
        slot = tl.atomic_add(count_ptr, 1)
        tl.store(out_ptr + slot, tl.program_id(0))

    seen = {}
    for order in ("in order", *ORDERS):
        out = torch.zeros(16, dtype=torch.int32)
        count = torch.zeros(1, dtype=torch.int32)
        ctx = program_order(order) if order != "in order" else contextlib.nullcontext()
        with ctx:
            order_kernel[(16,)](out, count)
        seen[order] = out.tolist()
    assert seen["in order"] == list(range(16))
    assert seen["reversed"] == list(range(15, -1, -1))
    assert sorted(seen["shuffled"]) == list(range(16)) and seen["shuffled"] != list(range(16))


def _config(path: str) -> LaunchConfig:
    """The forced configuration of ``path`` for the rows of 300 classes used here (slices of
    128 columns: three per row)."""
    return forced(path, 300, block_c=128)


def _ce_outputs(reduction: str, probs: bool, upstream: float):
    n, c = 5, 300
    g = torch.Generator().manual_seed(3)
    logits = logits_like(n, c, torch.bfloat16)
    if probs:
        target = torch.softmax(torch.randn(n, c, generator=g), 1)
    else:
        target = torch.randint(0, c, (n,), generator=g)
        target[3] = -100
    x = logits.clone().requires_grad_(True)
    t = torch.linspace(0.5, 2.0, n).requires_grad_(True)
    with tempfast.use_backend("triton"):
        loss = tempfast.cross_entropy(x, target, t, reduction=reduction, label_smoothing=0.1,
                                      weight=torch.rand(c, generator=g) + 0.5)
        loss.backward(torch.full(loss.shape, upstream))
    return loss.detach(), x.grad, t.grad


@pytest.mark.parametrize("path", KERNEL_PATHS)
@pytest.mark.parametrize(("reduction", "probs", "upstream"),
                         [("mean", False, 1.0), ("sum", True, 2.5), ("none", False, 1.5)])
def test_cross_entropy_is_independent_of_program_order(monkeypatch, path, reduction, probs,
                                                       upstream):
    force_config(monkeypatch, ce_path, _config(path))
    expected = _ce_outputs(reduction, probs, upstream)
    for order in ORDERS:
        with program_order(order):
            got = _ce_outputs(reduction, probs, upstream)
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b), (order, path)


@pytest.mark.parametrize("path", KERNEL_PATHS)
@pytest.mark.parametrize("log", [False, True])
def test_softmax_is_independent_of_program_order(monkeypatch, path, log):
    force_config(monkeypatch, softmax_path, _config(path))
    op = tempfast.log_softmax if log else tempfast.softmax

    def run():
        x = logits_like(7, 300, torch.float32).requires_grad_(True)
        t = torch.linspace(0.5, 2.0, 7).requires_grad_(True)
        with tempfast.use_backend("triton"):
            y = op(x, t)
            y.backward(torch.randn(7, 300, generator=torch.Generator().manual_seed(1)))
        return y.detach(), x.grad, t.grad

    expected = run()
    for order in ORDERS:
        with program_order(order):
            got = run()
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b), (order, path)


def test_the_reduction_is_summed_by_the_last_program_in_a_fixed_order():
    """Many programs, a mean over them: whichever program arrives last sums the same
    per-program partials in the same order, so the loss is bit-identical."""
    n, c = 1500, 16  # the rows path: 128 rows per program, 12 programs
    logits = logits_like(n, c, torch.float32)
    target = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(0))
    with tempfast.use_backend("triton"):
        expected = tempfast.cross_entropy(logits, target, 3.0)
        for order in ORDERS:
            with program_order(order):
                assert torch.equal(tempfast.cross_entropy(logits, target, 3.0), expected)


@pytest.mark.parametrize("path", KERNEL_PATHS)
def test_distillation_is_independent_of_program_order(monkeypatch, path):
    force_config(monkeypatch, distillation_path, _config(path))

    def run():
        s = logits_like(9, 300, torch.bfloat16).requires_grad_(True)
        t = logits_like(9, 300, torch.bfloat16, seed=1).requires_grad_(True)
        temp = torch.linspace(0.5, 2.0, 9).requires_grad_(True)
        y = torch.randint(0, 300, (9,), generator=torch.Generator().manual_seed(2))
        y[4] = -100
        with tempfast.use_backend("triton"):
            loss = tempfast.distillation_loss(s, t, temp, target=y, alpha=0.3)
            loss.backward(torch.tensor(1.5))
        return loss.detach(), s.grad, t.grad, temp.grad

    expected = run()
    for order in ORDERS:
        with program_order(order):
            got = run()
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b), (order, path)
