"""The compiled, versioned configuration that every enforcement replica holds in memory.

A bundle is built once from validated specs (files on disk or the operator's ConfigMaps)
and then only read, from many threads at once: swapping configuration means building a new
bundle and replacing one reference, never mutating one in place.

What fails where, and why:
- A ToolPolicy that does not compile rejects the whole bundle. Leaving it out would be
  unsafe: a dropped Deny rule turns into an allow. The caller keeps serving its last good
  bundle (or refuses to start).
- A tool mapping that does not compile is recorded as a problem; calls to that tool fail
  closed with JSON-RPC -32602 and everything else keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from callwarden.policy.approval import ApprovalAuthority
from callwarden.policy.loader import Config
from callwarden.policy.mapping import ServerMapping, compile_server_mapping
from callwarden.policy.model import McpServer, ToolPolicy, resource_metadata_url
from callwarden.policy.pdp import PolicyCompileError, check_policy, compile_pdp
from callwarden.policy.remote import OFFLINE, Pdp, RemotePdpFactory


class BundleError(Exception):
    """The configuration cannot be enforced as a whole; `problems` says everything wrong."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class CompiledServer:
    """One McpServer ready for the hot path: its mapping, its PDP, its routing facts.

    `policies` are the ToolPolicies its embedded PDP holds; none when a remote PDP decides.
    """

    server: McpServer
    mapping: ServerMapping
    pdp: Pdp
    policies: tuple[str, ...]

    @property
    def key(self) -> str:
        return self.server.key

    @property
    def resource_metadata_url(self) -> str:
        spec = self.server.spec
        return spec.protected_resource_metadata.url or resource_metadata_url(spec.resource)


@dataclass(frozen=True)
class _Route:
    hosts: frozenset[str]
    path_prefix: str
    server: CompiledServer


@dataclass(frozen=True)
class Bundle:
    revision: str
    servers: Mapping[str, CompiledServer]
    problems: tuple[str, ...] = ()
    _routes: tuple[_Route, ...] = field(default=(), repr=False)

    def find(self, name: str) -> CompiledServer | None:
        """A server by key (`namespace/name`), or by bare name when that is unambiguous."""
        if name in self.servers:
            return self.servers[name]
        matches = [s for s in self.servers.values() if s.server.metadata.name == name]
        return matches[0] if len(matches) == 1 else None

    def route(self, authority: str, path: str) -> CompiledServer | None:
        """The server whose route matches the request: longest path prefix wins.

        The authority matches with or without its port; a route with no hosts matches any.
        """
        host = _strip_port(authority.lower())
        for candidate in self._routes:  # sorted longest prefix first
            if candidate.hosts and authority.lower() not in candidate.hosts and host not in candidate.hosts:
                continue
            if _path_matches(path, candidate.path_prefix):
                return candidate.server
        return None


def _strip_port(authority: str) -> str:
    if authority.startswith("["):  # [v6]:port
        return authority.split("]", 1)[0] + "]"
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def _path_matches(path: str, prefix: str) -> bool:
    path = path.split("?", 1)[0]
    if prefix == "/":
        return True
    trimmed = prefix.rstrip("/")
    return path == trimmed or path.startswith(trimmed + "/")


def _route_of(compiled: CompiledServer) -> _Route:
    route = compiled.server.spec.route
    return _Route(frozenset(host.lower() for host in route.hosts), route.path_prefix, compiled)


def compile_server(
    server: McpServer,
    policies: Iterable[ToolPolicy],
    *,
    remote_pdp: RemotePdpFactory | None = None,
    approvals: ApprovalAuthority | None = None,
) -> CompiledServer:
    """Compile one server with the policies that target it; raises PolicyCompileError.

    A server whose spec names `pdp.authzen` is decided by `remote_pdp(server)`, or, without a
    factory, by a PDP that fails every call (-32603): a policy checked offline is never allowed
    by a PDP that is not there.
    """
    mapping = compile_server_mapping(server)
    if server.spec.pdp.authzen is not None:
        pdp = OFFLINE if remote_pdp is None else remote_pdp(server)
        return CompiledServer(server=server, mapping=mapping, pdp=pdp, policies=())
    targeting = sorted((p for p in policies if p.targets_server(server)), key=lambda p: p.key)
    return CompiledServer(
        server=server,
        mapping=mapping,
        pdp=compile_pdp(targeting, approvals=approvals),
        policies=tuple(p.key for p in targeting),
    )


def compile_bundle(
    config: Config, *, remote_pdp: RemotePdpFactory | None = None, approvals: ApprovalAuthority | None = None
) -> Bundle:
    """Compile every server of a validated configuration; raises BundleError.

    `remote_pdp` builds the PDP of each server that names a remote AuthZEN PDP (see
    `compile_server`); the data path passes one, offline tools do not. `approvals` makes the
    embedded PDPs' RequireApproval requestable and liftable (`policy.approval`).
    """
    errors = [str(e) for policy in config.policies.values() for e in check_policy(policy)]
    if errors:
        raise BundleError(errors)
    servers: dict[str, CompiledServer] = {}
    problems: list[str] = []
    for key, server in sorted(config.servers.items()):
        try:
            compiled = compile_server(
                server, config.policies.values(), remote_pdp=remote_pdp, approvals=approvals
            )
        except PolicyCompileError as error:  # check_policy should have caught it; stay closed
            raise BundleError([str(error)]) from error
        servers[key] = compiled
        problems.extend(f"{key}: {error}" for error in compiled.mapping.errors)
    routes = sorted(
        (_route_of(s) for s in servers.values()), key=lambda r: (-len(r.path_prefix), not r.hosts)
    )
    return Bundle(revision=config.revision, servers=servers, problems=tuple(problems), _routes=tuple(routes))
