"""experiments/: the sweep, its resume, the report (numbers from the CSV), the verdict rules,
the gradient measurements, the ready configs and the Tiny-ImageNet layout tool."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from experiments import claims, report, summary, sweep, table, tiny_imagenet
from experiments import rows as rows_module
from experiments.measure import measure
from experiments.rows import Run
from tempfast.errors import UsageError
from tempfast.robust.evaluation import unpack_mask

pytestmark = pytest.mark.slow  # end to end: real sweeps of training runs

TINY = ["--epochs", "1", "--eval-examples", "24", "--eval-attacks", "pgd-ce,pgd-cw"]
CONFIGS = sorted((Path(__file__).parents[1] / "experiments" / "configs").glob("*.yaml"))


def test_sweep_and_report_run_end_to_end_and_a_rerun_skips_finished_runs(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["--temps", "1", "4", "--adv", "none", "--seeds", "1", "--learn-temp", "--jobs", "2",
            *TINY, "--out", str(out)]
    assert sweep.main(argv) == 0
    rows = table.read_rows(out / "results.csv")
    assert [r["run"] for r in rows] == ["none-T1-plain-seed0", "none-T4-plain-seed0",
                                        "none-learnT1-plain-seed0"]
    for row in rows:
        assert 0 <= row["clean_acc"] <= 1 and 0 <= row["worst_case_acc"] <= row["clean_acc"]
        assert row["robust_pgd_cw"] is not None and row["robust_square"] is None
        assert row["masking_kind"] in ("none", "ce", "general")
        assert row["logit_norm"] > 0 and row["eval_examples"] == 24
        assert row["command"].startswith("python -m tempfast train --data digits --epochs 1")
        assert f"--output {out / 'runs' / row['run']}" in row["command"]
        assert row["git_rev"] and row["sweep_command"].startswith("python -m experiments.sweep")
        assert row["compensation"] == "none" and "--temp-compensation none" in row["command"]
        assert row["torch_version"] == torch.__version__ and row["device_kind"] == "cpu"
        assert 0 <= row["ece_before"] <= 1 and row["cal_temperature"] > 0
    assert rows[1]["temp"] == 4.0 and rows[1]["final_temp"] == 4.0
    assert rows[2]["learn_temp"] and rows[2]["final_temp"] != 1.0
    assert (out / "gradients.csv").exists()
    masks = table.read_per_example(out / table.PER_EXAMPLE)
    assert set(masks) == {r["run"] for r in rows}
    for row in rows:
        record = masks[row["run"]]
        worst = unpack_mask(record["worst_case"], record["n"])
        assert record["n"] == 24 and float(worst.float().mean()) == \
            pytest.approx(row["worst_case_acc"])
        assert row["attacks_converged"] is not None

    before = (out / "results.csv").read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*")}
    capsys.readouterr()
    assert sweep.main(argv) == 0
    assert "3 already in" in capsys.readouterr().out
    assert (out / "results.csv").read_text() == before
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*")} == mtimes

    assert report.main([str(out)]) == 0
    text = (out / "REPORT.md").read_text()
    assert "### Claim 1" in text and "## Learned temperature" in text
    assert "paired McNemar (one seed)" in text  # the worst case's masks were kept
    for name in [*report.PLOTS, "calibration_vs_T.png"]:
        assert (out / name).stat().st_size > 1000, name
    assert not (out / "perturbation_vs_T.png").exists()  # the sweep did not ask for them


def test_sweep_resumes_an_interrupted_run_and_refuses_other_settings(tmp_path, capsys):
    from tempfast.cli import main as tempfast_main

    out = tmp_path / "sweep"
    argv = ["--temps", "1", "--seeds", "1", "--epochs", "2", "--eval-examples", "16",
            "--eval-attacks", "pgd-cw", "--no-corruptions", "--no-gradients", "--out", str(out)]
    args = sweep.parse_args(argv)
    run_dir = out / "runs" / "none-T1-plain-seed0"
    first = sweep.train_command(args, Run("none", 1.0, 0), run_dir)[2:]
    first[first.index("--epochs") + 1] = "1"
    assert tempfast_main([*first, "--no-final-eval"]) == 0
    (run_dir / "summary.json").unlink()  # as if the sweep had been killed during this run
    epoch1 = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(epoch1) == 1

    assert sweep.main(argv) == 0
    (row,) = table.read_rows(out / "results.csv")
    assert row["resumed"] and row["command"].endswith("--resume")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and lines[0] == epoch1[0]
    assert row["epochs"] == 2 and json.loads(lines[1])["epoch"] == 2

    capsys.readouterr()
    assert sweep.main([*argv[:-2], "--epochs", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other settings (epochs: 2 there, 3 now)" in err


def _row(adv: str, temp: float, seed: int, clean: float, pgd_ce: float, worst: float,
         kind: str = "none", compensation: str = "none") -> dict:
    row = {c: None for c in table.COLUMNS}
    run = Run(adv, temp, seed, compensation=compensation)
    # "synthetic": no converged reference, so only the relative under-training rule applies
    row.update(run=run.name, data="synthetic", model="small_cnn", adv=adv, temp=temp,
               learn_temp=False, compensation=compensation, final_temp=temp, seed=seed, epochs=20,
               clean_acc=clean, corruption_acc=clean - 0.1, robust_pgd_ce=pgd_ce,
               robust_pgd_cw=worst, worst_case_acc=worst, masking_suspected=kind != "none",
               masking_kind=kind, zero_grad_ce=0.9 if kind == "ce" else 0.0,
               masking_reasons=None if kind == "none" else
               "pgd-ce accuracy 60.0% is far above pgd-cw accuracy 11.0% (gap > 10%): CE "
               "saturates on this model",
               logit_norm=10.0 * temp, margin=5.0, eps=0.1, eval_examples=360,
               git_rev="abc", command="python -m tempfast train", process_s=10.0)
    return row


def _report_text(folder: Path, rows: list[dict]) -> str:
    """REPORT.md of ``rows`` written as ``folder/results.csv`` (no plots)."""
    table.write_rows(folder / "results.csv", rows)
    report.write_report(folder, with_plots=False)
    return (folder / "REPORT.md").read_text()


def test_report_tables_show_the_numbers_of_the_csv(tmp_path):
    rows = [
        _row("none", 1.0, 0, 0.90, 0.10, 0.10), _row("none", 1.0, 1, 0.92, 0.12, 0.12),
        _row("none", 8.0, 0, 0.95, 0.60, 0.11, "ce"), _row("none", 8.0, 1, 0.97, 0.62, 0.09, "ce"),
    ]
    text = _report_text(tmp_path, rows)
    # mean ± sample std (ddof 1) over the two seeds, in %
    assert "| 1 | 91.0 ± 1.4 | 81.0 ± 1.4 | 11.0 ± 1.4 |" in text
    assert "| 8 | 96.0 ± 1.4 | 86.0 ± 1.4 | 61.0 ± 1.4 |" in text
    assert "| 2/2 (2 / 0) | 90.0 ± 0.0 | 80 ± 0 | 5 ± 0 |" in text
    # clean: +5 points, but Welch's t over two seeds each is 3.5 on 2 degrees of freedom
    assert "| 1 | standard training | clean accuracy | clean | not supported | T = 8: 96.0 ± " \
           "1.4 vs 91.0 ± 1.4 |" in text
    assert "PGD with CE on raw logits: **supported**" in text
    assert "the diagnostics' runs): **not supported**" in text
    # 5 points of 360 images; one comparison, so Holm leaves p as it is
    assert "(difference +5.00 points, +18.0 of 360 test images; Welch t (2.0 df): p = " in text
    assert "after Holm's correction over 1 temperatures" in text
    assert "it comes from the attack failing (gradient masking)" in text
    assert "runs per reason: CE far above the scale-invariant attacks: 2." in text
    assert "training per mode: standard training: all images x 20 epochs" in text
    assert report._training_budget([{**rows[0], "train_subset": 6000, "epochs": 3}], "none") \
        == "standard training: 6000 images x 3 epochs"

    assert "## Arm: loss x T" not in text

    # a loss x T arm at T = 8 is compared with the same T = 1 runs (they are one run)
    arm = [_row("none", 8.0, s, 0.80, 0.5, 0.05, compensation="loss") for s in (0, 1)]
    assert [r["run"] for r in report.arm_rows(rows + arm, "loss")] == [
        "none-T8-lossxT-seed0", "none-T8-lossxT-seed1", "none-T1-plain-seed0",
        "none-T1-plain-seed1"]
    text = _report_text(tmp_path, rows + arm)
    assert "## Arm: loss x T" in text and "## Arm: plain CE(z / T)" in text
    # -11 points: T = 8 is more than 10 points below the arm's best cell, under-trained
    assert "| loss x T | 1 | standard training | clean accuracy | clean | inconclusive " \
           "(under-trained) | T = 8: 80.0 ± 0.0 vs 91.0 ± 1.4 |" in text
    # the logit growth is told per arm, never averaged over the arms
    for r in arm:
        r["logit_norm"] = 500.0
    growth = _report_text(tmp_path, rows + arm).split("### In trained models")[1]
    plain, loss = growth.split("**loss x T, standard training**")
    assert "**plain CE(z / T) at one learning rate (the paper's setting), standard training**" \
        in plain
    assert "| 8 | 80 ± 0 |" in plain and "| 8 | 500 ± 0 |" in loss

    # an under-trained cell of the compensated arm is not put down to the 1/T slow-down
    weak = [{**r, "clean_acc": 0.50} for r in arm]
    plain, loss = _report_text(tmp_path, rows + weak).split("## Arm: loss x T")
    assert "**Under-trained:** at T = 8" in loss
    assert "the step size is held at T = 1's in this arm" in loss
    assert "1/T gradient scale slows" not in loss

    rows[2]["clean_acc"] = 0.50
    text = _report_text(tmp_path, rows)
    assert "| 8 | 73.5 ± 33.2 |" in text
    assert "the 1/T gradient scale slows training at large T" in text
    assert "| 1 | standard training | clean accuracy | clean | inconclusive (under-trained) |" \
        in text
    # AdamW's update does not follow the gradient's scale: the reason given is the logit growth
    adamw = [{**r, "command": "python -m tempfast train --opt adamw --temp 8"} for r in rows]
    text = _report_text(tmp_path, adamw)
    assert "AdamW's update does not shrink with the 1/T gradient scale" in text
    assert "1/T gradient scale slows" not in text


def test_logit_growth_says_when_no_slope_can_be_fitted():
    rows = [_row("pgd", t, s, clean, 0.3, 0.3) for t, clean in ((1.0, 0.6), (4.0, 0.4))
            for s in (0, 1)]
    head = report._logit_growth(rows, "pgd", "")[0]
    assert head.endswith(": no slope: fewer than two well-trained temperatures T >= 1 "
                         "(only T = 1)")
    rows += [_row("pgd", 2.0, s, 0.6, 0.3, 0.3) for s in (0, 1)]
    assert report._logit_growth(rows, "pgd", "")[0].endswith(
        ": mean logit norm scales as T^1.00 (fit over T = 1, 2)")


def test_a_verdict_decided_by_an_under_trained_cell_is_rechecked_without_it():
    rows = [_row("none", 1.0, s, 0.90, 0.10, 0.10 + s / 100) for s in (0, 1)]
    rows += [_row("none", 2.0, s, 0.91, 0.20, 0.20 + s / 100) for s in (0, 1)]
    rows += [_row("none", 16.0, s, 0.40, 0.30, 0.30 + s / 100) for s in (0, 1)]
    v = report._versus(rows, "worst_case_acc", "none")
    assert v.best.temp == 16.0
    note = report._well_trained_check(rows, "worst_case_acc", "none", v)
    assert note.startswith("; T = 16 is under-trained; over the well-trained T only: "
                           "**supported**, T = 2, +10.0 points")
    assert report._well_trained_check(rows[:4], "worst_case_acc", "none",
                                      report._versus(rows[:4], "worst_case_acc", "none")) == ""
    only_weak = rows[:2] + rows[4:]
    v = report._versus(only_weak, "worst_case_acc", "none")
    assert "no well-trained T > 1 is left" in report._well_trained_check(
        only_weak, "worst_case_acc", "none", v)


def test_the_eps_curve_verdict_is_rechecked_without_under_trained_cells():
    rows = [_row("none", 1.0, s, 0.90, 0.10, 0.10) for s in (0, 1)]
    rows += [_row("none", 2.0, s, 0.91, 0.10, 0.10) for s in (0, 1)]
    rows += [_row("none", 16.0, s, 0.40, 0.10, 0.10) for s in (0, 1)]
    for r, acc in zip(rows, (0.20, 0.21, 0.22, 0.23, 0.50, 0.52), strict=True):
        r["eps_curve"] = f"0.05:{acc}"
    text = "\n".join(report.curve_section(rows))
    assert "- eps 0.05: **inconclusive (under-trained)** (T = 16 51.0 ± 1.4% vs 20.5 ± 0.7%; " \
           "Welch t (1.5 df): p 0.0057, 0.011 Holm; detectable 12.5 pts;" in text
    assert "T = 16 is under-trained; over the well-trained T only: **not supported** (T = 2 " \
           "22.5 ± 0.7%; Welch t (2.0 df): p 0.11, 0.11 Holm; detectable 3.8 pts;" in text
    # the same verdict is a row of the verdict table and a clause of the conclusions
    _, rows_of_table = report.claim_sections(rows)
    curve_rows = [r for r in rows_of_table if "eps curve" in r[2]]
    assert [r[2:5] for r in curve_rows] == [["worst case at eps 0.05 (eps curve)",
                                             "scale-invariant attacks", claims.UNDER_TRAINED]]
    assert "along the eps curve (claim 3, scale-invariant attacks): eps 0.05 **inconclusive " \
           "(under-trained)** (T = 16, +30.5 points" in "\n".join(report.conclusions(rows))


def test_summary_puts_the_data_sets_verdicts_side_by_side(tmp_path, capsys):
    digits, fashion = tmp_path / "digits", tmp_path / "fashion"
    digits.mkdir(), fashion.mkdir()
    rows = [_row("none", 1.0, s, 0.90 + s / 100, 0.10, 0.10) for s in (0, 1)]
    rows += [_row("none", 8.0, s, 0.96 + s / 100, 0.60, 0.30) for s in (0, 1)]
    table.write_rows(digits / "results.csv", rows)
    table.write_rows(fashion / "results.csv", [
        {**r, "data": "mnist", "clean_acc": 1.8 - r["clean_acc"]} for r in rows])
    assert summary.main([str(digits), str(fashion)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| sweep | data / model | arm | claim |")
    claim_1 = [line for line in lines if "| clean accuracy |" in line]
    # 6 points over two seeds each 1 point apart: Welch's t = 8.5 on 2 degrees of freedom;
    # the trend's slope is 6 points over 3 doublings of T
    stats = ("Welch t (2.0 df): p 0.014, 0.014 Holm; detectable 3.8 pts; trend {:+.2f} pts "
             "per doubling of T, p 0.014 |")
    assert claim_1 == [
        "| digits | synthetic / small_cnn | plain CE(z / T) | 1 | standard training | clean "
        "accuracy | clean | supported | T = 8: 96.5 ± 0.7 vs 90.5 ± 0.7 | " + stats.format(2.0),
        "| fashion | mnist / small_cnn | plain CE(z / T) | 1 | standard training | clean "
        "accuracy | clean | contradicted | T = 8: 83.5 ± 0.7 vs 89.5 ± 0.7 | " + stats.format(-2.0)]
    out = tmp_path / "summary.md"
    assert summary.main([str(digits), "--output", str(out)]) == 0
    # claims 1, 2, 3 (raw and adaptive)
    assert out.read_text().count("| synthetic / small_cnn |") == 4
    assert summary.main([str(tmp_path / "missing")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_claim_1_judges_the_whole_test_set_when_every_run_has_it(tmp_path):
    rows = [_row("none", t, s, 0.90, 0.1, 0.1) for t in (1.0, 4.0) for s in (0, 1)]
    for r, acc in zip(rows, (0.900, 0.902, 0.910, 0.912), strict=True):
        r.update(test_acc=acc, n_test=10000)
    text = _report_text(tmp_path, rows)
    # 1 point of 10000 images per seed: z = 0.01 / 0.0030 (binomial; the seeds agree) = 3.4
    assert "- standard training, clean accuracy (whole test set): **supported**" in text
    assert "+100.0 of 10000 test images" in text
    assert "| T | clean (test set) | clean |" in text


def test_natural_perturbations_get_their_own_verdicts_on_the_images_they_ran_on(tmp_path):
    rows = [_row("none", t, s, 0.90, 0.1, 0.1) for t in (1.0, 4.0) for s in (0, 1)]
    for r in rows:
        gain = 0.02 if r["temp"] == 4.0 else 0.0
        r.update(shift_examples=10000, perturbation_acc=0.80 + gain + r["seed"] / 1000,
                 perturb_rotation=0.78 + gain, perturb_translation=0.85,
                 perturb_scaling=0.75 - gain, perturb_elastic=0.82 + r["seed"] / 1000)
    text = _report_text(tmp_path, rows)
    # 2 points of the 10,000 images the perturbations ran on (not the attacks' 360)
    assert "natural perturbations (every kind and strength): **supported**" in text
    assert "+200.0 of 10000 test images" in text
    assert "| 2 | standard training | mean natural-perturbation accuracy | natural " \
        "perturbations | supported | T = 4: 82.0" in text
    assert "| rotation (mean over strengths) | supported: T = 4" in text
    assert "| scaling (mean over strengths) | contradicted: T = 4" in text
    assert "| elastic deformation (mean over strengths) | not supported: T = 4" in text
    assert "| T | clean | corruptions | perturbations | pgd-ce |" in text
    # a sweep without them (older CSVs) has no such rows
    for r in rows:
        r.update(perturbation_acc=None, perturb_rotation=None, perturb_translation=None,
                 perturb_scaling=None, perturb_elastic=None, shift_examples=None)
    assert "perturbation" not in _report_text(tmp_path, rows)
    # an arm with no T > 1 yet (a sweep in progress) says so in the conclusions
    early = [_row("none", 0.5, s, 0.90, 0.1, 0.1, compensation="loss") for s in (0, 1)]
    assert "**loss x T: the step size kept at T = 1's, only the direction changes.** no T > 1 " \
        "measured yet." in _report_text(tmp_path, rows + early)


def test_the_plateau_rule_reads_the_last_two_epochs_of_each_t1_run(tmp_path):
    lines = [{"epoch": e, "test_acc": acc, "test_robust_acc": rob}
             for e, acc, rob in ((1, 0.60, 0.40), (2, 0.70, 0.50), (3, 0.745, 0.55),
                                 (3, 0.75, 0.56), (4, 0.752, 0.565))]
    # epoch 3 written twice (a resumed run: the last record counts) and a torn last line
    (tmp_path / "metrics.jsonl").write_text(
        "\n".join(json.dumps(x) for x in lines) + '\n{"epoch": 5, "test_a')
    change = rows_module.last_two_epochs_change(tmp_path)
    assert change["clean_change_last2"] == pytest.approx(0.752 - 0.70)
    assert change["robust_change_last2"] == pytest.approx(0.565 - 0.50)
    (tmp_path / "metrics.jsonl").write_text(json.dumps(lines[0]) + "\n")
    assert rows_module.last_two_epochs_change(tmp_path) == {
        "clean_change_last2": None, "robust_change_last2": None}

    rows = [_row("pgd", t, s, 0.90, 0.5, 0.5) for t in (1.0, 2.0) for s in (0, 1)]
    for r in rows:
        r.update(clean_change_last2=0.004, robust_change_last2=0.017 if r["seed"] else -0.002)
    text = _report_text(tmp_path, rows)  # the rule reads the T = 1 cell's mean, not each seed
    assert "points per seed: clean +0.4, +0.4 (mean +0.4); training-attack accuracy -0.2, " \
        "+1.7 (mean +0.8): reached (1 of 4 per-seed changes alone are a point or more;" in text
    for r in rows:
        r["robust_change_last2"] = 0.009
    assert "training-attack accuracy +0.9, +0.9 (mean +0.9): reached." in \
        _report_text(tmp_path, rows)
    for r in rows:
        r["clean_change_last2"] = -0.004 if r["seed"] else 0.031
    assert "clean +3.1, -0.4 (mean +1.4); training-attack accuracy +0.9, +0.9 (mean +0.9): " \
        "**not reached**: T = 1's accuracy still moves by a point or more." in \
        _report_text(tmp_path, rows)


@pytest.mark.parametrize(("best", "base", "label"), [
    ((0.95, 0.96, 0.97), (0.90, 0.91, 0.92), "supported"),
    ((0.90, 0.91, 0.92), (0.95, 0.96, 0.97), "contradicted"),
    ((0.90, 0.95, 0.99), (0.91, 0.92, 0.93), "not supported"),
    ((0.913,), (0.91,), "not supported"),
    ((0.92,), (0.91,), "supported"),
])
def test_verdict_rule_compares_the_best_t_above_1_with_t_1(best, base, label):
    cs = [claims.Cell(0.5, (0.99, 0.99)), claims.Cell(1.0, base), claims.Cell(2.0, (0.0,)),
          claims.Cell(4.0, best)]
    v = claims.versus_t1(cs)
    assert v.label == label and v.best.temp == 4.0
    assert v.diff == pytest.approx(sum(best) / len(best) - sum(base) / len(base))


def test_a_learned_t_is_judged_by_welchs_test_not_two_standard_errors():
    fixed = claims.Cell(2.0, (0.992, 0.996, 1.000))
    # 2.76 standard errors below on 4 degrees of freedom: p = 0.051, not significant
    near = claims.Cell(1.0, (0.983, 0.987, 0.991))
    word, test = claims.judge_difference(near, fixed, 360)
    assert word == "same" and test.name == "welch" and test.p == pytest.approx(0.051, abs=0.002)
    far = claims.Cell(1.0, (0.80, 0.81, 0.82))
    assert claims.judge_difference(far, fixed, 360)[0] == "worse"
    assert claims.judge_difference(fixed, far, 360)[0] == "better"


@pytest.mark.parametrize("folder", ["fashion-mnist-reference", "fashion-mnist-vit-reference"])
def test_the_converged_references_are_the_committed_runs_last_epoch(folder):
    run = Path(__file__).parents[1] / "experiments" / "results" / folder
    config = yaml.safe_load((run / "config.yaml").read_text())
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert config["temp"] == 1.0 and config["adv"] == "none"
    assert [e["epoch"] for e in epochs] == list(range(1, config["epochs"] + 1))
    last = epochs[-1]["test_acc"]
    assert claims.CONVERGED_CLEAN[(config["data"], config["model"])] == pytest.approx(last)
    assert abs(last - epochs[-3]["test_acc"]) < 0.01  # the plateau rule: under a point


def test_holm_adjusts_in_input_order_and_stays_monotone():
    assert claims.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert claims.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_verdict_counts_test_images_and_corrects_for_the_temperatures_tried():
    base, better = claims.Cell(1.0, (0.90,)), claims.Cell(4.0, (0.93,))
    # one seed of 100 images: 3 images apart is binomial noise
    assert claims.versus_t1([base, better], 100).label == "not supported"
    v = claims.versus_t1([base, better], 1000)  # z = 0.03 / 0.0125 = 2.4, p = 0.016
    assert v.label == "supported" and v.p == pytest.approx(0.016, abs=0.001)
    assert v.images == pytest.approx(30.0)
    # the same gain as the best of six temperatures: Holm multiplies its p by 6
    others = [claims.Cell(t, (0.90,)) for t in (2.0, 8.0, 16.0, 32.0, 64.0)]
    v = claims.versus_t1([base, better, *others], 1000)
    assert v.comparisons == 6 and v.p_holm == pytest.approx(6 * v.p)
    assert v.label == "not supported"
    worse = claims.versus_t1([claims.Cell(1.0, (0.95,)), claims.Cell(2.0, (0.90,))], 1000)
    assert worse.label == "contradicted"
    # every image broken at every T: no effect, but not a test that would see any effect
    floor = claims.versus_t1([claims.Cell(1.0, (0.0,)), claims.Cell(2.0, (0.0,))], 500)
    assert floor.p == 1.0 and floor.label == "not supported"
    assert floor.mde == pytest.approx(2.80 * (1 / 1000 * (2 / 500)) ** 0.5, rel=0.01)


def test_measure_matches_the_temperature_gradient_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    x, y = torch.rand(32, 1, 3, 4), torch.randint(0, 5, (32,))
    with torch.no_grad():
        z = model(x).double()
    for t in (0.5, 4.0):
        m = measure(model, [(x[:20], y[:20]), (x[20:], y[20:])], t)
        g = (torch.softmax(z / t, 1) - nn.functional.one_hot(y, 5)) / t
        assert m["logit_grad_norm"] == pytest.approx(float(g.norm(dim=1).mean()), rel=1e-5)
        assert m["formula_error"] < 1e-6
        assert m["logit_norm"] == pytest.approx(float(z.norm(dim=1).mean()), rel=1e-5)
    assert measure(model, [(x, y)], 1e4)["neg_entropy_norm"] == pytest.approx(1.0, abs=1e-6)
    assert measure(model, [(x, y)], 1e-4)["neg_entropy_norm"] < 0.05

    with torch.no_grad():
        model[1].weight.mul_(1e5)
    predicted = z.argmax(1)
    assert measure(model, [(x, predicted)], 1.0)["zero_input_grad"] > 0.5
    assert measure(model, [(x, predicted)], 1e5)["zero_input_grad"] == 0.0


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_ready_configs_resolve_to_valid_train_commands(config, tmp_path, capsys):
    assert sweep.main(["--config", str(config), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "(new): python" in ln]
    assert len(lines) == 60
    pgd = next(ln for ln in lines if "--adv pgd" in ln)
    for flag in ("--eps 0.03137254901960784", "--alpha 0.00784313725490196", "--steps 10",
                 "--device cuda", "--epochs 100"):
        assert flag in pgd
    assert not (tmp_path / "o").exists()


def test_sweep_config_rejects_unknown_keys(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("temps: [1, 2]\nepoch: 3\n")
    assert sweep.main(["--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().endswith("unknown keys epoch")


def test_pgd_runs_may_train_on_their_own_subset_and_epochs(tmp_path):
    args = sweep.parse_args(["--train-subset", "200", "--epochs", "2", "--pgd-train-subset",
                             "100", "--pgd-epochs", "3", "--out", str(tmp_path)])
    pgd = sweep.train_command(args, Run("pgd", 2.0, 0), tmp_path)
    std = sweep.train_command(args, Run("none", 2.0, 0), tmp_path)
    flag = lambda cmd, name: cmd[cmd.index(name) + 1]
    assert (flag(pgd, "--train-subset"), flag(pgd, "--epochs")) == ("100", "3")
    assert (flag(std, "--train-subset"), flag(std, "--epochs")) == ("200", "2")
    assert pgd.count("--epochs") == 1
    assert sweep.settings(args)["pgd_epochs"] == 3
    with pytest.raises(UsageError, match="--pgd-epochs must be >= 1"):
        sweep.parse_args(["--pgd-epochs", "0", "--out", str(tmp_path)])


def test_sweep_checks_the_idx_files_before_any_run(tmp_path, capsys):
    argv = ["--data", "fashion-mnist", "--data-dir", str(tmp_path / "nowhere"),
            "--out", str(tmp_path / "o")]
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "t10k" not in err.split("not found")[0]
    assert "train-images-idx3-ubyte[.gz] not found" in err and "dataset-fashion-mnist" in err
    assert not (tmp_path / "o" / "runs").exists()


def test_tiny_imagenet_layout_is_read_by_the_imagefolder_loader(tmp_path):
    from PIL import Image

    from tempfast.train.data import load_data

    src = tmp_path / "tiny-imagenet-200"
    for wnid in ("n01", "n02"):
        (src / "train" / wnid / "images").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i * 90, 10, 200)).save(
                src / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
    (src / "val" / "images").mkdir(parents=True)
    for name in ("val_0.JPEG", "val_1.JPEG", "val_2.JPEG"):
        Image.new("RGB", (8, 8)).save(src / "val" / "images" / name)
    (src / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn02\t0\t0\t8\t8\nval_1.JPEG\tn01\t0\t0\t8\t8\nval_2.JPEG\tn02\t0\t0\t8\t8\n")

    dst = tmp_path / "folders"
    assert tiny_imagenet.main([str(src), str(dst)]) == 0
    bundle = load_data("imagefolder", dst, workers=0)
    assert (bundle.num_classes, bundle.n_train, bundle.n_test) == (2, 4, 3)
    _, labels = next(bundle.test_batches(8, "cpu"))
    assert labels.tolist() == [0, 1, 1]
    assert tiny_imagenet.main([str(src), str(dst)]) == 2


def test_a_verdict_on_an_under_trained_cell_reads_inconclusive_whatever_its_test_says():
    """Relative (10 points below the mode's best cell) and absolute (5 points below the data
    set's converged clean accuracy, standard training) under-training; the deciding cell or
    the T = 1 reference under-trained makes the verdict inconclusive."""
    def grid(data, clean_t1, clean_t8, pgd_t8, model=None):
        rows = [_row("none", 1.0, s, clean_t1 + s / 1000, 0.10 + s / 100, 0.10) for s in (0, 1, 2)]
        rows += [_row("none", 8.0, s, clean_t8 + s / 1000, pgd_t8 + s / 100, 0.30)
                 for s in (0, 1, 2)]
        model = model or {"digits": "small_cnn", "fashion-mnist": "small_cnn_pool"}.get(data, "x")
        return [{**r, "data": data, "model": model} for r in rows]

    def verdict(rows):
        return report._versus(rows, "robust_pgd_ce", "none")

    assert verdict(grid("synthetic", 0.95, 0.95, 0.60)).label == "supported"
    assert verdict(grid("synthetic", 0.95, 0.80, 0.60)).label == claims.UNDER_TRAINED
    # digits converge to 99.35%: T = 1 at 93% is under-trained in absolute terms
    assert verdict(grid("digits", 0.93, 0.99, 0.60)).label == claims.UNDER_TRAINED
    assert verdict(grid("digits", 0.99, 0.99, 0.60)).label == "supported"
    weak = claims.underfit(grid("fashion-mnist", 0.80, 0.80, 0.6), "none")
    assert {c.temp for c in weak} == {1.0, 8.0}  # 11.6 points below the CNN's 91.6%
    assert claims.underfit(grid("fashion-mnist", 0.80, 0.80, 0.6), "pgd") == []
    # the report names the rule that applies: here both, with the reference
    assert "more than 10 points below the mode's best cell or more than 5 points below 91.6%, " \
           "the converged accuracy" in "\n".join(
               report.mode_table(grid("fashion-mnist", 0.80, 0.80, 0.6), "none"))
    # each model has its own reference: 80% is within 5 points of the ViT's 85.77%, not of
    # the CNN's; a model without one is judged relatively only
    assert claims.underfit(grid("fashion-mnist", 0.81, 0.81, 0.6, "test_vit"), "none") == []
    assert claims.underfit(grid("fashion-mnist", 0.86, 0.80, 0.6, "test_vit"), "none")[0].temp \
        == 8.0
    assert claims.underfit(grid("fashion-mnist", 0.50, 0.50, 0.6, "resnet18"), "none") == []
    # where every run measured the whole test set, both rules judge that accuracy and the
    # note quotes it: 500 evaluation images at 88% but 84% on the 10,000 is under-trained
    whole = [{**r, "test_acc": r["clean_acc"] - 0.04}
             for r in grid("fashion-mnist", 0.88, 0.88, 0.6)]
    assert {c.temp for c in claims.underfit(whole, "none")} == {1.0, 8.0}
    assert "mean clean accuracy on the whole test set (84.1 ± 0.1%, 84.1 ± 0.1%)" in "\n".join(
        report.mode_table(whole, "none"))


def test_per_example_records_skip_a_torn_line_and_keep_a_runs_last(tmp_path):
    path = tmp_path / table.PER_EXAMPLE
    assert table.read_per_example(path) == {}
    table.append_jsonl(path, {"run": "a", "n": 1, "worst_case": "0"})
    table.append_jsonl(path, {"run": "a", "n": 1, "worst_case": "8"})
    with open(path, "a") as f:
        f.write('{"run": "b", "n"')  # a crash mid-line
    assert table.read_per_example(path) == {"a": {"run": "a", "n": 1, "worst_case": "8"}}


def _mask_rows(effect: float, seeds: int, n: int = 400) -> list[dict]:
    """Rows at T = 1 and T = 4 whose worst-case masks differ by ``effect`` on the same images
    (each seed's own noise on top)."""
    from tempfast.robust.evaluation import pack_mask

    rows, gen = [], torch.Generator().manual_seed(0)
    for seed in range(seeds):
        base = torch.rand(n, generator=gen)
        for temp, shift in ((1.0, 0.0), (4.0, effect)):
            mask = (base + 0.05 * torch.rand(n, generator=gen)) < 0.5 + shift
            rows.append({"adv": "none", "learn_temp": False, "temp": temp, "seed": seed,
                         "per_example": {"n": n, "worst_case": pack_mask(mask), "attacks": {}}})
    return rows


def test_the_paired_test_finds_a_planted_effect_and_not_a_null_one():
    found = claims.paired(_mask_rows(0.05, seeds=3), "worst_case_acc", "none", 4.0)
    assert found.name == "cluster_bootstrap" and found.effect > 0.03 and found.p < 0.01
    null = claims.paired(_mask_rows(0.0, seeds=3), "worst_case_acc", "none", 4.0)
    assert abs(null.effect) < 0.03 and null.p > 0.05
    one = claims.paired(_mask_rows(0.05, seeds=1), "worst_case_acc", "none", 4.0)
    assert one.name == "mcnemar" and one.p < 0.05
    assert claims.paired(_mask_rows(0.05, seeds=2), "corruption_acc", "none", 4.0) is None


def test_code_revision_is_dirty_for_code_not_for_results_or_markdown(tmp_path):
    def git(*cmd: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c",
                        "user.email=t@t", *cmd], check=True, capture_output=True)

    for name in ("experiments/sweep.py", "experiments/README.md", "experiments/results/a.csv",
                 "tempfast/op.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    rev = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], check=True,
                         capture_output=True, text=True).stdout.strip()
    for name in ("experiments/README.md", "experiments/results/a.csv"):
        (tmp_path / name).write_text("edited while a sweep runs\n")
    assert rows_module.code_revision(tmp_path) == rev
    (tmp_path / "experiments/sweep.py").write_text("y\n")
    assert rows_module.code_revision(tmp_path) == rev + "-dirty"
