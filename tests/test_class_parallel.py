"""Class-parallel cross-entropy (``process_group=``) on 2 and 3 gloo processes on the CPU,
even and uneven class ranges (one rank with no class): loss, each rank's slice of the logits'
gradient and dL/dT equal the single-process op's on the concatenated logits, for both
backends, class indices (weights, label smoothing, ignore_index), probability targets,
per-row and learnable temperatures, torch's layout, and the class-sharded linear head."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

import tempfast

from .harness import run_on_gloo_ranks

TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def _slices(widths):
    starts = [sum(widths[:r]) for r in range(len(widths))]
    return [slice(s, s + w) for s, w in zip(starts, widths, strict=True)]


def _close(a, b, dtype, what):
    torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"{what}: {m}")


def _grads(op, args, kwargs, wrt):
    """``op(*args, **kwargs)`` and the gradients of its (summed) value w.r.t. ``wrt``."""
    for x in wrt:
        x.grad = None
    loss = op(*args, **kwargs)
    (loss.sum() if loss.dim() else loss).backward()
    return loss.detach(), [None if x.grad is None else x.grad.clone() for x in wrt]


def _ce_cases(rank, widths, backend):
    """Every cross-entropy case: the sharded op on this rank's slice against the full op."""
    g = torch.Generator().manual_seed(0)
    num = sum(widths)
    mine = _slices(widths)[rank]
    for dtype in (torch.float32, torch.float64):
        for case in ("plain", "smooth_weight_ignore", "probs", "row_t", "layout", "neg_inf",
                     "softcap_z_loss"):
            for reduction in ("mean", "sum", "none"):
                n = 7
                z = torch.randn(n, num, generator=g, dtype=dtype) * 4
                y = torch.randint(0, num, (n,), generator=g)
                kw = {}
                t = torch.tensor(2.5, dtype=dtype, requires_grad=True)
                if case == "smooth_weight_ignore":
                    y[1] = y[4] = -100
                    kw = dict(label_smoothing=0.2,
                              weight=torch.rand(num, generator=g, dtype=dtype) + 0.5)
                elif case == "probs":
                    y = torch.softmax(torch.randn(n, num, generator=g, dtype=dtype), 1)
                    kw = dict(label_smoothing=0.1)
                elif case == "row_t":
                    t = (torch.rand(n, generator=g, dtype=dtype) * 4 + 0.25).requires_grad_()
                elif case == "layout":
                    z = torch.randn(3, num, 4, generator=g, dtype=dtype)
                    y = torch.randint(0, num, (3, 4), generator=g)
                elif case == "softcap_z_loss":
                    y[2] = -100
                    kw = dict(softcap=6.0, z_loss=0.05, label_smoothing=0.1,
                              weight=torch.rand(num, generator=g, dtype=dtype) + 0.5)
                elif case == "neg_inf":
                    z[:, : max(1, num // 3)] = float("-inf")
                    y = torch.full((n,), num - 1)
                    kw = dict(label_smoothing=0.0)
                zl = (z[:, mine] if case != "layout" else z[:, mine, :]).clone().requires_grad_()
                zf = z.clone().requires_grad_()
                yl = y[:, mine] if case == "probs" else y
                with tempfast.use_backend(backend):
                    got, (gz, gt) = _grads(tempfast.cross_entropy, (zl, yl, t),
                                           dict(kw, reduction=reduction,
                                                process_group=dist.group.WORLD), (zl, t))
                    want, (fz, ft) = _grads(tempfast.cross_entropy, (zf, y, t),
                                            dict(kw, reduction=reduction), (zf, t))
                what = f"rank {rank} widths {widths} {backend} {dtype} {case} {reduction}"
                _close(got, want, dtype, what + " loss")
                want_gz = fz[:, mine] if case != "layout" else fz[:, mine, :]
                _close(gz, want_gz, dtype, what + " grad")
                _close(gt, ft, dtype, what + " dL/dT")
                if case == "softcap_z_loss":  # the z-term alone, for logging
                    with tempfast.use_backend(backend):
                        _, z_got = tempfast.cross_entropy(
                            zl.detach(), yl, t.detach(), **kw, reduction=reduction,
                            return_z_loss=True, process_group=dist.group.WORLD)
                        _, z_want = tempfast.cross_entropy(z, y, t.detach(), **kw,
                                                           reduction=reduction,
                                                           return_z_loss=True)
                    _close(z_got, z_want, dtype, what + " z-term")


def _linear_cases(rank, widths, backend):
    g = torch.Generator().manual_seed(1)
    num, hdim = sum(widths), 5
    mine = _slices(widths)[rank]
    for reduction, chunk in (("mean", 3), ("sum", None), ("none", None)):
        h = torch.randn(2, 4, hdim, generator=g, dtype=torch.float64)
        w = torch.randn(num, hdim, generator=g, dtype=torch.float64)
        b = torch.randn(num, generator=g, dtype=torch.float64)
        y = torch.randint(0, num, (2, 4), generator=g)
        y[0, 1] = -100
        t = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
        hl, wl, bl = (h.clone().requires_grad_(), w[mine].clone().requires_grad_(),
                      b[mine].clone().requires_grad_())
        hf, wf, bf = h.clone().requires_grad_(), w.clone().requires_grad_(), \
            b.clone().requires_grad_()
        with tempfast.use_backend(backend):
            kw = dict(reduction=reduction, label_smoothing=0.1, softcap=7.0, z_loss=0.02)
            got, (gh, gw, gb, gt) = _grads(
                tempfast.linear_cross_entropy, (hl, wl, y, bl, t),
                dict(kw, chunk_size=chunk, process_group=dist.group.WORLD), (hl, wl, bl, t))
            want, (fh, fw, fb, ft) = _grads(tempfast.linear_cross_entropy, (hf, wf, y, bf, t),
                                            kw, (hf, wf, bf, t))
        what = f"linear rank {rank} widths {widths} {backend} {reduction}"
        _close(got, want, torch.float64, what + " loss")
        _close(gh, fh, torch.float64, what + " hidden grad")
        _close(gw, fw[mine], torch.float64, what + " weight grad")
        _close(gb, fb[mine], torch.float64, what + " bias grad")
        _close(gt, ft, torch.float64, what + " dL/dT")


def _module_cases(rank, widths):
    """The nn modules with process_group: the sharded head and loss give the full one's loss,
    temperature gradient and predictions (global class indices; ties to the lowest)."""
    torch.manual_seed(2)
    num, hdim = sum(widths), 6
    full = tempfast.nn.LinearTemperatureCrossEntropy(hdim, num, 2.0, learnable=True)
    h, y = torch.randn(9, hdim), torch.randint(0, num, (9,))  # before a rank-sized draw
    part = tempfast.nn.LinearTemperatureCrossEntropy(hdim, widths[rank], 2.0, learnable=True,
                                                     process_group=dist.group.WORLD)
    with torch.no_grad():  # an exact tie between the first and the last class, far ahead
        full.linear.weight[-1] = full.linear.weight[0]
        full.linear.bias[-1] = full.linear.bias[0] = 50.0
        part.linear.weight.copy_(full.linear.weight[_slices(widths)[rank]])
        part.linear.bias.copy_(full.linear.bias[_slices(widths)[rank]])
    for module in (full, part):
        module(h, y).backward()
    torch.testing.assert_close(part(h, y), full(h, y))
    torch.testing.assert_close(part.log_temperature.grad, full.log_temperature.grad)
    assert torch.equal(part.predict(h), full.predict(h))
    assert torch.equal(full.predict(h), torch.zeros(9, dtype=torch.long))

    torch.manual_seed(3)  # the same z on every rank (the heads' draws were rank-sized)
    z = torch.randn(9, num)
    loss = tempfast.nn.TemperatureCrossEntropyLoss(4.0, label_smoothing=0.1,
                                                   process_group=dist.group.WORLD)
    torch.testing.assert_close(loss(z[:, _slices(widths)[rank]], y),
                               tempfast.nn.TemperatureCrossEntropyLoss(4.0, label_smoothing=0.1)(
                                   z, y))


def _start_checks(rank, widths):
    z = torch.randn(2, widths[rank])
    y = torch.zeros(2, dtype=torch.long)
    right = sum(widths[:rank])
    tempfast.cross_entropy(z, y, process_group=dist.group.WORLD, start=right)
    if rank == 1:
        with pytest.raises(ValueError, match=r"^start: rank 1 was given 0, but the ranks before"):
            tempfast.cross_entropy(z, y, process_group=dist.group.WORLD, start=0)
    bad = torch.tensor([sum(widths), 0])
    with pytest.raises(ValueError, match=r"^target: class index \d+ is out of range"):
        tempfast.cross_entropy(z, bad, process_group=dist.group.WORLD)


def _all_cases(rank, widths, backends):
    for backend in backends:
        _ce_cases(rank, widths, backend)
        _linear_cases(rank, widths, backend)
    _module_cases(rank, widths)
    _start_checks(rank, widths)


# The class-parallel op is PyTorch ops on every backend (it has no kernel of its own); the
# unsharded op it is compared with is tested on both paths in its own test files.
BACKENDS = ["torch"]


@pytest.mark.slow
@pytest.mark.parametrize("widths", [(6, 6), (5, 0, 8), (1, 9, 3)],
                         ids=["2-even", "3-with-an-empty-rank", "3-uneven"])
def test_sharded_op_equals_the_single_process_op(widths, tmp_path):
    run_on_gloo_ranks(len(widths), str(tmp_path / "init"), _all_cases, widths, BACKENDS)


def test_process_group_needs_an_initialised_group():
    with pytest.raises(ValueError, match=r"^process_group: torch.distributed is not init"):
        tempfast.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), process_group=object())


@pytest.mark.slow
def test_torchrun_example_matches_the_unsharded_head(tmp_path):
    """The documented example under torchrun (2 gloo ranks, uneven classes): its ``--check``
    line reports the sharded loss and hidden gradient equal to the unsharded head's."""
    import re
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TEMPFAST_BACKEND": "torch"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--standalone", "-m", "tempfast.train.class_parallel_example",
         "--num-classes", "101", "--epochs", "1", "--check"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r"check: sharded loss ([\d.]+), unsharded ([\d.]+), max \|d hidden\| "
                      r"difference ([\d.e+-]+)", proc.stdout)
    assert found, proc.stdout
    sharded, full, grad_diff = map(float, found.groups())
    assert sharded == pytest.approx(full, rel=1e-5)
    assert grad_diff < 1e-6
    assert re.search(r"epoch 1/1 .*test acc", proc.stdout)
