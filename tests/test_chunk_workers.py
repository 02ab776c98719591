"""The PyTorch paths' chunk workers (``tempfast.ops.chunked.for_chunks``): with several torch
threads the chunks of a call are shared out to workers that run their ops on one thread each;
the results are those of one thread, bit for bit, errors reach the caller, and the caller's
thread settings are left as they were. (CI's test workers run on one torch thread: these tests
set two.)"""

from __future__ import annotations

import threading

import pytest
import torch

import tempfast
from tempfast.ops import chunked

from .harness import on_path


@pytest.fixture
def two_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def _ce_fwd_bwd(x, y, t, **kw):
    z = x.detach().clone().requires_grad_(True)
    tt = t.detach().clone().requires_grad_(True) if isinstance(t, torch.Tensor) else t
    loss = tempfast.cross_entropy(z, y, tt, **kw)
    loss.backward()
    return loss.detach(), z.grad, (tt.grad if isinstance(tt, torch.Tensor) else None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.1, "ignore_index": 3}])
def test_workers_give_the_one_thread_result_bit_for_bit(two_threads, monkeypatch, dtype, kw):
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 1 << 10)  # many chunks: 61 rows of 37
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(61 * 7 + 5, 37, generator=g) * 3).to(dtype)
    y = torch.randint(0, 37, (x.shape[0],), generator=g)
    t = torch.rand(x.shape[0], generator=g) + 0.5
    with on_path("torch"):
        parallel = _ce_fwd_bwd(x, y, t, **kw)
        torch.set_num_threads(1)
        serial = _ce_fwd_bwd(x, y, t, **kw)
    for a, b in zip(parallel, serial, strict=True):
        assert torch.equal(a, b)


def test_workers_share_the_chunks_and_their_error_reaches_the_caller(two_threads):
    import time

    seen = []

    def body(r0, r1, worker):
        seen.append((r0, worker, threading.current_thread() is threading.main_thread(),
                     torch.get_num_threads()))
        time.sleep(0.02)  # long enough for the second worker to take chunks
        if r0 == 8:
            raise ValueError("chunk failed")

    with pytest.raises(ValueError, match="chunk failed"):
        chunked.for_chunks(10, 2, body)
    assert torch.get_num_threads() == 2
    assert {w for _, w, _, _ in seen} == {0, 1}
    assert all(n == 1 for *_, n in seen)  # each worker's ops on one thread
    assert all(main == (w == 0) for _, w, main, _ in seen)  # the caller is worker 0
    assert len({r0 for r0, *_ in seen}) == len(seen)  # no chunk twice
    done = []
    chunked.for_chunks(10, 2, lambda r0, r1, w: done.append((r0, r1)))
    assert sorted(done) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]


def test_one_thread_or_one_chunk_runs_in_the_caller():
    calls = []
    chunked.for_chunks(5, 10, lambda r0, r1, w: calls.append((r0, r1, w,
                                                               threading.current_thread())))
    assert calls == [(0, 5, 0, threading.current_thread())]


def _grads_of(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    out.float().sum().backward()
    return (out.detach(), *(leaf.grad for leaf in leaves))


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "distillation"])
def test_softmax_and_distillation_workers_match_one_thread(two_threads, monkeypatch, op):
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 1 << 10)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(300, 37, generator=g) * 3).to(torch.bfloat16)
    x2 = (torch.randn(300, 37, generator=g) * 3).to(torch.bfloat16)
    t = torch.rand(300, generator=g) + 0.5
    if op == "distillation":
        def fn(s, te, tt):
            return tempfast.distillation_loss(s, te, tt, reduction="none")
        args = (x, x2, t)
    else:
        f = getattr(tempfast, op)

        def fn(z, tt):
            return f(z, tt)  # one T per row, learnable
        args = (x, t)
    with on_path("torch"):
        parallel = _grads_of(fn, *args)
        torch.set_num_threads(1)
        serial = _grads_of(fn, *args)
    for a, b in zip(parallel, serial, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


def test_workers_keep_the_callers_inference_mode_and_autocast(two_threads, monkeypatch):
    """New threads start without the caller's thread-local modes: under inference_mode the
    work buffers are inference tensors, updated in place by the workers."""
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 1 << 10)
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(300, 37, generator=g) * 3).to(torch.bfloat16)
    y = torch.randint(0, 37, (300,), generator=g)
    with on_path("torch"):
        with torch.inference_mode():
            parallel = tempfast.cross_entropy(x, y, 2.0, reduction="none")
            soft = tempfast.softmax(x, 2.0)
        torch.set_num_threads(1)
        with torch.inference_mode():
            serial = tempfast.cross_entropy(x, y, 2.0, reduction="none")
            assert torch.equal(tempfast.softmax(x, 2.0), soft)
    assert torch.equal(parallel, serial)
    seen = []
    torch.set_num_threads(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked.for_chunks(4, 1, lambda r0, r1, w: seen.append(torch.is_autocast_enabled("cpu")))
    assert seen == [True] * 4
