"""How a case is timed: the clock, and how many rounds and iterations per round.

pytest-benchmark reads the clock before and after each round of ``iterations`` calls and
records the round's time divided by ``iterations``. On CUDA the clock synchronises the device
first, so a round measures finished work; several calls per round keep the GPU queue full, as
in a training loop, so per-call launch latency is not timed on its own. On CPU the clock is
``time.perf_counter`` and a round is one call.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

MIN_ROUNDS = 5
MAX_ROUNDS = 1000
CASE_SECONDS = {"cpu": 0.3, "cuda": 0.15}
ROUND_SECONDS = {"cpu": 0.0, "cuda": 0.002}


def synchronized_perf_counter() -> float:
    """``time.perf_counter()`` after ``torch.cuda.synchronize()``."""
    torch.cuda.synchronize()
    return time.perf_counter()


def clock_for(device: str) -> Callable[[], float]:
    return synchronized_perf_counter if device == "cuda" else time.perf_counter


def apply_threads() -> None:
    """``TEMPFAST_BENCH_THREADS`` (when set): ``torch.set_num_threads`` for the CPU cases.

    One thread gives steady CPU numbers on a machine shared with other jobs: a parallel
    region of as many threads as cores waits a scheduler slice whenever another process holds
    a core."""
    value = os.environ.get("TEMPFAST_BENCH_THREADS", "").strip()
    if not value:
        return
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"TEMPFAST_BENCH_THREADS: expected a positive integer, got {value!r}")
    torch.set_num_threads(int(value))


def case_seconds(device: str) -> float:
    """Timed seconds per case: ``TEMPFAST_BENCH_CASE_S``, else 0.3 on CPU and 0.15 on CUDA."""
    value = os.environ.get("TEMPFAST_BENCH_CASE_S", "").strip()
    if not value:
        return CASE_SECONDS[device]
    seconds = float(value)
    if not seconds > 0:
        raise ValueError(f"TEMPFAST_BENCH_CASE_S: expected seconds > 0, got {value!r}")
    return seconds


@dataclass(frozen=True)
class Plan:
    rounds: int
    iterations: int


def plan(step: Callable[[], object], device: str) -> Plan:
    """Time three (warm) calls of ``step`` and take the fastest; choose enough iterations to
    fill a round on CUDA and enough rounds (5 to 1000) to fill :func:`case_seconds`."""
    clock = clock_for(device)
    one = float("inf")
    for _ in range(3):
        start = clock()
        step()
        one = min(one, clock() - start)
    one = max(one, 1e-9)
    iterations = max(1, math.ceil(ROUND_SECONDS[device] / one))
    rounds = int(case_seconds(device) / (one * iterations))
    return Plan(rounds=min(MAX_ROUNDS, max(MIN_ROUNDS, rounds)), iterations=iterations)
