"""Peak extra memory of one step of a case.

* CUDA: ``torch.cuda.max_memory_allocated()`` during the step minus the memory allocated
  before it (inputs and the previous step's gradients already freed).
* CPU: peak resident set size, measured in a worker subprocess (``python -m bench.memory``,
  one JSON request ``{"kind": "op" | "linear" | "contrastive", "spec": {...}}`` per line on
  stdin, one JSON answer per line on stdout). For each spec the worker builds the case, runs
  one step to warm up (compilation, thread pools; for a memory-only fused-head spec, a step of
  its first 64 rows), drops its gradients, resets the kernel's peak-RSS mark (``5`` into
  ``/proc/self/clear_refs``), reads ``VmRSS``, runs one step and reads ``VmHWM``: extra =
  ``VmHWM - VmRSS``. glibc's mmap threshold is pinned at 64 KiB, so every freed tensor goes
  back to the OS and cannot hide the next allocation. The resolution is about 1 MiB
  (allocator and interpreter noise).

The answer: ``peak_extra_bytes``, ``step_s`` (the measured step's wall time) and, for a
memory-only fused-head spec, the ``fingerprint`` of its loss and gradients
(:func:`bench.linear.fingerprint`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch

from . import contrastive, linear
from .cases import Case, Spec
from .timing import apply_threads

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 * 1024
CLEAR_REFS = Path("/proc/self/clear_refs")


def cuda_peak_extra_bytes(case: Case) -> int:
    case.reset()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    case.step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def rss_supported() -> bool:
    return sys.platform.startswith("linux") and CLEAR_REFS.exists()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


AnySpec = Spec | linear.LinearSpec | contrastive.ContrastiveSpec
AnyCase = Case | linear.LinearCase | contrastive.ContrastiveCase


def _request(spec: AnySpec) -> str:
    kind = ("linear" if isinstance(spec, linear.LinearSpec)
            else "contrastive" if isinstance(spec, contrastive.ContrastiveSpec) else "op")
    return json.dumps({"kind": kind, "spec": dataclasses.asdict(spec)})


def _build(request: dict) -> tuple[AnyCase, Callable[[], object]]:
    """The case of a request and its warm-up."""
    if request["kind"] == "op":
        case = Case(Spec(**request["spec"]))
        return case, case.step
    if request["kind"] == "contrastive":
        case = contrastive.ContrastiveCase(contrastive.ContrastiveSpec(**request["spec"]))
        return case, case.step
    spec = linear.LinearSpec(**request["spec"])
    case = linear.LinearCase(spec)
    if spec.memory_only:
        return case, linear.LinearCase(spec.warm_up_spec()).step
    return case, case.step


def _rss_peak_extra(request: dict) -> dict:
    case, warm_up = _build(request)
    warm_up()
    case.reset()
    gc.collect()
    CLEAR_REFS.write_text("5")
    base = _status_kib("VmRSS")
    start = time.perf_counter()
    out = case.step()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    answer = {"peak_extra_bytes": (peak - base) * 1024, "step_s": seconds}
    if getattr(case.spec, "memory_only", False):
        answer["fingerprint"] = linear.fingerprint(case, out)
    del case, out
    gc.collect()
    return answer


def _serve(requests: IO[str], answers: IO[str]) -> None:
    ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    for line in requests:
        try:
            answer = _rss_peak_extra(json.loads(line))
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


class RssProbe:
    """A client of the CPU worker; the worker starts on the first :meth:`measure`."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._stderr: IO[bytes] | None = None

    def _start(self) -> subprocess.Popen:
        # Lives as long as the worker; closed in close().
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}
        return subprocess.Popen([sys.executable, "-m", "bench.memory"], cwd=root, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=self._stderr, text=True)

    def measure(self, spec: AnySpec) -> dict:
        """The worker's answer for ``spec`` (see the module's docstring)."""
        if self._proc is None:
            self._proc = self._start()
        self._proc.stdin.write(_request(spec) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            self._stderr.seek(0)
            tail = self._stderr.read().decode(errors="replace")[-2000:]
            self.close()
            raise RuntimeError(f"the RSS worker exited; its stderr ends with:\n{tail}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"RSS worker, case {spec.id}: {answer['error']}")
        return answer

    def close(self) -> None:
        if self._proc is not None:
            self._proc.stdin.close()
            self._proc.wait(timeout=60)
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def main() -> None:
    """Serve on the real stdout; anything else printed goes to stderr, not into the answers."""
    apply_threads()
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _serve(sys.stdin, answers)


if __name__ == "__main__":
    main()
