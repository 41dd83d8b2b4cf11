"""bench/report.py's targets: which runs each target compares, and when it counts as met.
Synthetic runs, so each case states exactly the numbers it is about."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

# bench/ is a directory of scripts, not a package: load its report module from its file.
_SPEC = importlib.util.spec_from_file_location(
    "bench_report", Path(__file__).resolve().parents[1] / "bench" / "report.py"
)
assert _SPEC is not None and _SPEC.loader is not None
report = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(report)

HTTP_OWN = "added latency at half of its max, http (default), checker on its own core"
HTTP_SHARED = "added latency at half of its max, http (default), checker on Envoy's core"


def at_rate(system: str, rate: float, p50: float, p99: float) -> dict[str, Any]:
    return {
        "system": system,
        "scenario": "allowed-at-rate",
        "concurrency": 16,
        "rps": rate,
        "target_rps": rate,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": {},
    }


def targets(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = report.summarise({"runs": runs})
    return summary["targets"]  # type: ignore[no-any-return]


def test_the_own_core_latency_target_compares_with_envoy_alone_in_the_same_placement() -> None:
    runs = [
        at_rate("envoy+callwarden-http (own core)", 3000, p50=0.9, p99=1.4),
        at_rate("envoy-alone (own core)", 3000, p50=0.2, p99=0.5),
        at_rate("envoy-alone", 3000, p50=0.1, p99=0.1),  # the other placement's: not compared
    ]
    target = targets(runs)[HTTP_OWN]
    assert target["value"] == {"added_p99": 0.9, "added_p50": 0.7}
    assert target["met"] is True


def test_a_latency_target_needs_envoy_alone_at_the_same_rate() -> None:
    runs = [
        at_rate("envoy+callwarden-http (own core)", 3000, p50=0.3, p99=0.4),
        at_rate("envoy-alone (own core)", 1500, p50=0.2, p99=0.3),
    ]
    assert HTTP_OWN not in targets(runs)


@pytest.mark.parametrize(
    ("p50", "p99", "met"),
    [(0.5, 1.0, True), (0.5, 1.2, False), (1.3, 0.9, False)],
    ids=["within", "p99-over", "p50-over"],
)
def test_the_latency_target_holds_only_when_p99_and_p50_both_add_at_most_1_ms(
    p50: float, p99: float, met: bool
) -> None:
    runs = [at_rate("envoy+callwarden-http", 1000, p50=p50, p99=p99), at_rate("envoy-alone", 1000, 0.0, 0.0)]
    assert targets(runs)[HTTP_SHARED]["met"] is met
