"""The bench's entry point runs end to end in its smoke mode (a second per scenario, a Python
client, no OPA), the one- and two-worker pods included, and writes its report. Nothing here
depends on how fast anything was."""

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
    # The latency target's placement (the checker on a core of its own) measures each
    # transport's closed-loop maximum there; its open-loop runs need h2load, not in smoke mode.
    own_core = {(f"{system} (own core)", "allowed") for system in systems}
    assert (
        measured
        == {(system, scenario) for system in systems for scenario in scenarios}
        | {("envoy-alone", "allowed")}
        | own_core
    )
    assert all(run["requests"] > 0 and not run["errors"] for run in report["runs"])
    # One pod with one and with two worker processes (`--workers`), over each transport; every
    # request answered left its decision line in the pod's one log (probes and warm-up add more).
    per_pod = {(row["transport"], row["workers"]): row for row in report["per_pod"]}
    assert set(per_pod) == {(t, w) for t in ("http", "grpc") for w in (1, 2)}
    assert all(row["requests"] > 0 and not row["errors"] for row in per_pod.values())
    assert all(row["decisions_logged"] >= row["requests"] for row in per_pod.values())
    targets = report["summary"]["targets"]
    assert {"allowed checks per core of checker CPU, http (default)",
            "allowed checks per core of checker CPU, grpc"} <= set(targets)  # fmt: skip
    assert report["stages"] and report["scale"] and report["profile"]
    rendered = (tmp_path / "REPORT.md").read_text()
    assert rendered.startswith("# callwarden bench report")
    assert "`--workers 1` against `--workers 2`" in rendered
