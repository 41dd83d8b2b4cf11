"""The demo agent's DPoP auth flow: a fresh proof per request, verified by callwarden's own
verifier, the server's nonce remembered, and at most one retry on `use_dpop_nonce`.

The responder here is httpx2's MockTransport, for one fault callwarden itself never produces:
a server that answers `use_dpop_nonce` again to a proof carrying the nonce it just issued
(the client must not loop). Everything it checks is done by the real DpopVerifier.
"""

from __future__ import annotations

import httpx2

from callwarden.demo.dpop import DpopAuth, DpopKey
from callwarden.extauthz.dpop import DpopRuntime, DpopVerifier, ProofRejected
from callwarden.policy.model import Dpop

URL = "http://127.0.0.1:1/mcp"
URI = "http://finance.board.example/mcp"  # what the Host header says the client addressed
TOKEN = "header.claims.signature"


def _client(key: DpopKey, handler: httpx2.MockTransport) -> httpx2.Client:
    return httpx2.Client(
        transport=handler, auth=DpopAuth(TOKEN, key), headers={"host": "finance.board.example"}
    )


def test_every_request_carries_a_fresh_proof_that_the_server_accepts() -> None:
    key = DpopKey.generate()
    verifier = DpopVerifier("t/finance", Dpop(mode="required"), DpopRuntime.single_process())
    seen: list[str] = []

    def serve(request: httpx2.Request) -> httpx2.Response:
        assert request.headers["authorization"] == f"DPoP {TOKEN}"
        seen.append(request.headers["dpop"])
        verifier.verify(request.headers["dpop"], method=request.method, uri=URI, token=TOKEN, jkt=key.jkt)
        return httpx2.Response(200)

    with _client(key, httpx2.MockTransport(serve)) as client:
        assert client.post(URL, content=b"{}").status_code == 200
        assert client.get(URL).status_code == 200
    assert len(set(seen)) == 2


def test_the_nonce_of_a_use_dpop_nonce_refusal_is_used_for_the_retry_and_after() -> None:
    key = DpopKey.generate()
    verifier = DpopVerifier(
        "t/finance", Dpop(mode="required", nonce={"enabled": True}), DpopRuntime.single_process()
    )
    answers: list[int] = []

    def serve(request: httpx2.Request) -> httpx2.Response:
        try:
            verifier.verify(request.headers["dpop"], method=request.method, uri=URI, token=TOKEN, jkt=key.jkt)
        except ProofRejected as refused:
            assert refused.nonce is not None
            answers.append(401)
            challenge = f'DPoP error="{refused.error}"'
            return httpx2.Response(401, headers={"www-authenticate": challenge, "dpop-nonce": refused.nonce})
        answers.append(200)
        return httpx2.Response(200)

    with _client(key, httpx2.MockTransport(serve)) as client:
        assert client.post(URL, content=b"{}").status_code == 200
        assert client.post(URL, content=b"{}").status_code == 200
    assert answers == [401, 200, 200]


def test_a_server_that_keeps_asking_for_a_nonce_gets_one_retry_only() -> None:
    calls: list[str | None] = []

    def serve(request: httpx2.Request) -> httpx2.Response:
        calls.append(request.headers["dpop"])
        headers = {"www-authenticate": 'DPoP error="use_dpop_nonce"', "dpop-nonce": f"n{len(calls)}"}
        return httpx2.Response(401, headers=headers)

    with _client(DpopKey.generate(), httpx2.MockTransport(serve)) as client:
        assert client.post(URL, content=b"{}").status_code == 401
    assert len(calls) == 2
