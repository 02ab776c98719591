"""``torchrun --nproc_per_node=2 -m tempfast train``: DDP with gloo on 2 CPU processes, each on
its own shard, rank-0 logging and checkpointing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
