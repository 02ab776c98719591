"""Trainer throughput: ``tempfast.train.train_step`` against a minimal PyTorch loop.

The first case of each mode checks that one step of ``train_step`` and of the minimal
loop, from the same state, agree (loss, correct count, parameters); each case then times
its provider. See :mod:`bench.trainer` for the model, batch and attack.
"""

from __future__ import annotations

import pytest

pytest.importorskip("tempfast.train", reason="the trainer needs tempfast's [train] extras")

from . import trainer
from .cases import bench_device
from .run_case import time_step

SPECS = trainer.all_specs(bench_device())
# A training step takes 0.1 to 0.5 s on the CPU: with the suite's default of 5 rounds, four
# runs of the same code gave 0.59x to 1.02x; with 20 rounds after 3 warm-up steps (the
# allocator settles first) two runs gave 0.94x to 1.05x.
TRAINER_MIN_ROUNDS = 20
TRAINER_WARMUP_ROUNDS = 3
_CHECKED: set[tuple[str, str]] = set()


@pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
def test_train_step_matches_minimal_loop_then_times(spec: trainer.TrainerSpec, benchmark,
                                                    within_budget) -> None:
    model, x, y = trainer.make_inputs(spec.device)
    if (spec.mode, spec.device) not in _CHECKED:  # one check covers both providers
        trainer.check_same_step(spec, model, x, y)
        _CHECKED.add((spec.mode, spec.device))
    case = trainer.TrainerCase(spec, model, x, y)
    benchmark.group = spec.group_name
    benchmark.extra_info.update(spec.extra_info())
    time_step(case.step, spec.device, benchmark, min_rounds=TRAINER_MIN_ROUNDS,
              warmup_rounds=TRAINER_WARMUP_ROUNDS)
