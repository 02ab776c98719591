"""The built wheel: kernels ship as ``tempfast.kernels``, never as a top-level ``kernels``."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end to end: builds the wheel

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_every_module_under_tempfast_only(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, timeout=600,
                   capture_output=True)
    (wheel,) = tmp_path.glob("tempfast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    modules = {n for n in names if n.endswith(".py")}
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"tempfast"}, f"unexpected top-level entries: {tops}"
    expected = {f"tempfast/kernels/{p.name}" for p in (ROOT / "kernels").glob("*.py")}
    expected |= {f"tempfast/{p.relative_to(ROOT / 'tempfast')}"
                 for p in (ROOT / "tempfast").rglob("*.py")}
    assert expected <= modules, f"missing from the wheel: {sorted(expected - modules)}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tempfast = tempfast.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
