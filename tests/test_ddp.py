"""``torchrun --nproc_per_node=2 -m tempfast train``: DDP with gloo on 2 CPU processes, each on
its own shard, rank-0 logging and checkpointing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tempfast.checkpoint import load_checkpoint


def test_torchrun_two_cpu_processes_train_on_shards_and_rank0_writes(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tempfast", "train", "--device", "cpu", "--epochs", "2", "--adv", "pgd",
           "--steps", "1", "--eval-adv-examples", "32", "--no-final-eval", "--batch-size", "64",
           "--output", str(out), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events] == ["start", "epoch", "epoch", "summary"], \
        "only rank 0 prints"
    assert events[0]["world_size"] == 2
    # 1437 images, 2 ranks x 718, 11 batches of 64 each: 1408 images per epoch in all.
    assert all(e["train_images"] == 1408 for e in events[1:3])
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
                          output=os.path.join(out, "run")))
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
