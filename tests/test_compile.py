"""The ops are torch.library custom ops: registration checks and torch.compile without breaks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tempfast
from tempfast.ops.cross_entropy import cross_entropy_2d
from tempfast.ops.softmax import softmax_2d

from ._util import LOSS_TOL, REL_TOL, assert_close


@pytest.mark.parametrize("log", [False, True])
def test_softmax_op_registration_passes_opcheck(log):
    x = torch.randn(5, 7, requires_grad=True)
    t = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0], requires_grad=True)
    torch.library.opcheck(softmax_2d, (x, t, log))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("probs", [False, True])
def test_cross_entropy_op_registration_passes_opcheck(reduction, probs):
    n, c = 6, 9
    x = torch.randn(n, c, requires_grad=True)
    target = torch.softmax(torch.randn(n, c), 1) if probs else torch.randint(0, c, (n,))
    t = torch.full((1,), 2.0, requires_grad=True)
    fused = reduction != "none"
    torch.library.opcheck(cross_entropy_2d,
                          (x, target, t, torch.rand(c), -100, 0.1, reduction, fused, True))


class TinyClassifier(nn.Module):
    """A linear head trained with a learnable temperature, the way the trainer uses the ops."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 50))
        self.criterion = tempfast.nn.TemperatureCrossEntropyLoss(4.0, learnable=True,
                                                                 label_smoothing=0.1)

    def forward(self, x, y):
        logits = self.body(x)
        probs = tempfast.softmax(logits, self.criterion.temperature)
        return self.criterion(logits, y), probs.max(dim=-1).values.mean()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_compiled_model_with_fullgraph_matches_eager(backend):
    torch.manual_seed(0)
    model = TinyClassifier()
    x = torch.randn(16, 12)
    y = torch.randint(0, 50, (16,))
    y[3] = -100
    with tempfast.use_backend(backend):
        loss, conf = model(x, y)
        loss.backward()
        eager_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        loss_c, conf_c = compiled(x, y)
        loss_c.backward()
    assert_close(loss_c, loss, LOSS_TOL, "loss")
    assert_close(conf_c, conf, LOSS_TOL, "confidence")
    for p, g in zip(model.parameters(), eager_grads, strict=True):
        assert_close(p.grad, g, REL_TOL[torch.float32], "grad", floor=1e-3)


def test_compiled_with_inductor_on_cpu():
    """The default backend (inductor, C++ codegen on CPU) compiles the ops without breaks."""
    torch.manual_seed(0)

    def step(logits, target, t):
        return tempfast.cross_entropy(logits, target, t) + tempfast.log_softmax(logits, t).mean()

    logits = torch.randn(8, 30, requires_grad=True)
    target = torch.randint(0, 30, (8,))
    t = torch.tensor(2.0, requires_grad=True)
    compiled = torch.compile(step, fullgraph=True)
    out = compiled(logits, target, t)
    out.backward()
    grads = (logits.grad.clone(), t.grad.clone())
    logits.grad = None
    t.grad = None
    expected = step(logits, target, t)
    expected.backward()
    assert_close(out, expected, LOSS_TOL, "loss")
    assert_close(grads[0], logits.grad, REL_TOL[torch.float32], "grad", floor=1e-3)
    assert_close(grads[1], t.grad, 1e-4, "grad temperature", floor=1e-3)
