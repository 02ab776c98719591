"""tempfast.contrastive_loss and tempfast.nn.ContrastiveLoss (CLIP's loss) and
tempfast.nt_xent_loss against the float64 reference with the whole B x B matrix, on both paths,
with gradients for a, b and T; and with the batch split over 2 and 3 gloo processes (uneven,
one rank empty)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

import tempfast
from tempfast import reference
from tempfast.ops.linear_cross_entropy import op as linear_op

from .harness import (
    LOSS_TOL,
    REL_TOL,
    assert_close,
    on_path,
    raises_one_line,
    run_on_gloo_ranks,
)


def _features(b, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    c = torch.nn.functional.normalize(a + 0.5 * torch.randn(b, d, generator=g), dim=1)
    return a.to(dtype), c.to(dtype)


def _check(a, b, t, path, dtype, **kw):
    leaves = [a.clone().requires_grad_(True), b.clone().requires_grad_(True),
              torch.tensor(t, requires_grad=True)]
    with on_path(path):
        loss = tempfast.contrastive_loss(*leaves, **kw)
    upstream = torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape)
    (loss * upstream).sum().backward()
    refs = [a.double().requires_grad_(True), b.double().requires_grad_(True),
            torch.tensor(t, dtype=torch.float64, requires_grad=True)]
    expected = reference.contrastive_loss(*refs, **kw)
    (expected * upstream.double()).sum().backward()
    assert loss.dtype == torch.float32
    assert_close(loss, expected, LOSS_TOL if dtype == torch.float32 else 5e-3, "loss")
    for got, ref, what in zip(leaves, refs, ("a", "b", "T"), strict=True):
        assert_close(got.grad, ref.grad, REL_TOL[dtype] * 4, f"d{what}", floor=1e-6)


@pytest.mark.parametrize("path", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("symmetric", [True, False])
def test_matches_the_reference_with_chunks_smaller_than_the_batch(path, dtype, symmetric,
                                                                  monkeypatch):
    monkeypatch.setattr(linear_op, "CHUNK_ELEMENTS", 37 * 8)  # 8 rows of 37: B not a multiple
    a, b = _features(37, 16, dtype)
    _check(a, b, 0.1, path, dtype, symmetric=symmetric)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reductions_and_a_batch_of_one(reduction):
    a, b = _features(9, 5, torch.float32, seed=3)
    _check(a, b, 0.5, "torch", torch.float32, reduction=reduction)
    one_a, one_b = _features(1, 5, torch.float32, seed=4)
    loss = tempfast.contrastive_loss(one_a, one_b, 0.07)
    assert loss.item() == 0.0  # one candidate: p = 1


def test_bad_inputs_get_one_line_errors():
    a, b = _features(4, 3, torch.float32)
    bad = [((a, b[:3]), {}, "b: expected the shape of a"),
           ((a[0], b[0]), {}, "a: expected shape"),
           ((a, b.double()), {}, "b: expected a's dtype"),
           ((a, b, 0.0), {}, "temperature: must be finite and > 0"),
           ((a, b, float("nan")), {}, "temperature: must be finite and > 0"),
           ((a, b, torch.ones(2)), {}, "temperature: expected a number or a 0-dim tensor"),
           ((a[:0], b[:0]), {}, "a: the batch is empty"),
           ((a, b), {"reduction": "batchmean"}, "reduction: expected one of"),
           ((torch.where(a > 0, float("nan"), a), b), {}, "a: features must be finite")]
    for args, kw, match in bad:
        raises_one_line((ValueError, TypeError), match, tempfast.contrastive_loss, *args, **kw)
    raises_one_line(ValueError, "temperature: must be finite and > 0", lambda: tempfast.
                    contrastive_loss(a, b, torch.tensor(-1.0)).item())


def test_the_module_learns_t_clamps_its_inverse_and_is_in_parameter_groups():
    loss_fn = tempfast.nn.ContrastiveLoss()
    assert loss_fn.learnable
    assert math.isclose(float(loss_fn.temperature.detach()), 0.07, rel_tol=1e-6)
    a, b = _features(12, 6, torch.float32)
    loss_fn(a, b).backward()
    assert loss_fn.log_temperature.grad is not None and loss_fn.log_temperature.grad != 0
    clamped = tempfast.nn.ContrastiveLoss(0.001, max_inverse_temperature=100.0)
    out = clamped(a, b)
    assert torch.allclose(out, tempfast.contrastive_loss(a, b, 0.01))
    out.backward()
    assert clamped.log_temperature.grad == 0  # clamped: no gradient, as CLIP's clamp
    groups = tempfast.nn.parameter_groups(torch.nn.Linear(6, 6), loss_fn, weight_decay=0.1)
    assert any(p is loss_fn.log_temperature for p in groups[1]["params"])
    for kw, match in (({"reduction": "avg"}, "reduction"),
                      ({"max_inverse_temperature": 0}, "max_inverse_temperature"),
                      ({"symmetric": 1}, "symmetric")):
        raises_one_line((ValueError, TypeError), match, tempfast.nn.ContrastiveLoss, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_nt_xent_matches_the_reference_with_chunks(dtype, reduction, monkeypatch):
    from tempfast.ops.contrastive import call as contrastive_call

    monkeypatch.setattr(contrastive_call, "chunk_rows", lambda local, total: 5)  # 2B = 26
    z1, z2 = _features(13, 8, dtype, seed=5)
    t_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # the accumulation's
    leaves = [z1.clone().requires_grad_(True), z2.clone().requires_grad_(True),
              torch.tensor(0.3, dtype=t_dtype, requires_grad=True)]
    loss = tempfast.nt_xent_loss(*leaves, reduction=reduction)
    upstream = torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape)
    (loss * upstream.to(loss.dtype)).sum().backward()
    refs = [z1.double().requires_grad_(True), z2.double().requires_grad_(True),
            torch.tensor(0.3, dtype=torch.float64, requires_grad=True)]
    expected = reference.nt_xent_loss(*refs, reduction=reduction)
    (expected * upstream.double()).sum().backward()
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(loss, expected, tol, "loss")
    for got, ref, what in zip(leaves, refs, ("z1", "z2", "T"), strict=True):
        assert got.grad.dtype == got.dtype
        assert_close(got.grad, ref.grad, tol * 4, f"d{what}", floor=1e-6)


def test_nt_xent_one_example_and_bad_inputs():
    z1, z2 = _features(1, 4, torch.float32)
    assert tempfast.nt_xent_loss(z1, z2).item() == 0.0  # each view's only candidate
    a, b = _features(4, 3, torch.float32)
    for args, match in (((a, b[:2]), "z2: expected the shape of z1"),
                        ((a, b, -1.0), "temperature: must be finite and > 0"),
                        ((a, b, torch.tensor(0.0)), "temperature"),
                        ((a, torch.full_like(b, float("inf"))), "z2: features must be finite")):
        raises_one_line((ValueError, TypeError), match, tempfast.nt_xent_loss, *args)


def _sharded_cases(rank, widths):
    """Each loss with this rank's rows of the global batch against the reference on the whole
    batch: the loss, this rank's rows' gradients and dL/dT (an upstream gradient per row for
    ``"none"``); chunks of 2 rows."""
    from tempfast.ops.contrastive import call as contrastive_call

    contrastive_call.chunk_rows = lambda local, total: 2
    lo = sum(widths[:rank])
    mine = slice(lo, lo + widths[rank])
    total = sum(widths)
    for dtype in (torch.float64, torch.float32):
        tol = 1e-10 if dtype == torch.float64 else 2e-5
        a, b = _features(total, 6, dtype, seed=7)
        cases = [("clip", dict(symmetric=True)), ("clip", dict(symmetric=False)),
                 ("nt_xent", {})]
        for (name, kw), reduction in ((c, r) for c in cases for r in ("mean", "sum", "none")):
            ours = getattr(tempfast, f"{name}_loss" if name == "nt_xent" else
                           "contrastive_loss")
            ref = getattr(reference, f"{name}_loss" if name == "nt_xent" else
                          "contrastive_loss")
            t = torch.tensor(0.2, dtype=dtype, requires_grad=True)
            x, y = a[mine].clone().requires_grad_(True), b[mine].clone().requires_grad_(True)
            loss = ours(x, y, t, reduction=reduction, process_group=dist.group.WORLD, **kw)
            rx, ry = (v.double().clone().requires_grad_(True) for v in (a, b))
            rt = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
            expected = ref(rx, ry, rt, reduction=reduction, **kw)
            what = f"rank {rank} {name} {kw} {reduction} {dtype}"
            if reduction == "none":
                n = expected.numel()
                up = torch.linspace(0.5, 1.5, n, dtype=torch.float64)
                rows = torch.arange(n).view(-1, total)[:, mine].reshape(-1)  # this rank's rows
                assert_close(loss, expected[rows], tol, what)
                (loss * up[rows].to(loss.dtype)).sum().backward()
                (expected * up).sum().backward()
            else:
                assert_close(loss, expected, tol, what)
                loss.backward()
                expected.backward()
            for got, full, w in ((x.grad, rx.grad[mine], "da"), (y.grad, ry.grad[mine], "db"),
                                 (t.grad, rt.grad, "dT")):
                assert_close(got, full, tol * 4, f"{what} {w}", floor=1e-8)
    a, b = _features(total, 6, torch.float32, seed=8)
    sharded, single = (tempfast.nn.ContrastiveLoss(0.2, process_group=group)
                       for group in (dist.group.WORLD, None))
    sharded(a[mine], b[mine]).backward()
    single(a, b).backward()
    assert_close(sharded.log_temperature.grad, single.log_temperature.grad, 2e-5, "module dT")


@pytest.mark.slow
@pytest.mark.parametrize("widths", [(3, 4), (5, 0, 2)], ids=["2-uneven", "3-with-an-empty-rank"])
def test_sharded_losses_equal_the_single_process_loss(widths, tmp_path):
    run_on_gloo_ranks(len(widths), str(tmp_path / "init"), _sharded_cases, widths)


def test_process_group_must_be_initialised():
    a, b = _features(3, 2, torch.float32)
    for op in (tempfast.contrastive_loss, tempfast.nt_xent_loss):
        raises_one_line(ValueError, "process_group: torch.distributed is not initialised", op,
                        a, b, process_group=object())
