"""The data path's metrics: their own registry, the callwarden_ prefix, the agreed names and labels."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from callwarden.extauthz import metrics


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("callwarden_decisions_total", ("server", "decision", "code")),
        ("callwarden_check_latency_seconds", ()),
        ("callwarden_token_validation_failures_total", ("reason",)),
        ("callwarden_jwks_fetch_total", ("outcome",)),
        ("callwarden_audit_lines_total", ()),
        ("callwarden_audit_sink_errors_total", ()),
        ("callwarden_audit_backlog_events_total", ()),
    ],
)
def test_metric_is_registered_with_its_labels(name: str, labels: tuple[str, ...]) -> None:
    families = {family.name: family for family in metrics.REGISTRY.collect()}
    family = families[name.removesuffix("_total")]
    assert family.documentation
    samples = [sample for sample in family.samples if sample.name in (name, f"{name}_count")]
    assert all(tuple(sorted(sample.labels)) == tuple(sorted(labels)) for sample in samples)


def test_every_exported_name_has_the_callwarden_prefix() -> None:
    names = [
        line.split()[2]
        for line in generate_latest(metrics.REGISTRY).decode().splitlines()
        if line.startswith("# HELP")
    ]
    assert names
    assert all(name.startswith("callwarden_") for name in names)


def test_check_latency_buckets_span_50_microseconds_to_one_second() -> None:
    metrics.CHECK_LATENCY.observe(0.00004)
    bounds = [
        sample.labels["le"]
        for family in metrics.REGISTRY.collect()
        if family.name == "callwarden_check_latency_seconds"
        for sample in family.samples
        if sample.name.endswith("_bucket")
    ]
    assert bounds[0] == "5e-05"
    assert bounds[-2:] == ["1.0", "+Inf"]


def test_decisions_counter_counts_by_server_decision_and_code() -> None:
    labels = {"server": "finance/ledger", "decision": "deny", "code": "-32001"}
    before = metrics.REGISTRY.get_sample_value("callwarden_decisions_total", labels) or 0.0
    metrics.DECISIONS.labels(**labels).inc()
    assert metrics.REGISTRY.get_sample_value("callwarden_decisions_total", labels) == before + 1
