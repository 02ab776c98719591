"""The package's floors: imports flow one way, cli -> train -> robust -> the library (functional,
nn, reference) -> ops -> kernels, and ``import tempfast`` loads no trainer, robustness or
command-line code."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Floor of each part; a module may import from its own floor or below.
FLOORS = {"kernels": 0, "base": 1, "ops": 2, "library": 3, "robust": 4, "train": 5, "cli": 6}
BASE = {"backend", "_checks", "errors", "_version"}
LIBRARY = {"__init__", "functional", "nn", "reference"}
SUBCOMMANDS = {"train", "evaluate", "info", "calibrate"}


def _part(module: str) -> str:
    """``tempfast.robust.attacks`` -> ``robust``; ``tempfast.kernels.x`` -> ``kernels``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "library"
    head = parts[1]
    if head in ("kernels", "ops", "robust", "train", "cli"):
        return head
    return "base" if head in BASE else "library"


def _modules():
    for path in sorted((ROOT / "tempfast").rglob("*.py")):
        rel = path.relative_to(ROOT / "tempfast").with_suffix("")
        yield "tempfast." + ".".join(rel.parts), path
    for path in sorted((ROOT / "kernels").glob("*.py")):
        yield "tempfast.kernels." + path.stem, path


MODULES = {name for name, _ in _modules()} | {"tempfast.kernels"}


def _imports(module: str, path: Path) -> list[str]:
    """Absolute names of the tempfast modules ``path`` imports (relative imports resolved)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if path.name == "__init__.py":
        package = package[:-1] if package[-1] == "__init__" else package
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # ``from X import Y``: Y when it is a module, else X (Y an attribute of X).
            names = [f"{name}.{a.name}" if f"{name}.{a.name}" in MODULES else name
                     for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out += [n for n in names if n == "tempfast" or n.startswith("tempfast.")]
    return out


def test_no_module_imports_from_a_floor_above_its_own():
    bad = []
    for module, path in _modules():
        if module.endswith("__main__"):
            continue  # the entry point of ``python -m tempfast`` runs the command line
        floor = FLOORS[_part(module)]
        for imported in _imports(module, path):
            part = _part(imported)
            known = imported.split(".")[1] in (
                {"kernels", "ops", "robust", "train", "cli"} | BASE | LIBRARY
            ) if "." in imported else True
            if known and FLOORS[part] > floor:
                bad.append(f"{module} ({_part(module)}) imports {imported} ({part})")
    assert not bad, "\n".join(bad)


def test_kernels_are_triton_only():
    for path in sorted((ROOT / "kernels").glob("*.py")):
        tree = ast.parse(path.read_text())
        roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                 for a in n.names}
        roots |= {n.module.split(".")[0] for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.module and not n.level}
        assert roots <= {"triton", "__future__", "dataclasses", "math"}, (path.name, roots)


def test_no_subcommand_imports_another():
    for name in SUBCOMMANDS:
        path = ROOT / "tempfast" / "cli" / f"{name}.py"
        others = {f"tempfast.cli.{o}" for o in SUBCOMMANDS - {name}}
        assert not set(_imports(f"tempfast.cli.{name}", path)) & others, name


@pytest.mark.parametrize("statement", ["import tempfast", "import tempfast.nn",
                                       "import tempfast.functional"])
def test_importing_the_library_loads_no_trainer_robustness_or_cli_code(statement):
    code = (f"{statement}, sys, json; print(json.dumps(sorted(m for m in sys.modules "
            f"if m.startswith('tempfast'))))")
    out = subprocess.run([sys.executable, "-c", f"import sys; {code}"], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    loaded = json.loads(out)
    upper = [m for m in loaded if _part(m) in ("robust", "train", "cli")]
    assert not upper, upper
    assert "tempfast.functional" in loaded
