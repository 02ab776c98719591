"""``tempfast train --fused-head``: the classifier and the loss fused, logits never built."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tempfast.cli import main
from tempfast.nn import LinearTemperatureCrossEntropy, TemperatureCrossEntropyLoss
from tempfast.train import train_step
from tempfast.train.models import FeatureNet, build_model

from .harness import assert_close


@pytest.mark.parametrize("learnable", [False, True])
def test_fused_step_equals_the_standard_step(learnable):
    """One SGD step through features + fused head moves every parameter (and a learned T)
    exactly as the standard logits + loss step does."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 300, 1, 8, (0.5,), (0.25,))
    fused_model = copy.deepcopy(model)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 300, (32,))

    criterion = TemperatureCrossEntropyLoss(4.0, learnable=learnable)
    params = [*model.parameters(), *criterion.parameters()]
    loss, correct = train_step(model, torch.optim.SGD(params, lr=0.5), criterion, x, y)

    head = fused_model.head
    fused = LinearTemperatureCrossEntropy(head.in_features, head.out_features, 4.0,
                                          learnable=learnable, chunk_size=5)
    fused.linear = head
    fused_params = [*fused_model.parameters()] + ([fused.log_temperature] if learnable else [])
    f_loss, f_correct = train_step(FeatureNet(fused_model), torch.optim.SGD(fused_params, lr=0.5),
                                   fused, x, y)
    assert_close(f_loss, loss, 1e-5, "loss")
    assert int(f_correct) == int(correct)
    for (name, a), b in zip(model.named_parameters(), fused_model.parameters(), strict=True):
        assert_close(b, a, 1e-5, name, floor=1e-3)
    if learnable:
        assert_close(fused.log_temperature, criterion.log_temperature, 1e-5, "log T")


def test_fused_step_counts_correct_predictions_of_the_weights_it_stepped_from():
    """The train accuracy of a step is that of the weights its loss was computed with, as for
    the unfused step (it was counted after ``optimizer.step()``)."""
    torch.manual_seed(1)
    model = build_model("small_cnn", 50, 1, 8, (0.5,), (0.25,))
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 50, (64,))
    head = model.head
    fused = LinearTemperatureCrossEntropy(head.in_features, head.out_features, 1.0)
    fused.linear = head
    features = FeatureNet(model)
    features.train()
    with torch.no_grad():
        before = int((model(x).argmax(1) == y).sum())  # train-mode batch norm, as the step
    _, correct = train_step(features, torch.optim.SGD(model.parameters(), lr=50.0), fused, x, y)
    with torch.no_grad():
        after = int((model(x).argmax(1) == y).sum())
    assert after != before, "the step should change the predictions for this test to bite"
    assert int(correct) == before


def test_cli_trains_a_large_class_synthetic_set_with_the_fused_head(tmp_path, capsys):
    rc = main(["train", "--data", "synthetic", "--num-classes", "1000", "--fused-head",
               "--learn-temp", "--temp", "2", "--epochs", "2", "--no-final-eval",
               "--eval-adv-examples", "0", "--threads", "1", "--output", str(tmp_path / "run"),
               "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    epochs = [e for e in events if e.get("event") == "epoch"]
    assert len(epochs) == 2 and epochs[1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[1]["temperature"] != 2.0, "the temperature is learned through the fused head"
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "fused_head: true" in config
