"""Interrupted-then-resumed runs end exactly like uninterrupted ones (CPU, fixed seed), and
Ctrl-C writes a recovery checkpoint and exits cleanly."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch

from tempfast.cli import main
from tempfast.train import RunInterruptedError, TrainConfig, progress, run
from tempfast.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # end to end: real training runs

TIMES = ("epoch_time_s", "images_per_s")
SETTINGS = dict(adv="pgd", steps=2, temp=4.0, eval_adv_examples=32, final_eval=False,
                batch_size=128, threads=1)


class CtrlCAt(progress.Reporter):
    """Sends this process a real SIGINT after step ``step`` of epoch ``epoch`` (0-based)."""

    def __init__(self, epoch: int, step: int) -> None:
        self.target, self.epoch = (epoch, step), None

    def epoch_start(self, epoch, epochs, steps, start_step=0):
        self.epoch = epoch

    def step(self, done, sums):
        if (self.epoch, done) == self.target:
            os.kill(os.getpid(), signal.SIGINT)


def rows(folder):
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMES} for line in lines]


def same_weights(a, b):
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_ctrl_c_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run(TrainConfig(epochs=3, output=str(straight), **SETTINGS))
    handler = signal.getsignal(signal.SIGINT)  # SIG_IGN when started in the background
    with pytest.raises(RunInterruptedError) as exc:
        run(TrainConfig(epochs=3, output=str(stopped), **SETTINGS), CtrlCAt(epoch=1, step=4))
    assert exc.value.path == str(stopped / "recovery.pt")
    recovery = load_checkpoint(stopped / "recovery.pt")
    assert (recovery["epoch"], recovery["step"]) == (1, 4)
    assert len(rows(stopped)) == 1
    assert signal.getsignal(signal.SIGINT) is handler, "handler restored"

    run(TrainConfig(epochs=3, output=str(stopped), resume=True, **SETTINGS))
    assert rows(stopped) == rows(straight)
    assert same_weights(stopped / "last.pt", straight / "last.pt")
    assert not (stopped / "recovery.pt").exists()


def test_two_epochs_resumed_to_four_match_four_straight(tmp_path, capsys):
    flags = ["--sched", "none", "--adv", "pgd", "--steps", "1", "--eval-adv-examples", "32",
             "--no-final-eval", "--threads", "1", "--batch-size", "128", "--quiet"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert main(["train", *flags, "--epochs", "4", "--output", a]) == 0
    assert main(["train", *flags, "--epochs", "2", "--output", b]) == 0
    assert main(["train", *flags, "--epochs", "4", "--output", b, "--resume"]) == 0
    capsys.readouterr()
    assert rows(tmp_path / "b") == rows(tmp_path / "a")
    assert same_weights(tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt")
    before = {f.name: f.read_bytes() for f in (tmp_path / "b").iterdir()}
    assert main(["train", *flags, "--epochs", "3", "--output", b, "--resume"]) == 2
    assert "has finished 4 epochs; --epochs 3 cannot shorten it" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in (tmp_path / "b").iterdir()} == before


def test_ctrl_c_exits_130_with_a_one_line_message_and_resume_finishes(tmp_path, capsys,
                                                                       monkeypatch):
    def interrupt_at_step_3(self, done, sums):
        if done == 3:
            os.kill(os.getpid(), signal.SIGINT)

    out = str(tmp_path / "run")
    flags = ["--epochs", "2", "--no-final-eval", "--threads", "1", "--output", out, "--quiet"]
    monkeypatch.setattr(progress.QuietReporter, "step", interrupt_at_step_3, raising=False)
    assert main(["train", *flags]) == 130
    err = capsys.readouterr().err
    assert err == (f"tempfast train: interrupted: checkpoint {out}/recovery.pt; continue with "
                   f"--resume\n")
    monkeypatch.undo()
    assert main(["train", *flags, "--resume"]) == 0
    assert [r["epoch"] for r in rows(tmp_path / "run")] == [1, 2]


def test_wall_time_adds_up_over_resumed_invocations(tmp_path):
    settings = dict(final_eval=False, threads=1, batch_size=256, output=str(tmp_path / "r"))
    first = run(TrainConfig(epochs=1, **settings))
    before = load_checkpoint(tmp_path / "r" / "last.pt")["wall_time_s"]
    assert 0 < before <= first["wall_time_s"]
    start = time.perf_counter()
    second = run(TrainConfig(epochs=2, resume=True, **settings))
    elapsed = time.perf_counter() - start
    assert second == json.loads((tmp_path / "r" / "summary.json").read_text())
    assert before + second["last_epoch"]["epoch_time_s"] < second["wall_time_s"]
    assert second["wall_time_s"] <= before + elapsed
    assert load_checkpoint(tmp_path / "r" / "last.pt")["wall_time_s"] <= second["wall_time_s"]
