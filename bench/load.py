"""A competing process for CPU benchmarks: the shared machine a user trains on.

:func:`competitor` starts a second Python process that runs small two-thread PyTorch ops in a
loop (``torch.softmax`` of a 512 x 512 tensor, as a data-loader worker or another job would),
and stops it on exit from the block, whatever happens in the block. The benchmark suite runs
under it with ``TEMPFAST_BENCH_COMPETITOR=1`` (``bench/conftest.py``); ``python -m
bench.under_load`` measures the cross-entropy with and without it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

COMPETITOR_CODE = (
    "import torch\n"
    "torch.set_num_threads({threads})\n"
    "x = torch.randn(512, 512)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    torch.softmax(x, -1)\n"
)
DESCRIPTION = "a second process running torch.softmax(512 x 512) in a loop on 2 threads"


@contextlib.contextmanager
def competitor(threads: int = 2, ready_timeout_s: float = 60.0) -> Iterator[subprocess.Popen]:
    """Run the competing process for the duration of the block (it has started its loop when
    the block begins; it is killed and reaped when the block ends)."""
    proc = subprocess.Popen([sys.executable, "-c", COMPETITOR_CODE.format(threads=threads)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    try:
        deadline = time.monotonic() + ready_timeout_s
        line = ""
        while time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            if line.strip() == "ready":
                break
        if line.strip() != "ready":
            raise RuntimeError("the competing process did not start")
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()


def competitor_requested() -> bool:
    """``TEMPFAST_BENCH_COMPETITOR``: ``1`` runs the suite beside :func:`competitor`."""
    value = os.environ.get("TEMPFAST_BENCH_COMPETITOR", "0").strip()
    if value not in ("0", "1", ""):
        raise ValueError(f"TEMPFAST_BENCH_COMPETITOR: expected 0 or 1, got {value!r}")
    return value == "1"
