"""Backend selection: which implementation runs an op.

``auto`` (the default) runs the Triton kernels on CUDA tensors and the PyTorch path on CPU
tensors. ``triton`` forces the kernels, also on CPU tensors, where they run under the Triton
interpreter (``TRITON_INTERPRET=1`` must be set before ``tempfast.kernels`` is first imported).
``torch`` forces the PyTorch path everywhere.

The choice comes from, in order: the innermost :func:`use_backend` context, the environment
variable ``TEMPFAST_BACKEND``, then ``auto``.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "triton", "torch")
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tempfast_backend", default=None
)


def _validated(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source}: unknown backend {name!r}; expected one of {BACKENDS}")
    return name


def get_backend() -> str:
    """The requested backend name: ``"auto"``, ``"triton"`` or ``"torch"``."""
    name = _override.get()
    if name is not None:
        return name
    raw = _environment_value()
    if raw is None:
        return "auto"
    return _validated(raw.strip().lower(), "TEMPFAST_BACKEND")


# ``os.environ.get`` encodes the key and decodes the value on every call (about a
# microsecond, a tenth of a small eager op): read the mapping's own dict when it has one. It is
# the dict ``os.environ[...] = ...`` and ``monkeypatch.setenv`` update, so it is never stale.
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = None
if _ENV_DATA is not None and hasattr(os.environ, "encodekey"):
    try:
        _ENV_KEY = os.environ.encodekey("TEMPFAST_BACKEND")
    except Exception:  # any oddity: use the public lookup
        _ENV_KEY = None


def _environment_value() -> str | None:
    if _ENV_KEY is None or not isinstance(_ENV_DATA, dict):
        return os.environ.get("TEMPFAST_BACKEND")
    raw = _ENV_DATA.get(_ENV_KEY)
    return None if raw is None else os.environ.decodevalue(raw)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force a backend inside a ``with`` block (overrides ``TEMPFAST_BACKEND``)."""
    token = _override.set(_validated(name, "use_backend"))
    try:
        yield
    finally:
        _override.reset(token)


def interpreter_enabled() -> bool:
    """Whether Triton kernels run under the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(device: torch.device) -> str:
    """The implementation that runs for tensors on ``device``: ``"triton"`` or ``"torch"``."""
    name = get_backend()
    if name == "torch":
        return "torch"
    if name == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if not triton_available():
        raise RuntimeError("backend 'triton' was requested but triton is not installed")
    if device.type != "cuda" and not interpreter_enabled():
        raise RuntimeError(
            f"backend 'triton' on {device.type} tensors needs TRITON_INTERPRET=1 set before "
            "tempfast.kernels is first imported"
        )
    return "triton"
