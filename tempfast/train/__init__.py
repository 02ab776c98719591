"""The trainer behind ``tempfast train`` (needs the ``[train]`` extra): data sets, models, the
run's configuration, the training loop, checkpoints, the output folder, multi-process set-up
and progress reporting. See ``tempfast/train/README.md``.

=================  ===========================================================================
module             holds
=================  ===========================================================================
config             :class:`TrainConfig`: every setting, per-data-set defaults, the checks
data, models       data sets as device-resident batches; the classifiers
builder            the parts of a run by role: classifier, loss (holds T), optimiser, ...
optim              optimiser and learning-rate schedule
step               one training step and the attack that crafts its batch
run_state          a run's state in and out of checkpoints; how far it has come
checkpoint         checkpoint files: atomic writes, safe loads, model restore, RNG state
run_folder         the output folder (config.yaml, metrics, checkpoints, summary)
loop               the epoch loop and :func:`run`
interrupt          Ctrl-C: stop at a step boundary, agree across ranks
distributed        process groups, collectives, the local launcher
progress           what the run prints (rich, JSON lines, quiet)
=================  ===========================================================================

Floor: it uses the robustness suite and the public ops; ``import tempfast`` does not import
it.
"""

from .config import TrainConfig
from .interrupt import RunInterruptedError
from .loop import run
from .optim import build_optimizer, lr_factor
from .step import TrainingAttack, train_step

__all__ = ["RunInterruptedError", "TrainConfig", "TrainingAttack", "build_optimizer",
           "lr_factor", "run", "train_step"]
