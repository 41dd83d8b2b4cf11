"""The one end-to-end scenario, run by both harnesses (e2e/local.py and, in a kind cluster, e2e/incluster.py).

The board-packet example (examples/board-packet): three MCP servers (finance, documents, workflow)
from the official MCP SDK, each trusting its own issuer, and the example's ToolPolicies, applied to
a real Kubernetes API as CRDs. The operator compiles them into bundle ConfigMaps, ext_authz
follows them, Envoy asks ext_authz about every call. Steps:

1. apply the McpServers and ToolPolicies; every one becomes Ready (Published);
2. the demo's sessions (callwarden.demo.run.SCENARIO): allowed and denied tool calls through Envoy
   by an agent on the official MCP client, each decided as expected, and no denied call executed;
3. an invalid change to a ToolPolicy (a CEL `when` that does not compile) is rejected: the policy
   reports Invalid, and its last good spec keeps being enforced (allowed stays allowed);
4. a policy change takes effect: a new Deny rule in finance-guardrails denies what was allowed.

A harness brings what differs: where the fixtures' servers and issuers are reachable from the
cluster (`Endpoints`), how an agent reaches Envoy (`Gateway`), and the Kubernetes API client.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, Final, Protocol, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from callwarden.demo.agent import ToolCall, run_agent
from callwarden.demo.issuers import RunningIssuers
from callwarden.demo.run import SCENARIO, Session, agent_credentials
from callwarden.demo.servers import RunningServers
from callwarden.kube.client import REQUEST_TIMEOUT, Kube
from callwarden.policy.loader import load_config
from callwarden.policy.model import API_GROUP, API_VERSION

EXAMPLE: Final = Path(
    os.environ.get("CALLWARDEN_EXAMPLE", Path(__file__).resolve().parents[1] / "examples" / "board-packet")
)
NAMESPACE: Final = "board-packet"
SERVERS: Final = ("finance", "documents", "workflow")
FIELD_MANAGER: Final = "callwarden-e2e"
ALLOWED: Final = ToolCall("query_financials", {"period": "2026-Q3", "entity": "example-corp"})
INVALID_WHEN: Final = '"analyst" in subject.properties.roles &&& resource.id == "example-corp"'
FREEZE_RULE: Final = {
    "name": "q3-freeze",
    "description": "e2e: a policy change that must take effect: Q3 figures are frozen.",
    "tools": ["query_financials"],
    "effect": "Deny",
    "when": 'resource.properties.period == "2026-Q3"',
}
T = TypeVar("T")


class Endpoints(Protocol):
    """Where the cluster (ext_authz, Envoy) reaches each fixture server and issuer."""

    def upstream(self, name: str) -> str: ...  # scheme://host:port of MCP server `name`

    def jwks_uri(self, name: str) -> str: ...  # JWKS URL of server `name`'s issuer


@dataclass(frozen=True)
class Gateway:
    """How an agent reaches Envoy: `url` + the McpServer's path, with the route's Host."""

    url: str


@dataclass
class Fixtures:
    servers: RunningServers
    issuers: RunningIssuers


@dataclass
class Report:
    steps: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def step(self, message: str, out: IO[str] | None) -> None:
        self.steps.append(message)
        if out is not None:
            print(f"e2e: {message}", file=out, flush=True)

    def fail(self, message: str, out: IO[str] | None) -> None:
        self.failures.append(message)
        if out is not None:
            print(f"e2e: FAILED: {message}", file=out, flush=True)


def example_objects(endpoints: Endpoints) -> list[dict[str, Any]]:
    """The example's McpServers and ToolPolicies, pointed at the harness' servers and issuers."""
    config = load_config([EXAMPLE])
    objects = [
        obj.model_dump(by_alias=True, exclude_none=True)
        for obj in (*config.servers.values(), *config.policies.values())
    ]
    for obj in objects:
        obj["metadata"] = {"name": obj["metadata"]["name"], "namespace": NAMESPACE}
        if obj["kind"] == "McpServer":
            name = obj["metadata"]["name"]
            obj["spec"]["upstream"] = {"url": endpoints.upstream(name)}
            obj["spec"]["workloadSelector"] = {"matchLabels": {"app.kubernetes.io/name": f"mcp-{name}"}}
            for issuer in obj["spec"]["issuers"]:
                issuer["jwksUri"] = endpoints.jwks_uri(name)
    return objects


# --- The Kubernetes side ---------------------------------------------------------------------------


def plural(kind: str) -> str:
    return {"McpServer": "mcpservers", "ToolPolicy": "toolpolicies"}[kind]


def apply(kube: Kube, obj: Mapping[str, Any]) -> None:
    """Server-side apply, as `kubectl apply --server-side` does."""
    meta = obj["metadata"]
    kube.custom.patch_namespaced_custom_object(
        API_GROUP,
        API_VERSION,
        meta["namespace"],
        plural(obj["kind"]),
        meta["name"],
        dict(obj),
        field_manager=FIELD_MANAGER,
        force=True,
        _content_type="application/apply-patch+yaml",
        _request_timeout=REQUEST_TIMEOUT,
    )


def ensure_namespace(kube: Kube, name: str = NAMESPACE) -> None:
    body = client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
    try:
        kube.core.create_namespace(body, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as error:
        if error.status != 409:
            raise


def condition(kube: Kube, kind: str, name: str, kind_of_condition: str = "Ready") -> dict[str, Any] | None:
    try:
        obj: Any = kube.custom.get_namespaced_custom_object(
            API_GROUP, API_VERSION, NAMESPACE, plural(kind), name, _request_timeout=REQUEST_TIMEOUT
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    for found in (obj.get("status") or {}).get("conditions") or []:
        if found.get("type") == kind_of_condition and found.get("observedGeneration") == obj["metadata"].get(
            "generation"
        ):
            result: dict[str, Any] = found
            return result
    return None


def wait_for(probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll `probe` until it returns something truthy; TimeoutError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- The agent side --------------------------------------------------------------------------------


def call(
    gateway: Gateway, fixtures: Fixtures, objects: Sequence[Mapping[str, Any]], session: Session
) -> list[str]:
    """The statuses of `session`'s calls, made by the agent through Envoy."""
    server = next(o for o in objects if o["kind"] == "McpServer" and o["metadata"]["name"] == session.server)
    route = server["spec"]["route"]
    dpop_mode = server["spec"].get("dpop", {}).get("mode", "disabled")
    token, key = agent_credentials(
        session, server["spec"]["resource"], dpop_mode, fixtures.issuers[session.server]
    )
    run = run_agent(
        gateway.url + route["pathPrefix"],
        token,
        [c for c, _ in session.calls],
        host=route["hosts"][0],
        dpop=key,
    )
    outcomes = run.calls() or tuple(o for o in run.outcomes if o.status != "allowed")[:1]
    return [o.status for o in outcomes]


def single(tool_call: ToolCall, server: str = "finance") -> Session:
    return Session(f"analyst's agent, {server}", server, "alice", ("analyst",), ((tool_call, "allowed"),))


# --- The scenario ----------------------------------------------------------------------------------


def run_scenario(
    kube: Kube,
    endpoints: Endpoints,
    gateway: Gateway,
    fixtures: Fixtures,
    *,
    out: IO[str] | None = None,
    timeout: float = 60.0,
) -> Report:
    report = Report()
    objects = example_objects(endpoints)
    ensure_namespace(kube)
    for obj in objects:
        apply(kube, obj)
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        ready = wait_for(partial(condition, kube, kind, name), timeout=timeout, what=f"{kind} {name} status")
        if ready["status"] != "True":
            report.fail(f"{kind} {name} is not Ready: {ready['reason']}: {ready['message']}", out)
    report.step(f"applied {len(objects)} objects; statuses reported", out)

    def allowed_now() -> bool:
        return call(gateway, fixtures, objects, single(ALLOWED)) == ["allowed"]

    wait_for(allowed_now, timeout=timeout, what="the example's bundle enforced through Envoy")
    baseline = {name: fixtures.servers.ledgers[name].counts() for name in SERVERS}
    expected_runs: dict[tuple[str, str], int] = {}
    for session in SCENARIO:
        statuses = call(gateway, fixtures, objects, session)
        wanted = [expected for _, expected in session.calls]
        if statuses != wanted:
            report.fail(f"{session.title}: decided {statuses}, expected {wanted}", out)
        for (tool_call, _), status in zip(session.calls, statuses, strict=False):
            if status == "allowed":
                key = (session.server, tool_call.tool)
                expected_runs[key] = expected_runs.get(key, 0) + 1
    for name in SERVERS:
        for tool, count in fixtures.servers.ledgers[name].counts().items():
            ran = count - baseline[name].get(tool, 0)
            if ran != expected_runs.get((name, tool), 0):
                report.fail(
                    f"{name}.{tool} executed {ran} times, {expected_runs.get((name, tool), 0)} allowed", out
                )
    report.step(f"{sum(len(s.calls) for s in SCENARIO)} calls decided; no denied call executed", out)

    task = copy.deepcopy(next(o for o in objects if o["metadata"]["name"] == "board-packet-task"))
    task["spec"]["rules"][0]["when"] = INVALID_WHEN
    apply(kube, task)

    def invalid_condition() -> dict[str, Any] | None:
        return condition(kube, "ToolPolicy", "board-packet-task", "Invalid")

    invalid = wait_for(invalid_condition, timeout=timeout, what="Invalid")
    if invalid["status"] != "True":
        report.fail(f"an uncompilable `when` was not reported Invalid: {invalid}", out)
    if not allowed_now():
        report.fail("the invalid policy stopped its last good spec from being enforced", out)
    report.step(f"invalid ToolPolicy rejected ({invalid['reason']}); last good spec still enforced", out)

    guardrails = copy.deepcopy(next(o for o in objects if o["metadata"]["name"] == "finance-guardrails"))
    guardrails["spec"]["rules"].append(FREEZE_RULE)
    apply(kube, guardrails)
    try:
        wait_for(lambda: not allowed_now(), timeout=timeout, what="the new Deny rule enforced")
        report.step("policy change took effect: the Q3 freeze denies what was allowed", out)
    except TimeoutError as error:
        report.fail(str(error), out)
    return report
