"""callwarden as an ARAP access request server: the flow of the profile's vectors, over real HTTP.

The initial evaluation, the requestable denial, the submission, the task handle, status, the
re-evaluation with the approval at `context.approval` and the final decision follow
shared/conformance/authzen-access-request-approval-examples/17-23 (ids, times and tokens are
this server's own); the binding token is checked with PyJWT against the published JWKS, an
implementation independent of callwarden's. Then the table of hostile submissions and the RFC
9457 problem documents (vector 16).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from callwarden.authzen.access_requests import CAPABILITY, AccessRequestServer
from callwarden.authzen.api import start_pdp
from callwarden.extauthz.jose import JwsSigner, load_signing_key
from callwarden.policy import approval as ap
from callwarden.policy.pdp import compile_pdp
from callwarden.stores.approvals import ApprovalRecords
from callwarden.stores.sqlite import SqliteDocuments
from tests.test_pdp import policy, rule

VECTORS = Path(__file__).resolve().parent / "vectors" / "authzen-access-request-approval-examples"
ISSUER = "urn:callwarden:test-ars"


def vector(name: str) -> dict[str, Any]:
    """The JSON body of a vector (an .http file's body, or a .json file)."""
    text = (VECTORS / name).read_text()
    body = text.split("\n\n", 1)[1] if name.endswith(".http") else text
    value: dict[str, Any] = json.loads(body)
    return value


INITIAL = vector("17-initial-evaluation-request.http")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ApprovalRecords:
    return ApprovalRecords(SqliteDocuments(tmp_path_factory.mktemp("ars") / "approvals.db"))


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> JwsSigner:
    return JwsSigner(load_signing_key(tmp_path_factory.mktemp("key") / "key.pem", create=True), ISSUER)


@pytest.fixture(scope="module")
def client(store: ApprovalRecords, signer: JwsSigner) -> Iterator[httpx2.Client]:
    authority = ap.BoundApprovals(store, signer, audience=ISSUER)
    pdp = compile_pdp(
        [policy(rule("managers-approve-reads", "RequireApproval", tools=["can_read"]))], approvals=authority
    )
    access = AccessRequestServer(store, signer, audience=ISSUER)
    with (
        start_pdp(pdp, listen="127.0.0.1:0", access=access) as running,
        httpx2.Client(base_url=running.base_url, timeout=10) as http,
    ):
        yield http


def denial_of(client: httpx2.Client, request: dict[str, Any] = INITIAL) -> dict[str, Any]:
    answer = client.post("/access/v1/evaluation", json=request).json()
    assert answer["decision"] is False
    context: dict[str, Any] = answer["context"]
    return context


def submission(denial: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Vector 19's submission, carrying this server's denial echoed byte for byte."""
    body = vector("19-submitting-the-access-request.http")
    access_request = denial["access_request"]
    body["denial"] = {
        "evaluation_id": denial["evaluation_id"],
        "evaluated_at": denial["evaluated_at"],
        "expires_at": access_request["expires_at"],
        "reason": denial["reason"],
        "binding_token": access_request["binding_token"],
    }
    body.update(changes)
    return body


def submit(client: httpx2.Client, body: dict[str, Any], key: str | None = None) -> httpx2.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/access/v1/requests", json=body, headers=headers)


def approve(store: ApprovalRecords, task_id: str) -> None:
    now = datetime.now(UTC)
    ap.transition(
        store, "default", task_id, lambda r: ap.approve(r, "manager", now, now + timedelta(hours=4))
    )


# --- the flow of the vectors -------------------------------------------------------------------


def test_metadata_publishes_the_access_request_endpoint_jwks_and_capability(client: httpx2.Client) -> None:
    metadata = client.get("/.well-known/authzen-configuration").json()
    expected = vector("01-discovery.json")
    assert set(expected) <= set(metadata)
    assert metadata["access_request_endpoint"] == f"{client.base_url}/access/v1/requests"
    assert CAPABILITY in metadata["capabilities"]


def test_a_requestable_denial_has_the_profile_s_shape_and_a_verifiable_binding_token(
    client: httpx2.Client,
) -> None:
    context = denial_of(client)
    assert set(context) == {"evaluation_id", "evaluated_at", "reason", "access_request"}
    assert context["reason"] == "approval_required"
    assert set(context["access_request"]) == {"expires_at", "binding_token"}
    jwks = client.get("/access/v1/jwks").json()
    key = jwt.PyJWK(jwks["keys"][0])
    claims = jwt.decode(
        context["access_request"]["binding_token"], key, algorithms=["ES256"], audience=ISSUER
    )
    assert {"iss", "aud", "iat", "exp", "jti", "binding_hash", "evaluation_id"} <= set(claims)
    assert claims["evaluation_id"] == context["evaluation_id"]


def test_submit_poll_approve_and_reevaluate_as_in_the_profile(
    client: httpx2.Client, store: ApprovalRecords
) -> None:
    submitted = submit(client, submission(denial_of(client)), "7b8d0f0d-65a1-4af1-9fd3-a684f08a5d13")
    assert submitted.status_code == 202
    task = submitted.json()["task"]
    assert set(task) == set(vector("20-task-handle.http")["task"]) - {"display"}
    assert submitted.headers["location"] == task["status_endpoint"]
    pending = client.get(task["status_endpoint"]).json()
    assert pending["task"]["status"] == "pending" and "result" not in pending
    approve(store, task["id"])
    completed = client.get(task["status_endpoint"]).json()
    assert completed["task"]["status"] == "approved"
    assert completed["result"]["mode"] == "reevaluate"
    approval = completed["result"]["approval"]
    assert {"id", "approved_at", "approved_until"} <= set(approval)
    again = copy.deepcopy(vector("22-re-evaluation-after-approval.http"))
    again["context"]["approval"] = approval  # unchanged, beside a fresh `time`
    final = client.post("/access/v1/evaluation", json=again).json()
    assert final == {
        "decision": True,
        "context": {"approval": {"id": approval["id"], "approved_until": approval["approved_until"]}},
    }


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda r: r["resource"].update(id="q5-plan"), id="other-resource"),
        pytest.param(lambda r: r["subject"].update(id="bob@example.com"), id="other-subject"),
        pytest.param(lambda r: r["action"].update(name="can_write"), id="other-action"),
        pytest.param(
            lambda r: r["context"]["approval"].update(approved_until="2099-01-01T00:00:00Z"), id="edited"
        ),
        pytest.param(lambda r: r["context"]["approval"].update(id="apr-ar-" + "0" * 32), id="unknown-id"),
        pytest.param(lambda r: r["context"].update(approval="apr"), id="not-an-object"),
    ],
)
def test_an_approval_permits_only_the_exact_request_it_was_given_for(
    client: httpx2.Client, store: ApprovalRecords, change: Any
) -> None:
    task = submit(client, submission(denial_of(client))).json()["task"]
    approve(store, task["id"])
    approval = client.get(task["status_endpoint"]).json()["result"]["approval"]
    again = copy.deepcopy(vector("22-re-evaluation-after-approval.http"))
    again["context"]["approval"] = approval
    change(again)
    assert client.post("/access/v1/evaluation", json=again).json()["decision"] is False


def test_cancel_a_pending_task_then_cancelling_again_is_invalid_task_state(client: httpx2.Client) -> None:
    task = submit(client, submission(denial_of(client))).json()["task"]
    cancelled = client.post(task["links"]["cancel"])
    assert (cancelled.status_code, cancelled.json()["task"]["status"]) == (200, "cancelled")
    again = client.delete(task["links"]["cancel"])
    assert again.status_code == 409
    assert again.json()["type"] == "urn:openid:authzen:access-request:error:invalid_task_state"


def test_the_same_idempotency_key_and_body_answer_the_same_task(client: httpx2.Client) -> None:
    body = submission(denial_of(client))
    first = submit(client, body, "key-1").json()["task"]["id"]
    assert submit(client, body, "key-1").json()["task"]["id"] == first


# --- hostile submissions: a specific problem, nothing stored, nothing permitted ----------------


def forged_token(denial: dict[str, Any]) -> str:
    claims = jwt.decode(denial["access_request"]["binding_token"], options={"verify_signature": False})
    return jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")


def _tampered(denial: dict[str, Any]) -> str:
    header, payload, signature = denial["access_request"]["binding_token"].split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["binding_hash"] = "A" * 43
    return ".".join([header, jwt.utils.base64url_encode(json.dumps(claims).encode()).decode(), signature])


HOSTILE: list[Any] = [
    ("no-denial", lambda d, b: b.pop("denial"), 400, "invalid_denial_binding"),
    ("no-binding-token", lambda d, b: b["denial"].pop("binding_token"), 400, "invalid_denial_binding"),
    (
        "forged-token",
        lambda d, b: b["denial"].update(binding_token=forged_token(d)),
        400,
        "invalid_denial_binding",
    ),
    (
        "tampered-token",
        lambda d, b: b["denial"].update(binding_token=_tampered(d)),
        400,
        "invalid_denial_binding",
    ),
    ("not-a-jws", lambda d, b: b["denial"].update(binding_token="a.b"), 400, "invalid_denial_binding"),
    ("token-as-number", lambda d, b: b["denial"].update(binding_token=7), 400, "invalid_denial_binding"),
    ("other-resource", lambda d, b: b["resource"].update(id="q5-plan"), 400, "invalid_denial_binding"),
    (
        "other-subject",
        lambda d, b: b["subject"].update(id="b\u043eb@example.com"),
        400,
        "invalid_denial_binding",
    ),
    (
        "expires-edited",
        lambda d, b: b["denial"].update(expires_at="2099-01-01T00:00:00Z"),
        400,
        "invalid_denial_binding",
    ),
    (
        "denial-expired",
        lambda d, b: b["denial"].update(expires_at="2020-01-01T00:00:00Z"),
        410,
        "expired_denial",
    ),
    ("expires-garbage", lambda d, b: b["denial"].update(expires_at="soon"), 400, "invalid_denial_binding"),
    ("bulk", lambda d, b: b.update(items=[]), 400, None),
    ("subject-a-string", lambda d, b: b.update(subject="alice"), 400, None),
    ("no-action", lambda d, b: b.pop("action"), 400, None),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_submissions_are_refused_with_a_specific_problem(
    client: httpx2.Client, store: ApprovalRecords, case: Any
) -> None:
    _, change, status, kind = case
    denial = denial_of(client)
    body = submission(denial)
    change(denial, body)
    before = len(store.all())
    response = submit(client, body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert set(problem) == set(vector("16-error-responses.http"))
    assert problem["type"] == (
        "about:blank" if kind is None else f"urn:openid:authzen:access-request:error:{kind}"
    )
    assert len(store.all()) == before


def test_a_replayed_binding_token_opens_no_second_request(
    client: httpx2.Client, store: ApprovalRecords
) -> None:
    body = submission(denial_of(client))
    assert submit(client, body, "first").status_code == 202
    before = len(store.all())
    replay = submit(client, body, "second")
    assert (replay.status_code, replay.json()["type"]) == (
        400,
        "urn:openid:authzen:access-request:error:invalid_denial_binding",
    )
    assert len(store.all()) == before


def test_one_idempotency_key_with_another_body_is_a_duplicate_request(client: httpx2.Client) -> None:
    assert submit(client, submission(denial_of(client)), "dup").status_code == 202
    other = submit(client, submission(denial_of(client)), "dup")
    assert (other.status_code, other.json()["type"]) == (
        409,
        "urn:openid:authzen:access-request:error:duplicate_request",
    )


@pytest.mark.parametrize(
    "raw",
    [b"{", b'{"a":1,"a":2}', b"[]", b'"x"', b"\xff\xfe", b'{"denial":' * 80 + b"1" + b"}" * 80],
    ids=["truncated", "duplicate-keys", "array", "string", "not-utf8", "too-deep"],
)
def test_malformed_bodies_are_plain_400_problems(client: httpx2.Client, raw: bytes) -> None:
    response = client.post("/access/v1/requests", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["type"] == "about:blank"


@pytest.mark.parametrize(
    "path",
    ["/access/v1/requests/ar-" + "0" * 32, "/access/v1/requests/ar-" + "0" * 32 + "/cancel"],
    ids=["status", "cancel"],
)
def test_an_unknown_task_is_404_unknown_task(client: httpx2.Client, path: str) -> None:
    response = client.get(path) if not path.endswith("cancel") else client.post(path)
    assert (response.status_code, response.json()["type"]) == (
        404,
        "urn:openid:authzen:access-request:error:unknown_task",
    )


@pytest.mark.parametrize(
    "path",
    [
        "/access/v1/requests/ar-" + "0" * 32 + "/approve",
        "/access/v1/requests/AR-" + "0" * 32,
        "/access/v1/requests/ar-%30",
    ],
)
def test_task_paths_outside_the_id_alphabet_are_not_found(client: httpx2.Client, path: str) -> None:
    assert client.get(path).status_code == 404


def test_an_oversized_submission_is_refused_before_it_is_read(
    client: httpx2.Client, store: ApprovalRecords
) -> None:
    before = len(store.all())
    body = b'{"subject": "' + b"x" * (300 * 1024) + b'"}'
    response = client.post("/access/v1/requests", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert len(store.all()) == before
