"""The README and the folder READMEs stay true: every flag they name exists, and the example
output of the headline run has the shape the trainer prints today (regenerate it with
``python -m experiments.readme_output``)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from experiments.readme_output import OUTPUT_MARKER, fenced_block, headline_command
from tempfast.cli import build_parser
from tempfast.robust.attacks import DEFAULT_ATTACKS
from tempfast.train.progress import RichReporter

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "tempfast/train/README.md", "tempfast/robust/README.md"]
# Flags of other programs that the documents name (pytest, pip, torchrun).
EXTERNAL = {"--benchmark-disable", "--benchmark-only", "--benchmark-json", "--nproc_per_node",
            "--standalone", "--no-deps", "--target", "--dist"}


def _subparser_flags() -> set[str]:
    parser = build_parser()
    flags = set(parser._option_string_actions)
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            flags |= set(sub._option_string_actions)
    return flags


def test_every_flag_the_readmes_name_exists():
    known = _subparser_flags() | EXTERNAL
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]", text))
        unknown = sorted(named - known)
        assert not unknown, f"{doc} names flags that do not exist: {unknown}"


def test_the_headline_command_of_the_set_up_block_parses():
    args = build_parser().parse_args(headline_command((ROOT / "README.md").read_text()))
    assert args.command == "train"


def _shape(line: str) -> str:
    """A line with numbers, box drawing and runs of spaces normalised away."""
    line = re.sub(r"[\u2500-\u257f]", "", line)
    line = re.sub(r"\d[\d,.:]*", "#", line)
    return " ".join(line.split())


def _printed(capsys) -> list[str]:
    """What RichReporter prints for a two-epoch PGD run with the default attack suite."""
    reporter = RichReporter()
    reporter.start({"output": "out", "data": "digits", "n_train": 1437, "n_test": 360,
                    "model": "small_cnn", "temperature": 8.0, "learn_temp": False,
                    "temp_compensation": "loss", "adv": "pgd", "device": "cpu",
                    "world_size": 1, "epochs": 2})
    reporter.epoch_start(0, 2, 10)
    row = {"epoch": 1, "train_loss": 2.0, "train_acc": 0.1, "test_acc": 0.5,
           "test_robust_acc": 0.3, "temperature": 8.0, "lr": 0.05, "epoch_time_s": 1.0,
           "images_per_s": 1000.0}
    reporter.epoch_end(row)
    reporter.summary({"output": "out", "clean_acc": 0.9, "clean_n": 360, "worst_case_acc": 0.5,
                      "robust_acc": {n: 0.5 for n in DEFAULT_ATTACKS},
                      "extra_robust_acc": {"pgd-cw (more steps)": 0.5,
                                           "pgd-cw (more restarts)": 0.5},
                      "corruption_acc": 0.7, "masking": {"suspected": False, "reasons": []},
                      "temperature": 8.0, "final_temperature": 8.0,
                      "best": {"metric": "test_robust_acc", "epoch": 2, "value": 0.6},
                      "wall_time_s": 30.0})
    reporter.close()
    return capsys.readouterr().out.splitlines()


def test_the_example_output_has_the_shape_the_trainer_prints(capsys):
    text = (ROOT / "README.md").read_text()
    start, end = fenced_block(text, OUTPUT_MARKER)
    readme = text[start:end].splitlines()
    printed = _printed(capsys)
    assert _shape(readme[0]) == _shape(printed[0]), "header line"
    assert _shape(readme[1]).startswith("output ")
    epochs = [line for line in readme if line.startswith("epoch ")]
    assert epochs, "no epoch lines"
    assert {_shape(line) for line in epochs} == {_shape(printed[2])}, "epoch lines"

    def metrics(lines):  # the first column of the summary table's body rows
        return [line.split("\u2502")[1].strip() for line in lines if line.count("\u2502") == 3]

    assert metrics(readme) == metrics(printed), "summary table rows"
    assert readme[-1] == "output folder " + readme[1].removeprefix("output "), "output line"


def test_the_ops_example_runs_as_written_on_this_machine():
    """The README's op example picks its device: on a machine without a GPU it runs on the CPU
    path as written (issue 23: it asked for CUDA and failed with "Found no NVIDIA driver")."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## The ops", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(block, "README.md (the ops example)", "exec"), namespace)
    assert namespace["logits"].grad is not None and namespace["T"].grad is not None
    assert torch.isfinite(namespace["loss"]) and namespace["p"].shape == namespace["logits"].shape


def test_the_readmes_say_what_loss_x_t_is_and_name_the_flag_for_the_papers_form():
    """The header's ``(loss x T)`` is explained where a user meets it (issue 23)."""
    for doc in ("README.md", "tempfast/train/README.md"):
        text = (ROOT / doc).read_text()
        assert "T * CE(z / T" in text and "--temp-compensation none" in text, doc


def test_the_readme_workaround_for_a_clone_named_tempfast_works(tmp_path):
    """From the parent of a folder named ``tempfast`` (a clone's root: no ``__init__.py``),
    ``import tempfast`` finds that folder as an empty namespace package; ``python -P`` (the
    README's workaround) finds the installed package."""
    import subprocess
    import sys

    (tmp_path / "tempfast").mkdir()
    (tmp_path / "tempfast" / "README.md").write_text("a clone's root\n")
    code = "import tempfast; print(hasattr(tempfast, 'nn'))"
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}

    def run(*flags: str) -> str:
        return subprocess.run([sys.executable, *flags, "-c", code], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120).stdout.strip()

    assert run() == "False"  # the shadowing the README describes
    assert run("-P") == "True"
    text = (ROOT / "README.md").read_text()
    assert "PYTHONSAFEPATH=1" in text and "`-P`" in text
