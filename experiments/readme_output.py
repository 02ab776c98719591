"""Regenerate README.md's example output of the headline run (the release routine).

``python -m experiments.readme_output`` runs the command at the end of README.md's
``<!-- setup:train -->`` block (``tempfast train --temp 8 --adv pgd``) in a fresh temporary
folder, exactly as a user would on this machine, and writes its stdout into the code block
after ``<!-- output:train -->``. ``--check`` only reports whether the block would change.
``tests/test_readme.py`` checks that the block has the shape the trainer prints now, so a
change of the trainer's output cannot leave the README behind unnoticed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_MARKER = "<!-- setup:train -->"
OUTPUT_MARKER = "<!-- output:train -->"


def fenced_block(text: str, marker: str) -> tuple[int, int]:
    """``(start, end)`` of the body of the first fenced code block after ``marker``."""
    at = text.index(marker)
    open_fence = text.index("```", at)
    start = text.index("\n", open_fence) + 1
    end = text.index("```", start)
    return start, end


def headline_command(readme: str) -> list[str]:
    """The ``tempfast ...`` command that ends the set-up block, as arguments."""
    start, end = fenced_block(readme, TRAIN_MARKER)
    last = readme[start:end].strip().split("&&")[-1].strip()
    args = shlex.split(last)
    if args[:1] != ["tempfast"]:
        raise SystemExit(f"readme_output: the set-up block does not end with a tempfast "
                         f"command: {last!r}")
    return args[1:]


def capture(args: list[str]) -> str:
    """stdout of ``python -m tempfast ARGS`` run in a fresh folder (the default output path)."""
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ, COLUMNS="100", PYTHONWARNINGS="ignore")
        env.pop("TEMPFAST_BACKEND", None)
        proc = subprocess.run([sys.executable, "-m", "tempfast", *args], cwd=folder,
                              env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"readme_output: the command failed ({proc.returncode}): "
                         f"{proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the block would change; write nothing")
    args = parser.parse_args(argv)
    path = Path(args.readme)
    text = path.read_text()
    output = capture(headline_command(text))
    start, end = fenced_block(text, OUTPUT_MARKER)
    if text[start:end] == output:
        print("readme_output: the README's example output is current")
        return 0
    if args.check:
        print("readme_output: the README's example output differs from a fresh run")
        return 1
    path.write_text(text[:start] + output + text[end:])
    print(f"readme_output: rewrote the example output in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
