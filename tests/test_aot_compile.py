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


def test_the_compiled_set_covers_every_configuration_the_heuristics_choose():
    """Over a dense grid of shapes (not only the script's powers of two), every launch
    configuration the launchers can pick is among those the AOT script compiles."""
    import itertools
    import sys

    sys.path.insert(0, str(SCRIPT.parent))
    import aot_compile

    from tempfast.kernels.heuristics import elementwise_config, row_config

    rows = sorted({1, 2, 3, 5, 7, 100, 127, 129, 600, 1000, 4095, 8192, 65537})
    cols = sorted({1, 2, 3, 10, 17, 100, 1000, 4097, 32000, 32769, 65536, 128256, 262144,
                   1 << 20})
    for n_inputs in (1, 2, 3):
        compiled = {(c.path, c.block_n, c.block_c, c.num_warps)
                    for _, c in aot_compile._configs(n_inputs)}
        for (n, c), size in itertools.product(itertools.product(rows, cols), (2, 4)):
            for sms in (None, 108, 132):
                cfg = row_config(n, c, size, sms, n_inputs)
                assert (cfg.path, cfg.block_n, cfg.block_c, cfg.num_warps) in compiled, cfg
                if cfg.path == "split":
                    assert 1 << (cfg.splits - 1).bit_length() in aot_compile.SPLIT_BLOCKS
    shapes = {shape for _, _, shape, _ in aot_compile._rescale_jobs()}
    for n, c in itertools.product(rows, cols):
        assert elementwise_config(n, c) in shapes
