"""Ahead-of-time compilation of every kernel configuration for sm_80 and sm_90 (no GPU needed).

Runs ``tests/aot_compile.py`` in a subprocess WITHOUT ``TRITON_INTERPRET`` (the interpreter
accepts programs the compiler rejects) and with an empty Triton cache, so every configuration is
really compiled to PTX and a cubin.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("aot_compile.py")


@pytest.mark.slow
def test_every_kernel_configuration_compiles_for_sm80_and_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    result = subprocess.run([sys.executable, str(SCRIPT), "--arch", "80", "90"],
                            capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert " 0 failures" in result.stdout
