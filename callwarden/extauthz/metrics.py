"""The data path's Prometheus metrics, in a registry of their own.

A dedicated `REGISTRY` (not prometheus-client's global one) keeps /metrics to what this
process defines and lets tests read exact values. Every name carries the `callwarden_`
prefix. Label values are bounded sets (server keys from configuration, decisions, codes,
reason codes): nothing from a request body or a token becomes a label.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY: Final = CollectorRegistry(auto_describe=True)

DECISIONS: Final = Counter(
    "callwarden_decisions_total",
    "Checks answered, by McpServer key, decision (allow/deny) and JSON-RPC or HTTP code.",
    ["server", "decision", "code"],
    registry=REGISTRY,
)
_decision_counters: dict[tuple[str, str, str], Counter] = {}


def count_decision(server: str, decision: str, code: str) -> None:
    """DECISIONS{server, decision, code} += 1. The labelled child is looked up once per label
    set (bounded: servers from configuration, two decisions, the codes): `labels()` builds
    and locks per call, five times the cost of the increment itself."""
    key = (server, decision, code)
    counter = _decision_counters.get(key)
    if counter is None:
        counter = _decision_counters[key] = DECISIONS.labels(server=server, decision=decision, code=code)
    counter.inc()


# From a cached-token allow (tens of µs) to a remote PDP at its timeout.
CHECK_LATENCY: Final = Histogram(
    "callwarden_check_latency_seconds",
    "Time to decide one check, in process (excluding the gRPC transport).",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
TOKEN_FAILURES: Final = Counter(
    "callwarden_token_validation_failures_total",
    "Requests whose credentials were rejected, by reason.",
    ["reason"],
    registry=REGISTRY,
)
JWKS_FETCHES: Final = Counter(
    "callwarden_jwks_fetch_total",
    "JWKS fetches from trusted issuers, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
AUDIT_LINES: Final = Counter(
    "callwarden_audit_lines_total",
    "Decision log lines written to the sink.",
    registry=REGISTRY,
)
AUDIT_SINK_ERRORS: Final = Counter(
    "callwarden_audit_sink_errors_total",
    "Failed writes to the decision log sink (the lines are kept and retried).",
    registry=REGISTRY,
)
AUDIT_BACKLOG_EVENTS: Final = Counter(
    "callwarden_audit_backlog_events_total",
    "Decisions recorded while the decision log queue was full (kept, not dropped).",
    registry=REGISTRY,
)
DPOP_REPLAY_EVICTIONS: Final = Counter(
    "callwarden_dpop_replay_evictions_total",
    "DPoP jti entries evicted from a full replay cache before they expired (replay then rests on iat).",
    registry=REGISTRY,
)
# A remote AuthZEN PDP (`spec.pdp.authzen`), from a pooled loopback answer to its timeout.
PDP_REQUEST_SECONDS: Final = Histogram(
    "callwarden_pdp_request_seconds",
    "Requests to a remote AuthZEN PDP, by API (metadata, evaluation, evaluations).",
    ["api"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
PDP_ERRORS: Final = Counter(
    "callwarden_pdp_errors_total",
    "Calls a remote AuthZEN PDP did not answer usably (each denied -32603), by reason.",
    ["reason"],
    registry=REGISTRY,
)

# ext_proc (callwarden.extauthz.extproc): only requests a hook engages open a stream.
EXTPROC_STREAMS: Final = Counter(
    "callwarden_extproc_streams_total",
    "ext_proc streams served, by hook and outcome (completed, or refused-<reason>).",
    ["hook", "outcome"],
    registry=REGISTRY,
)

# tools/list filtering (callwarden.extauthz.tools_list).
CATALOG_RESPONSES: Final = Counter(
    "callwarden_catalog_responses_total",
    "tools/list responses seen by the tools-list hook, by McpServer and outcome (filtered; "
    "unfiltered: the server's PDP is remote and cannot answer the catalog question; rejected).",
    ["server", "outcome"],
    registry=REGISTRY,
)
CATALOG_TOOLS_REMOVED: Final = Counter(
    "callwarden_catalog_tools_removed_total",
    "Tools removed from tools/list responses because the caller could never call them.",
    ["server"],
    registry=REGISTRY,
)
MAPPING_DRIFT: Final = Counter(
    "callwarden_mapping_drift_total",
    "Tools in passing tools/list responses whose declared mapping differs from the pinned one.",
    ["server"],
    registry=REGISTRY,
)


class PdpMetrics:
    """The remote-PDP client's observer: its latency and failures as Prometheus metrics."""

    def request_seconds(self, api: str, seconds: float) -> None:
        PDP_REQUEST_SECONDS.labels(api=api).observe(seconds)

    def error(self, reason: str) -> None:
        PDP_ERRORS.labels(reason=reason).inc()
