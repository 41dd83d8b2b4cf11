"""gRPC over TLS between Envoy and ext_authz (`serve(tls=...)`, `callwarden extauthz --tls-cert/--tls-key`).

A real grpcio server with a certificate made here, and real gRPC clients: one that trusts the
certificate's CA, one that speaks plaintext.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from envoy.service.auth.v3.external_auth_pb2_grpc import AuthorizationStub

from callwarden.cli import main
from callwarden.extauthz.responses import DECISION_ID_HEADER, allow_response
from callwarden.extauthz.server import RunningServer, ServerTls, serve
from tests.support.tls import self_signed


class AllowAll:
    def check(self, request: CheckRequest) -> CheckResponse:
        return allow_response({DECISION_ID_HEADER: "decision-1"})


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, bytes]:
    return self_signed("callwarden-extauthz")


@pytest.fixture
def tls_server(pair: tuple[bytes, bytes]) -> Iterator[RunningServer]:
    certificate, key = pair
    with serve(AllowAll(), "127.0.0.1:0", tls=ServerTls(certificate, key)) as running:
        yield running


def test_a_client_trusting_the_certificate_gets_checks_answered(
    tls_server: RunningServer, pair: tuple[bytes, bytes]
) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=pair[0])
    with grpc.secure_channel(f"localhost:{tls_server.port}", credentials) as channel:
        response = AuthorizationStub(channel).Check(CheckRequest(), timeout=5)
    assert response.status.code == 0


def test_a_plaintext_client_is_refused(tls_server: RunningServer) -> None:
    with (
        grpc.insecure_channel(f"127.0.0.1:{tls_server.port}") as channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        AuthorizationStub(channel).Check(CheckRequest(), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_server_tls_reads_the_key_pair_from_files(tmp_path: Path, pair: tuple[bytes, bytes]) -> None:
    (tmp_path / "tls.crt").write_bytes(pair[0])
    (tmp_path / "tls.key").write_bytes(pair[1])
    assert ServerTls.from_files(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key")) == ServerTls(*pair)


@pytest.mark.parametrize(
    "flags",
    [["--tls-cert", "/nonexistent.crt"], ["--tls-key", "/nonexistent.key"]],
    ids=["cert-only", "key-only"],
)
def test_extauthz_refuses_half_a_key_pair(
    flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "empty.yaml"
    config.write_text("")
    with pytest.raises(SystemExit) as exited:
        main(["extauthz", "--config", str(config), "--listen", "127.0.0.1:0", *flags])
    assert exited.value.code == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err


def test_extauthz_reports_an_unreadable_key_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "empty.yaml"
    config.write_text("")
    args = ["extauthz", "--config", str(config), "--listen", "127.0.0.1:0"]
    with pytest.raises(SystemExit) as exited:
        main([*args, "--tls-cert", str(tmp_path / "no.crt"), "--tls-key", str(tmp_path / "no.key")])
    assert exited.value.code == 2
    assert "cannot read TLS key pair" in capsys.readouterr().err
