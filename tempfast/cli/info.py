"""``tempfast info``: versions, devices and the backend each device would use."""

from __future__ import annotations

import platform
from collections.abc import Callable

import torch

from .. import backend
from .._version import __version__


def report() -> dict:
    """A dict describing the environment: versions, devices and the active backends."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = {
        "tempfast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "requested_backend": _safe(backend.get_backend),
        "triton_interpreter": backend.interpreter_enabled(),
        "cuda_available": torch.cuda.is_available(),
        "cpu_backend": _safe(backend.resolve, torch.device("cpu")),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": props.name,
            "gpu_count": torch.cuda.device_count(),
            "gpu_sms": props.multi_processor_count,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "cuda_runtime": torch.version.cuda,
            "cuda_backend": _safe(backend.resolve, torch.device("cuda")),
        }
    return info


def _safe(fn: Callable[..., str], *args: object) -> str:
    """``fn(*args)``, or ``"unavailable (<why>)"`` when the backend request cannot be met (an
    unknown ``TEMPFAST_BACKEND``, Triton on CPU without the interpreter): ``info`` reports
    the problem that ``train`` and ``eval`` refuse to run with."""
    try:
        return fn(*args)
    except (ValueError, RuntimeError) as exc:
        return f"unavailable ({exc})"


def format_report(info: dict) -> str:
    width = max(len(k) for k in info)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in info.items())
