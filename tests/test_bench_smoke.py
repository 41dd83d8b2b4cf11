"""The bench's entry point runs end to end in its smoke mode (a second per scenario, a Python
client, no OPA) and writes its report. Nothing here depends on how fast anything was."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_bench_smoke_mode_writes_a_report_covering_every_scenario(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-2000:]
    report = json.loads((tmp_path / "results" / "report.json").read_text())
    measured = {(run["system"], run["scenario"]) for run in report["runs"]}
    scenarios = ("allowed", "denied", "first-seen-token", "batch-5")
    systems = ("envoy+callwarden", "envoy+callwarden-http")
    assert measured == {(system, scenario) for system in systems for scenario in scenarios} | {
        ("envoy-alone", "allowed")
    }
    assert all(run["requests"] > 0 and not run["errors"] for run in report["runs"])
    assert report["stages"] and report["scale"] and report["profile"]
    assert (tmp_path / "REPORT.md").read_text().startswith("# callwarden bench report")
