"""The `callwarden` command line: one entry point, one subcommand per component."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from callwarden.extauthz.jsonrpc import BodyRejected, parse_body
from callwarden.policy.bundle import Bundle, BundleError, CompiledServer, compile_bundle
from callwarden.policy.decide import JsonRpcError, Verdict, decide
from callwarden.policy.loader import ConfigError, load_config

# Exit codes of `callwarden check`, fixed so scripts and CI can rely on them.
EXIT_ALLOW = 0
EXIT_DENY = 1
EXIT_INPUT_ERROR = 2


class InputError(Exception):
    """Bad configuration or input: exit 2 with the message on stderr."""


def _fail(message: str) -> NoReturn:
    print(f"callwarden: {message}", file=sys.stderr)
    raise SystemExit(EXIT_INPUT_ERROR)


def load_bundle(config_paths: Sequence[str]) -> Bundle:
    """Load and compile configuration, or raise InputError naming every problem."""
    try:
        config = load_config([Path(p) for p in config_paths])
        bundle = compile_bundle(config)
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
        return _report(False, error, (f"body-rejected:{rejected.reason}",), ())
    verdicts: list[Verdict] = [
        decide(server, message.method, message.params if isinstance(message.params, dict) else None, claims)
        for message in body.messages
        if message.method is not None
    ]
    denied = [v for v in verdicts if not v.allowed]
    reasons = tuple(dict.fromkeys(r for v in (denied or verdicts) for r in v.reasons))
    requests = tuple(r for v in verdicts for r in v.requests)
    return _report(not denied, denied[0].error if denied else None, reasons, requests)


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


def _wait_for_signal() -> None:
    """Block until SIGTERM or SIGINT (Kubernetes stops pods with SIGTERM)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()


def _command_extauthz(args: argparse.Namespace) -> int:
    from callwarden.extauthz.service import start_extauthz  # noqa: PLC0415 (grpc only when serving)

    bundle = load_bundle(args.config)
    with start_extauthz(
        bundle,
        listen=args.listen,
        http_listen=args.http_listen,
        audit_path=args.audit_log,
        workers=args.workers,
    ) as ext_authz:
        print(
            f"callwarden: ext_authz serving {len(bundle.servers)} McpServer(s), revision {bundle.revision}, "
            f"on {args.listen} (port {ext_authz.server.port})",
            file=sys.stderr,
        )
        _wait_for_signal()
    return 0


def _command_gateway(args: argparse.Namespace) -> int:
    from callwarden.extauthz.service import start_gateway  # noqa: PLC0415 (grpc only when serving)

    bundle = load_bundle(args.config)
    with (
        tempfile.TemporaryDirectory(prefix="callwarden-gateway-") as workdir,
        start_gateway(
            bundle, Path(workdir), port=args.port, listen_address=args.address, audit_path=args.audit_log
        ) as gateway,
    ):
        print(
            f"callwarden: gateway listening on {gateway.url}, Envoy log {gateway.envoy.log_path}",
            file=sys.stderr,
        )
        _wait_for_signal()
    return 0


def _command_demo(args: argparse.Namespace) -> int:
    from callwarden.demo.run import run_demo  # noqa: PLC0415 (the MCP SDK only for the demo)

    return run_demo(Path(args.config)) if args.config else run_demo()


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
    extauthz.add_argument(
        "--config", action="append", required=True, help="YAML file or directory (repeatable)"
    )
    extauthz.add_argument("--listen", default="0.0.0.0:9001", help="gRPC HOST:PORT (default 0.0.0.0:9001)")
    extauthz.add_argument("--http-listen", help="HOST:PORT for /metrics, /healthz and /readyz")
    extauthz.add_argument("--audit-log", help="append decision lines to this file (default: stdout)")
    extauthz.add_argument("--workers", type=int, default=4, help="gRPC worker threads (default 4)")
    extauthz.set_defaults(handler=_command_extauthz)

    gateway = commands.add_parser(
        "gateway", help="run Envoy with callwarden in front of the configured upstreams"
    )
    gateway.add_argument(
        "--config", action="append", required=True, help="YAML file or directory (repeatable)"
    )
    gateway.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    gateway.add_argument("--address", default="127.0.0.1", help="gateway listen address (default 127.0.0.1)")
    gateway.add_argument("--audit-log", help="append decision lines to this file (default: stdout)")
    gateway.set_defaults(handler=_command_gateway)

    demo = commands.add_parser(
        "demo", help="run the board-packet scenario through real Envoy and MCP servers"
    )
    demo.add_argument("--config", help="scenario configuration (default: examples/board-packet)")
    demo.set_defaults(handler=_command_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.handler(args)
    except InputError as error:
        _fail(str(error))
    return result


if __name__ == "__main__":
    sys.exit(main())
