"""Deliberately wrong spin-waits (Triton only), for the ordering check of
``bench/static/ordering.py``: each must be reported, and :func:`sound_wait` must not.

Each kernel stores a partial, arrives at ``counter`` and waits until it reads ``n``."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def sound_wait(counter, out, n):
    """Barrier, acquire-release arrival, acquire polls: what the real kernels do."""
    tl.store(out, 1.0)
    tl.debug_barrier()
    seen = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") + 1
    while seen < n:
        seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
    tl.store(out + 1, seen.to(tl.float32))


@triton.jit
def plain_load_wait(counter, out, n):
    """Polls with a plain load (cached, and free to be hoisted out of the loop)."""
    tl.store(out, 1.0)
    tl.debug_barrier()
    seen = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") + 1
    while seen < n:
        seen = tl.load(counter)
    tl.store(out + 1, seen.to(tl.float32))


@triton.jit
def relaxed_poll_wait(counter, out, n):
    """Polls with a relaxed atomic and no fence after the loop."""
    tl.store(out, 1.0)
    tl.debug_barrier()
    seen = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") + 1
    while seen < n:
        seen = tl.atomic_add(counter, 0, sem="relaxed", scope="gpu")
    tl.store(out + 1, seen.to(tl.float32))


@triton.jit
def relaxed_arrival_wait(counter, out, n):
    """Arrives with a relaxed atomic: the partial's store may be seen after the arrival."""
    tl.store(out, 1.0)
    tl.debug_barrier()
    seen = tl.atomic_add(counter, 1, sem="relaxed", scope="gpu") + 1
    while seen < n:
        seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
    tl.store(out + 1, seen.to(tl.float32))


@triton.jit
def unbarriered_arrival_wait(counter, out, n):
    """Arrives without a CTA barrier: other threads' stores are not ordered before it."""
    tl.store(out, 1.0)
    seen = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") + 1
    while seen < n:
        seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
    tl.store(out + 1, seen.to(tl.float32))


KERNELS = (sound_wait, plain_load_wait, relaxed_poll_wait, relaxed_arrival_wait,
           unbarriered_arrival_wait)
