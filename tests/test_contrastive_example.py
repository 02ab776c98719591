"""``python -m tempfast.train.contrastive_example``: a short SimCLR run trains (the loss falls, the
learned T moves, both probes are printed), under torchrun on 2 CPU processes it is the same run
as on one, and bad input or Ctrl-C end in one line."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys

import pytest
import torch

from tempfast.train import contrastive_example

QUICK = ["--quick", "--data", "digits"]


def _step1_final(out: str) -> tuple[float, float, float]:
    """The first step's loss, the last epoch's loss and the final T that a run printed."""
    step1 = re.search(r"^step 1  loss ([\d.]+)$", out, re.M)
    final = re.search(r"^final  loss ([\d.]+)  T ([\d.]+)$", out, re.M)
    assert step1 and final, out
    return float(step1[1]), float(final[1]), float(final[2])


@pytest.fixture(scope="module")
def one_process() -> str:
    """What the quick run prints on one process (in this process: threads restored after)."""
    threads = torch.get_num_threads()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            assert contrastive_example.main(QUICK) == 0
    finally:
        torch.set_num_threads(threads)
    return out.getvalue()


def test_a_short_run_lowers_the_loss_and_moves_the_temperature(one_process):
    losses = [float(v) for v in re.findall(r"^epoch \d+/\d+  loss ([\d.]+)", one_process,
                                           re.M)]
    assert len(losses) == contrastive_example.QUICK["epochs"], one_process
    assert losses[-1] < losses[0] - 0.05, one_process
    _, _, final_t = _step1_final(one_process)
    assert abs(final_t - 0.5) > 0.01, one_process  # --temp 0.5, learned
    assert re.search(r"^linear probe, test accuracy: trained encoder [\d.]+%, random encoder "
                     r"[\d.]+%  \(T [\d.]+\)$", one_process, re.M), one_process


@pytest.mark.slow
def test_torchrun_on_two_processes_gives_the_single_process_losses(one_process, tmp_path):
    """Each rank encodes its half of every global batch; the NT-Xent loss over the ranks and
    the summed gradients make it the same run: the same first-step loss, the same final loss
    and T to rounding."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TEMPFAST_BACKEND": "torch"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         "2", "-m", "tempfast.train.contrastive_example", *QUICK],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "over 2 process(es)" in proc.stdout, proc.stdout
    step1, final, t = _step1_final(proc.stdout)
    step1_ref, final_ref, t_ref = _step1_final(one_process)
    assert step1 == pytest.approx(step1_ref, rel=1e-6, abs=2e-6)
    assert final == pytest.approx(final_ref, rel=1e-5)
    assert t == pytest.approx(t_ref, rel=1e-5)


def test_bad_input_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    with pytest.raises(SystemExit) as exit_:
        contrastive_example.main(["--epochs", "0"])
    assert exit_.value.code == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err
    assert contrastive_example.main(["--data", "fashion-mnist", "--data-dir",
                                     "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{contrastive_example.PROG}: error: ") and err.count("\n") == 1, err


def test_ctrl_c_is_one_line(monkeypatch, capsys):
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(contrastive_example, "train", interrupted)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    assert contrastive_example.main(QUICK) == 130
    assert capsys.readouterr().err == f"{contrastive_example.PROG}: interrupted\n"
