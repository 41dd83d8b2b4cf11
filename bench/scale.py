"""How the per-check cost and the bundle load grow with the configuration's size.

    .venv/bin/python bench/scale.py [--json bench/results/scale.json] [--smoke]

Three axes, each from small to large, everything else as in the board-packet finance server:
- McpServers (1 -> 1,000): routed by the context extension Envoy sets per route, and by host;
- rules that do not match the called tool (10 -> 10,000, bench/policy_costs.py's filler policy);
- tools per server, each with its own mapping (1 -> 1,000; the model allows 1,024).
For each size: the in-process `Enforcer.check` of an allowed tools/call with a cached token (µs),
`compile_bundle` (ms), and building the enforcement state + `Enforcer.swap` (ms).
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from command import run_command  # noqa: E402
from harness import cpu_us_per_call, write_config  # noqa: E402
from policy_costs import filler_policy  # noqa: E402
from stages import FINANCE_AUDIENCE, check_request, request_bodies  # noqa: E402

from callwarden.demo.issuers import start_issuers  # noqa: E402
from callwarden.extauthz.audit import DecisionLog  # noqa: E402
from callwarden.extauthz.decide import EnforcementState, Enforcer  # noqa: E402
from callwarden.extauthz.token import JwksStore  # noqa: E402
from callwarden.policy.bundle import compile_bundle  # noqa: E402
from callwarden.policy.loader import config_from_objects  # noqa: E402

FINANCE = "board-packet/finance"


def _documents(config_dir: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((config_dir / "board-packet.yaml").read_text()) if doc]


def _with_servers(documents: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """`count` copies of the finance server (the last keeps the name `finance`), each on its own host."""
    finance = next(d for d in documents if d["kind"] == "McpServer" and d["metadata"]["name"] == "finance")
    others = [d for d in documents if d is not finance]
    copies = []
    for index in range(count - 1):
        server = copy.deepcopy(finance)
        server["metadata"]["name"] = f"finance-{index}"
        server["spec"]["route"]["hosts"] = [f"finance-{index}.board.example"]
        copies.append(server)
    policies = [d for d in others if d["kind"] == "ToolPolicy"]
    for policy in policies:
        if policy["spec"]["targets"] != ["*"]:
            policy["spec"]["targets"] = [*policy["spec"]["targets"], *(c["metadata"]["name"] for c in copies)]
    return [*copies, *others, finance]


def _with_tools(documents: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The finance server with `count` tools: query_financials and count-1 others, each mapped."""
    documents = copy.deepcopy(documents)
    finance = next(d for d in documents if d["kind"] == "McpServer" and d["metadata"]["name"] == "finance")
    tool = finance["spec"]["tools"][0]
    finance["spec"]["tools"] = [
        *({**copy.deepcopy(tool), "name": f"other_tool_{index}"} for index in range(count - 1)),
        tool,
    ]
    return documents


def _with_rules(documents: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    filler = filler_policy("board-packet", count).model_dump(by_alias=True, exclude_none=True, mode="json")
    return [*documents, filler]


def _timed_ms(operation: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    samples, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = operation()
        samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples), 2), result


def measure(smoke: bool) -> dict[str, Any]:
    sizes = {
        "servers": (1, 10) if smoke else (1, 10, 100, 1_000),
        "rules": (10, 100) if smoke else (10, 100, 1_000, 10_000),
        "tools": (1, 10) if smoke else (1, 10, 100, 1_000),
    }
    builders = {"servers": _with_servers, "rules": _with_rules, "tools": _with_tools}
    loops, repeats = (100, 1) if smoke else (3_000, 3)
    results: dict[str, Any] = {"unit": {"check": "CPU µs", "compile_bundle": "ms", "build_and_swap": "ms"}}
    with (
        start_issuers({"finance": 0, "documents": 0, "workflow": 0}) as issuers,
        tempfile.TemporaryDirectory() as tmp,
    ):
        documents = _documents(write_config(issuers, Path(tmp) / "config"))
        token = issuers["finance"].mint("alice", FINANCE_AUDIENCE, "board-agent", roles=["analyst"], ttl=3600)
        body = request_bodies()["allowed"]
        jwks = JwksStore()
        decision_log = DecisionLog(path=str(Path(tmp) / "decisions.log"))
        baseline = EnforcementState.build(compile_bundle(config_from_objects(documents)), jwks)
        enforcer = Enforcer(baseline, decision_log)
        for axis, counts in sizes.items():
            rows = []
            for count in counts:
                objects = builders[axis](documents, count)
                config = config_from_objects(objects)
                compile_ms, bundle = _timed_ms(partial(compile_bundle, config), 1 if count >= 1000 else 3)
                swap_ms, state = _timed_ms(partial(_build_and_swap, enforcer, bundle, jwks), 3)
                by_extension = check_request(body, token)
                by_host = check_request(body, token, server="")
                del by_host.attributes.context_extensions["mcp_server"]
                enforcer.check(by_extension)  # the token's first validation on this state
                row = {
                    axis: count,
                    "check_us": cpu_us_per_call(
                        partial(enforcer.check, by_extension), loops=loops, repeats=repeats
                    ),
                    "compile_bundle_ms": compile_ms,
                    "build_and_swap_ms": swap_ms,
                }
                if axis == "servers":
                    row["check_routed_by_host_us"] = cpu_us_per_call(
                        partial(enforcer.check, by_host), loops=loops, repeats=repeats
                    )
                decision_log.flush()
                rows.append(row)
                print(json.dumps(row), flush=True)
                del state
            results[axis] = rows
        decision_log.close()
        jwks.close()
    return results


def _build_and_swap(enforcer: Enforcer, bundle: Any, jwks: JwksStore) -> EnforcementState:
    state = EnforcementState.build(bundle, jwks)
    enforcer.swap(state)
    return state


def main() -> None:
    run_command(__doc__, measure, "small sizes, few loops: proves it runs", echo=False)


if __name__ == "__main__":
    main()
