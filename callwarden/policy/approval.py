"""Approvals bound to one call: the binding record, its state machine, and what the PDP checks.

A `RequireApproval` decision is a *requestable denial* (ARAP §4.1): denied now, liftable by a
human for exactly this call. The record of that request (`AccessRequestRecord`, the SEP-2848
binding record, stored as an `AccessRequest` custom resource or a SQLite row) moves from
`pending` to exactly one terminal state (`approved`, `denied`, `expired`, `cancelled`,
`failed`), and terminal states are final. Execution is tracked beside the state, because an
approval is consumed at most once: `none` -> `claimed` (this replica runs the call) ->
`executed`, or `none` -> `withdrawn` (cancelled before anything ran). Every transition is a pure
function from one record to the next; the stores apply it conditionally on the version they
read (resourceVersion, a SQLite row version), so two replicas can never both win.

An approval is not a bearer grant (ARAP §4.4): the PDP permits a re-evaluation only when the
`context.approval` it is given is, unchanged, the approval of a record that is approved, not
past `approved_until`, and whose binding hash equals the hash of the request being decided.

No I/O here: records are looked up through `ApprovalLookup` and binding tokens are signed
through `TokenSigner`, both supplied by the layer that owns the store and the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, Protocol

from callwarden.policy.canonical import CanonicalizationError, binding_hash, binding_set, structurally_equal

__all__ = [
    "APPROVAL_STATES",
    "TERMINAL_STATES",
    "AccessRequestRecord",
    "ApprovalAuthority",
    "ApprovalCheck",
    "ApprovalLookup",
    "ApprovalState",
    "ApprovalStore",
    "BoundApprovals",
    "Execution",
    "InvalidTransition",
    "StoreConflict",
    "TokenExpired",
    "TokenSigner",
    "approve",
    "approve_remote",
    "cancel",
    "claim",
    "close_remote",
    "deny",
    "expire_if_due",
    "finish",
    "format_time",
    "lose",
    "new_task_id",
    "parse_time",
    "prunable",
    "refuse",
    "subject_key",
    "transition",
]

ApprovalState = Literal["pending", "approved", "denied", "expired", "cancelled", "failed"]
APPROVAL_STATES: Final[tuple[ApprovalState, ...]] = (
    "pending",
    "approved",
    "denied",
    "expired",
    "cancelled",
    "failed",
)
TERMINAL_STATES: Final = frozenset(APPROVAL_STATES) - {"pending"}
# `lost`: claimed, but no result ever came back (the call may have run): reported failed, never rerun.
Execution = Literal["none", "claimed", "executed", "withdrawn", "lost"]
# Dispositions of SEP-2848 (`_meta["net.openid.authzen/disposition"]`).
Disposition = Literal["approved-executed", "denied-not-executed", "execution-error"]

REASON: Final = "approval_required"
TASK_ID_PREFIX: Final = "ar-"
APPROVAL_ID_PREFIX: Final = "apr-"


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, to the second: the form every record and wire field uses."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """An RFC 3339 timestamp (as written by `format_time`, or with an offset); raises ValueError."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {text!r}")
    return moment.astimezone(UTC)


def new_task_id() -> str:
    """An unguessable task id (128 random bits) that is also a valid Kubernetes object name."""
    return TASK_ID_PREFIX + secrets.token_hex(16)


class InvalidTransition(Exception):
    """The record is not in a state this transition starts from (ARAP `invalid_task_state`)."""


@dataclass(frozen=True)
class AccessRequestRecord:
    """The binding record of one requested call (SEP-2848) and the ARAP task it became.

    `subject`, `resource`, `action` and `context` are the AuthZEN request as the PDP saw it (the
    binding set); `call` is the original `tools/call` params, kept so the approved call can run
    exactly as it was asked. `version` is the store's concurrency token, never part of the record.
    """

    id: str
    namespace: str
    server: str  # McpServer key, `namespace/name`
    tool: str | None
    arguments_digest: str
    call: Mapping[str, Any]
    subject: Mapping[str, Any]
    resource: Mapping[str, Any]
    action: Mapping[str, Any]
    context: Mapping[str, Any]
    binding_hash: str
    revision: str
    agent: str | None
    actors: tuple[Mapping[str, Any], ...]
    created_at: str
    expires_at: str
    state: ApprovalState = "pending"
    execution: Execution = "none"
    approver: str | None = None
    decided_at: str | None = None
    approved_until: str | None = None
    comment: str | None = None
    result: Mapping[str, Any] | None = None
    disposition: Disposition | None = None
    submission: Mapping[str, Any] | None = None  # ARS submissions: binding token id, idempotency key
    remote: Mapping[str, Any] | None = None  # the remote ARS's task, when a remote PDP holds the request
    remote_approval: Mapping[str, Any] | None = None  # the approval that remote ARS granted, verbatim
    claimed_at: str | None = None  # when a replica took the approved call to run it
    version: str | None = field(default=None, compare=False)

    @property
    def subject_id(self) -> str:
        return str(self.subject.get("id", ""))

    @property
    def approval_id(self) -> str | None:
        return None if self.state != "approved" else APPROVAL_ID_PREFIX + self.id

    def approval(self) -> dict[str, Any] | None:
        """The ARAP `result.approval` object; placed unchanged at `context.approval` to re-evaluate."""
        if self.state != "approved" or self.approved_until is None or self.decided_at is None:
            return None
        if self.remote is not None:
            return None if self.remote_approval is None else dict(self.remote_approval)
        return {
            "id": APPROVAL_ID_PREFIX + self.id,
            "approved_at": self.decided_at,
            "approved_until": self.approved_until,
        }

    def request(self) -> dict[str, Any]:
        """The bound AuthZEN request."""
        return {
            "subject": dict(self.subject),
            "resource": dict(self.resource),
            "action": dict(self.action),
            "context": dict(self.context),
        }

    def with_changes(self, **changes: Any) -> AccessRequestRecord:
        return dataclasses.replace(self, **changes)


# --- transitions ---------------------------------------------------------------------------


def _require(record: AccessRequestRecord, condition: bool, what: str) -> None:
    if not condition:
        raise InvalidTransition(
            f"access request {record.id} is {record.state} (execution {record.execution}); cannot {what}"
        )


def expire_if_due(record: AccessRequestRecord, now: datetime) -> AccessRequestRecord:
    """`record`, or the record expired when it is pending past its expiry (expiry is applied lazily)."""
    if record.state == "pending" and now >= parse_time(record.expires_at):
        return record.with_changes(state="expired", decided_at=format_time(now), execution="withdrawn")
    return record


def approve(
    record: AccessRequestRecord,
    approver: str,
    now: datetime,
    until: datetime | None = None,
    comment: str | None = None,
) -> AccessRequestRecord:
    """pending -> approved, valid until `until` (default and upper bound: the request's own expiry)."""
    current = expire_if_due(record, now)
    _require(current, current.state == "pending", "approve")
    expires = parse_time(record.expires_at)
    bound = expires if until is None else min(until, expires)
    if bound <= now:
        raise InvalidTransition(f"approved_until {format_time(bound)} is not in the future")
    return current.with_changes(
        state="approved",
        approver=approver,
        decided_at=format_time(now),
        approved_until=format_time(bound),
        comment=comment,
    )


def approve_remote(
    record: AccessRequestRecord, approval: Mapping[str, Any], now: datetime
) -> AccessRequestRecord:
    """pending -> approved by a remote ARS: its approval (`id`, `approved_until`) is kept verbatim,
    and is enforced no longer than it says nor than the request's own expiry. Raises ValueError for
    an approval that does not say until when."""
    until = approval.get("approved_until")
    if not isinstance(approval.get("id"), str) or not isinstance(until, str):
        raise ValueError("the remote approval has no id or approved_until")
    approved = approve(
        record, f"ars:{(record.remote or {}).get('statusEndpoint', '')}", now, parse_time(until)
    )
    return approved.with_changes(remote_approval=dict(approval))


def close_remote(record: AccessRequestRecord, state: ApprovalState, now: datetime) -> AccessRequestRecord:
    """pending -> the terminal state a remote ARS reported (denied, expired, cancelled, failed)."""
    current = expire_if_due(record, now)
    _require(
        current, current.state == "pending" and state in TERMINAL_STATES - {"approved"}, f"close as {state}"
    )
    return current.with_changes(state=state, decided_at=format_time(now), execution="withdrawn")


def deny(
    record: AccessRequestRecord, approver: str, now: datetime, comment: str | None = None
) -> AccessRequestRecord:
    """pending -> denied."""
    current = expire_if_due(record, now)
    _require(current, current.state == "pending", "deny")
    return current.with_changes(
        state="denied", approver=approver, decided_at=format_time(now), execution="withdrawn", comment=comment
    )


def cancel(record: AccessRequestRecord, now: datetime, comment: str | None = None) -> AccessRequestRecord:
    """The requester withdraws: a pending request is cancelled; an approved one that has not started
    running is withdrawn (its approval stays as decided, but will never be used). Anything that
    already ran, or is running, cannot be cancelled (SEP-2848: never both execute and report cancelled)."""
    current = expire_if_due(record, now)
    if current.state == "pending":
        return current.with_changes(
            state="cancelled", decided_at=format_time(now), execution="withdrawn", comment=comment
        )
    _require(current, current.state == "approved" and current.execution == "none", "cancel")
    return current.with_changes(execution="withdrawn", comment=comment)


def claim(record: AccessRequestRecord, now: datetime) -> AccessRequestRecord:
    """approved, not yet run, not past approved_until -> claimed: the caller may run the call once."""
    _require(record, record.state == "approved" and record.execution == "none", "run the approved call")
    if record.approved_until is None or now >= parse_time(record.approved_until):
        raise InvalidTransition(f"the approval of {record.id} expired at {record.approved_until}")
    return record.with_changes(execution="claimed", claimed_at=format_time(now))


def lose(record: AccessRequestRecord, now: datetime, patience: timedelta) -> AccessRequestRecord:
    """claimed longer than `patience` without a result -> lost: the replica that ran it went away
    or the server never answered. The call may have run, so it is never run again (SEP-2848
    `failed`: no result is possible)."""
    _require(record, record.execution == "claimed", "give up on")
    try:
        claimed_at = parse_time(record.claimed_at or "")
    except ValueError:
        claimed_at = None  # no readable claim time: nothing says it is still running
    if claimed_at is not None and now - claimed_at < patience:
        raise InvalidTransition(f"access request {record.id} is still running")
    return record.with_changes(execution="lost", comment="no result came back; the call will not run again")


def refuse(record: AccessRequestRecord, why: str) -> AccessRequestRecord:
    """An approved call that will never run (its approval expired, or the call no longer matches
    it, or policy now denies it): SEP-2848 `denied-not-executed`, and final."""
    _require(record, record.state == "approved" and record.execution == "none", "refuse")
    return record.with_changes(execution="withdrawn", disposition="denied-not-executed", comment=why)


def prunable(record: AccessRequestRecord, now: datetime, older_than: timedelta) -> bool:
    """Whether a record is over and done with for longer than `older_than`: decided and never to
    run (or run), or expired; a pending request and an approval still usable are never prunable."""
    current = expire_if_due(record, now)
    if current.state == "pending" or current.execution == "claimed":
        return False
    if current.state == "approved" and current.execution == "none":
        try:  # an unused approval is over only once it can no longer be used
            if now < parse_time(current.approved_until or ""):
                return False
        except ValueError:
            pass
    if current is not record:  # expired just now, lazily: it ended at its expiry
        return now - parse_time(record.expires_at) >= older_than
    try:
        last = parse_time(current.decided_at or current.created_at)
    except ValueError:
        last = parse_time(current.created_at)
    return now - last >= older_than


def finish(
    record: AccessRequestRecord, result: Mapping[str, Any] | None, disposition: Disposition
) -> AccessRequestRecord:
    """claimed -> executed, keeping the result every later tasks/get returns."""
    _require(record, record.execution == "claimed", "record a result")
    return record.with_changes(execution="executed", result=result, disposition=disposition)


# --- what the PDP consults ----------------------------------------------------------------


class ApprovalLookup(Protocol):
    """Read access to the stored records (every store implements it)."""

    def get(self, namespace: str, task_id: str) -> AccessRequestRecord | None: ...


class TokenExpired(ValueError):
    """A token that was valid, but no longer is (ARAP `expired_denial`, not `invalid_denial_binding`)."""


class TokenSigner(Protocol):
    """Signs binding tokens (a compact JWS) and verifies the ones it signed."""

    @property
    def issuer(self) -> str: ...

    def sign(self, claims: Mapping[str, Any]) -> str: ...

    def jwks(self) -> dict[str, Any]:
        """The public keys that verify the tokens (published as the PDP's `jwks_uri`)."""

    def verify(self, token: str, audience: str) -> dict[str, Any]:
        """The claims of a token this signer issued for `audience`, unexpired; raises ValueError
        (TokenExpired when only its time is up)."""


@dataclass(frozen=True)
class ApprovalCheck:
    """What the PDP learned from `context.approval`: the approval id that permits, or why not."""

    approval_id: str | None
    reason: str  # ARAP §4.4 reason: approval_expired, out_of_scope, approval_unverifiable, ...

    @property
    def permits(self) -> bool:
        return self.approval_id is not None


class ApprovalAuthority(Protocol):
    """The approval side of the embedded PDP."""

    def requestable(self, request: Mapping[str, Any]) -> dict[str, Any] | None:
        """The decision context of a requestable denial of `request`, or None when no binding
        material can be issued (then the denial is not requestable, ARAP §4.1)."""

    def verify(self, request: Mapping[str, Any]) -> ApprovalCheck:
        """Whether `request.context.approval` lifts the RequireApproval denial of `request`."""


def _namespaces_of(request: Mapping[str, Any]) -> tuple[str, ...]:
    """Where records that can approve `request` live: its McpServer's namespace (calls held on the
    data path), then `default` (requests submitted to the ARS endpoint, whatever their context)."""
    mcp = (request.get("context") or {}).get("mcp")
    server = mcp.get("server") if isinstance(mcp, Mapping) else None
    if isinstance(server, str) and "/" in server and not server.startswith("default/"):
        return (server.split("/", 1)[0], "default")
    return ("default",)


@dataclass(frozen=True)
class BoundApprovals:
    """`ApprovalAuthority` over a store and a signer: requestable denials carry a binding token
    (iss, aud, iat, exp, jti, binding_hash, evaluation_id); approvals are checked against the record."""

    lookup: ApprovalLookup
    signer: TokenSigner
    audience: str  # the ARS that accepts the binding tokens (its access_request_endpoint's PDP)
    endpoint: str | None = None  # the access_request_endpoint published in the denial, if any
    denial_window: timedelta = timedelta(minutes=10)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def requestable(self, request: Mapping[str, Any]) -> dict[str, Any] | None:
        try:
            hashed = binding_hash(request)
        except (CanonicalizationError, TypeError, ValueError):
            return None  # nothing can bind it: a plain denial
        now = self.clock()
        expires = now + self.denial_window
        evaluation_id = "eval_" + secrets.token_hex(12)
        token = self.signer.sign(
            {
                "iss": self.signer.issuer,
                "aud": self.audience,
                "iat": int(now.timestamp()),
                "exp": int(expires.timestamp()),
                "jti": secrets.token_hex(16),
                "evaluation_id": evaluation_id,
                "binding_hash": hashed,
                "binding_context_members": sorted(binding_set(request)["context"]),
                "denial_expires_at": format_time(expires),
            }
        )
        access_request: dict[str, Any] = {"expires_at": format_time(expires), "binding_token": token}
        if self.endpoint is not None:
            access_request["endpoint"] = self.endpoint
        return {
            "evaluation_id": evaluation_id,
            "evaluated_at": format_time(now),
            "reason": REASON,
            "access_request": access_request,
        }

    def verify(self, request: Mapping[str, Any]) -> ApprovalCheck:
        approval = (request.get("context") or {}).get("approval")
        approval_id = approval.get("id") if isinstance(approval, Mapping) else None
        if not isinstance(approval_id, str) or not approval_id.startswith(APPROVAL_ID_PREFIX):
            return ApprovalCheck(None, "approval_unverifiable")
        task_id = approval_id.removeprefix(APPROVAL_ID_PREFIX)
        found = (self.lookup.get(namespace, task_id) for namespace in _namespaces_of(request))
        record = next((r for r in found if r is not None), None)
        if record is None or not structurally_equal(approval, record.approval()):
            return ApprovalCheck(None, "approval_unverifiable")
        if record.execution not in ("none", "claimed"):
            return ApprovalCheck(None, "approval_unverifiable")  # used or withdrawn: never twice
        try:
            until = parse_time(record.approved_until or "")
        except ValueError:  # a status edited by hand into something that is not a time
            return ApprovalCheck(None, "approval_unverifiable")
        if self.clock() >= until:
            return ApprovalCheck(None, "approval_expired")
        try:
            same = binding_hash(request) == record.binding_hash
        except (CanonicalizationError, TypeError, ValueError):
            same = False
        if not same:
            return ApprovalCheck(None, "out_of_scope")
        return ApprovalCheck(approval_id, "approved")


# --- the store interface ------------------------------------------------------------------


class StoreConflict(Exception):
    """The record changed since it was read: another replica's transition won."""


class ApprovalStore(ApprovalLookup, Protocol):
    """Where records live: one interface, a Kubernetes and a SQLite backend (`callwarden.stores`)."""

    def create(self, record: AccessRequestRecord) -> AccessRequestRecord:
        """Store a new record; returns it with its version."""

    def replace(self, record: AccessRequestRecord) -> AccessRequestRecord:
        """Store `record` if the stored one still has `record.version`; raises StoreConflict."""

    def all(self, namespace: str | None = None) -> list[AccessRequestRecord]:
        """Every record (of one namespace), oldest first."""

    def for_subject(self, namespace: str, subject_id: str) -> list[AccessRequestRecord]:
        """The records of one subject, oldest first."""


Transition = Callable[[AccessRequestRecord], AccessRequestRecord]
_CONFLICT_RETRIES: Final = 5


def transition(store: ApprovalStore, namespace: str, task_id: str, step: Transition) -> AccessRequestRecord:
    """Apply `step` to the stored record at most once: read, compute, write if nobody wrote between.

    On a conflict the record is read again and `step` re-applied to what is stored now, so a
    transition that another replica made impossible raises InvalidTransition instead of winning
    twice. Raises LookupError for an unknown record.
    """
    for _ in range(_CONFLICT_RETRIES):
        record = store.get(namespace, task_id)
        if record is None:
            raise LookupError(f"no access request {task_id} in {namespace}")
        try:
            return store.replace(step(record))
        except StoreConflict:
            continue
    raise StoreConflict(f"access request {task_id} kept changing; gave up after {_CONFLICT_RETRIES} tries")


def subject_key(subject_id: str) -> str:
    return hashlib.sha256(subject_id.encode("utf-8")).hexdigest()[:40]
