"""``torchrun --nproc_per_node=2 -m tempfast train``: DDP with gloo on 2 CPU processes, each on
its own shard, rank-0 logging and checkpointing. The runs train on a 512-image subset of
digits: what they check depends on the processes agreeing, not on the amount of data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from tempfast.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # end to end: torchrun and local multi-process runs


def test_torchrun_two_cpu_processes_train_on_shards_and_rank0_writes(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tempfast", "train", "--device", "cpu", "--epochs", "2", "--adv", "pgd",
           "--steps", "1", "--eval-adv-examples", "32", "--no-final-eval", "--batch-size", "64",
           "--train-subset", "512", "--output", str(out), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events] == ["start", "epoch", "epoch", "summary"], \
        "only rank 0 prints"
    assert events[0]["world_size"] == 2
    # 512 images, 2 ranks x 256, 4 batches of 64 each: 512 images per epoch in all.
    assert all(e["train_images"] == 512 for e in events[1:3])
    assert {f.name for f in out.iterdir()} == {"config.yaml", "metrics.jsonl", "summary.csv",
                                               "last.pt", "best.pt", "summary.json"}
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 2 and len(ckpt["rng"]) == 2, "every rank's RNG state is kept"
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2




WORKER = """
import json, os, sys
from tempfast.train import TrainConfig, run

out, head = sys.argv[1:]
summary = run(TrainConfig(device="cpu", epochs=1, temp=4.0, learn_temp=True,
                          fused_head=head == "fused", batch_size=64, final_eval=False, threads=1,
                          train_subset=512, output=os.path.join(out, "run")))
with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump(summary["final_temperature"], f)
"""


@pytest.mark.parametrize("head", ["standard", "fused"])
def test_learned_temperature_is_identical_on_every_rank(tmp_path, head):
    """The temperature's gradient is averaged over the ranks like the model's, so every rank
    steps the same T and rank 0's checkpoint holds it."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(tmp_path), head]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert final[0] != 4.0, "the temperature was trained"
    assert final[0] == final[1], "the ranks' temperatures differ"
    assert load_checkpoint(tmp_path / "run" / "last.pt")["temperature"] == final[0]


def _rows(folder):
    times = ("epoch_time_s", "images_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in times}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_ddp_pgd_run_resumed_from_epoch_two_matches_four_straight(tmp_path):
    """PGD crafts in eval mode, reading batch-norm statistics before DDP's forward broadcasts
    rank 0's: each rank used its own, which rank 0's checkpoint cannot restore, and the
    resumed run drifted from epoch 3 on (train loss 1.50293 vs 1.50347)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "tempfast", "train", "--device", "cpu", "--sched", "none", "--adv", "pgd",
            "--steps", "1", "--eval-adv-examples", "32", "--no-final-eval", "--batch-size",
            "128", "--train-subset", "512", "--quiet"]
    a, b = tmp_path / "a", tmp_path / "b"
    for extra in (["--epochs", "4", "--output", str(a)], ["--epochs", "2", "--output", str(b)],
                  ["--epochs", "4", "--output", str(b), "--resume"]):
        proc = subprocess.run(base + extra, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert _rows(b) == _rows(a)
    wa, wb = (load_checkpoint(f / "last.pt")["model"] for f in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _interrupt_after_first_epoch(cmd, env):
    """Start ``cmd`` in its own session, press Ctrl-C (SIGINT to the whole process group, as a
    terminal does) once an epoch line appears, and return ``(returncode, stdout, stderr)``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if '"event": "epoch"' in line:
            os.killpg(proc.pid, signal.SIGINT)
            break
    out, err = proc.communicate(timeout=300)
    return proc.returncode, "".join(lines) + out, err


@pytest.mark.slow
def test_ctrl_c_with_nproc_per_node_saves_once_and_says_one_line(tmp_path):
    """Ctrl-C under two processes: rank 0 alone says where the checkpoint is, the launcher
    adds no traceback, exit 130, and --resume finishes the run."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    flags = [sys.executable, "-m", "tempfast", "train", "--nproc-per-node", "2", "--device",
             "cpu", "--no-final-eval", "--eval-adv-examples", "0", "--batch-size", "32",
             "--output", str(out), "--json"]
    rc, _, err = _interrupt_after_first_epoch([*flags, "--epochs", "30"], env)
    assert rc == 130, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("tempfast train: interrupted: checkpoint ")
    saved = err.split("checkpoint ")[1].split(";")[0]
    assert os.path.exists(saved)
    proc = subprocess.run([*flags, "--epochs", "3", "--resume"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_checkpoint(out / "last.pt")["epoch"] == 3


@pytest.mark.slow
def test_ctrl_c_under_torchrun_still_writes_the_checkpoint(tmp_path):
    """Plain torchrun prints its own traceback on Ctrl-C (tempfast cannot change that), but the
    workers still agree, write the checkpoint and rank 0 alone names it."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tempfast", "train", "--device", "cpu", "--epochs", "30", "--no-final-eval",
           "--eval-adv-examples", "0", "--batch-size", "32", "--output", str(out), "--json"]
    rc, _, err = _interrupt_after_first_epoch(cmd, env)
    assert rc != 0
    assert err.count("tempfast train: interrupted: checkpoint ") == 1, err
    ckpt = load_checkpoint(out / "recovery.pt" if (out / "recovery.pt").exists()
                           else out / "last.pt")
    assert ckpt["epoch"] >= 1
