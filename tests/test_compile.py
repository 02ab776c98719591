"""The ops are torch.library custom ops: a model using them compiles with ``torch.compile``
(``fullgraph=True``, no breaks) and matches eager. Each op's registration check (``opcheck``) is
in its own test file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tempfast

from .harness import LOSS_TOL, REL_TOL, assert_close


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
