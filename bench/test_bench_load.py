"""The competing process and the under-load report (correctness only: not timed)."""

from __future__ import annotations

import json
import os

import pytest

from bench import load, under_load


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_competitor_runs_inside_the_block_and_is_gone_after_even_on_error():
    with pytest.raises(KeyError), load.competitor() as proc:
        assert proc.poll() is None and _alive(proc.pid)
        raise KeyError("the block fails")
    assert proc.poll() is not None


def test_the_switch_takes_0_or_1_only(monkeypatch):
    for value, expected in (("1", True), ("0", False), ("", False)):
        monkeypatch.setenv("TEMPFAST_BENCH_COMPETITOR", value)
        assert load.competitor_requested() is expected
    monkeypatch.setenv("TEMPFAST_BENCH_COMPETITOR", "yes")
    with pytest.raises(ValueError, match="TEMPFAST_BENCH_COMPETITOR"):
        load.competitor_requested()


def test_under_load_writes_both_columns_and_the_verdicts(tmp_path):
    under_load.main(["--classes", "16", "--dtypes", "float32", "--elements", "4096", "--reps",
                     "1", "--out", str(tmp_path), "--name", "t"])
    (js,) = tmp_path.glob("under-load-*-t.json")
    report = json.loads(js.read_text())
    (row,) = report["rows"]
    assert row["classes"] == 16 and row["rows"] == 256
    for condition in ("quiet", "loaded"):
        assert set(row[condition]) == {"tempfast", "tempfast_1t", "eager"}
        assert all(v > 0 for v in row[condition].values())
    assert set(row["verdicts"]) == {"loaded_vs_1_thread", "loaded_vs_eager", "quiet_vs_eager"}
    md = js.with_suffix(".md").read_text()
    assert "loaded: tempfast 1 thread" in md and f"threads = {report['meta']['threads']}" in md
