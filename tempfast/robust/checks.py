"""The one place that checks settings: of attacks, of the evaluation and of the trainer.

Every check raises :class:`tempfast.errors.SettingError` (a ``ValueError``) naming the
argument: ``eps must lie in [0, 1] (pixels are in [0, 1]), got 2``. The command line turns
the name into its flag (``--eps ...``). Attacks, :func:`tempfast.robust.evaluation.evaluate`
and :class:`tempfast.train.config.TrainConfig` all call these, so a setting is judged the same
way wherever it enters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from numbers import Integral, Real

from ..errors import SettingError
from .corruptions import SEVERITIES


def _is_real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def eps(value: float, name: str = "eps") -> float:
    """An L-infinity budget on [0, 1] pixels: in [0, 1]."""
    if not (_is_real(value) and 0.0 <= value <= 1.0):
        raise SettingError(name, f"must lie in [0, 1] (pixels are in [0, 1]), got {value}")
    return float(value)


def positive(value: float, name: str) -> float:
    """A finite number > 0 (a step size, a temperature, a learning rate)."""
    if not (_is_real(value) and 0.0 < value < math.inf):
        raise SettingError(name, f"must be finite and > 0, got {value}")
    return float(value)


def non_negative(value: float, name: str) -> float:
    """A finite number >= 0 (a weight decay)."""
    if not (_is_real(value) and 0.0 <= value < math.inf):
        raise SettingError(name, f"must be finite and >= 0, got {value}")
    return float(value)


def at_least(value: int, name: str, low: int) -> int:
    """An integer >= ``low`` (steps, restarts, queries, examples, epochs)."""
    if not isinstance(value, Integral) or isinstance(value, bool):
        raise SettingError(name, f"must be an integer, got {value!r}")
    if value < low:
        raise SettingError(name, f"must be >= {low}, got {value}")
    return int(value)


def choice(value: str, name: str, choices: Iterable[str]) -> str:
    """One of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise SettingError(name, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def severities(values: Sequence[int], name: str = "severities") -> list[int]:
    """Corruption severities: a non-empty selection of 1..5."""
    values = list(values)
    if not values or any(v not in SEVERITIES for v in values):
        raise SettingError(name, f"must be some of 1..5, got {values}")
    return values
