"""Under ``torch.autocast`` the ops behave as the stock ops they replace do there: the same
output dtype, the same gradient dtype, the values of the stock op on the same cast input
(:mod:`tempfast.ops.autocast`). On the CPU (bf16 and fp16 autocast) against torch itself, on
every path; the CUDA rule (softmax in fp32) through the same code with the CPU in its device
list; on a GPU, ``tests/test_gpu.py`` compares with torch under CUDA autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tempfast
from tempfast.ops import autocast

from .harness import on_path

PATHS = ("aten", "torch", "triton")
LOW = (torch.bfloat16, torch.float16)


def _logits(dtype, n=6, c=37):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, c, generator=g) * 3).to(dtype).requires_grad_(True)


def _grads(fn, x):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    out.float().sum().backward()
    return out, x.grad


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", LOW)
def test_cross_entropy_under_cpu_autocast_is_fp32_as_torchs(path, dtype):
    x = _logits(dtype)
    y = torch.randint(0, x.shape[1], (x.shape[0],), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=dtype), on_path(path):
        ours, g_ours = _grads(lambda z: tempfast.cross_entropy(z, y, 2.0), x)
        theirs, g_theirs = _grads(lambda z: F.cross_entropy(z / 2.0, y), x)
    assert ours.dtype == theirs.dtype == torch.float32
    assert g_ours.dtype == g_theirs.dtype == dtype
    torch.testing.assert_close(ours, theirs, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("log", [False, True])
def test_softmax_under_cpu_autocast_keeps_the_dtype_as_torchs(path, dtype, log):
    x = _logits(dtype)
    ours_fn = tempfast.log_softmax if log else tempfast.softmax
    theirs_fn = F.log_softmax if log else F.softmax
    with torch.autocast("cpu", dtype=dtype), on_path(path):
        ours, g_ours = _grads(lambda z: ours_fn(z, 2.0), x)
        theirs, g_theirs = _grads(lambda z: theirs_fn(z / 2.0, -1), x)
    assert ours.dtype == theirs.dtype == dtype
    assert g_ours.dtype == g_theirs.dtype == dtype


@pytest.mark.parametrize("path", PATHS)
def test_where_autocast_runs_softmax_in_fp32_the_op_does_too(path, monkeypatch):
    """CUDA's rule, exercised on the CPU: with the CPU in the op's device list, a bf16 input
    is cast to fp32 (output fp32, the values of the fp32 op), its gradient stays bf16; fp32
    and fp64 inputs and calls outside autocast are left alone."""
    monkeypatch.setitem(autocast.FP32_UNDER_AUTOCAST, "softmax", ("cuda", "cpu"))
    x = _logits(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16), on_path(path):
        y, g = _grads(lambda z: tempfast.softmax(z, 2.0), x)
        y64 = tempfast.softmax(x.detach().double(), 2.0)
    assert y.dtype == torch.float32 and g.dtype == torch.bfloat16
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y, torch.softmax(x.detach().float() / 2.0, -1), rtol=1e-5,
                               atol=1e-6)
    with on_path(path):
        assert tempfast.softmax(x.detach(), 2.0).dtype == torch.bfloat16


def test_the_autocast_table_matches_torchs_on_this_cpu():
    """The CPU half of the table is torch's own behaviour (softmax not cast, CE in fp32)."""
    x = torch.randn(3, 4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = torch.softmax(x, -1).dtype == torch.float32
    assert cast == ("cpu" in autocast.FP32_UNDER_AUTOCAST["softmax"])
