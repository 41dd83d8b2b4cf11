"""The board-packet data path on this machine: real MCP servers, issuers, ext_authz and Envoy.

    with start_datapath(tmp_path) as dp:
        response = dp.post("finance", tools_call("query_financials", period="2026-Q3", entity="example-corp"))
        line = dp.decision(response.headers[DECISION_ID_HEADER])

A test module that shares one data path across its tests (call counts and the log accumulate, so
tests compare before and after) declares the module-scoped fixture with

    datapath = pytest.fixture(scope="module", name="datapath")(running_datapath)

`start_datapath` starts the three demo MCP servers on free ports, points the example
configuration (examples/board-packet) at them and at the issuers (the three demo issuers by
default, or any the test brings, e.g. `tests.support.issuer.LocalIssuer` for an outage),
compiles the bundle and starts `start_gateway` with a decision log file. Requests go through
Envoy with the route's Host header, so Envoy picks the McpServer exactly as in production.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import httpx2
import pytest

from callwarden.demo.issuers import DEFAULT_ISSUERS, RunningIssuers, start_issuers
from callwarden.demo.run import EXAMPLE, NAMESPACE, Issuers, localize
from callwarden.demo.servers import DEFAULT_PORTS, RunningServers, start_servers
from callwarden.extauthz.approvals import ApprovalDesk, approval_desk
from callwarden.extauthz.decide import DECISION_HEADER
from callwarden.extauthz.extproc import BodyHook
from callwarden.extauthz.mission import MissionBook
from callwarden.extauthz.service import Gateway, start_gateway
from callwarden.extauthz.token import JwksStore
from callwarden.policy.approval import ApprovalAuthority, ApprovalStore
from callwarden.policy.bundle import Bundle, CompiledServer, compile_bundle
from callwarden.policy.loader import Config, load_config
from callwarden.policy.model import Dpop
from callwarden.policy.remote import RemotePdpFactory

SERVERS: Final = tuple(DEFAULT_PORTS)  # finance, documents, workflow
AGENT: Final = "board-agent"
MCP_PATH: Final = "/mcp"
# Each server's tool and arguments the example policy allows for an analyst's board agent.
ALLOWED_CALLS: Final[Mapping[str, tuple[str, dict[str, str]]]] = {
    "finance": ("query_financials", {"period": "2026-Q3", "entity": "example-corp"}),
    "documents": ("create_doc", {"template": "board-packet", "title": "Q3 board packet"}),
    "workflow": ("notify_reviewer", {"group": "audit-committee", "deadline": "2026-12-01"}),
}
# A call only-example-corp (a Deny rule) refuses, whoever asks.
DENIED_CALL: Final = ("query_financials", {"period": "2026-Q3", "entity": "other-corp"})
DENY_RULE: Final = "board-packet/finance-guardrails/only-example-corp"
ALLOW_RULE: Final = "board-packet/board-packet-task/read-q3-financials"


def jsonrpc(method: str, params: Mapping[str, Any] | None = None, *, id: int | str | None = 1) -> bytes:
    """One JSON-RPC message as bytes (`id=None`: a notification)."""
    message: dict[str, Any] = {"jsonrpc": "2.0"}
    if id is not None:
        message["id"] = id
    message["method"] = method
    if params is not None:
        message["params"] = dict(params)
    return json.dumps(message).encode()


def tools_call(tool: str, arguments: Mapping[str, Any], *, id: int | str = 1) -> bytes:
    return jsonrpc("tools/call", {"name": tool, "arguments": dict(arguments)}, id=id)


@dataclass
class DataPath:
    """A running data path and the helpers tests use to drive and observe it."""

    gateway: Gateway
    servers: RunningServers
    bundle: Bundle
    audit_path: Path
    client: httpx2.Client
    issuers: RunningIssuers | None = None  # the demo issuers, when the test brought none
    config: Config | None = None  # the localized configuration the bundle was compiled from
    approvals: ApprovalDesk | None = None  # the approval workflow, when started with a store
    authority: ApprovalAuthority | None = None  # what the bundle's PDPs consult about approvals

    def recompile(self, config: Config) -> None:
        """Enforce `config` from the next request on, as a configuration change would."""
        self.bundle = compile_bundle(config, approvals=self.authority)
        self.gateway.ext_authz.swap(self.bundle)

    @property
    def url(self) -> str:
        """The MCP endpoint on the gateway (select the server with its Host)."""
        return self.gateway.url + MCP_PATH

    def compiled(self, name: str) -> CompiledServer:
        return self.bundle.servers[f"{NAMESPACE}/{name}"]

    def host(self, name: str) -> str:
        return self.compiled(name).server.spec.route.hosts[0]

    def resource(self, name: str) -> str:
        return self.compiled(name).server.spec.resource

    def token(
        self,
        name: str,
        *,
        sub: str = "alice",
        roles: Sequence[str] = ("analyst",),
        client_id: str = AGENT,
        ttl: int = 300,
        aud: str | Sequence[str] | None = None,
        extra: Mapping[str, Any] | None = None,
        header: Mapping[str, Any] | None = None,
    ) -> str:
        """A token from server `name`'s demo issuer, for that server unless `aud` says otherwise."""
        assert self.issuers is not None, "this data path trusts the test's own issuers"
        audience = self.resource(name) if aud is None else aud
        return self.issuers[name].mint(
            sub, audience, client_id, roles=roles, ttl=ttl, extra=extra, header=header
        )

    def send(
        self,
        method: str,
        name: str,
        body: bytes = b"",
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        path: str = MCP_PATH,
    ) -> httpx2.Response:
        """One HTTP request through Envoy to server `name` (no Authorization when `token` is None)."""
        sent = {"host": self.host(name), "accept": "application/json, text/event-stream"}
        if body:
            sent["content-type"] = "application/json"
        if token is not None:
            sent["authorization"] = f"Bearer {token}"
        sent.update(headers or {})
        return self.client.request(method, self.gateway.url + path, content=body, headers=sent)

    def post(
        self, name: str, body: bytes, *, token: str | None = None, headers: Mapping[str, str] | None = None
    ) -> httpx2.Response:
        return self.send("POST", name, body, token=token, headers=headers)

    def executed(self, name: str) -> int:
        """How many tool calls server `name` ran, all tools together."""
        return len(self.servers.ledgers[name].calls())

    def decisions(self) -> list[dict[str, Any]]:
        """Every decision log line so far (the log is flushed first)."""
        self.gateway.ext_authz.decision_log.flush()
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def decision(self, decision_id: str) -> dict[str, Any]:
        """The one decision log line of `decision_id`."""
        lines = [line for line in self.decisions() if line["decision_id"] == decision_id]
        assert len(lines) == 1, f"{len(lines)} decision log lines for {decision_id}"
        return lines[0]

    def decision_of(self, response: httpx2.Response) -> dict[str, Any]:
        """The decision log line of a response (deny: ext_authz's header; allow: the server's echo)."""
        return self.decision(response.headers[DECISION_HEADER])


@contextmanager
def start_datapath(
    workdir: Path,
    *,
    issuers: Issuers | None = None,
    jwks: JwksStore | None = None,
    remote_pdp: RemotePdpFactory | None = None,
    transport: str = "grpc",
    dpop: bool | Dpop = False,
    hooks: Sequence[BodyHook] | None = None,
    approvals: ApprovalStore | None = None,
    missions: MissionBook | None = None,
) -> Iterator[DataPath]:
    """The board-packet scenario behind real Envoy, on free loopback ports, until the block exits.

    `issuers` replaces the demo issuers (keyed by server name: finance, documents, workflow);
    `jwks` is a configured key store (e.g. short refresh intervals) the caller closes;
    `remote_pdp` builds the PDP of servers whose spec names `pdp.authzen` (see `DataPath.config`);
    `transport` is how Envoy asks the checker ("grpc" or "http" ext_authz); `hooks` replaces the
    default ext_proc body hooks; `approvals` runs the approval workflow on that store.
    `dpop`: True keeps the example's `spec.dpop` (finance requires DPoP), a `Dpop` gives every
    server that one; by default (False) DPoP is off everywhere, so tests of bearer tokens and of
    Layer 2 send plain `Bearer` tokens to every server. `missions` are the missions calls may
    bind to (`callwarden-mission` header).
    """
    with ExitStack() as stack:
        servers = stack.enter_context(start_servers(dict.fromkeys(SERVERS, 0)))
        demo_issuers = None
        trusted = issuers
        if trusted is None:
            trusted = demo_issuers = stack.enter_context(start_issuers(dict.fromkeys(DEFAULT_ISSUERS, 0)))
        config = localize(load_config([EXAMPLE]), servers, trusted)
        if dpop is not True:
            config = with_dpop(config, Dpop() if dpop is False else dpop)
        desk = None
        if approvals is not None:
            desk = approval_desk(
                approvals, workdir / "binding-key.pem", "https://callwarden.test", create_key=True
            )
        authority = desk.authority if desk is not None else None
        bundle = compile_bundle(config, remote_pdp=remote_pdp, approvals=authority)
        audit_path = workdir / "decisions.jsonl"
        gateway = stack.enter_context(
            start_gateway(
                bundle,
                workdir / "envoy",
                audit_path=str(audit_path),
                jwks=jwks,
                transport=transport,
                hooks=hooks,
                approvals=desk,
                missions=missions,
            )
        )
        client = stack.enter_context(httpx2.Client(timeout=10.0, trust_env=False))
        yield DataPath(gateway, servers, bundle, audit_path, client, demo_issuers, config, desk, authority)


def running_approvals_datapath(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPath]:
    """A module's data path with the approval workflow on a fresh SQLite store
    (`datapath.approvals.store`)."""
    from callwarden.stores.approvals import ApprovalRecords
    from callwarden.stores.sqlite import SqliteDocuments

    store = ApprovalRecords(SqliteDocuments(tmp_path_factory.mktemp("store") / "approvals.db"))
    with start_datapath(tmp_path_factory.mktemp("datapath"), approvals=store) as running:
        yield running


def with_dpop(config: Config, dpop: Dpop) -> Config:
    """The configuration with every McpServer's `spec.dpop` set to `dpop`."""
    servers = {
        key: server.model_copy(update={"spec": server.spec.model_copy(update={"dpop": dpop})})
        for key, server in config.servers.items()
    }
    return replace(config, servers=servers)


def running_datapath(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPath]:
    """Fixture body: a data path with the demo issuers, for every test of one module."""
    with start_datapath(tmp_path_factory.mktemp("datapath")) as running:
        yield running
