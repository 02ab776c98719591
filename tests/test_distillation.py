"""tempfast.distillation_loss against the float64 oracle (``tempfast.reference``) and the plain
F.kl_div composition, on both paths (the PyTorch path; the Triton kernels under the
interpreter), every kernel path (rows, slices: the two-phase fallback and a one-slice
cooperative launch), bad inputs and the custom op's registration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tempfast
from tempfast.kernels.heuristics import LaunchConfig, cdiv
from tempfast.ops import distillation as kd
from tempfast.ops.distillation import triton_path
from tempfast.ops.distillation.op import distillation_2d
from tempfast.reference import distillation_loss as distillation_loss_reference

from . import harness
from .harness import LOSS_TOL, PATHS, REL_TOL, assert_close, logits_like, run_path

REDUCTIONS = ("batchmean", "mean", "sum", "none")
T_GRAD_TOL = 2e-4


def _inputs(n: int, c: int, dtype: torch.dtype, seed: int = 0):
    s = logits_like(n, c, dtype, seed)
    t = logits_like(n, c, dtype, seed + 1, scale=4.0)
    return s, t


def _targets(n: int, c: int, seed: int = 0, ignored: tuple[int, ...] = ()) -> torch.Tensor:
    y = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))
    for i in ignored:
        if i < n:
            y[i] = -100
    return y


def _bf16_rel(dtype: torch.dtype, path: str) -> float:
    """The interpreter rounds fp32 -> bf16 toward zero (a GPU rounds to nearest): one more
    unit of the last place."""
    rel = REL_TOL[dtype]
    return rel * 2 if dtype == torch.bfloat16 and path == "triton" else rel


def check(path, s, t, temperature=1.0, *, t_grad=False, teacher_grad=True, upstream=None,
          **kwargs):
    """tempfast and the float64 oracle: loss and every gradient."""
    dtype = s.dtype
    xs = s.clone().requires_grad_(True)
    xt = t.clone().requires_grad_(teacher_grad)
    temp = temperature.clone().requires_grad_(t_grad) if isinstance(temperature, torch.Tensor) \
        else temperature
    loss = run_path(path, tempfast.distillation_loss, xs, xt, temp, **kwargs)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    if upstream is None:
        upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(7)) + 0.5
    loss.backward(upstream.to(loss.dtype))

    s64 = s.double().requires_grad_(True)
    t64 = t.double().requires_grad_(teacher_grad)
    temp64 = temperature.double().requires_grad_(t_grad) \
        if isinstance(temperature, torch.Tensor) else temperature
    expected = distillation_loss_reference(s64, t64, temp64, **kwargs)
    expected.backward(upstream.double())

    rel = _bf16_rel(dtype, path)
    assert_close(loss, expected, max(LOSS_TOL, REL_TOL[dtype] if dtype == torch.float64 else 0),
                 "loss")
    assert xs.grad.dtype == dtype
    assert_close(xs.grad, s64.grad, rel, "grad student", floor=1e-2)
    if teacher_grad:
        assert xt.grad.dtype == dtype
        assert_close(xt.grad, t64.grad, rel, "grad teacher", floor=1e-2)
    else:
        assert xt.grad is None
    if t_grad:
        assert_close(temp.grad, temp64.grad, T_GRAD_TOL, "grad temperature", floor=1e-2)
    return loss


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", harness.DTYPES, ids=str)
@pytest.mark.parametrize("n_cols", [1, 10, 1000])
def test_matches_reference_for_every_dtype_and_class_count(path, dtype, n_cols):
    s, t = _inputs(7, n_cols, dtype)
    check(path, s, t, 4.0)
    check(path, s, t, torch.linspace(0.5, 4.0, 7), t_grad=True, teacher_grad=False)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, "tensor", "rows"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_every_temperature_and_reduction(path, temperature, reduction):
    s, t = _inputs(7, 37, torch.float32, seed=3)
    t_grad = not isinstance(temperature, float)
    if temperature == "tensor":
        temperature = torch.tensor(2.5)
    elif temperature == "rows":
        temperature = torch.linspace(0.5, 4.0, 7)
    check(path, s, t, temperature, t_grad=t_grad, reduction=reduction)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_hard_label_term_with_alpha_and_ignore_index(path, reduction, alpha):
    s, t = _inputs(7, 50, torch.float32, seed=5)
    y = _targets(7, 50, ignored=(1, 4))
    check(path, s, t, torch.linspace(1.0, 3.0, 7), t_grad=True, target=y, alpha=alpha,
          reduction=reduction)
    y7 = _targets(7, 50, seed=2).masked_fill(torch.arange(7) == 3, 9)
    check(path, s, t, 2.0, target=y7, alpha=alpha, reduction=reduction, ignore_index=9)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", harness.DTYPES, ids=str)
def test_hard_label_term_for_every_dtype(path, dtype):
    s, t = _inputs(7, 300, dtype, seed=8)
    check(path, s, t, 3.0, target=_targets(7, 300, ignored=(2,)), alpha=0.7)


@pytest.mark.filterwarnings("ignore:reduction. .mean. divides:UserWarning")  # torch's own
@pytest.mark.parametrize("path", PATHS)
def test_default_equals_the_kl_div_composition(path):
    s, t = _inputs(6, 33, torch.float32, seed=1)
    temp = 4.0
    for reduction in REDUCTIONS:
        expected = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1),
                            log_target=True,
                            reduction="none" if reduction == "none" else reduction) * temp ** 2
        if reduction == "none":
            expected = expected.sum(-1)
        got = run_path(path, tempfast.distillation_loss, s, t, temp, reduction=reduction)
        assert_close(got, expected, LOSS_TOL, reduction)


@pytest.mark.parametrize("path", PATHS)
def test_with_target_equals_the_plain_composition(path):
    s, t = _inputs(8, 20, torch.float32, seed=2)
    y = _targets(8, 20, ignored=(0, 5))
    temp, alpha = 2.0, 0.25
    kd = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True,
                  reduction="batchmean") * temp ** 2
    expected = alpha * kd + (1 - alpha) * F.cross_entropy(s, y)  # CE mean: over 6 rows
    got = run_path(path, tempfast.distillation_loss, s, t, temp, target=y, alpha=alpha)
    assert_close(got, expected, LOSS_TOL, "loss")


@pytest.mark.parametrize("path", PATHS)
def test_leading_dimensions_and_noncontiguous_inputs(path):
    s, t = _inputs(12, 16, torch.float32, seed=4)
    s3, t3 = s.reshape(3, 4, 16), t.reshape(3, 4, 16)
    y = _targets(12, 16).reshape(3, 4)
    temp = torch.linspace(0.5, 2.0, 12).reshape(3, 4)
    got = run_path(path, tempfast.distillation_loss, s3, t3, temp, target=y,
                      reduction="none")
    assert got.shape == (3, 4)
    expected = distillation_loss_reference(s.double(), t.double(), temp.reshape(-1).double(),
                                           target=y.reshape(-1), reduction="none")
    assert_close(got.reshape(-1), expected, LOSS_TOL, "loss")
    wide_s = torch.stack([s, s], -1).reshape(12, 32)[:, ::2]  # column stride 2
    got = run_path(path, tempfast.distillation_loss, wide_s, t.t().contiguous().t(), 2.0)
    assert_close(got, distillation_loss_reference(s.double(), t.double(), 2.0), LOSS_TOL, "loss")


@pytest.mark.filterwarnings("ignore:reduction. .mean. divides:UserWarning")  # torch's own
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch_follows_torch(path, reduction):
    s = torch.zeros(0, 10, requires_grad=True)
    t = torch.zeros(0, 10)
    loss = run_path(path, tempfast.distillation_loss, s, t, 2.0, reduction=reduction)
    expected = F.kl_div(s, t, log_target=True, reduction=reduction)
    if reduction == "none":
        assert loss.shape == (0,)
    else:
        assert torch.equal(loss.isnan(), expected.isnan()), (loss, expected)
        loss.backward()
        assert s.grad.shape == (0, 10)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", harness.DTYPES, ids=str)
def test_identical_logits_give_zero_loss(path, dtype):
    s = logits_like(5, 1000, dtype, scale=30.0)
    loss = run_path(path, tempfast.distillation_loss, s, s.clone(), 0.5, reduction="none")
    assert torch.equal(loss, torch.zeros(5))
    big = logits_like(5, 1000, dtype, scale=1e4)
    near = (big.float() + torch.randn(5, 1000) * 1e-3).to(dtype)
    loss = run_path(path, tempfast.distillation_loss, big, near, 1.0, reduction="none")
    assert bool((loss >= 0).all())


def test_gradcheck_of_the_torch_path_in_float64():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 7, dtype=torch.float64, generator=g).requires_grad_(True)
    t = torch.randn(5, 7, dtype=torch.float64, generator=g).requires_grad_(True)
    temp = (torch.rand(5, dtype=torch.float64, generator=g) + 0.5).requires_grad_(True)
    y = torch.tensor([0, 3, -100, 6, 2])
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(
            lambda a, b, c, r=reduction: tempfast.distillation_loss(a, b, c, target=y, alpha=0.4,
                                                                    reduction=r), (s, t, temp))
    scalar = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: tempfast.distillation_loss(a, b, c),
                                    (s, t, scalar))


def test_temperature_gradient_formula_matches_autograd_of_the_reference():
    """dL/dT = 2 T KL + T (-Cov_pt(a, a - b) + E_pt[b] - E_ps[b]), checked against autograd."""
    s, t = _inputs(4, 9, torch.float64, seed=6)
    temp = torch.tensor([0.7, 1.0, 2.0, 5.0], dtype=torch.float64, requires_grad=True)
    distillation_loss_reference(s, t, temp, reduction="sum").backward()
    a, b = t / temp.detach()[:, None], s / temp.detach()[:, None]
    pt, ps = a.softmax(-1), b.softmax(-1)
    kl = (pt * (a.log_softmax(-1) - b.log_softmax(-1))).sum(-1)
    ea, er = (pt * a).sum(-1, keepdim=True), (pt * (a - b)).sum(-1, keepdim=True)
    cov = (pt * (a - ea) * (a - b - er)).sum(-1)
    tt = temp.detach()
    formula = 2 * tt * kl + tt * (-cov + (pt * b).sum(-1) - (ps * b).sum(-1))
    assert_close(temp.grad, formula, 1e-10, "dL/dT")


@pytest.mark.parametrize("path", PATHS)
def test_learnable_temperature_module(path):
    s, t = _inputs(6, 40, torch.float32, seed=9)
    y = _targets(6, 40)
    module = tempfast.nn.DistillationLoss(3.0, alpha=0.6, learnable=True)
    xs = s.clone().requires_grad_(True)
    loss = run_path(path, module, xs, t, y)
    loss.backward()
    log_t = torch.tensor(3.0).log().double().requires_grad_(True)
    s64 = s.double().requires_grad_(True)
    expected = distillation_loss_reference(s64, t.double(), log_t.exp(), target=y, alpha=0.6)
    expected.backward()
    assert_close(loss, expected, LOSS_TOL, "loss")
    assert_close(module.log_temperature.grad, log_t.grad, T_GRAD_TOL, "grad log T", floor=1e-2)
    assert_close(xs.grad, s64.grad, REL_TOL[torch.float32], "grad student", floor=1e-2)
    assert "learnable=True" in repr(module)
    assert not tempfast.nn.DistillationLoss(2.0).log_temperature.requires_grad


def test_upstream_gradient_through_a_retained_graph():
    s, t = _inputs(4, 12, torch.float32)
    xs = s.clone().requires_grad_(True)
    loss = tempfast.distillation_loss(xs, t, 2.0)
    loss.backward(torch.tensor(2.0), retain_graph=True)
    first = xs.grad.clone()
    xs.grad = None
    loss.backward(torch.tensor(3.0))
    assert_close(xs.grad, first * 1.5, 1e-6, "second backward", floor=1e-3)


@pytest.mark.parametrize("path", PATHS)
def test_compiles_with_fullgraph(path):
    s, t = _inputs(6, 24, torch.float32, seed=10)
    y = _targets(6, 24, ignored=(3,))

    def step(a, b, temp):
        return tempfast.distillation_loss(a, b, temp, target=y, alpha=0.5)

    xs = s.clone().requires_grad_(True)
    temp = torch.tensor(2.0, requires_grad=True)
    with harness.on_path(path):
        out = torch.compile(step, fullgraph=True, backend="aot_eager")(xs, t, temp)
        out.backward()
        grads = (xs.grad.clone(), temp.grad.clone())
        xs.grad = temp.grad = None
        expected = step(xs, t, temp)
        expected.backward()
    assert_close(out, expected, LOSS_TOL, "loss")
    assert_close(grads[0], xs.grad, 1e-6, "grad student", floor=1e-3)
    assert_close(grads[1], temp.grad, 1e-6, "grad temperature", floor=1e-3)


def test_op_registration_passes_opcheck():
    s, t = _inputs(5, 8, torch.float32)
    temp = torch.full((1,), 2.0, requires_grad=True)
    y = _targets(5, 8, ignored=(1,))
    torch.library.opcheck(distillation_2d, (s.requires_grad_(True), t, temp, y, -100, 0.5,
                                            "batchmean", False, True))


@pytest.mark.parametrize(("kwargs", "name", "error"), [
    ({"teacher_logits": torch.zeros(4, 6)}, "teacher_logits", ValueError),
    ({"teacher_logits": torch.zeros(4, 5, dtype=torch.float64)}, "teacher_logits", TypeError),
    ({"student_logits": torch.zeros(4, 5, dtype=torch.int64)}, "student_logits", TypeError),
    ({"student_logits": torch.zeros(4, 0), "teacher_logits": torch.zeros(4, 0)},
     "student_logits", ValueError),
    ({"reduction": "avg"}, "reduction", ValueError),
    ({"alpha": 1.5, "target": torch.zeros(4, dtype=torch.int64)}, "alpha", ValueError),
    ({"alpha": -0.1}, "alpha", ValueError),
    ({"temperature": 0.0}, "temperature", ValueError),
    ({"temperature": float("nan")}, "temperature", ValueError),
    ({"temperature": torch.tensor([1.0, -1.0, 1.0, 1.0])}, "temperature", ValueError),
    ({"temperature": torch.tensor([1.0, float("inf"), 1.0, 1.0])}, "temperature", ValueError),
    ({"temperature": torch.ones(3)}, "temperature", ValueError),
    ({"target": torch.zeros(4)}, "target", TypeError),
    ({"target": torch.zeros(3, dtype=torch.int64)}, "target", ValueError),
    ({"target": torch.tensor([0, 1, 5, 2])}, "target", ValueError),
    ({"target": torch.tensor([0, -1, 2, 2])}, "target", ValueError),
])
@pytest.mark.parametrize("path", PATHS)
def test_bad_inputs_raise_one_line_errors_naming_the_argument(path, kwargs, name, error):
    args = {"student_logits": torch.zeros(4, 5), "teacher_logits": torch.zeros(4, 5),
            "temperature": 1.0, **kwargs}
    with pytest.raises(error, match=name) as info:
        run_path(path, tempfast.distillation_loss, args.pop("student_logits"),
                    args.pop("teacher_logits"), args.pop("temperature"), **args)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------
# The Triton paths, each forced at a small size.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel_path", harness.KERNEL_PATHS)
@pytest.mark.parametrize("with_target", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_every_kernel_path_on_a_long_non_power_of_two_row(monkeypatch, kernel_path, with_target,
                                                          dtype):
    n, c = 5, 1000  # slices: 8 slices of 128, the last one partly masked
    harness.force_config(monkeypatch, triton_path, harness.forced(kernel_path, c, block_c=128))
    s, t = _inputs(n, c, dtype, seed=11)
    kwargs = {"target": _targets(n, c, ignored=(3,)), "alpha": 0.4} if with_target else {}
    check("triton", s, t, torch.linspace(0.5, 4.0, n), t_grad=True, **kwargs)
    check("triton", s, t, 2.0, reduction="none", teacher_grad=False, **kwargs)


def test_slices_path_with_more_slices_than_one_combine_chunk(monkeypatch):
    n, c = 2, 1040  # 65 slices of 16: the combine takes two chunks of DISTILL_BLOCK_S = 64
    harness.force_config(monkeypatch, triton_path, LaunchConfig("slices", 1, 16, cdiv(c, 16), 4))
    s, t = _inputs(n, c, torch.float32, seed=12)
    check("triton", s, t, torch.tensor([0.5, 3.0]), t_grad=True, target=_targets(n, c),
          alpha=0.5)


def test_heuristics_choose_the_slices_path_for_long_rows():
    from tempfast.kernels.distillation import distill_config

    assert distill_config(8, 1000, 2).path == "rows"
    cfg = distill_config(8, 1 << 17, 2)
    assert cfg.path == "slices" and cfg.n_slices * cfg.block_c >= 1 << 17


def test_a_learnable_distillation_temperature_is_kept_out_of_weight_decay():
    model = torch.nn.Linear(4, 3)
    loss_fn = tempfast.nn.DistillationLoss(2.0, learnable=True)
    groups = tempfast.nn.parameter_groups(model, loss_fn, weight_decay=0.1)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert id(loss_fn.log_temperature) in no_decay
    assert id(model.weight) not in no_decay


def test_every_call_takes_the_custom_op_route():
    call = kd.normalise(torch.zeros(2, 3), torch.zeros(2, 3), 2.0, target=None, alpha=0.5,
                        reduction="batchmean", ignore_index=-100)
    assert kd.route(call) == "custom_op"


@pytest.mark.parametrize("path", PATHS)
def test_double_backward_is_refused_and_names_the_oracle(path):
    s, t = _inputs(3, 12, torch.float32)
    xs = s.clone().requires_grad_(True)
    loss = run_path(path, tempfast.distillation_loss, xs, t, 2.0)
    harness.assert_refuses_double_backward(loss, xs)


def test_reduction_none_is_per_row_and_documented_so():
    """``reduction="none"`` gives one value per row (the KL summed over the classes), not
    ``F.kl_div``'s one per element: the README's table and the docstring say so (issue 23)."""
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    loss = tempfast.distillation_loss(s, t, 2.0, reduction="none")
    per_element = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True,
                           reduction="none") * 4
    assert loss.shape == (2, 3)
    torch.testing.assert_close(loss, per_element.sum(-1))
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if "tempfast.distillation_loss(" in line)
    assert "one value per row" in row
    assert "one value per row" in tempfast.distillation_loss.__doc__


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("temperature", [2.0, "rows"])
def test_a_teacher_given_as_log_probabilities_at_the_temperature(path, temperature):
    """``teacher_log_probs=True``: the teacher input is ``log_softmax(t / T)``, not divided by
    T again; the loss and the gradients are those of the teacher's logits."""
    s, t = _inputs(6, 300, torch.float32)
    temp = harness.temperature_for(temperature, 6)
    t_rows = temp.reshape(-1, 1) if isinstance(temp, torch.Tensor) else temp
    log_pt = torch.log_softmax(t.double() / t_rows, -1).float()
    y = _targets(6, 300, ignored=(2,))
    xs = s.clone().requires_grad_(True)
    loss = run_path(path, tempfast.distillation_loss, xs, log_pt, temp, target=y,
                    teacher_log_probs=True)
    xs64 = s.double().requires_grad_(True)
    expected = distillation_loss_reference(xs64, t.double(), temp, target=y)
    loss.backward()
    expected.backward()
    assert_close(loss, expected, LOSS_TOL, "loss")
    assert_close(xs.grad, xs64.grad, REL_TOL[torch.float32], "grad student", floor=1e-3)


def test_teacher_log_probabilities_refuse_a_learnable_temperature():
    s, t = _inputs(3, 8, torch.float32)
    harness.raises_one_line(ValueError, "teacher_log_probs", tempfast.distillation_loss, s,
                            torch.log_softmax(t, -1), torch.tensor(2.0, requires_grad=True),
                            teacher_log_probs=True)
