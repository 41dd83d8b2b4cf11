"""Per-operation costs of the policy core (mapping, embedded PDP, the whole decision), in µs.

Run: `.venv/bin/python bench/policy_costs.py [--out bench/results/policy_costs.json]`

Measures on the board-packet example, one thread, after warm-up; reports the median of
several repeats of a timed loop. The DESIGN.md §8 budget is mapping + embedded PDP <= 30 µs
per tools/call. Not a test: timings never gate the suite.
"""

from __future__ import annotations

import argparse
import json
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
from callwarden.policy.decide import decide  # noqa: E402
from callwarden.policy.loader import load_config  # noqa: E402
from callwarden.policy.model import ToolPolicy  # noqa: E402

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


def per_call_us(operation: Callable[[], Any], loops: int = 20_000, repeats: int = 5) -> float:
    for _ in range(loops // 10):
        operation()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(loops):
            operation()
        samples.append((time.perf_counter() - started) / loops * 1e6)
    return round(statistics.median(samples), 2)


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


def measure() -> dict[str, Any]:
    config = load_config([EXAMPLE])
    server = config.servers["board-packet/finance"]
    policies = list(config.policies.values())
    compiled = compile_server(server, policies)
    mapped = compiled.mapping.map("tools/call", ALLOWED, CLAIMS)
    requests = mapped.requests  # type: ignore[union-attr]
    results: dict[str, Any] = {
        "mapping tools/call (platform mapping)": per_call_us(
            lambda: compiled.mapping.map("tools/call", ALLOWED, CLAIMS)
        ),
        "embedded PDP, allowed request": per_call_us(lambda: compiled.pdp.evaluate_all(requests)),
        "decide: mapping + PDP, allowed tools/call": per_call_us(
            lambda: decide(compiled, "tools/call", ALLOWED, CLAIMS)
        ),
        "decide: mapping + PDP, denied tools/call": per_call_us(
            lambda: decide(compiled, "tools/call", DENIED, CLAIMS)
        ),
    }
    scale = {}
    for count in (10, 100, 1_000, 10_000):
        grown = compile_server(server, [*policies, filler_policy(server.metadata.namespace, count)])
        scale[str(count)] = per_call_us(lambda g=grown: decide(g, "tools/call", ALLOWED, CLAIMS), loops=5_000)
    results["decide with N non-matching rules"] = scale
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "policy_costs.json"))
    args = parser.parse_args()
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu": platform.machine(),
        },
        "unit": "microseconds per operation, median of 5 repeats, one thread",
        "costs": measure(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
