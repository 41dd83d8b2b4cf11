"""ext_authz going away while Envoy keeps running: requests fail closed, then recover on restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from callwarden.extauthz.service import start_extauthz
from tests.support.datapath import ALLOWED_CALLS, DataPath, start_datapath, tools_call

pytestmark = pytest.mark.integration

ALLOWED = tools_call(*ALLOWED_CALLS["finance"])


@pytest.fixture
def stopped(tmp_path: Path) -> Iterator[tuple[DataPath, int]]:
    """A data path whose ext_authz served one allowed call and then stopped; and its port."""
    with start_datapath(tmp_path) as datapath:
        response = datapath.post("finance", ALLOWED, token=datapath.token("finance"))
        assert "result" in response.json()
        datapath.gateway.ext_authz.server.stop(grace=None)
        yield datapath, datapath.gateway.ext_authz.server.port


def _send(datapath: DataPath) -> httpx2.Response:
    return datapath.post("finance", ALLOWED, token=datapath.token("finance"))


def test_with_ext_authz_down_envoy_fails_closed(stopped: tuple[DataPath, int]) -> None:
    datapath, _ = stopped
    assert [_send(datapath).status_code for _ in range(3)] == [503, 503, 503]


def test_with_ext_authz_down_nothing_reaches_the_server(stopped: tuple[DataPath, int]) -> None:
    datapath, _ = stopped
    for _ in range(3):
        _send(datapath)
    assert datapath.executed("finance") == 1  # the call made before the stop


def test_a_restarted_ext_authz_on_the_same_port_serves_again(stopped: tuple[DataPath, int]) -> None:
    datapath, port = stopped
    assert _send(datapath).status_code == 503
    with start_extauthz(
        datapath.bundle, listen=f"127.0.0.1:{port}", audit_path=str(datapath.audit_path)
    ) as again:
        deadline = time.monotonic() + 10
        while (response := _send(datapath)).status_code == 503:
            assert time.monotonic() < deadline, "Envoy never reconnected to the restarted ext_authz"
            time.sleep(0.05)
        assert "result" in response.json()
        again.decision_log.flush()
        assert datapath.executed("finance") == 2
        assert datapath.decision_of(response)["decision"] == "allow"
