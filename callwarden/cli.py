"""The `callwarden` command line: one entry point, one subcommand per component."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

from callwarden import cli_approvals
from callwarden.extauthz.jsonrpc import BodyRejected, parse_body
from callwarden.missions_cli import add_mission_commands
from callwarden.policy.bundle import Bundle, BundleError, CompiledServer, compile_bundle
from callwarden.policy.decide import JsonRpcError, decide_messages, deciding_reasons
from callwarden.policy.loader import ConfigError, load_config
from callwarden.policy.remote import RemotePdpFactory

if TYPE_CHECKING:  # grpc is imported only when serving
    from callwarden.extauthz.approvals import ApprovalDesk
    from callwarden.extauthz.dpop import DpopRuntime
    from callwarden.extauthz.mission import MissionBook
    from callwarden.extauthz.server import ServerTls

# Exit codes of `callwarden check`, fixed so scripts and CI can rely on them.
EXIT_ALLOW = 0
EXIT_DENY = 1
EXIT_INPUT_ERROR = 2


class InputError(Exception):
    """Bad configuration or input: exit 2 with the message on stderr."""


def _fail(message: str) -> NoReturn:
    print(f"callwarden: {message}", file=sys.stderr)
    raise SystemExit(EXIT_INPUT_ERROR)


def load_bundle(
    config_paths: Sequence[str],
    *,
    remote_pdp: RemotePdpFactory | None = None,
    approvals: ApprovalDesk | None = None,
) -> Bundle:
    """Load and compile configuration, or raise InputError naming every problem.

    Without `remote_pdp` (offline), servers that name a remote AuthZEN PDP fail every call.
    """
    try:
        config = load_config([Path(p) for p in config_paths])
        authority = approvals.authority if approvals is not None else None
        bundle = compile_bundle(config, remote_pdp=remote_pdp, approvals=authority)
    except ConfigError as error:
        raise InputError("invalid configuration:\n  " + "\n  ".join(map(str, error.problems))) from error
    except BundleError as error:
        raise InputError("configuration does not compile:\n  " + "\n  ".join(error.problems)) from error
    for warning in config.warnings:
        print(f"callwarden: warning: {warning}", file=sys.stderr)
    for problem in bundle.problems:
        print(f"callwarden: warning: {problem}", file=sys.stderr)
    return bundle


def _read_json_object(path: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(Path(path).read_bytes())
    except OSError as error:
        raise InputError(f"cannot read {what} file {path}: {error.strerror}") from error
    except ValueError as error:
        raise InputError(f"{what} file {path} is not JSON: {error}") from error
    if not isinstance(value, dict):
        raise InputError(f"{what} file {path} must hold a JSON object, not {type(value).__name__}")
    return value


def check_request(server: CompiledServer, claims: dict[str, Any], raw: bytes) -> dict[str, Any]:
    """Decide a JSON-RPC body (single or batch) offline, as the data path would."""
    try:
        body = parse_body(raw, max_bytes=server.server.spec.max_request_bytes)
    except BodyRejected as rejected:
        error = JsonRpcError(rejected.code, str(rejected))
        return _report(False, error, (f"body:{rejected.reason}",), ())
    verdicts = decide_messages(server, body.messages, claims)
    denied = [v for v in verdicts if not v.allowed]
    requests = tuple(r for v in verdicts for r in v.requests)
    return _report(not denied, denied[0].error if denied else None, deciding_reasons(verdicts), requests)


def _report(
    allowed: bool, error: JsonRpcError | None, reasons: Sequence[str], requests: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "decision": allowed,
        "jsonrpc_error": None if error is None else error.to_json(),
        "reasons": list(reasons),
        "requests": list(requests),
    }


def _command_check(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.config)
    server = bundle.find(args.server)
    if server is None:
        known = ", ".join(sorted(bundle.servers)) or "none"
        raise InputError(f"no McpServer named {args.server!r} in the configuration (known: {known})")
    claims = _read_json_object(args.claims, "claims")
    try:
        raw = Path(args.request).read_bytes()
    except OSError as error:
        raise InputError(f"cannot read request file {args.request}: {error.strerror}") from error
    report = check_request(server, claims, raw)
    print(json.dumps(report, indent=2, sort_keys=False))
    return EXIT_ALLOW if report["decision"] else EXIT_DENY


def _stop_event() -> threading.Event:
    """Set on SIGTERM or SIGINT (Kubernetes stops pods with SIGTERM)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _wait_for_signal() -> None:
    _stop_event().wait()


def _remote_pdps() -> RemotePdpFactory:
    """The remote-PDP factory of a serving process, reporting to its Prometheus metrics."""
    from callwarden.authzen.client import RemotePdps  # noqa: PLC0415 (httpx2 only when serving)
    from callwarden.extauthz.metrics import PdpMetrics  # noqa: PLC0415

    return RemotePdps(observer=PdpMetrics())


def _command_extauthz(args: argparse.Namespace) -> int:
    if args.kubernetes == bool(args.config):
        raise InputError("extauthz needs either --config or --kubernetes (not both)")
    workers = _worker_count(args)
    if workers > 1:
        return _extauthz_supervisor(args, workers)
    if args.kubernetes:
        return _extauthz_from_kubernetes(args)
    from callwarden.extauthz.service import start_extauthz  # noqa: PLC0415 (grpc only when serving)

    desk = _approval_desk(args)
    bundle = load_bundle(args.config, remote_pdp=_remote_pdps(), approvals=desk)
    audit_path, audit_stream = _decision_sink(args)
    with (
        _missions(args.missions) as missions,
        start_extauthz(
            bundle,
            approvals=desk,
            listen=args.listen,
            http_listen=args.http_listen,
            audit_path=audit_path,
            audit_stream=audit_stream,
            workers=args.grpc_threads,
            tls=_server_tls(args),
            http_authz_listen=args.http_authz_listen,
            dpop=_dpop_runtime(args),
            missions=missions,
            reuse_port=args.supervised,
            settle_heap=True,
        ) as ext_authz,
    ):
        http_authz = ext_authz.http_authz
        also = f", HTTP ext_authz on port {http_authz.port}" if http_authz is not None else ""
        print(
            f"callwarden: ext_authz serving {len(bundle.servers)} McpServer(s), revision {bundle.revision}, "
            f"on {args.listen} (port {ext_authz.server.port}){also}",
            file=sys.stderr,
        )
        _serve_until_stopped(args, ext_authz.server.http_port)
    return 0


@contextmanager
def _missions(path: str | None) -> Iterator[MissionBook | None]:
    """The missions of the standalone store at `path`, followed while serving; None without one."""
    if path is None:
        yield None
        return
    from callwarden.extauthz.mission_sync import follow_mission_file  # noqa: PLC0415

    with follow_mission_file(path) as sync:
        yield sync.book


def _approval_desk(args: argparse.Namespace, kube: Any = None) -> ApprovalDesk | None:
    """The approval workflow the flags ask for: AccessRequests in the cluster (`--approvals` with
    `--kubernetes`) or a standalone SQLite file (`--approvals-store`); None when not asked."""
    from callwarden.extauthz.approvals import approval_desk  # noqa: PLC0415 (grpc only when serving)
    from callwarden.stores.approvals import ApprovalRecords  # noqa: PLC0415

    try:
        if args.approvals_store:
            from callwarden.stores.sqlite import SqliteDocuments  # noqa: PLC0415

            store = ApprovalRecords(SqliteDocuments(args.approvals_store))
            key = args.binding_key or f"{args.approvals_store}.key"
            return approval_desk(store, key, args.approvals_issuer, create_key=args.binding_key is None)
        if not getattr(args, "approvals", False):
            return None
        if kube is None or not args.binding_key:
            raise InputError(
                "--approvals needs --kubernetes and --binding-key (an ES256 key, e.g. a mounted Secret)"
            )
        from callwarden.stores.kube import KubeDocuments  # noqa: PLC0415

        store = ApprovalRecords(KubeDocuments(kube))
        home = args.namespace or "default"  # with --namespace, RBAC may allow that namespace only
        return approval_desk(store, args.binding_key, args.approvals_issuer, home_namespace=home)
    except ValueError as error:
        raise InputError(str(error)) from error


def _add_approval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--approvals-store", help="hold RequireApproval calls for review in this SQLite file")
    parser.add_argument(
        "--binding-key",
        help="ES256 PEM key signing binding tokens (standalone default: STORE.key, generated)",
    )
    parser.add_argument(
        "--approvals-issuer", default="urn:callwarden:ars", help="iss and aud of callwarden's binding tokens"
    )
    parser.add_argument(
        "--approvals",
        action="store_true",
        help="with --kubernetes: hold RequireApproval calls as AccessRequests",
    )


def _dpop_runtime(args: argparse.Namespace) -> DpopRuntime | None:
    """The DPoP nonce keys every replica shares (a mounted Secret), or None: a random key of
    this process alone (fine for one replica; with more, nonces only work on the one that issued them)."""
    from callwarden.extauthz.dpop import DpopRuntime, NonceKeys, ReplayCache  # noqa: PLC0415 (serving only)

    if not args.dpop_nonce_key_file:
        return None
    try:
        return DpopRuntime(NonceKeys.from_file(args.dpop_nonce_key_file), ReplayCache())
    except (OSError, ValueError) as error:
        raise InputError(f"cannot load DPoP nonce keys from {args.dpop_nonce_key_file}: {error}") from error


def _worker_count(args: argparse.Namespace) -> int:
    from callwarden.extauthz.workers import MAX_WORKERS, cpu_limit  # noqa: PLC0415

    if args.workers is None:
        return min(cpu_limit(), MAX_WORKERS)
    if not 1 <= args.workers <= MAX_WORKERS:
        raise InputError(f"--workers must be between 1 and {MAX_WORKERS}, not {args.workers}")
    return int(args.workers)


def _extauthz_supervisor(args: argparse.Namespace, workers: int) -> int:
    """`--workers N`, N > 1: this process runs N workers (callwarden.extauthz.workers)."""
    from callwarden.extauthz.workers import Plan, WorkerFailed, run_supervisor  # noqa: PLC0415

    _log_to_stderr()
    if args.config:
        load_bundle(args.config)  # a bad configuration is exit 2 here, not N failing workers
    _server_tls(args)
    _dpop_runtime(args)
    plan = Plan(
        args.argv,
        workers,
        listen=args.listen,
        http_listen=args.http_listen,
        http_authz_listen=args.http_authz_listen,
        audit_path=args.audit_log,
        share_dpop_nonce_key=not args.dpop_nonce_key_file,
    )
    try:
        run_supervisor(plan, _stop_event())
    except (WorkerFailed, OSError) as error:
        raise InputError(str(error)) from error
    return 0


def _decision_sink(args: argparse.Namespace) -> tuple[str | None, IO[str] | None]:
    """Where this process's decision log goes: the supervisor's pipe (a worker), or --audit-log."""
    if args.decision_log_fd is None:
        return args.audit_log, None
    from callwarden.extauthz.workers import decision_stream  # noqa: PLC0415

    return None, decision_stream(args.decision_log_fd)


def _serve_until_stopped(args: argparse.Namespace, http_port: int | None) -> None:
    stop = _stop_event()
    if args.supervised:  # a worker: say where it serves, and stop when the supervisor is gone
        from callwarden.extauthz.workers import announce, watch_lifeline  # noqa: PLC0415

        watch_lifeline(stop)
        announce(http_port)
    stop.wait()


def _server_tls(args: argparse.Namespace) -> ServerTls | None:
    from callwarden.extauthz.server import ServerTls  # noqa: PLC0415 (grpc only when serving)

    if bool(args.tls_cert) != bool(args.tls_key):
        raise InputError("--tls-cert and --tls-key go together")
    if not args.tls_cert:
        return None
    try:
        return ServerTls.from_files(args.tls_cert, args.tls_key)
    except OSError as error:
        raise InputError(f"cannot read TLS key pair: {error}") from error


def _extauthz_from_kubernetes(args: argparse.Namespace) -> int:
    from callwarden.extauthz.watch import start_kubernetes_extauthz  # noqa: PLC0415 (kubernetes only here)
    from callwarden.kube.client import Kube, new_api_client  # noqa: PLC0415

    _log_to_stderr()
    kube = Kube(new_api_client(args.kubeconfig))
    audit_path, audit_stream = _decision_sink(args)
    with start_kubernetes_extauthz(
        kube,
        approvals=_approval_desk(args, kube),
        namespace=args.namespace,
        listen=args.listen,
        http_listen=args.http_listen,
        audit_path=audit_path,
        audit_stream=audit_stream,
        workers=args.grpc_threads,
        tls=_server_tls(args),
        dpop=_dpop_runtime(args),
        http_authz_listen=args.http_authz_listen,
        reuse_port=args.supervised,
        settle_heap=True,
    ) as running:
        where = f"namespace {args.namespace}" if args.namespace else "all namespaces"
        revision, port = running.watcher.health().revision, running.ext_authz.server.port
        http_authz = running.ext_authz.http_authz
        also = f", HTTP ext_authz on port {http_authz.port}" if http_authz is not None else ""
        print(
            f"callwarden: ext_authz following bundle ConfigMaps in {where}, "
            f"revision {revision}, on {args.listen} (port {port}){also}",
            file=sys.stderr,
        )
        _serve_until_stopped(args, running.http_port)
    return 0


def _command_operator(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from callwarden.operator.main import OperatorOptions, run_operator  # noqa: PLC0415 (kopf only here)
    from callwarden.operator.mesh import MeshOptions  # noqa: PLC0415

    _log_to_stderr()
    options = OperatorOptions(
        kubeconfig=args.kubeconfig,
        lease_namespace=args.lease_namespace,
        lease_name=args.lease_name,
        identity=args.identity or "",
        lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
        resync_seconds=args.resync_seconds,
        liveness=args.liveness,
        metrics_listen=args.metrics_listen,
        mesh=MeshOptions(
            mode=args.mesh, extauthz_service=args.extauthz_service, istio_provider=args.istio_provider
        ),
    )
    asyncio.run(run_operator(options))
    return 0


def _log_to_stderr() -> None:
    import logging  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _command_gateway(args: argparse.Namespace) -> int:
    from callwarden.extauthz.service import start_gateway  # noqa: PLC0415 (grpc only when serving)

    bundle = load_bundle(args.config, remote_pdp=_remote_pdps())
    with (
        tempfile.TemporaryDirectory(prefix="callwarden-gateway-") as workdir,
        _missions(args.missions) as missions,
        start_gateway(
            bundle,
            Path(workdir),
            port=args.port,
            listen_address=args.address,
            audit_path=args.audit_log,
            transport=args.transport,
            missions=missions,
            settle_heap=True,
        ) as gateway,
    ):
        print(
            f"callwarden: gateway listening on {gateway.url}, Envoy log {gateway.envoy.log_path}",
            file=sys.stderr,
        )
        _wait_for_signal()
    return 0


def _command_pdp(args: argparse.Namespace) -> int:
    from callwarden.authzen import serve  # noqa: PLC0415 (the HTTP server only when serving)
    from callwarden.authzen.api import ApiOptions, start_pdp  # noqa: PLC0415

    try:
        authority, access = _access_request_server(args)
        pdp, policies = serve.load_pdp(args.config, args.data, authority)
        tokens = serve.read_bearer_tokens(args.token_file) if args.token_file else ()
        tls = serve.tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
        options = ApiOptions(bearer_tokens=tokens, explain=args.explain)
        listen, base_url = args.listen, args.base_url
        with start_pdp(
            pdp, listen=listen, base_url=base_url, options=options, ssl_context=tls, access=access
        ) as up:
            print(f"callwarden: AuthZEN PDP, {policies} ToolPolicy(ies), at {up.base_url}", file=sys.stderr)
            _wait_for_signal()
    except (serve.PdpSetupError, ValueError, OSError) as error:
        raise InputError(str(error)) from error
    return 0


def _access_request_server(args: argparse.Namespace) -> tuple[Any, Any]:
    """(BoundApprovals, AccessRequestServer) over `--approvals-store`, or (None, None)."""
    if not args.approvals_store:
        return None, None
    from callwarden.authzen.access_requests import AccessRequestServer  # noqa: PLC0415
    from callwarden.extauthz.jose import JwsSigner, load_signing_key  # noqa: PLC0415
    from callwarden.policy.approval import BoundApprovals  # noqa: PLC0415
    from callwarden.stores.approvals import ApprovalRecords  # noqa: PLC0415
    from callwarden.stores.sqlite import SqliteDocuments  # noqa: PLC0415

    store = ApprovalRecords(SqliteDocuments(args.approvals_store))
    key = load_signing_key(args.binding_key or f"{args.approvals_store}.key", create=args.binding_key is None)
    signer = JwsSigner(key, args.approvals_issuer)
    authority = BoundApprovals(store, signer, audience=args.approvals_issuer)
    return authority, AccessRequestServer(store, signer, audience=args.approvals_issuer)


def _command_demo(args: argparse.Namespace) -> int:
    from callwarden.demo.run import run_demo  # noqa: PLC0415 (the MCP SDK only for the demo)

    return run_demo(Path(args.config)) if args.config else run_demo()


def _add_audit_and_missions(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--audit-log", help="append decision lines to this file (default: stdout)")
    parser.add_argument(
        "--missions",
        metavar="FILE",
        help="standalone: bind requests to the missions of this SQLite store (callwarden missions --store)",
    )


def _add_serving_arguments(extauthz: argparse.ArgumentParser) -> None:
    _add_approval_arguments(extauthz)
    extauthz.add_argument("--http-listen", help="HOST:PORT for /metrics, /healthz and /readyz")
    _add_audit_and_missions(extauthz)
    extauthz.add_argument(
        "--workers",
        type=int,
        help="worker processes sharing the ports (SO_REUSEPORT); default: the CPU limit "
        "(cgroup cpu.max, else the CPU affinity)",
    )
    extauthz.add_argument(
        "--grpc-threads", type=int, default=4, help="gRPC handler threads per worker (default 4)"
    )
    # Set by the supervisor on the command line of each worker it starts (callwarden.extauthz.workers).
    extauthz.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    extauthz.add_argument("--decision-log-fd", type=int, help=argparse.SUPPRESS)
    extauthz.add_argument(
        "--http-authz-listen",
        help="HOST:PORT: also serve Envoy's HTTP ext_authz (http_service) there, with the same decisions",
    )
    extauthz.add_argument(
        "--dpop-nonce-key-file",
        help="DPoP nonce HMAC keys, one per line, signing with the first (mount the same Secret in every "
        "replica; default: a random key of this process)",
    )


def _add_tls_arguments(extauthz: argparse.ArgumentParser) -> None:
    extauthz.add_argument("--tls-cert", help="PEM certificate chain: serve over TLS (gRPC, HTTPS)")
    extauthz.add_argument("--tls-key", help="PEM private key of --tls-cert")


def _add_mesh_arguments(operator: argparse.ArgumentParser) -> None:
    operator.add_argument(
        "--mesh",
        choices=("none", "istio", "envoy-gateway", "gateway"),
        default="none",
        help="wire each McpServer into this mesh and report enforcement coverage (default none)",
    )
    operator.add_argument(
        "--extauthz-service",
        default="callwarden-extauthz.callwarden-system.svc.cluster.local:9001",
        help="HOST:PORT of the ext_authz gRPC Service (Envoy Gateway backendRef)",
    )
    operator.add_argument(
        "--istio-provider",
        default="callwarden-ext-authz",
        help="Istio extensionProvider name that AuthorizationPolicies (action CUSTOM) refer to",
    )


def _add_pdp_parser(commands: Any) -> None:
    pdp = commands.add_parser(
        "pdp",
        help="serve the embedded PDP as an AuthZEN 1.0 Authorization API",
        description="Serve every ToolPolicy of the configuration as one AuthZEN 1.0 PDP: evaluation, "
        "evaluations, subject/resource/action search and /.well-known/authzen-configuration.",
    )
    pdp.add_argument("--config", action="append", required=True, help="YAML file or directory (repeatable)")
    pdp.add_argument("--data", help="PIP data (JSON: subjects, resources, actions); PIP attributes win")
    pdp.add_argument("--listen", default="127.0.0.1:8181", help="HOST:PORT (default 127.0.0.1:8181)")
    pdp.add_argument("--base-url", help="the policy_decision_point to publish (default: from --listen)")
    pdp.add_argument("--token-file", help="PEP bearer secrets, one per line; requests without one get 401")
    _add_tls_arguments(pdp)
    pdp.add_argument("--explain", action="store_true", help="name the deciding rules in decision contexts")
    _add_approval_arguments(pdp)
    pdp.set_defaults(handler=_command_pdp)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callwarden", description="Per-call authorization for MCP tool calls at the Envoy choke point."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser(
        "check",
        help="decide one JSON-RPC request offline against CRD-shaped YAML",
        description="Decide one request offline. Exit 0 on allow, 1 on deny, 2 on a configuration "
        "or input error. The claims are taken as already validated.",
    )
    check.add_argument("--config", action="append", required=True, help="YAML file or directory (repeatable)")
    check.add_argument("--server", required=True, help="McpServer name or namespace/name")
    check.add_argument("--claims", required=True, help="JSON file with the validated token claims")
    check.add_argument("--request", required=True, help="JSON file with the JSON-RPC request body")
    check.set_defaults(handler=_command_check)

    extauthz = commands.add_parser(
        "extauthz", help="serve Envoy's ext_authz gRPC Check for the configuration"
    )
    extauthz.add_argument("--config", action="append", help="YAML file or directory (repeatable)")
    extauthz.add_argument(
        "--kubernetes",
        action="store_true",
        help="follow the operator's bundle ConfigMaps instead of --config",
    )
    extauthz.add_argument("--namespace", help="with --kubernetes: watch this namespace only (default: all)")
    extauthz.add_argument("--kubeconfig", help="with --kubernetes: kubeconfig file (default: in-cluster)")
    extauthz.add_argument("--listen", default="0.0.0.0:9001", help="gRPC HOST:PORT (default 0.0.0.0:9001)")
    _add_serving_arguments(extauthz)
    _add_tls_arguments(extauthz)
    extauthz.set_defaults(handler=_command_extauthz)

    operator = commands.add_parser(
        "operator", help="reconcile McpServer and ToolPolicy objects into bundle ConfigMaps (Kubernetes)"
    )
    operator.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    operator.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE", "callwarden-system"),
        help="namespace of the leader-election Lease (default: $POD_NAMESPACE or callwarden-system)",
    )
    operator.add_argument("--lease-name", default="callwarden-operator", help="leader-election Lease name")
    operator.add_argument("--identity", help="this replica's holder identity (default: hostname + random)")
    operator.add_argument("--lease-duration", type=float, default=15.0, help="seconds (default 15)")
    operator.add_argument("--renew-deadline", type=float, default=10.0, help="seconds (default 10)")
    operator.add_argument("--retry-period", type=float, default=2.0, help="seconds (default 2)")
    operator.add_argument(
        "--resync-seconds", type=float, default=60.0, help="reconcile every namespace this often (default 60)"
    )
    operator.add_argument("--liveness", help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    operator.add_argument("--metrics-listen", help="serve Prometheus metrics on HOST:PORT (default: off)")
    _add_mesh_arguments(operator)
    operator.set_defaults(handler=_command_operator)

    gateway = commands.add_parser(
        "gateway", help="run Envoy with callwarden in front of the configured upstreams"
    )
    gateway.add_argument(
        "--config", action="append", required=True, help="YAML file or directory (repeatable)"
    )
    gateway.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    gateway.add_argument("--address", default="127.0.0.1", help="gateway listen address (default 127.0.0.1)")
    _add_audit_and_missions(gateway)
    gateway.add_argument(
        "--transport",
        choices=("http", "grpc"),
        default="http",
        help="how Envoy asks callwarden: HTTP ext_authz (default) or gRPC ext_authz",
    )
    gateway.set_defaults(handler=_command_gateway)

    _add_pdp_parser(commands)

    _add_demo_command(commands)
    cli_approvals.add_parser(commands)
    add_mission_commands(commands)
    return parser


def _add_demo_command(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="run the board-packet scenario through real Envoy and MCP servers"
    )
    demo.add_argument("--config", help="scenario configuration (default: examples/board-packet)")
    demo.set_defaults(handler=_command_demo)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `extauthz --workers N` starts its workers with the same command line
    try:
        result: int = args.handler(args)
    except InputError as error:
        _fail(str(error))
    return result


if __name__ == "__main__":
    sys.exit(main())
