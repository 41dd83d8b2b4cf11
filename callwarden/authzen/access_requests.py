"""The ARAP access request server (ARS) of `callwarden pdp` (standards.md §4.2-4.5).

A PEP that got a requestable denial from this PDP submits it here:

- `POST {base}/access/v1/requests`: the original subject, resource, action and context (plus
  submission-time additions such as `business_justification`, which never bind) and the denial,
  echoed. The binding token must be one this PDP signed, for this ARS, unexpired, unused, and
  its `binding_hash` must equal the hash of the submitted request restricted to the context
  members it names; each token opens one request. `Idempotency-Key`: the same key with the same
  body answers the same task, with another body `duplicate_request`. Answer `202` with the task.
- `GET {base}/access/v1/requests/{id}`: the task; once approved, `result` (`mode: reevaluate`,
  the approval), which the PEP places unchanged at `context.approval` of the next evaluation.
- `POST` or `DELETE {base}/access/v1/requests/{id}/cancel`: `200` cancelled, or `409
  invalid_task_state` for a task already decided.

Errors are RFC 9457 `application/problem+json` with ARAP's `type` URNs. Callbacks are not
made (every callback would be an outbound request to a caller-chosen address): a PEP polls.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from callwarden.policy import approval as ap
from callwarden.policy.canonical import CanonicalizationError, binding_hash, canonical
from callwarden.policy.evaluation import AuthzenRequestError, check_evaluation_request

__all__ = ["CAPABILITY", "ERROR_PREFIX", "AccessRequestServer", "Problem"]

CAPABILITY: Final = "urn:openid:authzen:capability:access-request"
ERROR_PREFIX: Final = "urn:openid:authzen:access-request:error:"
REQUESTS_PATH: Final = "/access/v1/requests"
JWKS_PATH: Final = "/access/v1/jwks"
PROBLEM: Final = "application/problem+json"
ARS_SERVER: Final = "authzen"  # the `server` of records opened here (no McpServer involved)
NAMESPACE: Final = "default"
_TASK_PATH: Final = re.compile(r"/(ar-[0-9a-f]{32})(/cancel)?")
_MAX_KEY: Final = 256
_TITLES: Final = {
    "not_requestable": "Access is not requestable",
    "expired_denial": "The denial has expired",
    "invalid_denial_binding": "The denial binding is invalid",
    "duplicate_request": "Duplicate request",
    "unknown_task": "Unknown task",
    "task_expired": "The task has expired",
    "invalid_task_state": "The task cannot change state",
}
_STATUS: Final = {
    "not_requestable": 400,
    "expired_denial": 410,
    "invalid_denial_binding": 400,
    "duplicate_request": 409,
    "unknown_task": 404,
    "task_expired": 410,
    "invalid_task_state": 409,
}


class Problem(Exception):
    """An RFC 9457 problem: `kind` is an ARAP error name, or None for a plain 400."""

    def __init__(self, kind: str | None, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = _STATUS[kind] if kind is not None else status

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "type": ERROR_PREFIX + self.kind if self.kind is not None else "about:blank",
                "title": _TITLES.get(self.kind or "", "Bad request"),
                "status": self.status,
                "detail": self.detail,
            }
        )


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    location: str | None = None


@dataclass
class AccessRequestServer:
    """The ARS over a store and the signer whose binding tokens it accepts."""

    store: ap.ApprovalStore
    signer: ap.TokenSigner
    audience: str
    window: timedelta = timedelta(hours=24)  # how long a submitted request waits for a reviewer
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def route(self, base_path: str, path: str) -> tuple[str, str | None] | None:
        """(`submit` | `status` | `cancel` | `jwks`, task id) for a path of this server, else None."""
        if path == base_path + REQUESTS_PATH:
            return "submit", None
        if path == base_path + JWKS_PATH:
            return "jwks", None
        rest = path.removeprefix(base_path + REQUESTS_PATH)
        match = _TASK_PATH.fullmatch(rest) if rest != path else None
        if match is None:
            return None
        return ("cancel" if match.group(2) else "status"), match.group(1)

    # -- submission ---------------------------------------------------------------------------

    def submit(self, body: dict[str, Any], idempotency_key: str | None, base_url: str) -> Answer:
        if idempotency_key is not None and not 0 < len(idempotency_key) <= _MAX_KEY:
            raise Problem(None, f"Idempotency-Key must be 1 to {_MAX_KEY} characters")
        if "items" in body:
            raise Problem(None, "bulk submissions (items) are not supported: submit each denial on its own")
        denial = body.get("denial")
        if not isinstance(denial, dict):
            raise Problem("invalid_denial_binding", "the submission carries no `denial` object")
        request: dict[str, Any] = {
            k: body[k] for k in ("subject", "resource", "action", "context") if k in body
        }
        try:
            check_evaluation_request(request)
        except AuthzenRequestError as error:
            raise Problem(None, f"invalid subject, resource, action or context: {error}") from error
        claims = self._binding(denial, request)
        now = self.clock()
        digest = hashlib.sha256(canonical(body)).hexdigest()
        subject_id = str(request["subject"]["id"])
        for record in self.store.for_subject(NAMESPACE, subject_id):
            submitted = record.submission or {}
            if idempotency_key is not None and submitted.get("idempotencyKey") == idempotency_key:
                if submitted.get("bodyDigest") != digest:
                    raise Problem("duplicate_request", "this Idempotency-Key was used with another body")
                return Answer(202, {"task": self._task(record, base_url)}, self._url(base_url, record.id))
            if submitted.get("bindingTokenId") == claims["jti"]:
                raise Problem("invalid_denial_binding", "this binding token was already submitted")
        record = ap.AccessRequestRecord(
            id=ap.new_task_id(),
            namespace=NAMESPACE,
            server=ARS_SERVER,
            tool=None,
            arguments_digest="sha256:" + "A" * 43,  # no MCP call: nothing to run, only to decide
            call={},
            subject=request["subject"],
            resource=request["resource"],
            action=request["action"],
            context=_bound_context(request, claims),
            binding_hash=claims["binding_hash"],
            revision="ars",
            agent=None,
            actors=(),
            created_at=ap.format_time(now),
            expires_at=ap.format_time(now + self.window),
            submission={
                "bindingTokenId": claims["jti"],
                "bodyDigest": digest,
                **({"idempotencyKey": idempotency_key} if idempotency_key is not None else {}),
            },
        )
        created = self.store.create(record)
        return Answer(202, {"task": self._task(created, base_url)}, self._url(base_url, created.id))

    def _binding(self, denial: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
        """The binding token's claims, once it is proven to bind exactly this request; raises Problem."""
        token = denial.get("binding_token")
        if not isinstance(token, str):
            raise Problem(
                "invalid_denial_binding",
                "the denial carries no binding_token (evaluation_id alone is not enough here)",
            )
        expires_at = denial.get("expires_at")
        try:
            expiry = ap.parse_time(expires_at) if isinstance(expires_at, str) else None
        except ValueError:
            expiry = None
        if expiry is None:
            raise Problem("invalid_denial_binding", "denial.expires_at (RFC 3339) is required")
        if self.clock() >= expiry:
            raise Problem("expired_denial", "the denial expired; evaluate again for a fresh one")
        try:
            claims = self.signer.verify(token, self.audience)
        except ap.TokenExpired as error:
            raise Problem("expired_denial", "the binding token expired; evaluate again") from error
        except ValueError as error:
            raise Problem("invalid_denial_binding", f"the binding token is not valid: {error}") from error
        members = claims.get("binding_context_members")
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise Problem("invalid_denial_binding", "the binding token names no binding context members")
        if claims.get("denial_expires_at") != expires_at or not isinstance(claims.get("jti"), str):
            raise Problem("invalid_denial_binding", "the denial was not echoed byte for byte")
        try:
            same = binding_hash({**request, "context": _bound_context(request, claims)}) == claims.get(
                "binding_hash"
            )
        except (CanonicalizationError, TypeError, ValueError):
            same = False
        if not same:
            raise Problem(
                "invalid_denial_binding", "the subject, resource, action or context differ from the denial's"
            )
        return claims

    # -- status, cancel -----------------------------------------------------------------------

    def status(self, task_id: str, base_url: str) -> Answer:
        record = self._record(task_id)
        answer: dict[str, Any] = {"task": self._task(record, base_url)}
        approval = record.approval()
        if approval is not None and record.execution == "none":
            answer["result"] = {"mode": "reevaluate", "approval": approval}
        return Answer(200, answer)

    def cancel(self, task_id: str, base_url: str) -> Answer:
        self._record(task_id)
        try:
            cancelled = ap.transition(self.store, NAMESPACE, task_id, lambda r: ap.cancel(r, self.clock()))
        except (ap.InvalidTransition, ap.StoreConflict) as error:
            raise Problem("invalid_task_state", str(error)) from error
        return Answer(200, {"task": self._task(cancelled, base_url)})

    def _record(self, task_id: str) -> ap.AccessRequestRecord:
        record = self.store.get(NAMESPACE, task_id)
        if record is None or record.server != ARS_SERVER:
            raise Problem("unknown_task", f"no access request {task_id}")
        return ap.expire_if_due(record, self.clock())

    def _url(self, base_url: str, task_id: str) -> str:
        return f"{base_url}{REQUESTS_PATH}/{task_id}"

    def _task(self, record: ap.AccessRequestRecord, base_url: str) -> dict[str, Any]:
        status = (
            "cancelled" if record.execution == "withdrawn" and record.state == "approved" else record.state
        )
        task: dict[str, Any] = {
            "id": record.id,
            "status": status,
            "status_endpoint": self._url(base_url, record.id),
            "expires_at": record.expires_at,
        }
        if status == "pending":
            task["links"] = {"cancel": self._url(base_url, record.id) + "/cancel"}
        return task


def _bound_context(request: Mapping[str, Any], claims: Mapping[str, Any]) -> dict[str, Any]:
    """The submitted context restricted to the members the binding token names: submission-time
    additions (a justification) never bind, and a bound member that went missing fails the hash."""
    context = request.get("context") or {}
    return {key: context[key] for key in claims.get("binding_context_members") or () if key in context}
