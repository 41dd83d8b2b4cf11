"""Assembling the enforcement point: ext_authz server, and the standalone gateway around it.

`start_extauthz` wires one process's parts together (issuer keys, the compiled bundle, the
decision log, the gRPC server); `start_gateway` adds a real Envoy in front of the
configured upstreams. The CLI's `extauthz`, `gateway` and `demo` commands, and the
integration tests, all start enforcement through these two functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from callwarden.extauthz.audit import DecisionLog
from callwarden.extauthz.decide import EnforcementState, Enforcer
from callwarden.extauthz.envoy import EnvoyProcess, render_bootstrap
from callwarden.extauthz.server import DEFAULT_WORKERS, RunningServer, serve
from callwarden.extauthz.token import JwksStore
from callwarden.policy.bundle import Bundle


@dataclass
class ExtAuthz:
    """A running ext_authz service and the parts a caller may need to reach."""

    server: RunningServer
    enforcer: Enforcer
    decision_log: DecisionLog
    jwks: JwksStore

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def swap(self, bundle: Bundle) -> None:
        """Enforce `bundle` from the next check on; in-flight checks finish on the old one."""
        self.enforcer.swap(EnforcementState.build(bundle, self.jwks))


def _readiness(decision_log: DecisionLog) -> tuple[bool, str]:
    # A decision that cannot be logged must not be made silently: stop taking traffic instead.
    if not decision_log.healthy:
        return False, "decision log is backlogged or its sink is failing"
    return True, "ready"


@contextmanager
def start_extauthz(
    bundle: Bundle,
    *,
    listen: str = "127.0.0.1:0",
    http_listen: str | None = None,
    audit_path: str | None = None,
    audit_stream: IO[str] | None = None,
    workers: int = DEFAULT_WORKERS,
) -> Iterator[ExtAuthz]:
    """Serve Envoy's Check for `bundle` until the block exits; the decision log is flushed then."""
    with ExitStack() as stack:
        jwks = JwksStore()
        stack.callback(jwks.close)
        decision_log = DecisionLog(stream=audit_stream, path=audit_path)
        stack.callback(decision_log.close)
        enforcer = Enforcer(EnforcementState.build(bundle, jwks), decision_log)
        server = serve(
            enforcer, listen, http_listen=http_listen, workers=workers, ready=lambda: _readiness(decision_log)
        )
        stack.callback(server.stop)
        yield ExtAuthz(server, enforcer, decision_log, jwks)


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
) -> Iterator[Gateway]:
    """Envoy on `port` in front of every McpServer's upstream, checking each request here."""
    servers = [compiled.server for compiled in bundle.servers.values()]
    with start_extauthz(bundle, audit_path=audit_path, audit_stream=audit_stream) as ext_authz:
        bootstrap = render_bootstrap(
            servers, ext_authz=ext_authz.address, listen_address=listen_address, listen_port=port
        )
        with EnvoyProcess(bootstrap, workdir) as envoy:
            yield Gateway(ext_authz, envoy)
