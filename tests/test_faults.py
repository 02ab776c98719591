"""Faults a user meets: unwritable or impossible output paths, a disk that fills mid-run,
Ctrl-C during an evaluation, incomplete or foreign checkpoints, and folders with nothing to
resume. Each is one line on stderr; no finished work is lost."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from tempfast.cli import main
from tempfast.train import checkpoint as ckpt_module
from tempfast.train import run_folder
from tempfast.train.checkpoint import FORMAT, load_checkpoint, save_checkpoint

FAST_TRAIN = ["--no-final-eval", "--eval-adv-examples", "0", "--threads", "1", "--quiet"]
FAST_EVAL = ["--n-examples", "20", "--steps", "1", "--square-queries", "5", "--no-corruptions",
             "--attacks", "pgd-cw"]


def _run(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("trained")
    assert main(["train", "--epochs", "1", *FAST_TRAIN, "--output", str(run),
                 "--overwrite"]) == 0
    return run / "last.pt"


def _fail_probe(monkeypatch, code=errno.EROFS):
    def refuse(*args, **kwargs):
        raise OSError(code, "Read-only file system")
    monkeypatch.setattr(ckpt_module.tempfile, "mkstemp", refuse)


def test_version_flag(capsys):
    rc, out, _ = _run(["--version"], capsys)
    assert rc == 0 and out.startswith("tempfast ")


def test_eval_output_under_a_file_fails_before_evaluating(trained, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, out, err = _run(["eval", str(trained), *FAST_EVAL, "--output",
                         str(blocker / "eval.json")], capsys)
    assert rc == 2 and out == "" and _one_line(err)
    assert "--output" in err and str(blocker) in err and "not a folder" in err


def test_eval_output_on_a_read_only_file_system_fails_before_evaluating(trained, tmp_path,
                                                                        capsys, monkeypatch):
    _fail_probe(monkeypatch)
    rc, out, err = _run(["eval", str(trained), *FAST_EVAL, "--output",
                         str(tmp_path / "eval.json")], capsys)
    assert rc == 2 and out == "" and _one_line(err) and "Read-only file system" in err


def test_eval_results_reach_stdout_when_the_file_write_fails(trained, tmp_path, capsys,
                                                             monkeypatch):
    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ckpt_module, "atomic_write_text", full)
    out_file = tmp_path / "eval.json"
    rc, out, err = _run(["eval", str(trained), *FAST_EVAL, "--json", "--output", str(out_file)],
                        capsys)
    assert rc == 1 and _one_line(err)
    assert f"cannot write {out_file}: No space left on device" in err
    assert json.loads(out)["robust_acc"]["pgd-cw"] is not None, "the results are on stdout"
    assert not out_file.exists()


def test_ctrl_c_during_eval_is_one_line_and_exit_130(trained, tmp_path, capsys, monkeypatch):
    from tempfast.robust import evaluation as ev

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(ev, "evaluate", interrupted)
    rc, out, err = _run(["eval", str(trained), *FAST_EVAL, "--output",
                         str(tmp_path / "e.json")], capsys)
    assert rc == 130 and out == "" and _one_line(err) and "interrupted" in err
    assert not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("case", ["no model entry", "another model's weights",
                                  "weights not a dict"])
def test_incomplete_or_foreign_checkpoints_are_one_line(trained, tmp_path, capsys, case):
    state = load_checkpoint(trained)
    if case == "no model entry":
        del state["model"]
        needle = "no 'model' entry"
    elif case == "another model's weights":
        state["model_config"] = {**state["model_config"], "num_classes": 7}
        needle = "is (10, 128) in the checkpoint, (7, 128) in the model"
    else:
        state["model"] = [1, 2, 3]
        needle = "holds no weights"
    path = tmp_path / "bad.pt"
    save_checkpoint(path, state)
    rc, _, err = _run(["eval", str(path), *FAST_EVAL], capsys)
    assert rc == 2 and _one_line(err) and needle in err, err


def test_train_output_that_cannot_exist_or_be_written_is_refused_up_front(tmp_path, capsys,
                                                                          monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, err = _run(["train", "--epochs", "1", *FAST_TRAIN, "--output",
                       str(blocker / "run")], capsys)
    assert rc == 2 and _one_line(err) and "not a folder" in err
    _fail_probe(monkeypatch)
    rc, _, err = _run(["train", "--epochs", "1", *FAST_TRAIN, "--output",
                       str(tmp_path / "run")], capsys)
    assert rc == 2 and _one_line(err) and "cannot write there: Read-only file system" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_full_disk_mid_run_keeps_the_last_good_checkpoint_and_says_so(tmp_path, capsys,
                                                                         monkeypatch):
    out = tmp_path / "run"
    calls = []
    real_save = run_folder.save_checkpoint

    def fills_up(path, state):
        calls.append(path)
        if len(calls) >= 3:  # epoch 1: last.pt, best.pt; epoch 2: disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(path, state)

    monkeypatch.setattr(run_folder, "save_checkpoint", fills_up)
    rc, _, err = _run(["train", "--epochs", "3", *FAST_TRAIN, "--output", str(out)], capsys)
    assert rc == 1 and _one_line(err), err
    assert "No space left on device" in err and f"epoch 1 ({out / 'last.pt'}) is intact" in err
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")], "no partial file"
    monkeypatch.undo()
    rc, _, err = _run(["train", "--epochs", "3", *FAST_TRAIN, "--output", str(out),
                       "--resume"], capsys)
    assert rc == 0, err
    assert load_checkpoint(out / "last.pt")["epoch"] == 3


def test_resume_where_there_is_no_run_is_refused(tmp_path, capsys):
    rc, _, err = _run(["train", "--epochs", "1", *FAST_TRAIN, "--output",
                       str(tmp_path / "nothing"), "--resume"], capsys)
    assert rc == 2 and _one_line(err) and "does not exist; drop --resume" in err
    assert not (tmp_path / "nothing").exists()


def test_a_run_that_died_before_its_first_epoch_does_not_block_a_rerun(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("temp: 3.0\n")  # what a run killed in epoch 1 leaves
    rc, _, err = _run(["train", "--epochs", "1", *FAST_TRAIN, "--output", str(out)], capsys)
    assert rc == 0, err
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    (out / "last.pt").unlink()
    (out / "best.pt").unlink()
    (out / "metrics.jsonl").unlink()
    (out / "summary.csv").unlink()
    (out / "summary.json").unlink()
    rc, outp, err = _run(["train", "--epochs", "1", "--no-final-eval", "--eval-adv-examples",
                          "0", "--threads", "1", "--json", "--output", str(out), "--resume"],
                         capsys)
    assert rc == 0, err
    start = json.loads(outp.splitlines()[0])
    assert "no checkpoint yet; starting from epoch 1" in start["note"]


def test_a_checkpoint_with_no_state_to_resume_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", *FAST_TRAIN, "--output", str(out)]) == 0
    capsys.readouterr()
    torch.save({"format": FORMAT, "model": {}, "model_config": {}, "epoch": 1, "step": 0},
               out / "last.pt")
    rc, _, err = _run(["train", "--epochs", "2", *FAST_TRAIN, "--output", str(out),
                       "--resume"], capsys)
    assert rc == 2 and _one_line(err) and "is incomplete: no 'criterion'" in err
