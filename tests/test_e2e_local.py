"""The e2e scenario (e2e/scenario.py) on the local harness (e2e/local.py), as CI runs it.

Real kube-apiserver (docs/testenv.md), `callwarden operator` and `callwarden extauthz --kubernetes`
as processes on the least-privilege RBAC of deploy/rbac/, real Envoy, the demo's MCP servers and
issuers. The scenario checks allowed and denied calls, that no denied call executed, that an
invalid ToolPolicy is rejected while its last good spec stays enforced, and that a policy change
takes effect.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from e2e.local import run

if TYPE_CHECKING:  # pytest_plugins imports it first, for assert rewriting
    from tests.support.kube import Kube

pytest_plugins = ("tests.support.kube", "tests.support.operator_fixtures")


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_board_packet_scenario_passes_end_to_end_on_the_local_harness(
    kube: Kube, operator_kubeconfig: Path, extauthz_kubeconfig: Path, tmp_path: Path
) -> None:
    output = io.StringIO()
    try:
        report = run(
            kube.kubeconfig,
            tmp_path,
            operator_kubeconfig=operator_kubeconfig,
            extauthz_kubeconfig=extauthz_kubeconfig,
            out=output,
        )
    except Exception as error:  # a harness that broke down: show what the components said
        pytest.fail(f"{error!r}\n{output.getvalue()}{log_tails(tmp_path)}")
    assert report.failures == [], output.getvalue() + log_tails(tmp_path)
    assert len(report.steps) == 4, output.getvalue()


def log_tails(workdir: Path) -> str:
    text = ""
    for log in ("operator.log", "extauthz.log", "envoy/envoy.log"):
        path = workdir / log
        tail = path.read_text(errors="replace")[-4000:] if path.exists() else "(none)"
        text += f"\n--- {log} (tail) ---\n{tail}"
    return text
