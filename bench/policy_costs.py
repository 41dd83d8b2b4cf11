"""Per-operation costs of the policy core (mapping, embedded PDP, the whole decision), in µs.

Run: `.venv/bin/python bench/policy_costs.py [--out bench/results/policy_costs.json]`

Measures on the board-packet example, one thread, after warm-up; reports the median of
several repeats of a timed loop, as wall-clock time (`costs`) and as this thread's CPU time
(`cpu_costs`, steadier on a shared machine), with the load average before and after. The
DESIGN.md §8 budget is mapping + embedded PDP <= 30 µs per tools/call. Not a test: timings
never gate the suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from callwarden.policy.bundle import compile_server  # noqa: E402
from callwarden.policy.cel import compile_expression, prepare  # noqa: E402
from callwarden.policy.decide import decide  # noqa: E402
from callwarden.policy.loader import load_config  # noqa: E402
from callwarden.policy.model import ToolPolicy  # noqa: E402
from callwarden.policy.pdp import RULE_VARIABLES  # noqa: E402

EXAMPLE = ROOT / "examples" / "board-packet"
CLAIMS = {
    "iss": "https://issuer.finance.board.example",
    "sub": "alice",
    "aud": "https://finance.board.example/mcp",
    "client_id": "board-agent",
    "roles": ["analyst"],
    "exp": 4102444800,
}
ALLOWED = {"name": "query_financials", "arguments": {"period": "2026-Q3", "entity": "example-corp"}}
DENIED = {"name": "query_financials", "arguments": {"period": "2026-Q3", "entity": "other-corp"}}


def per_call_us(operation: Callable[[], Any], loops: int = 20_000, repeats: int = 5) -> tuple[float, float]:
    """(wall, CPU) µs per call: the medians of `repeats` timed loops, after a warm-up."""
    for _ in range(loops // 10):
        operation()
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.thread_time()
        for _ in range(loops):
            operation()
        cpu.append((time.thread_time() - started_cpu) / loops * 1e6)
        wall.append((time.perf_counter() - started) / loops * 1e6)
    return round(statistics.median(wall), 2), round(statistics.median(cpu), 2)


def filler_policy(namespace: str, count: int) -> ToolPolicy:
    """`count` rules that target other tools: the cost the PDP must not pay per call."""
    rules = [
        {"name": f"other-{i}", "tools": [f"other_tool_{i}"], "effect": "Allow", "when": "subject.id == 'x'"}
        for i in range(count)
    ]
    return ToolPolicy.model_validate(
        {
            "apiVersion": "callwarden.io/v1alpha1",
            "kind": "ToolPolicy",
            "metadata": {"name": "filler", "namespace": namespace},
            "spec": {"targets": ["*"], "rules": rules},
        }
    )


def measure() -> tuple[dict[str, Any], dict[str, Any]]:
    """(wall-clock costs, CPU costs), the same keys in both."""
    config = load_config([EXAMPLE])
    server = config.servers["board-packet/finance"]
    policies = list(config.policies.values())
    compiled = compile_server(server, policies)
    mapped = compiled.mapping.map("tools/call", ALLOWED, CLAIMS)
    requests = mapped.requests  # type: ignore[union-attr]
    request = requests[0]
    variables = {name: request.get(name, {}) for name in RULE_VARIABLES}
    # The rules that apply to query_financials, as the PDP compiles them.
    conditions = {
        rule.name: compile_expression(rule.when, RULE_VARIABLES)
        for policy in policies
        for rule in policy.spec.rules
        if "query_financials" in rule.tools and rule.when is not None
    }
    warm = prepare(variables)
    operations: dict[str, Callable[[], Any]] = {
        "mapping tools/call (platform mapping)": lambda: compiled.mapping.map("tools/call", ALLOWED, CLAIMS),
        "embedded PDP, mapped request (decide's path)": lambda: compiled.pdp.evaluate_mapped(requests),
        "embedded PDP, allowed request": lambda: compiled.pdp.evaluate_all(requests),
        "decide: mapping + PDP, allowed tools/call": lambda: decide(compiled, "tools/call", ALLOWED, CLAIMS),
        "decide: mapping + PDP, denied tools/call": lambda: decide(compiled, "tools/call", DENIED, CLAIMS),
        "CEL: prepare the rules' variables": lambda: prepare(variables),
    }
    wall: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    for name, operation in operations.items():
        wall[name], cpu[name] = per_call_us(operation)
    for rule, program in conditions.items():
        for label, operation in (
            ("CEL: one rule, on an activation already used", lambda p=program: p.evaluate_prepared(warm)),
            ("CEL: one rule, evaluate(variables)", lambda p=program: p.evaluate(variables)),
        ):
            wall.setdefault(label, {})[rule], cpu.setdefault(label, {})[rule] = per_call_us(operation)
    programs = list(conditions.values())

    def every_rule_on_a_fresh_activation() -> list[Any]:
        activation = prepare(variables)
        return [program.evaluate_prepared(activation) for program in programs]

    label = "CEL: prepare + every rule (a fresh activation, as the PDP does)"
    wall[label], cpu[label] = per_call_us(every_rule_on_a_fresh_activation)
    wall_scale, cpu_scale = {}, {}
    for count in (10, 100, 1_000, 10_000):
        grown = compile_server(server, [*policies, filler_policy(server.metadata.namespace, count)])
        wall_scale[str(count)], cpu_scale[str(count)] = per_call_us(
            lambda g=grown: decide(g, "tools/call", ALLOWED, CLAIMS), loops=5_000
        )
    wall["decide with N non-matching rules"] = wall_scale
    cpu["decide with N non-matching rules"] = cpu_scale
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "policy_costs.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    wall, cpu = measure()
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu": platform.machine(),
        },
        "unit": "microseconds per operation, median of 5 repeats, one thread",
        "load_average": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in os.getloadavg()],
        },
        "costs": wall,
        "cpu_costs": cpu,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
