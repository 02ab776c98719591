"""``tempfast eval CHECKPOINT`` end to end on a real checkpoint (one epoch of ``tempfast train``
on digits), its outputs (tables, --json, eval.json) and every bad input (one line, exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tempfast.cli import main
from tempfast.robust.corruptions import LABEL

FAST = ["--n-examples", "60", "--steps", "2", "--square-queries", "10", "--severities", "1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    assert main(["train", "--epochs", "1", "--no-final-eval", "--quiet", "--output", str(run),
                 "--overwrite"]) == 0
    return run / "last.pt"


def _run(argv):
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_eval_prints_tables_and_writes_eval_json_next_to_checkpoint(checkpoint, capsys):
    (checkpoint.parent / "eval.json").unlink(missing_ok=True)
    assert _run(["eval", str(checkpoint), *FAST]) == 0
    out = capsys.readouterr().out
    for needle in ("clean", "pgd-ce-t", "apgd-dlr", "square", "worst case",
                   "Gradient-masking diagnostics", LABEL, "verdict:",
                   f"wrote {checkpoint.parent / 'eval.json'}"):
        assert needle in out
    result = json.loads((checkpoint.parent / "eval.json").read_text())
    assert result["checkpoint"] == str(checkpoint.resolve())
    assert result["data"] == "digits" and result["model"] == "small_cnn"
    assert result["n_examples"] == 60
    assert result["settings"]["eps"] == pytest.approx(0.1)  # the run's --eps (digits default)
    assert {k: result["settings"][k] for k in ("steps", "check_steps", "severities",
                                               "square_queries", "corruptions_dir")} == {
        "steps": 2, "check_steps": 4, "severities": [1], "square_queries": 10,
        "corruptions_dir": None}
    assert set(result["robust_acc"]) == {"pgd-ce", "pgd-ce-t", "pgd-ce-adaptive", "pgd-cw",
                                         "apgd-dlr", "square"}
    assert result["worst_case_acc"] <= min(result["robust_acc"].values())
    assert 0.0 <= result["corruption_acc"] <= 1.0
    assert isinstance(result["masking"]["suspected"], bool)


def test_eval_json_mode_and_output_paths(checkpoint, tmp_path, capsys):
    out_file = tmp_path / "sub" / "result.json"
    argv = ["eval", str(checkpoint), *FAST, "--attacks", "pgd-cw", "--no-corruptions",
            "--eps", "8/255", "--temperature", "3", "--json"]
    assert _run([*argv, "--output", str(out_file)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out_file.read_text())
    assert printed["settings"]["eps"] == pytest.approx(8 / 255)
    assert printed["settings"]["train_temperature"] == 3.0
    assert list(printed["robust_acc"]) == ["pgd-cw"] and printed["corruptions"] is None
    assert printed["settings"]["severities"] is None, "no corruption was run"
    assert _run([*argv, "--output", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["settings"]["attacks"] == ["pgd-cw"]


@pytest.mark.parametrize(("args", "message"), [
    (["--eps", "-0.1"], "--eps must lie in [0, 1]"),
    (["--eps", "inf"], "--eps must lie in [0, 1]"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--restarts", "0"], "--restarts must be >= 1"),
    (["--attacks", "pgd-ce,cw"], "unknown attack 'cw'"),
    (["--severities", "1,7"], "--severities must be some of 1..5"),
    (["--n-examples", "-3"], "--n-examples must be >= 0 (0: all test images)"),
    (["--eps", "2"], "--eps must lie in [0, 1]"),
    (["--temperature", "0"], "--temperature must be finite and > 0"),
    (["--temperature", "inf"], "--temperature must be finite and > 0"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--eps", "abc"], "argument --eps: not a number"),
    (["--corruptions-dir", "/nonexistent/cifar10c"], "is not a directory"),
])
def test_bad_flags_give_one_line_error_and_exit_2(checkpoint, tmp_path, capsys, args, message):
    output = tmp_path / "eval.json"
    assert _run(["eval", str(checkpoint), *FAST, "--output", str(output), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tempfast eval: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not output.exists()


@pytest.mark.parametrize(("name", "message"), [
    ("bogus", "TEMPFAST_BACKEND: unknown backend 'bogus'"),
    ("triton", "backend 'triton' on cpu tensors needs TRITON_INTERPRET=1"),
])
def test_bad_backend_environment_is_one_line_error(checkpoint, tmp_path, capsys, monkeypatch,
                                                   name, message):
    monkeypatch.setenv("TEMPFAST_BACKEND", name)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    output = tmp_path / "eval.json"
    assert _run(["eval", str(checkpoint), *FAST, "--device", "cpu", "--output",
                 str(output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tempfast eval: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not output.exists()


@pytest.mark.parametrize("content", [None, b"", b"\x00garbage, not a checkpoint" * 10])
def test_missing_or_corrupt_checkpoint_is_one_line_error(tmp_path, capsys, content):
    path = tmp_path / "last.pt"
    if content is not None:
        path.write_bytes(content)
    assert _run(["eval", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tempfast eval: error: checkpoint {path}")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "eval.json").exists()


def test_console_script_reports_bad_input_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tempfast", "eval", str(tmp_path / "no.pt")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == f"tempfast eval: error: checkpoint {tmp_path / 'no.pt'} not found\n"


def test_command_line_without_the_train_extra_says_which_extra_in_one_line():
    """A base install (``pip install tempfast``: no pyyaml, scikit-learn, timm...) runs the
    console script to one line naming the extra, not an import traceback."""
    code = ("import sys; sys.modules['yaml'] = None\n"
            "from tempfast.cli import main\nsys.exit(main(['eval', 'x.pt']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == ("tempfast: the command line needs the [train] extra (no module named "
                           "'yaml'): pip install 'tempfast[train]'\n")
