"""The Triton backend forced on CPU tensors for recording launches, with the residency the
launchers would read from a real H100 / H200 taken from the compiled binary instead.

:func:`triton_on_cpu` is the context every recording runs in (the static model, the
ahead-of-time compile, the budgets): the launches are intercepted
(:class:`bench.static.record.LaunchRecorder`), so nothing runs and nothing is interpreted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from triton.runtime.jit import JITFunction

from .compile import read_launch
from .model import GPUS, resident_programs
from .record import launch_of

_RESIDENT: dict[tuple, int] = {}


def resident_on_model_gpu(fn: JITFunction, args: tuple, kwargs: dict) -> int:
    """Programs of ``fn`` (the JIT's variant for these arguments, compiled for sm_90a) that an
    H100 / H200 (132 SMs) holds at once: what the launchers compute from a real device, here
    from the binary the model reads (:func:`bench.static.model.resident_programs`)."""
    launch = launch_of(fn, args, kwargs)
    key = launch.compile_key()
    if key not in _RESIDENT:
        reading = read_launch(launch, 90)
        _RESIDENT[key] = resident_programs(reading)["programs"] * GPUS[0].sms
    return _RESIDENT[key]


@contextlib.contextmanager
def triton_on_cpu(resident=resident_on_model_gpu) -> Iterator[None]:
    """Force tempfast's Triton backend on CPU tensors without the interpreter.

    ``tempfast.backend.resolve`` refuses Triton on CPU tensors unless ``TRITON_INTERPRET`` is
    set; the tool answers its ``interpreter_enabled()`` question with yes (the launches are
    intercepted, so nothing is interpreted) and selects the backend with ``use_backend``. The
    launchers' residency comes from ``resident`` (``(kernel, args, kwargs) -> programs``;
    default: the compiled binary on the model GPU)."""
    from tempfast import backend
    from tempfast.ops import launch

    if backend.interpreter_enabled():
        raise RuntimeError("bench.static needs a process without TRITON_INTERPRET: the "
                           "interpreter's kernels are not the ones a GPU compiles")
    original = backend.interpreter_enabled
    backend.interpreter_enabled = lambda: True
    override = launch.resident_override
    launch.resident_override = resident
    try:
        with backend.use_backend("triton"):
            yield
    finally:
        backend.interpreter_enabled = original
        launch.resident_override = override
