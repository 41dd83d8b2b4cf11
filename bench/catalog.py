"""What filtering tools/list costs: in process (100 and 10,000 tools) and through Envoy (100 tools).

    .venv/bin/python bench/catalog.py [--json bench/results/catalog.json] [--smoke] [--seconds 3]

In process: the tools-list hook (`callwarden.extauthz.tools_list`) on a whole upstream response,
JSON and SSE, for a server whose policy lets a third of the tools through (an Allow on a glob with
a subject and agent condition, a Deny on another glob, the rest unnamed; the default mapping):
strict parse, one catalog answer per tool, re-serialisation. CPU ms per response, median of
repeats. The stated bound for 10,000 tools (`BOUND_10K_MS`) is checked and reported.

Through Envoy: Envoy 1.40 (`--concurrency 1`), callwarden's ext_authz + ext_proc server in this
process, a static upstream answering the 100-tool list, wrk at one connection; the same bootstrap
with the tools-list hook and without any hook (ext_authz then marks nothing and no ext_proc stream
opens), in alternating rounds. The smoke mode proves the wiring with the Python client only.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from harness import start_envoy  # noqa: E402
from load import Request, have, run_python, run_wrk  # noqa: E402

from callwarden.demo.issuers import start_issuers  # noqa: E402
from callwarden.extauthz.audit import DecisionLog  # noqa: E402
from callwarden.extauthz.envoy import render_bootstrap  # noqa: E402
from callwarden.extauthz.extproc import BodyHook, Exchange  # noqa: E402
from callwarden.extauthz.service import start_extauthz  # noqa: E402
from callwarden.extauthz.tools_list import ToolsListHook  # noqa: E402
from callwarden.policy.bundle import Bundle, compile_bundle  # noqa: E402
from callwarden.policy.loader import config_from_objects  # noqa: E402

HOST: Final = "catalog.bench"
RESOURCE: Final = "https://catalog.bench/mcp"
BOUND_10K_MS: Final = 2000.0  # a 10,000-tool list is filtered within this, in process
LIST_REQUEST: Final = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
RULES: Final = [
    {
        "name": "reads",
        "tools": ["read_*"],
        "effect": "Allow",
        "when": 'subject.id == "alice" && context.agent == "agent"',
    },
    # Only a Deny with a condition needs a request built; this one also removes every admin_ tool.
    {"name": "admins", "tools": ["admin_*"], "effect": "Deny", "when": 'context.agent == "agent"'},
    {"name": "admins-allowed", "tools": ["admin_*"], "effect": "Allow"},
    {"name": "lists", "methods": ["initialize", "tools/list"], "effect": "Allow"},
]


def bundle_for(issuer: str, jwks_uri: str, upstream: str) -> Bundle:
    server = {
        "apiVersion": "callwarden.io/v1alpha1",
        "kind": "McpServer",
        "metadata": {"name": "catalog", "namespace": "bench"},
        "spec": {
            "resource": RESOURCE,
            "route": {"hosts": [HOST], "pathPrefix": "/mcp"},
            "upstream": {"url": upstream},
            "issuers": [{"issuer": issuer, "jwksUri": jwks_uri}],
        },
    }
    policy = {
        "apiVersion": "callwarden.io/v1alpha1",
        "kind": "ToolPolicy",
        "metadata": {"name": "bench", "namespace": "bench"},
        "spec": {"targets": ["catalog"], "rules": RULES},
    }
    return compile_bundle(config_from_objects([server, policy]))


def tool_names(count: int) -> list[str]:
    kinds = ("read", "admin", "other")
    return [f"{kinds[index % 3]}_{index}" for index in range(count)]


def listing(names: list[str]) -> bytes:
    tools = [
        {
            "name": name,
            "description": f"The {name} tool: reads one thing and reports it back to the agent.",
            "inputSchema": {
                "type": "object",
                "properties": {"entity": {"type": "string"}, "period": {"type": "string"}},
                "required": ["entity"],
            },
        }
        for name in names
    ]
    return json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}}).encode()


def in_process(bundle: Bundle, names: list[str], repeats: int) -> dict[str, Any]:
    server = bundle.servers["bench/catalog"]
    claims = {"sub": "alice", "roles": ["analyst"], "client_id": "agent"}
    log = DecisionLog(stream=io.StringIO())
    hook = ToolsListHook(log)
    body = listing(names)
    sse = b"event: message\ndata: " + body + b"\n\n"
    results: dict[str, Any] = {"tools": len(names), "response_bytes": len(body)}
    for framing, content_type, raw in (("json", "application/json", body), ("sse", "text/event-stream", sse)):
        samples = []
        kept = 0
        for _ in range(repeats):
            exchange = Exchange(hook, server, bundle.revision, claims, {}, None, request_body=LIST_REQUEST)
            exchange.response_status = 200
            exchange.response_headers = {"content-type": content_type}
            started = time.process_time()
            out = hook.response_body(exchange, raw)
            samples.append((time.process_time() - started) * 1000)
            assert out is not None
            answer = json.loads(out.split(b"data: ", 1)[1] if framing == "sse" else out)
            kept = len(answer["result"]["tools"])
        results[f"{framing}_ms"] = round(statistics.median(samples), 2)
        results["listed"] = kept
    log.close()
    return results


@contextmanager
def static_upstream(body: bytes) -> Iterator[str]:
    """An HTTP server answering every POST with `body` (an MCP server's tools/list, minus the server)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def through_envoy(smoke: bool, seconds: float, rounds: int, workdir: Path) -> dict[str, Any]:
    use_wrk = have("wrk") and not smoke
    names = tool_names(100)
    body_file = workdir / "tools-list.json"
    body_file.write_bytes(LIST_REQUEST)
    samples: dict[str, list[dict[str, Any]]] = {"no-hook": [], "tools-list-hook": []}
    with start_issuers({"finance": 0}) as issuers, static_upstream(listing(names)) as upstream:
        finance = issuers["finance"]
        bundle = bundle_for(finance.issuer, finance.jwks_uri, upstream)
        token = finance.mint("alice", RESOURCE, "agent", roles=["analyst"], ttl=3600)
        request = Request(HOST, "/mcp", body_file, token=token)
        for round_number in range(rounds):
            for variant in list(samples)[round_number % 2 :] + list(samples)[: round_number % 2]:
                hooks: tuple[BodyHook, ...] | None = () if variant == "no-hook" else None
                with start_extauthz(bundle, audit_path=str(workdir / "decisions.jsonl"), hooks=hooks) as ext:
                    servers = [s.server for s in bundle.servers.values()]
                    bootstrap = render_bootstrap(servers, ext_authz=ext.address, ext_proc=ext.address)
                    envoy = start_envoy(bootstrap, workdir / f"envoy-{variant}-{round_number}", None)
                    try:
                        result = (
                            run_wrk(envoy.url, request, 1, seconds, None)
                            if use_wrk
                            else run_python(envoy.url, request, 1, seconds)
                        )
                    finally:
                        envoy.stop()
                samples[variant].append({"rps": result.rps, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms})
    return {
        "generator": "wrk" if use_wrk else "python",
        "tools": len(names),
        **{
            variant: {
                **{
                    key: round(statistics.median(run[key] for run in runs), 3)
                    for key in ("rps", "p50_ms", "p99_ms")
                },
                "runs": runs,
            }
            for variant, runs in samples.items()
        },
    }


def measure(smoke: bool, seconds: float, rounds: int) -> dict[str, Any]:
    repeats = 1 if smoke else 5
    with start_issuers({"finance": 0}) as issuers, tempfile.TemporaryDirectory() as tmp:
        finance = issuers["finance"]
        process = {}
        for count in (100, 10_000):
            names = tool_names(count)
            bundle = bundle_for(finance.issuer, finance.jwks_uri, "http://127.0.0.1:9")
            process[str(count)] = in_process(bundle, names, repeats)
        envoy = through_envoy(smoke, seconds, rounds, Path(tmp))
    ten_thousand = process["10000"]
    return {
        "unit": "CPU ms per response (in process); requests/s and ms (through Envoy)",
        "load_average": os.getloadavg(),
        "in_process": process,
        "bound_10k_ms": BOUND_10K_MS,
        "within_bound": max(ten_thousand["json_ms"], ten_thousand["sse_ms"]) <= BOUND_10K_MS,
        "through_envoy_100_tools": envoy,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--smoke", action="store_true", help="one repeat, a fraction of a second per run")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    seconds, rounds = (0.3, 2) if args.smoke else (args.seconds, args.rounds)
    results = measure(args.smoke, seconds, rounds)
    text = json.dumps(results, indent=1)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
