"""tempfast.token_logprobs against the float64 oracle (``tempfast.reference.token_logprobs``)
on both paths (the PyTorch path; the Triton kernels under the interpreter) and both kernel
paths (one slice per row; rows cut into slices whose partials a finish launch combines):
values, gradients in the logits and the temperature for any upstream gradients of both
outputs, soft-capping, and the traps users report (entropy before dividing by T, positive
log-probabilities, masked ``-inf`` logits, NaN temperature gradients, the softcap's order)."""

from __future__ import annotations

import math

import pytest
import torch

import tempfast
from tempfast.kernels.heuristics import LaunchConfig
from tempfast.kernels.token_logprobs import token_slice_len
from tempfast.ops.token_logprobs import torch_path, triton_path
from tempfast.ops.token_logprobs.op import token_stats_2d
from tempfast.reference import token_logprobs as reference

from .harness import (
    LOSS_TOL,
    PATHS,
    REL_TOL,
    assert_close,
    assert_refuses_double_backward,
    raises_one_line,
    run_path,
)

T_GRAD_TOL = 5e-5


def _case(shape, n_cols, dtype, seed=0, scale=3.0, ignored=(0,)):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(*shape, n_cols, generator=g) * scale).to(dtype)
    y = torch.randint(0, n_cols, shape, generator=g)
    flat = y.reshape(-1)
    for i in ignored:
        if i < flat.numel():
            flat[i] = -100
    return z, y


def _temperature(kind, shape, seed=0):
    if kind == "tokens":
        g = torch.Generator().manual_seed(seed + 1)
        return torch.rand(shape, generator=g) * 3.75 + 0.25
    return kind


def check(path, z, y, temperature, *, t_grad=False, softcap=None, entropy=True, rel=None,
          upstream=True, ref_logits=None, t_tol=T_GRAD_TOL):
    """tempfast and the float64 oracle: outputs, dL/dz and dL/dT for random upstream gradients
    of every output. ``ref_logits``: what the oracle differentiates (``-inf`` made finite)."""
    x = z.clone().requires_grad_(True)
    t = temperature.clone().requires_grad_(t_grad) if isinstance(temperature, torch.Tensor) \
        else temperature
    out = run_path(path, tempfast.token_logprobs, x, y, t, softcap=softcap,
                   return_entropy=entropy)
    xr = (z if ref_logits is None else ref_logits).double().requires_grad_(True)
    tr = temperature.double().requires_grad_(t_grad) if isinstance(temperature, torch.Tensor) \
        else temperature
    expected = reference(xr, y, tr, softcap=softcap, return_entropy=entropy)
    out, expected = (out, expected) if entropy else ((out,), (expected,))
    for o, e, what in zip(out, expected, ("logp", "entropy"), strict=False):
        assert o.shape == y.shape and o.dtype == torch.float32, what
        assert_close(o, e, LOSS_TOL, what)
    if not upstream:
        return out
    g = torch.Generator().manual_seed(3)
    ups = [torch.randn(y.shape, generator=g) for _ in out]
    sum((o * u).sum() for o, u in zip(out, ups, strict=True)).backward()
    sum((e * u.double()).sum() for e, u in zip(expected, ups, strict=True)).backward()
    assert x.grad.dtype == z.dtype
    rel = rel or REL_TOL[z.dtype] * (2 if z.dtype == torch.bfloat16 else 1)
    assert_close(x.grad, xr.grad, rel, "grad logits", floor=1e-3)
    if t_grad:
        assert_close(t.grad, tr.grad, t_tol, "grad temperature", floor=1e-2)
    return out


CASES = [  # (leading shape, V, temperature, softcap)
    ((2, 3), 7, 1.0, None),
    ((5,), 1000, 0.7, None),
    ((3,), 5000, "tokens", None),
    ((4,), 300, 2.0, 5.0),
    ((1,), 1, 3.0, None),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("shape", "n_cols", "temperature", "softcap"), CASES)
def test_matches_float64_oracle_with_both_upstream_gradients(path, shape, n_cols, temperature,
                                                            softcap):
    z, y = _case(shape, n_cols, torch.float32)
    t = _temperature(temperature, shape)
    check(path, z, y, t, softcap=softcap)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["scalar", "tokens"])
@pytest.mark.parametrize("entropy", [True, False])
def test_learnable_temperature_gets_its_gradient(path, kind, entropy):
    shape = (2, 4)
    z, y = _case(shape, 600, torch.float32, seed=1)
    t = torch.tensor(1.5) if kind == "scalar" else _temperature("tokens", shape)
    check(path, z, y, t, t_grad=True, softcap=20.0 if entropy else None, entropy=entropy)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_logits(path, dtype):
    z, y = _case((6,), 2000, dtype, seed=2)
    check(path, z, y, 1.3)


@pytest.mark.parametrize("n_slices", [1, 3])
def test_both_kernel_paths_agree_with_the_oracle(monkeypatch, n_slices):
    """The same rows through one slice per row (the outputs written by the statistics launch)
    and three slices (partials combined by the finish launch)."""
    z, y = _case((5,), 700, torch.float32, seed=4)
    cfg = LaunchConfig("rows" if n_slices == 1 else "slices", 2, 128, n_slices, 4)
    monkeypatch.setattr(triton_path, "config",
                        lambda x, *others: (cfg, token_slice_len(x.shape[1], n_slices, 128)))
    check("triton", z, y, torch.tensor(2.0), t_grad=True, softcap=8.0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("temperature", [0.01, 1e3])
def test_extreme_temperatures(path, temperature):
    z, y = _case((4,), 500, torch.float32, seed=5)
    check(path, z, y, torch.tensor(temperature), t_grad=True, rel=5e-5)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("shift", "scale"), [(-1e3, 3.0), (0.0, 1e4)])
def test_all_negative_and_huge_logits(path, shift, scale):
    z, y = _case((4,), 800, torch.float32, seed=6, scale=scale)
    # log p = a - lse of two numbers near -1000 in fp32: 6e-5 absolute, as in any fp32 code
    logp, h = check(path, z + shift, y, torch.tensor(1.0), t_grad=True, rel=5e-5, t_tol=5e-4)
    assert (logp <= 0).all() and (h >= 0).all()


@pytest.mark.parametrize("path", PATHS)
def test_masked_logits_give_finite_results_and_temperature_gradient(path):
    """``-inf`` entries (masked vocabulary): finite log-probabilities, entropy and gradients,
    where torch's composition differentiates ``-inf / T`` into a NaN dL/dT."""
    z, y = _case((4,), 300, torch.float32, seed=7, ignored=())
    mask = torch.zeros_like(z, dtype=torch.bool)
    mask[:, ::3] = True
    mask[torch.arange(4), y] = False
    masked = z.masked_fill(mask, float("-inf"))
    t = torch.tensor(2.0, requires_grad=True)
    torch_lp = torch.log_softmax(masked / t, -1).gather(-1, y[:, None]).sum()
    torch_lp.backward()
    assert t.grad.isnan()  # the trap this op removes
    out = check(path, masked, y, torch.tensor(2.0), t_grad=True,
                ref_logits=z.masked_fill(mask, -1e30))
    assert all(torch.isfinite(o).all() for o in out)


@pytest.mark.parametrize("path", PATHS)
def test_softcap_caps_then_divides_by_temperature(path):
    z, y = _case((3,), 50, torch.float32, seed=8, scale=40.0, ignored=())
    cap, t = 30.0, 4.0
    logp = run_path(path, tempfast.token_logprobs, z, y, t, softcap=cap)
    right = torch.log_softmax(cap * torch.tanh(z.double() / cap) / t, -1)
    wrong = torch.log_softmax(cap * torch.tanh(z.double() / t / cap), -1)
    assert_close(logp, right.gather(-1, y[:, None]).squeeze(-1), LOSS_TOL, "logp")
    assert (logp.double() - wrong.gather(-1, y[:, None]).squeeze(-1)).abs().max() > 1e-2


@pytest.mark.parametrize("path", PATHS)
def test_bounds_and_ignored_positions(path):
    z, y = _case((6,), 400, torch.float32, seed=9, ignored=(1, 4))
    z[0] = 0.0  # uniform row: entropy log V exactly
    x = z.clone().requires_grad_(True)
    logp, h = run_path(path, tempfast.token_logprobs, x, y, 0.5, return_entropy=True)
    assert (logp <= 0).all() and (h >= 0).all() and (h <= math.log(400)).all()
    assert logp[1] == 0 and h[1] == 0 and logp[4] == 0 and h[4] == 0
    assert abs(h[0].item() - math.log(400)) < 1e-5
    (logp.sum() + h.sum()).backward()
    assert (x.grad[1] == 0).all() and (x.grad[4] == 0).all()


@pytest.mark.parametrize("path", PATHS)
def test_long_rows_in_fp32_accumulation(path):
    """V = 262144 (the largest vocabularies) in fp32: the sums stay accurate."""
    z, y = _case((2,), 262144, torch.bfloat16, seed=10, scale=2.0, ignored=())
    check(path, z, y, torch.tensor(1.0), t_grad=True, upstream=path == "triton")


def test_entropy_terms_skipped_when_the_entropy_gets_no_gradient(monkeypatch):
    seen = []
    backward = torch_path.token_backward
    monkeypatch.setattr(torch_path, "token_backward",
                        lambda *args: seen.append(args[9]) or backward(*args))
    z, y = _case((3,), 50, torch.float32)
    x = z.clone().requires_grad_(True)
    with tempfast.use_backend("torch"):
        logp, h = tempfast.token_logprobs(x, y, 2.0, return_entropy=True)
        logp.sum().backward()
        assert seen == [None]
        x.grad = None
        logp, h = tempfast.token_logprobs(x, y, 2.0, return_entropy=True)
        (logp.sum() + h.sum()).backward()
    assert seen[1] is not None


def test_empty_and_traced_calls():
    z = torch.zeros(0, 5, requires_grad=True)
    t = torch.tensor(2.0, requires_grad=True)
    logp, h = tempfast.token_logprobs(z, torch.zeros(0, dtype=torch.long), t,
                                      return_entropy=True)
    assert logp.shape == (0,) and h.shape == (0,)
    (logp.sum() + h.sum()).backward()
    assert t.grad == 0
    z, y = _case((2, 3), 40, torch.float32)
    x = z.clone().requires_grad_(True)
    compiled = torch.compile(
        lambda a, b: tempfast.token_logprobs(a, b, 2.0, softcap=10.0, return_entropy=True),
        fullgraph=True, backend="aot_eager")
    lp, ent = compiled(x, y)
    (lp.sum() + ent.sum()).backward()
    x2 = z.clone().requires_grad_(True)
    lp2, ent2 = tempfast.token_logprobs(x2, y, 2.0, softcap=10.0, return_entropy=True)
    (lp2.sum() + ent2.sum()).backward()
    assert_close(lp, lp2, LOSS_TOL, "logp")
    assert_close(x.grad, x2.grad, 1e-6, "grad", floor=1e-3)


def test_op_registration_passes_opcheck():
    z, y = _case((5,), 9, torch.float32)
    t = torch.full((1,), 2.0, requires_grad=True)
    torch.library.opcheck(token_stats_2d, (z.requires_grad_(True), y, t, 3.0, -100, True))


def test_refuses_double_backward():
    z, y = _case((3,), 9, torch.float32)
    x = z.clone().requires_grad_(True)
    assert_refuses_double_backward(tempfast.token_logprobs(x, y, 2.0), [x])


@pytest.mark.parametrize(("kwargs", "name", "error"), [
    ({"target": torch.zeros(4, 2, dtype=torch.long)}, "target", ValueError),
    ({"target": torch.zeros(4)}, "target", TypeError),
    ({"logits": torch.zeros(4, 6, dtype=torch.long)}, "logits", TypeError),
    ({"logits": torch.zeros(4, 0)}, "logits", ValueError),
    ({"softcap": 0.0}, "softcap", ValueError),
    ({"softcap": float("inf")}, "softcap", ValueError),
    ({"temperature": -1.0}, "temperature", ValueError),
    ({"temperature": torch.tensor([1.0, 0.0, 1.0, 1.0])}, "temperature", ValueError),
    ({"temperature": torch.ones(3)}, "temperature", ValueError),
    ({"target": torch.tensor([0, 1, 6, 2])}, "target", ValueError),
    ({"return_entropy": 1}, "return_entropy", TypeError),
])
def test_bad_inputs_get_one_line_errors(kwargs, name, error):
    args = {"logits": torch.zeros(4, 6), "target": torch.zeros(4, dtype=torch.long)}
    args.update(kwargs)
    logits, target = args.pop("logits"), args.pop("target")
    message = raises_one_line(error, name, tempfast.token_logprobs, logits, target, **args)
    assert message.startswith(name)


# --------------------------------------------------------------------------------------------
# linear_token_logprobs: from the hidden state, chunked, and with the vocabulary sharded.
# --------------------------------------------------------------------------------------------
def _head(n, h, v, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64) / h ** 0.5 * 4
    bias = torch.randn(v, generator=g, dtype=torch.float64)
    target = torch.randint(0, v, (n,), generator=g)
    target[1] = -100
    return hidden, weight, bias, target


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("softcap", [None, 6.0])
def test_linear_token_logprobs_match_the_oracle(path, softcap):
    hidden, weight, bias, target = _head(11, 16, 300)
    t = torch.rand(11, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    leaves = [x.float().requires_grad_(True) for x in (hidden, weight, bias, t)]
    lp, h = run_path(path, tempfast.linear_token_logprobs, leaves[0], leaves[1], target,
                     leaves[2], leaves[3], softcap=softcap, return_entropy=True, chunk_size=4)
    ref = [x.clone().requires_grad_(True) for x in (hidden, weight, bias, t)]
    from tempfast.reference import linear_token_logprobs as oracle

    exp_lp, exp_h = oracle(ref[0], ref[1], target, ref[2], ref[3], softcap=softcap,
                           return_entropy=True)
    ups = [torch.randn(11, generator=torch.Generator().manual_seed(s)) for s in (2, 3)]
    ((lp * ups[0]).sum() + (h * ups[1]).sum()).backward()
    ((exp_lp * ups[0].double()).sum() + (exp_h * ups[1].double()).sum()).backward()
    assert_close(lp, exp_lp, LOSS_TOL, "logp")
    assert_close(h, exp_h, LOSS_TOL, "entropy")
    for name, a, b in zip(("hidden", "weight", "bias", "temperature"), leaves, ref,
                          strict=True):
        assert_close(a.grad, b.grad, T_GRAD_TOL, f"grad {name}", floor=1e-2)


def _sharded_cases(rank: int, widths: tuple[int, ...]) -> None:
    import torch.distributed as dist

    hidden, weight, bias, target = _head(9, 12, sum(widths))
    target[2] = sum(widths) - 1
    t = torch.tensor(1.7, dtype=torch.float64)
    start = sum(widths[:rank])
    block = slice(start, start + widths[rank])
    for softcap in (None, 5.0):
        ref = [x.clone().requires_grad_(True) for x in (hidden, weight, bias, t)]
        from tempfast.reference import linear_token_logprobs as oracle

        exp_lp, exp_h = oracle(ref[0], ref[1], target, ref[2], ref[3], softcap=softcap,
                               return_entropy=True)
        ups = [torch.randn(9, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
               for s in (2, 3)]
        ((exp_lp * ups[0]).sum() + (exp_h * ups[1]).sum()).backward()
        mine = [hidden.clone().requires_grad_(True), weight[block].clone().requires_grad_(True),
                bias[block].clone().requires_grad_(True), t.clone().requires_grad_(True)]
        lp, h = tempfast.linear_token_logprobs(mine[0], mine[1], target, mine[2], mine[3],
                                               softcap=softcap, return_entropy=True,
                                               process_group=dist.group.WORLD, chunk_size=4)
        ((lp * ups[0]).sum() + (h * ups[1]).sum()).backward()
        tol = 1e-10
        assert_close(lp, exp_lp, tol, "logp")
        assert_close(h, exp_h, tol, "entropy")
        assert_close(mine[0].grad, ref[0].grad, tol, "grad hidden", floor=1e-3)
        assert_close(mine[1].grad, ref[1].grad[block], tol, "grad weight", floor=1e-3)
        assert_close(mine[2].grad, ref[2].grad[block], tol, "grad bias", floor=1e-3)
        assert_close(mine[3].grad, ref[3].grad, tol, "grad temperature", floor=1e-3)


@pytest.mark.parametrize("widths", [(120, 180), (100, 0, 77)])
def test_linear_token_logprobs_over_a_sharded_vocabulary_equal_the_whole(tmp_path, widths):
    from .harness import run_on_gloo_ranks

    run_on_gloo_ranks(len(widths), str(tmp_path / "init"), _sharded_cases, widths)
