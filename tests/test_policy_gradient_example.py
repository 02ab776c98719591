"""``python -m tempfast.train.policy_gradient_example``: a short run raises the reward, its
trainer's log-probabilities equal the sampler's at the first step (and a trainer at another
temperature is caught), and bad flags end in one line."""

from __future__ import annotations

import contextlib
import io
import re

import pytest
import torch

import tempfast
from tempfast.train import policy_gradient_example as example


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = example.main(argv)
    finally:
        torch.set_num_threads(threads)
    return status, out.getvalue(), err.getvalue()


def test_a_short_run_raises_the_reward_and_starts_at_ratio_one():
    status, out, _ = _run(["--quick"])
    assert status == 0, out
    gap = float(re.search(r"max \|ratio - 1\| = ([\d.e+-]+)", out)[1])
    assert gap < example.RATIO_TOLERANCE
    first, last = map(float, re.search(r"^reward ([\d.]+) -> ([\d.]+)$", out, re.M).groups())
    assert last > first + 0.2, out


def test_a_trainer_at_another_temperature_is_caught(monkeypatch):
    token_logprobs = tempfast.token_logprobs
    monkeypatch.setattr(tempfast, "token_logprobs",
                        lambda logits, target, t, **kw: token_logprobs(logits, target, t * 1.1,
                                                                       **kw))
    status, _, err = _run(["--quick"])
    assert status == 1 and "differ from the sampler's" in err


def test_bad_flags_end_in_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        example.main(["--temp", "0"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("got 0.0")
