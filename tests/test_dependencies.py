"""The dependency floors in pyproject.toml are versions this project tests: the running torch
and Python (every test runs on them) and the Triton that ``.ci/run`` compiles every kernel with.
When CI moves to a newer torch, this fails until the floor moves with it (or the old one is
tested again)."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import torch
import triton

ROOT = Path(__file__).resolve().parents[1]


def _floors() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {"python": project["requires-python"].removeprefix(">=")}
    for spec in project["dependencies"] + project["optional-dependencies"]["train"]:
        m = re.match(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", spec)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _minor(version: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


def test_the_torch_and_python_floors_are_the_versions_the_tests_run_on():
    floors = _floors()
    assert _minor(floors["torch"]) == _minor(torch.__version__), floors["torch"]
    assert _minor(floors["python"]) == sys.version_info[:2], floors["python"]


def test_the_triton_floor_is_the_version_ci_compiles_every_kernel_with():
    ci = (ROOT / ".ci" / "run").read_text()
    compiled = re.search(r"triton==([0-9.]+)", ci).group(1)
    floor = _floors()["triton"]
    assert _minor(floor) == _minor(compiled), (floor, compiled)
    assert _minor(triton.__version__) >= _minor(floor)


def test_torchvision_floor_is_the_one_paired_with_the_torch_floor():
    import torchvision

    assert _minor(_floors()["torchvision"]) == _minor(torchvision.__version__)
