"""The package's floors: imports flow one way, cli -> train -> robust -> the library (functional,
nn, reference) -> ops -> kernels, and ``import tempfast`` loads no trainer, robustness or
command-line code."""

from __future__ import annotations

import ast
import json
import re
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


OP_TABLE = ROOT / "tempfast" / "ops" / "README.md"
SHARED_KERNELS = {"__init__.py", "common.py", "heuristics.py"}


def _op_table() -> list[list[str]]:
    """The rows of the op table in ``tempfast/ops/README.md``: ``[op, kernels, folder,
    reference, tests]`` cells."""
    lines = OP_TABLE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| op (public name)"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_the_op_table_matches_the_tree():
    """Every op folder, kernel file, reference and test file the table names exists; every op
    folder and every kernel file of the tree is in the table; each op folder has the same
    files: call.py (normalise, route, run), op.py, and both paths exactly when it has a
    kernel of its own."""
    import importlib

    import tempfast.reference

    rows = _op_table()
    assert len(rows) >= 5
    folders, kernel_files = set(), set()
    for op, kernels, folder, reference, tests in rows:
        (name,) = _ticked(folder)
        folders.add(name.rstrip("/"))
        path = ROOT / "tempfast" / "ops" / name
        assert (path / "call.py").is_file() and (path / "op.py").is_file(), op
        call = importlib.import_module(f"tempfast.ops.{name.rstrip('/')}.call")
        # the class-parallel calls are normalised by the cross-entropy's and the head's own
        entry = ("route", "run") if "process_group" in op else ("normalise", "route", "run")
        assert all(callable(getattr(call, f, None)) for f in entry), op
        own_kernel = not kernels.startswith("none")
        for side in ("torch_path.py", "triton_path.py"):
            assert (path / side).is_file() == own_kernel, (op, side)
        for file in _ticked(kernels):
            if file.startswith("kernels/"):
                assert (ROOT / file).is_file(), file
                kernel_files.add(Path(file).name)
        for ref in _ticked(reference):
            attr = ref.removeprefix("tempfast.reference.")
            if "." not in attr and attr.isidentifier():
                assert callable(getattr(tempfast.reference, attr, None)), ref
        (test_file,) = _ticked(tests)
        assert (ROOT / test_file).is_file(), test_file
    tree = {p.parent.name for p in (ROOT / "tempfast" / "ops").glob("*/__init__.py")}
    assert tree == folders, f"op folders not in the table: {tree - folders}"
    on_disk = {p.name for p in (ROOT / "kernels").glob("*.py")} - SHARED_KERNELS
    assert on_disk == kernel_files, f"kernel files not in the table: {on_disk - kernel_files}"


def test_every_public_op_is_a_short_call_of_its_op_folder():
    """``tempfast.functional``'s public functions only normalise and run: no route choice or
    check of their own (those are in the op folder)."""
    tree = ast.parse((ROOT / "tempfast" / "functional.py").read_text())
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)
                 and not n.name.startswith("_")]
    assert {f.name for f in functions} >= {"softmax", "log_softmax", "cross_entropy",
                                           "linear_cross_entropy", "distillation_loss"}
    for f in functions:
        body = [s for s in f.body if not (isinstance(s, ast.Expr)
                                          and isinstance(s.value, ast.Constant))]
        assert len(body) <= 2, f"{f.name}: {len(body)} statements"
        assert not any(isinstance(n, ast.If | ast.Raise) for s in body for n in ast.walk(s))


def test_the_static_model_modules_import_one_another_without_a_cycle():
    """``bench/static``: every import between its modules, function-level ones included,
    flows one way (``record`` at the bottom, ``residency`` / ``analysis`` / ``budgets`` above
    ``compile`` and ``model``)."""
    folder = ROOT / "bench" / "static"
    names = {p.stem for p in folder.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= ({node.module.split(".")[0]} if node.module
                         else {a.name for a in node.names})
        graph[path.stem] = deps & names - {path.stem}

    def cycle_from(node: str, trail: tuple[str, ...]) -> tuple[str, ...] | None:
        if node in trail:
            return (*trail[trail.index(node):], node)
        for dep in sorted(graph[node]):
            found = cycle_from(dep, (*trail, node))
            if found:
                return found
        return None

    cycles = [c for c in (cycle_from(n, ()) for n in sorted(graph)) if c]
    assert not cycles, " -> ".join(cycles[0])
