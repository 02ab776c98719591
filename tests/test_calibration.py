"""Post-hoc temperature calibration: the fitted T is the NLL optimum, the metrics match their
definitions, the fit and report splits are apart, and ``tempfast calibrate`` / ``eval``
report and store it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tempfast import calibration as cal
from tempfast.cli import main
from tempfast.robust.evaluation import calibration_split
from tempfast.train.checkpoint import load_checkpoint


def _overconfident(n=4000, c=5, true_t=3.0, seed=0):
    """Labels drawn from ``softmax(z)``, logits reported as ``true_t * z``: the NLL-optimal
    temperature of the reported logits is ``true_t``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g) * 1.5
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return z * true_t, y


def test_the_fitted_temperature_is_the_nll_optimum():
    logits, y = _overconfident()
    t = cal.fit_temperature(logits, y)
    assert t.dim() == 0 and t > 0
    grid = torch.linspace(1.0, 6.0, 2001)
    nll = torch.stack([torch.nn.functional.cross_entropy(logits / g, y) for g in grid])
    assert abs(float(t) - float(grid[nll.argmin()])) < 5e-3
    assert abs(float(t) - 3.0) < 0.25  # close to the temperature the labels were drawn at


def test_a_per_class_temperature_fits_at_least_as_well():
    logits, y = _overconfident()
    logits[:, 0] *= 2.0  # one class more over-confident than the rest
    scalar, vector = cal.fit_temperature(logits, y), cal.fit_temperature(logits, y,
                                                                         per_class=True)
    assert vector.shape == (5,) and bool((vector > 0).all())
    assert float(cal.negative_log_likelihood(logits, y, vector)) <= \
        float(cal.negative_log_likelihood(logits, y, scalar)) + 1e-6
    assert float(vector[0]) > float(vector[1:].mean())


def test_ece_brier_and_nll_match_their_definitions():
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]]))
    y = torch.tensor([0, 1, 1, 1])
    # confidences 0.9, 0.6, 0.7, 0.8; correct: yes, no, yes, yes; 10 equal-width bins
    expected = (abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.7) + abs(1 - 0.8)) / 4
    ece = cal.expected_calibration_error(logits, y, n_bins=10)
    assert math.isclose(float(ece), expected, rel_tol=1e-5)
    # one bin: |mean accuracy - mean confidence|
    assert math.isclose(float(cal.expected_calibration_error(logits, y, n_bins=1)),
                        abs(0.75 - 0.75), abs_tol=1e-6)
    brier = ((0.9 - 1) ** 2 + 0.1 ** 2 + 0.6 ** 2 + (0.4 - 1) ** 2 + 0.3 ** 2 + (0.7 - 1) ** 2
             + 0.2 ** 2 + (0.8 - 1) ** 2) / 4
    assert math.isclose(float(cal.brier_score(logits, y)), brier, rel_tol=1e-5)
    nll = -(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.8)) / 4
    assert math.isclose(float(cal.negative_log_likelihood(logits, y)), nll, rel_tol=1e-5)


def test_equal_mass_bins_hold_equal_counts_and_calibrated_models_score_low():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(20000, 4, generator=g)
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    counts, _, _ = cal.calibration_bins(z, y, 10, binning="mass")
    assert torch.equal(counts, torch.full((10,), 2000.0))
    for binning in ("width", "mass"):
        assert float(cal.expected_calibration_error(z, y, binning=binning)) < 0.02
    assert float(cal.expected_calibration_error(z * 4, y)) > 0.1  # over-confident


def test_temperature_scaling_repairs_overconfidence_on_held_out_data():
    logits, y = _overconfident(n=6000)
    fit, report = calibration_split(6000, seed=0)
    assert not set(fit.tolist()) & set(report.tolist()) and len(fit) + len(report) == 6000
    out = cal.calibrate(logits[fit], y[fit], logits[report], y[report])
    assert out["fit_examples"] == 3000 and out["report_examples"] == 3000
    assert out["ece_after"] < out["ece_before"] / 3 and out["nll_after"] < out["nll_before"]
    assert out["accuracy"] == pytest.approx(float((logits[report].argmax(1)
                                                   == y[report]).float().mean()))


@pytest.mark.parametrize(("call", "match"), [
    (lambda: cal.fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)),
     "^logits: no examples"),
    (lambda: cal.expected_calibration_error(torch.zeros(4, 3), torch.zeros(3).long()),
     "^labels: expected shape"),
    (lambda: cal.expected_calibration_error(torch.zeros(4, 3), torch.zeros(4).long(),
                                            n_bins=0), "^n_bins"),
    (lambda: cal.expected_calibration_error(torch.zeros(4, 3), torch.zeros(4).long(),
                                            binning="log"), "^binning"),
    (lambda: cal.brier_score(torch.zeros(4, 3), torch.zeros(4).long(), temperature=0.0),
     "^temperature"),
    # the inputs are checked (and named) before the temperature (issue 23)
    (lambda: cal.fit_temperature(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]),
                                 torch.zeros(2).long()), "^logits: 1 of 2 rows hold NaN"),
    (lambda: cal.negative_log_likelihood(torch.tensor([[0.0, float("inf")]]),
                                         torch.zeros(1).long(), temperature=float("nan")),
     "^logits: 1 of 1 rows"),
    (lambda: cal.fit_temperature(torch.zeros(2, 3), torch.tensor([0.0, 1.0])),
     "^labels: expected integer class indices, got torch.float32"),
    (lambda: cal.fit_temperature(torch.zeros(2, 3), torch.tensor([0, 3])),
     r"^labels: class index 3 is out of range \[0, 3\)"),
])
def test_bad_inputs_are_one_line_errors_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_the_submodule_is_reachable_from_import_tempfast_and_imported_lazily():
    """``import tempfast; tempfast.calibration.fit_temperature`` works (the README's table names
    it so), without ``import tempfast`` importing the calibration module itself."""
    import subprocess
    import sys

    code = ("import sys, tempfast; lazy = 'tempfast.calibration' not in sys.modules; "
            "f = tempfast.calibration.fit_temperature; print(lazy, callable(f), "
            "'calibration' in dir(tempfast))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "True", "True"]
    with pytest.raises(AttributeError, match="no attribute 'calibrate'"):
        import tempfast

        tempfast.calibrate  # noqa: B018


def test_reliability_diagram_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    logits, y = _overconfident(n=500)
    path = cal.reliability_diagram(logits, y, tmp_path / "r.png", title="over-confident")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_calibrate_stores_the_temperature_and_eval_reports_with_it(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--temp", "0.5", "--no-final-eval", "--quiet",
                 "--threads", "1", "--output", str(run)]) == 0
    capsys.readouterr()
    out = tmp_path / "calibrated.pt"
    assert main(["calibrate", str(run / "last.pt"), "--output", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    stored = load_checkpoint(out)["calibration"]
    assert stored["temperature"] == report["temperature"] > 0
    assert report["fit_examples"] == report["report_examples"] == 180
    assert report["effective_temperature"] == pytest.approx(report["temperature"] * 0.5)
    assert "calibration" not in load_checkpoint(run / "last.pt"), "the original is unchanged"
    assert main(["eval", str(out), "--attacks", "none", "--no-corruptions", "--n-examples",
                 "20", "--steps", "1", "--json", "--output", str(tmp_path / "e.json")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["calibration"]["source"] == "stored in the checkpoint"
    assert result["calibration"]["temperature"] == pytest.approx(stored["temperature"])
    assert result["calibration"]["ece_after"] == pytest.approx(stored["ece_after"])
    # a folder the checkpoint sits in that cannot be written: the error names the default
    # output and offers --output, a flag the user did not pass (issue 23)
    import tempfile

    def unwritable(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    for command in (["eval", str(out), "--attacks", "none", "--no-corruptions"],
                    ["calibrate", str(out)]):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(tempfile, "mkstemp", unwritable)
            assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "the default output" in err, err
        assert "pass --output to write" in err and "Permission denied" in err
