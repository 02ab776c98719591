"""``tempfast train`` end to end on the built-in digits (tiny epochs), its output folder, its
display modes and its one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from tempfast.cli import main
from tempfast.train.checkpoint import load_checkpoint, restore_model

pytestmark = pytest.mark.slow  # end to end: real training runs

FAST = ["--epochs", "1", "--no-final-eval", "--eval-adv-examples", "32", "--threads", "1"]


def train(capsys, *args):
    rc = main(["train", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def json_events(out):
    return [json.loads(line) for line in out.splitlines()]


def test_pgd_run_writes_the_output_folder_and_final_evaluation(tmp_path, capsys):
    run = tmp_path / "run"
    rc, out, _ = train(capsys, "--temp", "8", "--adv", "pgd", "--steps", "2", "--epochs", "2",
                       "--eval-examples", "40", "--eval-steps", "2", "--output", str(run),
                       "--json")
    assert rc == 0
    events = json_events(out)
    assert [e["event"] for e in events if e["event"] != "status"] == [
        "start", "epoch", "epoch", "summary"]
    assert {f.name for f in run.iterdir()} == {"config.yaml", "metrics.jsonl", "summary.csv",
                                               "last.pt", "best.pt", "summary.json"}
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["temp"] == 8.0 and config["eps"] == 0.1 and config["model"] == "small_cnn"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows == [{k: v for k, v in e.items() if k != "event"}
                    for e in events if e["event"] == "epoch"]
    with open(run / "summary.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    assert all(r["test_robust_acc"] is not None and r["train_images"] == 1408 for r in rows)
    summary = json.loads((run / "summary.json").read_text())
    assert summary == {k: v for k, v in events[-1].items() if k != "event"}
    assert set(summary["robust_acc"]) >= {"pgd-ce", "pgd-ce-t", "pgd-cw"}
    assert summary["worst_case_acc"] <= min(summary["robust_acc"].values())
    assert isinstance(summary["masking"]["suspected"], bool)
    assert summary["corruption_acc"] is not None and summary["final_temperature"] == 8.0
    settings = summary["eval"]["settings"]
    assert (settings["severities"], settings["steps"], settings["check_steps"]) == ([1, 3, 5],
                                                                                   2, 4)
    assert settings["square_queries"] == 300 and settings["eps"] == 0.1
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["step"] == 0 and ckpt["config"]["adv"] == "pgd"
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "temperature"} <= set(ckpt)
    assert restore_model(ckpt)(torch.rand(3, 1, 8, 8)).shape == (3, 10)


def test_default_run_uses_digits_small_cnn_and_rich_output(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, _ = train(capsys, *FAST)
    assert rc == 0
    run = tmp_path / "output" / "train" / "digits-small_cnn-T1-none-seed0"
    assert (run / "last.pt").exists() and (run / "summary.json").exists()
    assert "epoch   1" in out and "clean accuracy" in out


def test_quiet_prints_one_line(tmp_path, capsys):
    rc, out, _err = train(capsys, *FAST, "--output", str(tmp_path / "q"), "--quiet")
    assert rc == 0 and len(out.splitlines()) == 1 and out.startswith("clean ")
    assert str(tmp_path / "q") in out


def test_learned_temperature_is_trained_and_reported(tmp_path, capsys):
    rc, out, _ = train(capsys, *FAST, "--temp", "4", "--learn-temp", "--adv", "pgd",
                       "--steps", "1", "--output", str(tmp_path / "lt"), "--json")
    assert rc == 0
    summary = json_events(out)[-1]
    assert summary["learn_temp"] and summary["temperature"] == 4.0
    assert summary["final_temperature"] != pytest.approx(4.0, abs=1e-6)
    ckpt = load_checkpoint(tmp_path / "lt" / "last.pt")
    assert ckpt["temperature"] == pytest.approx(summary["final_temperature"])
    assert "log_temperature" in ckpt["criterion"]


@pytest.mark.parametrize("flags", [["--amp", "bf16", "--channels-last"],
                                   ["--opt", "adamw", "--sched", "step", "--amp", "fp16"]])
def test_precision_and_optimiser_variants_train(tmp_path, capsys, flags):
    rc, out, _ = train(capsys, *FAST, *flags, "--output", str(tmp_path / "v"), "--json")
    assert rc == 0
    row = json_events(out)[1]
    assert row["event"] == "epoch" and row["train_loss"] == row["train_loss"]  # not NaN


def test_synthetic_large_class_run(tmp_path, capsys):
    rc, out, _ = train(capsys, "--data", "synthetic", "--num-classes", "1000", *FAST,
                       "--output", str(tmp_path / "s"), "--json")
    assert rc == 0
    start, epoch = json_events(out)[:2]
    assert (start["n_train"], start["n_test"], epoch["train_images"]) == (8000, 2000, 7936)
    assert restore_model(load_checkpoint(tmp_path / "s" / "last.pt")).net[-1].out_features == 1000


def test_existing_run_is_refused_without_resume_or_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(capsys, *FAST, "--output", str(run), "--quiet")[0] == 0
    before = {f.name: f.read_bytes() for f in run.iterdir()}
    rc, _, err = train(capsys, *FAST, "--output", str(run), "--temp", "2", "--quiet")
    assert rc == 2 and "already holds a run" in err and len(err.splitlines()) == 1
    rc, _, err = train(capsys, *FAST, "--output", str(run), "--temp", "2", "--resume")
    assert rc == 2 and "holds a different run (temp: 1.0 there, 2.0 now)" in err
    assert {f.name: f.read_bytes() for f in run.iterdir()} == before, "nothing overwritten"
    # inputs before outputs (issue 23): a missing data set is named, not the run folder
    rc, _, err = train(capsys, *FAST, "--output", str(run), "--data", "fashion-mnist",
                       "--data-dir", str(tmp_path / "nonexistent"), "--quiet")
    assert rc == 2 and "already holds a run" not in err and "nonexistent" in err
    rc, _out, _ = train(capsys, *FAST, "--output", str(run), "--temp", "2", "--overwrite",
                       "--quiet")
    assert rc == 0 and yaml.safe_load((run / "config.yaml").read_text())["temp"] == 2.0


def _run_folder_with_bad_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(capsys, *FAST, "--output", str(run), "--quiet")[0] == 0
    (run / "last.pt").write_bytes(b"corrupt")
    return ["--output", str(run), "--resume"]


BAD_INPUTS = {
    "unknown model": (["--model", "resnet9000"], "--model 'resnet9000' is unknown"),
    "unknown data set": (["--data", "emnist"], "invalid choice: 'emnist'"),
    "missing data dir": (["--data", "cifar10", "--data-dir", "{tmp}/none"], "--download"),
    "negative eps": (["--eps", "-0.1"], "--eps must lie in [0, 1]"),
    "eps beyond the pixel range": (["--eps", "2"], "--eps must lie in [0, 1]"),
    "zero steps": (["--steps", "0"], "--steps must be >= 1"),
    "zero temperature": (["--temp", "0"], "--temp must be finite and > 0"),
    "negative temperature": (["--temp", "-1"], "--temp must be finite and > 0"),
    "unknown attack": (["--eval-attacks", "pgd-ce,fgsm"], "unknown attack 'fgsm'"),
    "corrupt checkpoint": (None, "is unreadable or corrupt"),
    "not a number": (["--eps", "abc"], "not a number: 'abc'"),
    "a subset smaller than the classes": (["--train-subset", "5"],
                                          "--train-subset must be at least the number of "
                                          "classes (10) for digits"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, case):
    args, message = BAD_INPUTS[case]
    if args is None:
        args = _run_folder_with_bad_checkpoint(tmp_path, capsys)
    else:
        args = [a.replace("{tmp}", str(tmp_path)) for a in args]
        args += ["--output", str(tmp_path / "out")]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    try:
        rc, _, err = train(capsys, *args, "--epochs", "1", "--no-final-eval")
    except SystemExit as exc:  # argparse errors
        rc, (_, err) = exc.code, capsys.readouterr()
    assert rc == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert err.startswith("tempfast train: error: ")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


BAD_BACKENDS = {
    "unknown backend": ("bogus", "TEMPFAST_BACKEND: unknown backend 'bogus'"),
    "triton on cpu without the interpreter": (
        "triton", "backend 'triton' on cpu tensors needs TRITON_INTERPRET=1"),
}


@pytest.mark.parametrize("case", list(BAD_BACKENDS))
def test_bad_backend_environment_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys,
                                                                       monkeypatch, case):
    name, message = BAD_BACKENDS[case]
    monkeypatch.setenv("TEMPFAST_BACKEND", name)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    threads = torch.get_num_threads()
    rc, _, err = train(capsys, *FAST, "--threads", str(threads + 1),
                       "--output", str(tmp_path / "out"))
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("tempfast train: error: ") and message in err
    assert list(tmp_path.iterdir()) == [], "no half-written run folder blocks the rerun"
    assert torch.get_num_threads() == threads


def test_bad_input_through_the_console_entry_point(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "tempfast", "train", "--steps", "0",
                           "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "tempfast train: error: --steps must be >= 1, got 0\n"
    assert not (tmp_path / "o").exists()


def test_imagefolder_run_trains_from_png_files(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b", "c"):
            (tmp_path / "img" / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(
                    tmp_path / "img" / split / cls / f"{i}.png")
    rc, out, _ = train(capsys, "--data", "imagefolder", "--data-dir", str(tmp_path / "img"),
                       "--model", "small_cnn", "--workers", "1", "--batch-size", "4",
                       *FAST, "--output", str(tmp_path / "run"), "--json")
    assert rc == 0
    start, epoch = json_events(out)[:2]
    assert (start["n_train"], start["n_test"], epoch["train_images"]) == (12, 12, 12)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["model_config"]["img_size"] == 10


@pytest.mark.parametrize("classes", [2, 3])
def test_two_and_three_classes_train_and_evaluate_with_the_default_suite(tmp_path, capsys,
                                                                         classes):
    """APGD-DLR needs a third-largest logit: with two classes it crashed the final evaluation
    (IndexError), so no summary.json was written, and `tempfast eval` crashed too."""
    run = tmp_path / "run"
    rc, _, err = train(capsys, "--data", "synthetic", "--num-classes", str(classes),
                       "--epochs", "1", "--threads", "1", "--eval-examples", "8",
                       "--eval-steps", "2", "--output", str(run), "--quiet")
    assert rc == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert "apgd-dlr" in summary["robust_acc"] and summary["worst_case_acc"] is not None
    rc = main(["eval", str(run / "last.pt"), "--n-examples", "8", "--steps", "2",
               "--square-queries", "5", "--no-corruptions", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "apgd-dlr" in json.loads(out)["robust_acc"]


def test_a_corrupt_image_is_one_line_and_writes_nothing(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "img"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / split / cls / "0.png")
    (root / "train" / "b" / "1.jpg").write_bytes(b"\xff\xd8 truncated")
    rc, out, err = train(capsys, "--data", "imagefolder", "--data-dir", str(root),
                         "--model", "small_cnn", "--workers", "0", *FAST,
                         "--output", str(tmp_path / "run"))
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "1.jpg" in err and "cannot read image" in err
    assert not (tmp_path / "run").exists()


def test_cifar10_run_with_a_timm_resnet(tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, 4).tolist()}, f)
    rc, out, _ = train(capsys, "--data", "cifar10", "--data-dir", str(tmp_path), "--batch-size",
                       "10", *FAST, "--output", str(tmp_path / "run"), "--json")
    assert rc == 0
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (config["model"], config["eps"], config["steps"]) == ("resnet18", 8 / 255, 10)
    assert json_events(out)[1]["train_images"] == 20
    model = restore_model(load_checkpoint(tmp_path / "run" / "last.pt"))
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_fashion_mnist_run_on_a_training_subset_with_compensation_in_the_header(tmp_path,
                                                                                  capsys):
    from ._util import write_mnist_layout

    write_mnist_layout(tmp_path / "fm", n_train=120, n_test=40)
    rc, out, _ = train(capsys, "--data", "fashion-mnist", "--data-dir", str(tmp_path / "fm"),
                       "--train-subset", "60", "--temp", "4", "--batch-size", "20", *FAST,
                       "--output", str(tmp_path / "run"))
    assert rc == 0
    header = out.splitlines()[0]
    assert "model small_cnn_pool" in header and "T 4 (loss x T)" in header
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (config["train_subset"], config["temp_compensation"]) == (60, "loss")
    assert load_checkpoint(tmp_path / "run" / "last.pt")["data"]["n_train"] == 60


def test_the_summary_labels_sample_sizes_shows_diagnostics_and_prints_the_output_whole(capsys):
    """Issue 23: the summary's clean accuracy names its sample size (the final evaluation's
    subset, not the epoch line's whole test set), every run that counts in the worst case is
    shown (the diagnostics marked), and a long output folder is printed whole at 80 columns."""
    from rich.console import Console

    from tempfast.train.progress import RichReporter, result_line

    reporter = RichReporter()
    reporter.out = Console(width=80, force_terminal=False)
    folder = "/a/very/long/output/folder/" + "x" * 90 + "/run"
    summary = {"output": folder, "clean_acc": 0.351, "clean_n": 1000, "worst_case_acc": 0.0,
               "robust_acc": {"pgd-ce": 0.02}, "extra_robust_acc": {"pgd-cw": 0.0},
               "corruption_acc": None, "masking": {"suspected": False, "reasons": []},
               "temperature": 8.0, "final_temperature": 8.0, "best": {}, "wall_time_s": 3.0}
    reporter.summary(summary)
    out = capsys.readouterr().out
    assert "clean accuracy (1000 test images)" in out
    assert "diagnostic: pgd-cw" in out
    assert f"output folder {folder}" in out.splitlines()
    assert "(of 1000 test images)" in result_line(summary)


def test_eval_presets_estimate_and_explicit_flags(tmp_path, capsys):
    """Issue 23: a 1-epoch run's default (auto) evaluation is the quick one (the full one
    would cost more than the training), announced with its work and estimated time; explicit
    --eval-* flags win over the preset; --eval none skips it."""
    base = ["--epochs", "1", "--eval-adv-examples", "0", "--threads", "1", "--json"]
    rc, out, _ = train(capsys, *base, "--output", str(tmp_path / "auto"))
    assert rc == 0
    events = json_events(out)
    summary = events[-1]
    assert summary["eval_preset"].startswith("auto: quick")
    settings = summary["eval"]["settings"]
    assert settings["attacks"] == ["pgd-ce", "apgd-dlr"] and summary["eval"]["n_examples"] == 200
    assert summary["corruption_acc"] is None and summary["eval"]["calibration"] is None
    announce = [e["message"] for e in events if e["event"] == "status"
                and e["message"].startswith("final evaluation (auto: quick")]
    assert announce and "200 test images, pgd-ce, apgd-dlr" in announce[0]
    assert "forward + backward image passes" in announce[0] and "training's rate" in announce[0]
    rc, out, _ = train(capsys, *base, "--eval", "quick", "--eval-attacks", "pgd-cw",
                       "--eval-examples", "50", "--output", str(tmp_path / "quick"))
    summary = json_events(out)[-1]
    assert rc == 0 and summary["eval_preset"] == "quick"
    assert summary["eval"]["settings"]["attacks"] == ["pgd-cw"]
    assert summary["eval"]["n_examples"] == 50
    rc, out, _ = train(capsys, *base, "--eval", "none", "--output", str(tmp_path / "none"))
    summary = json_events(out)[-1]
    assert rc == 0 and summary["eval"] is None and summary["eval_preset"] == "none"
