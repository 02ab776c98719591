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
    final = re.search(r"^final  loss ([\d.]+)  learned T ([\d.]+)$", out, re.M)
    assert step1 and final, out
    return float(step1[1]), float(final[1]), float(final[2])


def _run_here(argv: list[str]) -> str:
    """What the example prints on one process, run in this one (torch's threads restored)."""
    threads = torch.get_num_threads()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            assert contrastive_example.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return out.getvalue()


def test_a_short_run_lowers_the_loss_and_moves_the_temperature():
    one_process = _run_here(QUICK)
    losses = [float(v) for v in re.findall(r"^epoch \d+/\d+  loss ([\d.]+)", one_process,
                                           re.M)]
    assert len(losses) == contrastive_example.QUICK["epochs"], one_process
    assert losses[-1] < losses[0] - 0.05, one_process
    _, _, final_t = _step1_final(one_process)
    assert abs(final_t - 0.5) > 0.01, one_process  # --temp 0.5, learned
    assert re.search(r"^linear probe, test accuracy: trained encoder [\d.]+%, random encoder "
                     r"[\d.]+%$", one_process, re.M), one_process


@pytest.mark.slow
def test_torchrun_on_two_processes_gives_the_single_process_losses(tmp_path):
    """Each rank encodes its share of every global batch (63 rows: 32 and 31); the NT-Xent
    loss over the ranks and the summed gradients make it the same run: the same first-step
    loss, and after 12 Adam steps the same last-epoch loss and T but for rounding (the
    gradients are summed in another order). Longer runs drift apart slowly, as any two
    summation orders do (3e-5 relative after 40 steps)."""
    argv = [*QUICK, "--epochs", "3", "--batch-size", "63"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TEMPFAST_BACKEND": "torch"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         "2", "-m", "tempfast.train.contrastive_example", *argv],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "over 2 process(es)" in proc.stdout, proc.stdout
    step1, final, t = _step1_final(proc.stdout)
    step1_ref, final_ref, t_ref = _step1_final(_run_here(argv))
    assert step1 == pytest.approx(step1_ref, abs=2e-6)  # equal to the 6 decimals printed
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
