"""The smoke step of ``bench/gpu_run.sh`` reports a kernel that does not finish as a hang and
goes on (the real rehearsal: ``python -m bench.smoke OUTDIR``, about 30 s on the CPU)."""

from __future__ import annotations

import json

from bench import smoke


def test_a_kernel_that_does_not_finish_is_reported_as_a_hang_and_the_run_goes_on(tmp_path):
    status = smoke.main([str(tmp_path), "--timeout", "0.01"])
    rows = [json.loads(line) for line in (tmp_path / "smoke.jsonl").read_text().splitlines()]
    assert status == 1
    assert [r["kind"] for r in rows] == list(smoke.KINDS)
    assert all(r["status"].startswith("HANG: no result after") for r in rows)
    table = (tmp_path / "smoke.md").read_text()
    assert table.count("HANG") == len(smoke.KINDS)
