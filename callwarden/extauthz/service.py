"""Assembling the enforcement point: ext_authz server, and the standalone gateway around it.

`start_extauthz` wires one process's parts together (issuer keys, the compiled bundle, the
decision log, the gRPC server); `start_gateway` adds a real Envoy in front of the
configured upstreams. The CLI's `extauthz`, `gateway` and `demo` commands, and the
integration tests, all start enforcement through these two functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from callwarden.extauthz import heap
from callwarden.extauthz.approvals import ApprovalCompletion, ApprovalDesk
from callwarden.extauthz.audit import DecisionLog
from callwarden.extauthz.decide import EnforcementState, Enforcer
from callwarden.extauthz.dpop import DpopRuntime
from callwarden.extauthz.envoy import EnvoyProcess, render_bootstrap
from callwarden.extauthz.extproc import BodyHook, ExternalProcessor, Hooks
from callwarden.extauthz.http_authz import HttpAuthzServer
from callwarden.extauthz.mission import MissionBook
from callwarden.extauthz.server import DEFAULT_WORKERS, RunningServer, ServerTls, serve
from callwarden.extauthz.token import JwksStore
from callwarden.extauthz.tools_list import ToolsListHook
from callwarden.policy.bundle import Bundle


@dataclass
class ExtAuthz:
    """A running ext_authz service and the parts a caller may need to reach."""

    server: RunningServer
    enforcer: Enforcer
    decision_log: DecisionLog
    jwks: JwksStore
    dpop: DpopRuntime
    http_authz: HttpAuthzServer | None = None
    settle_heap: bool = False  # heap.settle() after each swap: a serving process, not a test's

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def http_authz_address(self) -> str:
        """The HTTP ext_authz server's address (only when started with `http_authz_listen`)."""
        if self.http_authz is None:
            raise RuntimeError("this ext_authz serves gRPC only (no http_authz_listen)")
        return f"127.0.0.1:{self.http_authz.port}"

    def swap(self, bundle: Bundle) -> None:
        """Enforce `bundle` from the next check on; in-flight checks finish on the old one."""
        self.enforcer.swap(EnforcementState.build(bundle, self.jwks, self.dpop))
        if self.settle_heap:
            heap.settle()


ReadyCheck = Callable[[], tuple[bool, str]]


def default_hooks(decision_log: DecisionLog, missions: MissionBook | None = None) -> tuple[BodyHook, ...]:
    """The body hooks every enforcement point runs unless told otherwise (`missions`: the book
    the checks bind to, so a tools/list under a mission lists what the mission can reach)."""
    return (ToolsListHook(decision_log, missions=missions),)


def _readiness(decision_log: DecisionLog, checks: Sequence[ReadyCheck]) -> tuple[bool, str]:
    # A decision that cannot be logged must not be made silently: stop taking traffic instead.
    if not decision_log.healthy:
        return False, "decision log is backlogged or its sink is failing"
    messages = []
    for check in checks:
        ready, message = check()
        if not ready:
            return False, message
        messages.append(message)
    return True, "; ".join(messages) or "ready"


@contextmanager
def start_extauthz(
    bundle: Bundle,
    *,
    listen: str = "127.0.0.1:0",
    http_listen: str | None = None,
    audit_path: str | None = None,
    audit_stream: IO[str] | None = None,
    workers: int = DEFAULT_WORKERS,
    jwks: JwksStore | None = None,
    ready_checks: Sequence[ReadyCheck] = (),
    tls: ServerTls | None = None,
    http_authz_listen: str | None = None,
    dpop: DpopRuntime | None = None,
    hooks: Sequence[BodyHook] | None = None,
    approvals: ApprovalDesk | None = None,
    missions: MissionBook | None = None,
    reuse_port: bool = False,
    settle_heap: bool = False,
) -> Iterator[ExtAuthz]:
    """Serve Envoy's Check for `bundle` until the block exits; the decision log is flushed then.

    `jwks` is a key store the caller configured (and closes); by default one with the standard
    refresh intervals is made here. gRPC health and /readyz report ready while the decision log
    keeps up and every one of `ready_checks` says ready (e.g. a bundle watcher that has synced);
    the first check that fails gives the reason. `tls` serves gRPC over TLS. `http_authz_listen`
    also serves Envoy's HTTP ext_authz there (callwarden.extauthz.http_authz), same decisions.
    `hooks` are the ext_proc body hooks (default: `default_hooks()`); the gRPC server serves
    ext_proc beside Check, over the same enforcement state. `approvals` runs the approval
    workflow (held calls, MCP tasks, exactly-once completion through its ext_proc hook); the
    bundle's PDPs must then have been compiled with the same store's `BoundApprovals`.
    `dpop` holds the DPoP nonce keys (from the Secret every replica mounts) and the replay
    cache; by default a random key, which only this process accepts nonces of.
    `missions` are the missions requests may bind to (extauthz.mission); none by default.
    `reuse_port` shares both ports with other processes (SO_REUSEPORT: `--workers`).
    `settle_heap` freezes the long-lived heap once serving starts and after each swap
    (`heap.settle`): for a process that serves until it stops, not for one that starts many.
    """
    with ExitStack() as stack:
        if jwks is None:
            jwks = JwksStore()
            stack.callback(jwks.close)
        decision_log = DecisionLog(stream=audit_stream, path=audit_path)
        stack.callback(decision_log.close)
        if dpop is None:
            dpop = DpopRuntime.single_process()
        if approvals is not None:
            approvals.warm()
            stack.callback(approvals.close)
        if missions is None:
            missions = MissionBook()
        chosen = tuple(default_hooks(decision_log, missions) if hooks is None else hooks)
        registered = Hooks(chosen if approvals is None else (*chosen, ApprovalCompletion(approvals)))
        enforcer = Enforcer(
            EnforcementState.build(bundle, jwks, dpop), decision_log, registered, approvals, missions=missions
        )
        checks = tuple(ready_checks)
        server = serve(
            enforcer,
            listen,
            http_listen=http_listen,
            workers=workers,
            ready=lambda: _readiness(decision_log, checks),
            tls=tls,
            processor=ExternalProcessor(enforcer, registered),
            reuse_port=reuse_port,
        )
        stack.callback(server.stop)
        http_authz = None
        if http_authz_listen is not None:
            http_authz = HttpAuthzServer(enforcer.decide, http_authz_listen, reuse_port=reuse_port)
            stack.callback(http_authz.stop)
        if settle_heap:
            heap.settle()
        yield ExtAuthz(server, enforcer, decision_log, jwks, dpop, http_authz, settle_heap)


@dataclass
class Gateway:
    ext_authz: ExtAuthz
    envoy: EnvoyProcess

    @property
    def url(self) -> str:
        return self.envoy.url


@contextmanager
def start_gateway(
    bundle: Bundle,
    workdir: Path,
    *,
    port: int = 0,
    listen_address: str = "127.0.0.1",
    audit_path: str | None = None,
    audit_stream: IO[str] | None = None,
    jwks: JwksStore | None = None,
    transport: str = "http",
    hooks: Sequence[BodyHook] | None = None,
    approvals: ApprovalDesk | None = None,
    missions: MissionBook | None = None,
    settle_heap: bool = False,
) -> Iterator[Gateway]:
    """Envoy on `port` in front of every McpServer's upstream, checking each request here.

    `transport` is how Envoy asks: "http" (Envoy's HTTP ext_authz, the default: it costs the
    checker ~2.5x less CPU than gRPC, see bench/README.md) or "grpc".
    `missions` and `settle_heap` as for `start_extauthz`.
    """
    servers = [compiled.server for compiled in bundle.servers.values()]
    http_authz_listen = "127.0.0.1:0" if transport == "http" else None
    with start_extauthz(
        bundle,
        audit_path=audit_path,
        audit_stream=audit_stream,
        jwks=jwks,
        http_authz_listen=http_authz_listen,
        hooks=hooks,
        approvals=approvals,
        missions=missions,
        settle_heap=settle_heap,
    ) as ext_authz:
        address = ext_authz.http_authz_address if transport == "http" else ext_authz.address
        bootstrap = render_bootstrap(
            servers,
            ext_authz=address,
            listen_address=listen_address,
            listen_port=port,
            transport=transport,
            ext_proc=ext_authz.address,
        )
        with EnvoyProcess(bootstrap, workdir) as envoy:
            yield Gateway(ext_authz, envoy)
