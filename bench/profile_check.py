"""Where one Check's time goes: cProfile over the in-process `Enforcer.check` hot path.

    .venv/bin/python bench/profile_check.py [--json bench/results/profile.json] [--smoke]

Profiles an allowed tools/call with a cached token on the board-packet finance server and
reports the functions with the most own time, grouped by module as well. cProfile inflates
the cost of many small Python calls, so read the shares, not the absolute numbers; the gRPC
transport is not in this picture (bench/run.py's CPU per request minus stages.py's
`Enforcer.check` is).
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from command import run_command  # noqa: E402
from harness import ROOT, write_config  # noqa: E402
from stages import FINANCE_AUDIENCE, bundle_for, check_request, request_bodies  # noqa: E402

from callwarden.demo.issuers import start_issuers  # noqa: E402
from callwarden.extauthz.audit import DecisionLog  # noqa: E402
from callwarden.extauthz.decide import EnforcementState, Enforcer  # noqa: E402
from callwarden.extauthz.token import JwksStore  # noqa: E402


def _where(filename: str) -> str:
    path = Path(filename)
    if filename.startswith("~") or filename == "<string>":
        return "builtins (C)"
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        parts = path.parts
        if "site-packages" in parts:
            return "site-packages/" + parts[parts.index("site-packages") + 1]
        return "stdlib/" + path.name


def profile(smoke: bool) -> dict[str, Any]:
    checks = 300 if smoke else 20_000
    with (
        start_issuers({"finance": 0, "documents": 0, "workflow": 0}) as issuers,
        tempfile.TemporaryDirectory() as tmp,
    ):
        bundle = bundle_for(write_config(issuers, Path(tmp) / "config"))
        token = issuers["finance"].mint("alice", FINANCE_AUDIENCE, "board-agent", roles=["analyst"], ttl=3600)
        jwks = JwksStore()
        decision_log = DecisionLog(path=str(Path(tmp) / "decisions.log"))
        enforcer = Enforcer(EnforcementState.build(bundle, jwks), decision_log)
        request = check_request(request_bodies()["allowed"], token)
        for _ in range(200):
            enforcer.check(request)
        # The checking thread's CPU time: waits for the GIL (the decision log's writer) are not
        # the check's own work, and wall time on a shared machine counts the neighbours.
        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
        for _ in range(checks):
            enforcer.check(request)
        profiler.disable()
        decision_log.close()
        jwks.close()
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]  # {(file, line, name): (cc, nc, tt, ct, callers)}
    total = sum(row[2] for row in entries.values())
    functions = sorted(
        (
            {
                "function": f"{_where(file)}:{line}({name})",
                "own_us_per_check": round(own * 1e6 / checks, 2),
                "cumulative_us_per_check": round(cumulative * 1e6 / checks, 2),
                "calls_per_check": round(calls / checks, 2),
                "share": round(own / total, 3),
            }
            for (file, line, name), (_, calls, own, cumulative, _) in entries.items()
        ),
        key=lambda row: -row["own_us_per_check"],
    )
    by_module: dict[str, float] = defaultdict(float)
    for (file, _, _), row in entries.items():
        by_module[_where(file)] += row[2]
    modules = sorted(
        ({"module": name, "share": round(own / total, 3)} for name, own in by_module.items()),
        key=lambda row: -row["share"],
    )
    return {
        "checks": checks,
        "profiled_cpu_us_per_check": round(total * 1e6 / checks, 1),
        "top_functions": functions[:25],
        "by_module": modules[:15],
    }


def main() -> None:
    run_command(__doc__, profile, "a few checks only: proves it runs")


if __name__ == "__main__":
    main()
