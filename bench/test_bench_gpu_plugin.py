"""The GPU script's plugin: predictions from the committed static report, and its table."""

from __future__ import annotations

import json

from . import gpu_plugin


def test_the_committed_static_report_predicts_the_headline_gpu_cases():
    preds = gpu_plugin.predictions(gpu_plugin._static_report())
    for provider in ("tempfast", "copy"):
        for classes in (32000, 128256, 262144):
            key = ("ce_fwd_bwd", provider, "bf16", 8192, classes)
            assert key in preds, key
            assert set(preds[key]) == {"H100", "H200"}
            assert 0 < preds[key]["H200"] < preds[key]["H100"]


def test_case_lines_render_as_a_table(tmp_path):
    path = tmp_path / "cases.jsonl"
    rows = [{"nodeid": "a", "id": "ce_fwd_bwd-C32000-N8192-bf16-tempfast", "outcome": "passed",
             "wall_s": 5e-4, "event_s": 4e-4, "predicted_H100_s": 4.5e-4,
             "predicted_H200_s": 4.3e-4, "measured_over_predicted_H200": 0.93},
            {"nodeid": "b", "outcome": "skipped"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = gpu_plugin.render(str(path)).splitlines()
    assert len(table) == 4
    assert table[2] == ("| ce_fwd_bwd-C32000-N8192-bf16-tempfast | passed | 0.500 | 0.400 "
                        "| 0.450 | 0.430 | 0.93 |")
    assert table[3].startswith("| b | skipped | - |")
