"""Run subprocesses side by side, and stop them cleanly on Ctrl-C or SIGTERM.

A :class:`Runner` is entered as a context manager in the main thread: SIGINT / SIGTERM then
set :attr:`Runner.event` (no new process starts) and send SIGINT to every running process
(``tempfast train`` answers it by writing a recovery checkpoint and exiting). Each process runs
in its own session, so a Ctrl-C in the terminal reaches it only through the runner, once.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path


class Runner:
    """SIGINT / SIGTERM: stop launching runs and pass SIGINT to the running ones (the trainer
    then writes a recovery checkpoint and exits)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.event.set()
        with self.lock:
            for proc in self.procs:
                proc.send_signal(signal.SIGINT)

    def __enter__(self) -> Runner:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def execute(self, cmd: list[str], log: Path, env: dict) -> tuple[int, float] | None:
        """Run ``cmd`` with output to ``log``; (exit status, seconds), None if stopped."""
        with self.lock:
            if self.event.is_set():
                return None
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as f:
                f.write(f"$ {shlex.join(cmd)}\n".encode())
                f.flush()
                t0 = time.perf_counter()
                proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
            self.procs.add(proc)
        rc = proc.wait()
        with self.lock:
            self.procs.discard(proc)
        return rc, time.perf_counter() - t0

