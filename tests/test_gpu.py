"""GPU tests: the compiled kernels at full size (skipped without CUDA).

Run on a GPU machine with ``pytest tests -m gpu`` (``bench/gpu_run.sh`` does). They repeat the
reference comparisons with real compiled kernels and realistic shapes, check that no op
synchronises with the host (``torch.cuda.set_sync_debug_mode("error")``) and that fwd+bwd can be
captured in a CUDA graph, and cover N x C > 2^31 elements (64-bit offsets).
"""

from __future__ import annotations

import pytest
import torch

import tempfast
from tempfast import reference
from tempfast.kernels.heuristics import row_config

from .harness import LOSS_TOL, REL_TOL, assert_close

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
DEVICE = "cuda"


def _inputs(n, c, dtype, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    logits = (torch.randn(n, c, generator=g, device=DEVICE) * 3).to(dtype)
    target = torch.randint(0, c, (n,), generator=g, device=DEVICE)
    return logits, target


def _compare_ce(logits, target, temperature, **kwargs):
    x = logits.clone().requires_grad_(True)
    t = temperature.clone().requires_grad_(True) if isinstance(temperature, torch.Tensor) \
        else temperature
    loss = tempfast.cross_entropy(x, target, t, **kwargs)
    loss.backward(torch.ones_like(loss) * 1.25)
    x64 = logits.double().requires_grad_(True)
    t64 = temperature.double().requires_grad_(True) if isinstance(temperature, torch.Tensor) \
        else temperature
    kw64 = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    expected = reference.cross_entropy(x64, target, t64, **kw64)
    expected.backward(torch.ones_like(expected) * 1.25)
    assert_close(loss, expected, LOSS_TOL, "loss")
    assert_close(x.grad, x64.grad, REL_TOL[logits.dtype], "grad", floor=1e-3)
    if isinstance(temperature, torch.Tensor):
        assert_close(t.grad, t64.grad, 1e-4, "grad temperature", floor=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(("n", "c"), [(4096, 10), (2048, 1000), (512, 4097), (1024, 32000),
                                      (600, 128256), (8, 262144), (1, 131072)])
def test_cross_entropy_matches_reference_at_scale(dtype, n, c):
    logits, target = _inputs(n, c, dtype)
    target[::7] = -100
    _compare_ce(logits, target, torch.tensor(8.0, device=DEVICE), label_smoothing=0.1)
    per_row = torch.rand(n, device=DEVICE) * 4 + 0.25
    _compare_ce(logits, target, per_row, reduction="none")


@pytest.mark.parametrize("path_shape", [(4096, 1000), (1024, 65536), (4, 262144)])
def test_every_path_runs_compiled(path_shape):
    n, c = path_shape
    cfg = row_config(n, c, 2, torch.cuda.get_device_properties(0).multi_processor_count)
    assert cfg.path in ("rows", "slices")
    logits, _ = _inputs(n, c, torch.bfloat16, seed=1)
    g = torch.Generator(device=DEVICE).manual_seed(2)
    probs = torch.softmax(torch.randn(n, c, generator=g, device=DEVICE), 1)
    _compare_ce(logits, probs, torch.tensor(2.0, device=DEVICE),
                weight=torch.rand(c, device=DEVICE) + 0.5, label_smoothing=0.2)
    for op, ref in ((tempfast.softmax, reference.softmax),
                    (tempfast.log_softmax, reference.log_softmax)):
        x = logits.clone().requires_grad_(True)
        t = torch.tensor(0.7, device=DEVICE, requires_grad=True)
        y = op(x, t)
        dy = torch.randn_like(y)
        y.backward(dy)
        x64 = logits.double().requires_grad_(True)
        t64 = torch.tensor(0.7, device=DEVICE, dtype=torch.float64, requires_grad=True)
        expected = ref(x64, t64)
        expected.backward(dy.double())
        assert_close(y, expected, REL_TOL[torch.bfloat16], f"{op.__name__} output")
        assert_close(x.grad, x64.grad, 2 * REL_TOL[torch.bfloat16], "grad", floor=1.0)


def test_inplace_backward_allocates_no_gradient_buffer():
    n, c = 4096, 32000
    logits, target = _inputs(n, c, torch.bfloat16)
    leaf = logits.clone().requires_grad_(True)
    expected = torch.autograd.grad(tempfast.cross_entropy(leaf, target, 4.0), leaf)[0]
    x = logits.clone().requires_grad_(True)
    buf = x * 1  # non-leaf, as a linear layer's output would be
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    loss = tempfast.cross_entropy(buf, target, 4.0, inplace_backward=True)
    (grad,) = torch.autograd.grad(loss, buf)
    peak = torch.cuda.max_memory_allocated() - before
    assert grad.data_ptr() == buf.data_ptr()
    assert peak < logits.numel() * logits.element_size() / 8, "no N x C temporary"
    assert_close(grad, expected, REL_TOL[torch.bfloat16], "grad", floor=1e-3)


def test_forward_and_backward_never_synchronise_with_the_host():
    logits, target = _inputs(1024, 32000, torch.bfloat16)
    t = torch.tensor(2.0, device=DEVICE, requires_grad=True)
    for _ in range(2):  # the first call compiles the kernels
        x = logits.clone().requires_grad_(True)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            loss = tempfast.cross_entropy(x, target, t, label_smoothing=0.1)
            loss.backward()
            y = tempfast.softmax(x.detach().requires_grad_(True), t)
            y.sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_cuda_graph_capture_of_forward_and_backward():
    logits, target = _inputs(512, 4097, torch.bfloat16)
    static_x = logits.clone().requires_grad_(True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            static_x.grad = None
            tempfast.cross_entropy(static_x, target, 4.0).backward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    static_x.grad = None
    with torch.cuda.graph(graph):
        static_loss = tempfast.cross_entropy(static_x, target, 4.0)
        static_loss.backward()
    new_logits, _ = _inputs(512, 4097, torch.bfloat16, seed=5)
    with torch.no_grad():
        static_x.copy_(new_logits)
    graph.replay()
    torch.cuda.synchronize()
    expected = reference.cross_entropy(new_logits.double(), target, 4.0)
    assert_close(static_loss, expected, LOSS_TOL, "replayed loss")


def test_torch_compile_inductor_on_cuda():
    logits, target = _inputs(256, 1000, torch.float32)

    def step(x, t):
        return tempfast.cross_entropy(x, target, t) + tempfast.log_softmax(x, t).mean()

    x = logits.clone().requires_grad_(True)
    t = torch.tensor(2.0, device=DEVICE, requires_grad=True)
    out = torch.compile(step, fullgraph=True)(x, t)
    out.backward()
    x2 = logits.clone().requires_grad_(True)
    t2 = torch.tensor(2.0, device=DEVICE, requires_grad=True)
    step(x2, t2).backward()
    assert_close(x.grad, x2.grad, REL_TOL[torch.float32], "grad", floor=1e-3)
    assert_close(t.grad, t2.grad, 1e-4, "grad temperature", floor=1e-3)


def test_out_of_range_target_gives_nan_row_without_a_fault():
    logits, target = _inputs(64, 1000, torch.float32)
    target[5] = 5000
    target[6] = -3
    loss = tempfast.cross_entropy(logits, target, 2.0, reduction="none")
    torch.cuda.synchronize()
    assert torch.isnan(loss[5]) and torch.isnan(loss[6])
    assert torch.isfinite(loss[:5]).all() and torch.isfinite(loss[7:]).all()


def test_more_than_two_to_the_31_elements():
    """64-bit offsets: rows beyond element 2^31 are read and written correctly."""
    c = 131072
    n = (1 << 31) // c + 2  # 16386 rows: 2^31 + 2c elements (4.3 GB in bf16)
    free, _ = torch.cuda.mem_get_info()
    if free < 3 * n * c * 2:
        pytest.skip("not enough GPU memory for three bf16 buffers of 2^31 elements")
    g = torch.Generator(device=DEVICE).manual_seed(0)
    logits = torch.empty(n, c, dtype=torch.bfloat16, device=DEVICE).normal_(generator=g)
    target = torch.randint(0, c, (n,), device=DEVICE, generator=g)
    x = logits.requires_grad_(True)
    loss = tempfast.cross_entropy(x, target, 2.0, reduction="sum")
    loss.backward()
    rows = torch.tensor([0, n // 2, n - 2, n - 1], device=DEVICE)
    sub = logits.detach()[rows].double().requires_grad_(True)
    ref = reference.cross_entropy(sub, target[rows], 2.0, reduction="none")
    ref.sum().backward()
    per_row = tempfast.cross_entropy(logits.detach()[rows], target[rows], 2.0, reduction="none")
    assert_close(per_row, ref, LOSS_TOL, "loss rows")
    assert_close(x.grad[rows], sub.grad, REL_TOL[torch.bfloat16], "grad rows", floor=1e-3)
    y = tempfast.softmax(logits.detach(), 2.0)
    assert_close(y[rows], torch.softmax(sub.detach() / 2.0, -1), REL_TOL[torch.bfloat16],
                 "softmax rows")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_linear_cross_entropy_matches_reference_at_scale(dtype):
    """The fused head on the GPU: cuBLAS chunks, the split / stream kernels in place, fp32
    accumulation of the weight gradient."""
    n, h, c = 2048, 512, 50000
    g = torch.Generator(device=DEVICE).manual_seed(0)
    hidden = torch.randn(n, h, generator=g, device=DEVICE).to(dtype)
    weight = (torch.randn(c, h, generator=g, device=DEVICE) / h**0.5).to(dtype)
    bias = torch.randn(c, generator=g, device=DEVICE).to(dtype)
    target = torch.randint(0, c, (n,), generator=g, device=DEVICE)
    leaves = [a.clone().requires_grad_(True) for a in (hidden, weight, bias)]
    loss = tempfast.linear_cross_entropy(leaves[0], leaves[1], target, leaves[2], 2.0,
                                         chunk_size=300)
    loss.backward()
    ref = [a.float().requires_grad_(True) for a in (hidden, weight, bias)]
    expected = reference.linear_cross_entropy(ref[0], ref[1], target, ref[2], 2.0)
    expected.backward()
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    assert_close(loss, expected, tol, "loss")
    for name, ours, theirs in zip(("hidden", "weight", "bias"), leaves, ref, strict=True):
        assert_close(ours.grad, theirs.grad, tol, f"grad {name}", floor=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize(("n", "c"), [(2048, 32000), (64, 262144), (3, 1 << 20)])
def test_the_cooperative_slices_launch_matches_the_two_phases(monkeypatch, dtype, n, c):
    """On a device the slices path runs its one-read cooperative launch (every slice of a row
    resident at once, waiting on a row counter); forced to the two-phase fallback (residency
    1), the results agree to rounding, and both match the reference."""
    from tempfast.kernels import cross_entropy as ce_kernels
    from tempfast.ops import launch

    cfg = row_config(n, c, torch.empty((), dtype=dtype).element_size(),
                     torch.cuda.get_device_properties(0).multi_processor_count)
    assert cfg.path == "slices" and cfg.n_slices > 1
    logits, target = _inputs(n, c, dtype, seed=3)
    target[::5] = -100
    x = logits.clone().requires_grad_(True)
    loss = tempfast.cross_entropy(x, target, 2.0, label_smoothing=0.1)
    loss.backward()
    kernel = ce_kernels.ce_slices_kernel
    assert any(k[0] == kernel.fn.__name__ for k in launch._RESIDENT), "residency read"
    assert min(launch._RESIDENT.values()) >= cfg.n_slices
    monkeypatch.setattr(launch, "resident_override", lambda kernel, args, kw: 1)
    x2 = logits.clone().requires_grad_(True)
    loss2 = tempfast.cross_entropy(x2, target, 2.0, label_smoothing=0.1)
    loss2.backward()
    assert_close(loss, loss2, LOSS_TOL, "loss")
    assert_close(x.grad, x2.grad, REL_TOL[dtype], "grad", floor=1e-3)
    y = tempfast.softmax(logits, 2.0)
    monkeypatch.setattr(launch, "resident_override", None)
    assert_close(tempfast.softmax(logits, 2.0), y, REL_TOL[dtype], "softmax")
    if n <= 64:
        _compare_ce(logits, target, 2.0, label_smoothing=0.1)


def test_a_fused_backward_at_upstream_gradient_one_leaves_the_gradient_untouched():
    """The apply kernel exits at once for g == 1 and rescales otherwise (fp16 mean: by
    g / divisor)."""
    logits, target = _inputs(512, 4097, torch.float16)
    x = logits.clone().requires_grad_(True)
    tempfast.cross_entropy(x, target, 4.0).backward(torch.tensor(3.0, device=DEVICE))
    x1 = logits.clone().requires_grad_(True)
    tempfast.cross_entropy(x1, target, 4.0).backward()
    assert_close(x.grad.float(), 3.0 * x1.grad.float(), REL_TOL[torch.float16], "grad",
                 floor=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("c", [1000, 32000])
def test_under_cuda_autocast_the_ops_give_torchs_dtypes(dtype, c):
    """CUDA autocast runs softmax / log_softmax / cross_entropy in fp32: the ops give fp32
    outputs, gradients in the input's dtype, and the values of torch's ops (issue 23)."""
    import torch.nn.functional as F

    logits, target = _inputs(64, c, dtype)
    for ours, theirs in ((lambda z: tempfast.softmax(z, 2.0), lambda z: F.softmax(z / 2.0, -1)),
                         (lambda z: tempfast.log_softmax(z, 2.0),
                          lambda z: F.log_softmax(z / 2.0, -1)),
                         (lambda z: tempfast.cross_entropy(z, target, 2.0),
                          lambda z: F.cross_entropy(z / 2.0, target))):
        outs = []
        for fn in (ours, theirs):
            x = logits.clone().requires_grad_(True)
            with torch.autocast("cuda", dtype=dtype):
                y = fn(x)
            y.float().sum().backward()
            outs.append((y, x.grad))
        (y, g), (y_ref, g_ref) = outs
        assert y.dtype == y_ref.dtype and g.dtype == g_ref.dtype == dtype
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    with torch.autocast("cuda", dtype=dtype):
        direct = torch.ops.tempfast.softmax(logits, torch.tensor([2.0], device=DEVICE), False)
    assert direct.dtype == torch.float32
