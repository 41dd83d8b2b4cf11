"""Held calls on the data path: requestable denials become access requests, approvals run once.

The Enforcer hands the `ApprovalDesk` three moments (DESIGN.md §10, standards.md §4):

- a `tools/call` the PDP answered with a requestable denial: the desk finds or creates the call's
  binding record. A pending record of the same call is reused (identical retries are
  deduplicated); an approved, unused one lets an identical retry of a client without tasks run,
  after the bound call is re-evaluated with the approval at `context.approval` and the record is
  claimed (at most once, through the store); otherwise a new record is created, unless the
  subject hit its submission limit (a non-requestable denial). A client that declared the tasks
  extension gets a `working` task, any other a `CallToolResult` with `isError` and the SEP-2643
  envelope. Nothing runs on a requestable denial.
- `tasks/get` / `tasks/cancel` for one of callwarden's task ids: answered here, and only for the
  subject and agent that made the request (anyone else is told the task does not exist). An
  approved task is re-evaluated with the current request's claims; on a permit the record is
  claimed and the request goes upstream marked for the `approval-completion` ext_proc hook, which
  turns it into the original `tools/call` and the response into the completed task. Later
  `tasks/get` answer the stored result without running anything.
- an allowed call whose permit came from an approval (a mapping that copied one into the context):
  it runs only if this desk can claim the approval, so an approval is never used twice.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson

from callwarden.authzen.client import RemoteAuthzenPdp, RemotePdpError
from callwarden.extauthz import tasks
from callwarden.extauthz.extproc import Exchange, HookFailure
from callwarden.extauthz.jose import JwsSigner, load_signing_key
from callwarden.policy import approval as ap
from callwarden.policy.bundle import CompiledServer
from callwarden.policy.canonical import (
    NOT_BOUND_CONTEXT,
    CanonicalizationError,
    argument_digest,
    binding_hash,
)
from callwarden.policy.decide import Verdict, decide_with_approval

log = logging.getLogger(__name__)

COMPLETION_HOOK: Final = "approval-completion"
# A result is kept in the record (every later tasks/get returns it); an AccessRequest lives in etcd,
# whose objects stay under ~1.5 MiB, so a larger result is answered once and kept as a note.
MAX_KEPT_RESULT_BYTES: Final = 256 * 1024
_TASK_ID: Final = re.compile(r"ar-[0-9a-f]{32}")
_UNKNOWN: Final = "Failed to retrieve task: Task not found"


@dataclass(frozen=True)
class ApprovalSettings:
    window: timedelta = timedelta(hours=1)  # how long a request waits for a reviewer (and the task's ttl)
    poll_interval_ms: int = 5000
    max_submissions: int = 10  # new access requests per subject per `submission_period`
    completion_patience: timedelta = timedelta(minutes=5)  # a claimed call without a result is lost
    submission_period: timedelta = timedelta(minutes=10)


@dataclass(frozen=True)
class Handled:
    """What the desk decided for one message: run it (`allowed`, maybe through `hook`), or answer `body`."""

    allowed: bool
    reason: str  # for the decision log: approval:<what happened>
    record: ap.AccessRequestRecord | None
    body: bytes = b""
    hook: str | None = None
    verdict: Verdict | None = None  # the re-evaluation that permitted, when there was one

    def log_fields(self) -> dict[str, Any]:
        if self.record is None:
            return {}
        record = self.record
        fields = {"id": record.id, "state": record.state, "execution": record.execution}
        return {"approval": fields if record.approver is None else {**fields, "approver": record.approver}}


@dataclass
class ApprovalDesk:
    store: ap.ApprovalStore
    settings: ApprovalSettings = field(default_factory=ApprovalSettings)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # What the bundle's embedded PDPs must be compiled with, so approvals can lift their denials.
    authority: ap.ApprovalAuthority | None = None
    home_namespace: str = "default"  # a namespace this replica may read records in (startup check)
    _events: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="approval-events"),
        repr=False,
    )

    # -- a requestable denial -------------------------------------------------------------

    def requestable(
        self,
        server: CompiledServer,
        request_id: Any,
        verdict: Verdict,
        claims: Mapping[str, Any],
        revision: str,
        *,
        cnf: Mapping[str, Any] | None = None,
    ) -> Handled | None:
        """The answer to a tools/call denied requestably, or None to deny it plainly (it cannot be bound)."""
        held = [(r, d) for r, d in zip(verdict.requests, verdict.decisions, strict=True) if not d.allowed]
        if verdict.method != "tools/call" or verdict.params is None or len(held) != 1:
            return None  # one approval binds one AuthZEN request
        request, decision = held[0]
        arguments = verdict.params.get("arguments")
        try:
            digest, hashed = argument_digest(arguments), binding_hash(request)
        except (CanonicalizationError, TypeError, ValueError):
            return None
        namespace = server.server.metadata.namespace
        subject_id = str(request["subject"]["id"])
        now = self.clock()
        mine = self.store.for_subject(namespace, subject_id)  # one list: the retry, dedupe and the limit
        for record in mine:
            current = ap.expire_if_due(record, now)
            call = (current.server, current.tool, current.arguments_digest)
            if call != (server.key, verdict.tool, digest) or current.binding_hash != hashed:
                continue
            if current.state == "approved" and current.execution == "none":
                ran = self._run_retry(server, current, verdict.params, claims, request_id, cnf=cnf)
                if ran is not None:
                    return ran
            elif current.state == "pending":
                return self._answer_held(current, verdict.params, request_id, "approval:deduplicated")
        recent = [r for r in mine if now - ap.parse_time(r.created_at) < self.settings.submission_period]
        if len(recent) >= self.settings.max_submissions:
            text = "Too many approval requests: this call was denied and did not run. Retry later."
            body = tasks.response(request_id, tasks.not_executed(text, None, "unavailable"))
            return Handled(False, "approval:rate-limited", None, body)
        remote = None
        if isinstance(server.pdp, RemoteAuthzenPdp):
            remote = _submit_remote(server.pdp, request, decision.context)
            if remote is None:
                return None  # the remote ARS did not take the request: a plain denial
        context = request.get("context") or {}
        record = ap.AccessRequestRecord(
            id=ap.new_task_id(),
            namespace=namespace,
            server=server.key,
            tool=verdict.tool,
            arguments_digest=digest,
            call={"name": verdict.tool, "arguments": {} if arguments is None else arguments},
            subject=request["subject"],
            resource=request["resource"],
            action=request["action"],
            context={k: v for k, v in context.items() if k not in NOT_BOUND_CONTEXT},
            binding_hash=hashed,
            revision=revision,
            agent=context.get("agent") if isinstance(context.get("agent"), str) else None,
            actors=tuple(context.get("actors") or ()),
            created_at=ap.format_time(now),
            expires_at=ap.format_time(now + self.settings.window),
            remote=remote,
        )
        created = self.store.create(record)
        self.note(created, "Requested", f"{subject_id} asked to call {verdict.tool}; waiting for a reviewer")
        return self._answer_held(created, verdict.params, request_id, "approval:requested")

    def _poll_remote(self, server: CompiledServer, record: ap.AccessRequestRecord) -> ap.AccessRequestRecord:
        """A pending remote request as its ARS reports it now: approved only on `result.mode:
        reevaluate` with an approval; an unknown status or mode is not an approval (ARAP §4.3, §4.4)."""
        if not isinstance(server.pdp, RemoteAuthzenPdp) or record.remote is None:
            return record
        try:
            answer = server.pdp.access_request_status(str(record.remote["statusEndpoint"]))
        except RemotePdpError as error:
            log.warning("cannot poll access request %s: %s", record.id, error)
            return record
        status = answer["task"]["status"]
        result = answer.get("result")
        step: ap.Transition | None = None
        if status == "approved" and isinstance(result, Mapping) and result.get("mode") == "reevaluate":
            approval = result.get("approval")
            if isinstance(approval, Mapping):
                step = lambda r: ap.approve_remote(r, approval, self.clock())  # noqa: E731
        elif status in ("denied", "expired", "cancelled", "failed"):
            step = lambda r: ap.close_remote(r, status, self.clock())  # noqa: E731
        if step is None:
            return record
        try:
            return self._persist(
                record, step, "Remote" + status.capitalize(), f"the remote ARS says {status}"
            )
        except ValueError:
            return record

    def _answer_held(
        self, record: ap.AccessRequestRecord, params: Mapping[str, Any], request_id: Any, reason: str
    ) -> Handled:
        if tasks.declares_tasks(params):
            result = tasks.created(record, self.settings.poll_interval_ms)
        else:
            result = tasks.pending_call(record)
        return Handled(False, reason, record, tasks.response(request_id, result))

    def _run_retry(
        self,
        server: CompiledServer,
        record: ap.AccessRequestRecord,
        params: Mapping[str, Any],
        claims: Mapping[str, Any],
        request_id: Any,
        *,
        cnf: Mapping[str, Any] | None = None,
    ) -> Handled | None:
        """An identical retry after approval: re-evaluate, claim, run. None: this record cannot serve it."""
        approval = record.approval()
        if approval is None:
            return None
        verdict = decide_with_approval(server, params, claims, approval, cnf)
        if not _permits(server, verdict, approval):
            return None
        try:
            claimed = ap.transition(
                self.store, record.namespace, record.id, lambda r: ap.claim(r, self.clock())
            )
        except (ap.InvalidTransition, ap.StoreConflict, LookupError):
            return None  # another replica (or retry) used it first
        self.note(
            claimed, "Executing", f"the approved call to {record.tool} is running (retry without tasks)"
        )
        return Handled(True, "approval:consumed", claimed, verdict=verdict)

    def consume(self, server: CompiledServer, verdict: Verdict) -> bool:
        """Claim every approval that permitted `verdict`; False (deny) if any is not available.

        The PDP checked the binding hash; the call itself (server, tool, argument digest) is
        checked here, because a mapping need not put every argument into the AuthZEN request."""
        namespace = server.server.metadata.namespace
        try:
            digest = argument_digest((verdict.params or {}).get("arguments"))
        except (CanonicalizationError, TypeError, ValueError):
            return False
        call = (server.key, verdict.tool, digest)

        def claim_this_call(record: ap.AccessRequestRecord) -> ap.AccessRequestRecord:
            if (record.server, record.tool, record.arguments_digest) != call:
                raise ap.InvalidTransition(f"access request {record.id} approved another call")
            return ap.claim(record, self.clock())

        for approval_id in verdict.approvals:
            try:
                task_id = approval_id.removeprefix(ap.APPROVAL_ID_PREFIX)
                claimed = ap.transition(self.store, namespace, task_id, claim_this_call)
            except (ap.InvalidTransition, ap.StoreConflict, LookupError):
                return False
            self.note(claimed, "Executing", f"the approved call to {claimed.tool} is running")
        return True

    # -- tasks/get, tasks/cancel ----------------------------------------------------------

    def task_method(
        self,
        server: CompiledServer,
        method: str,
        request_id: Any,
        params: Any,
        claims: Mapping[str, Any],
        *,
        cnf: Mapping[str, Any] | None = None,
    ) -> Handled | None:
        """The answer to tasks/get or tasks/cancel for one of callwarden's tasks; None for any other task."""
        task_id = params.get("taskId") if isinstance(params, Mapping) else None
        if not isinstance(task_id, str) or _TASK_ID.fullmatch(task_id) is None:
            return None
        record = self.store.get(server.server.metadata.namespace, task_id)
        if record is None or not self._originated(server, record, claims):
            return Handled(
                False, "approval:unknown-task", None, tasks.error(request_id, tasks.UNKNOWN_TASK, _UNKNOWN)
            )
        if method == "tasks/cancel":
            return self._cancel(server, record, request_id)
        return self._get(server, record, request_id, claims, cnf=cnf)

    def _originated(
        self, server: CompiledServer, record: ap.AccessRequestRecord, claims: Mapping[str, Any]
    ) -> bool:
        identity = server.server.spec.identity
        agent = claims.get(identity.agent_claim)
        return (
            record.server == server.key
            and claims.get(identity.subject_claim) == record.subject_id
            and (agent if isinstance(agent, str) else None) == record.agent
        )

    def _cancel(self, server: CompiledServer, record: ap.AccessRequestRecord, request_id: Any) -> Handled:
        try:
            cancelled = ap.transition(
                self.store,
                record.namespace,
                record.id,
                lambda r: ap.cancel(r, self.clock(), "cancelled by the requester"),
            )
        except (ap.InvalidTransition, ap.StoreConflict) as refused:
            body = tasks.error(request_id, tasks.UNKNOWN_TASK, f"Task cannot be cancelled: {refused}")
            return Handled(False, "approval:cancel-refused", record, body)
        self.note(cancelled, "Cancelled", "cancelled by the requester; the tool did not run")
        cancel_link = (record.remote or {}).get("cancel")
        if isinstance(server.pdp, RemoteAuthzenPdp) and isinstance(cancel_link, str):
            try:  # the local record already says it will never run; the remote ARS is told as a courtesy
                server.pdp.cancel_access_request(cancel_link)
            except RemotePdpError as error:
                log.warning("cannot cancel access request %s at its ARS: %s", record.id, error)
        return Handled(
            False,
            "approval:cancelled",
            cancelled,
            tasks.response(request_id, tasks.task_result(cancelled, 0)),
        )

    def _get(
        self,
        server: CompiledServer,
        record: ap.AccessRequestRecord,
        request_id: Any,
        claims: Mapping[str, Any],
        *,
        cnf: Mapping[str, Any] | None = None,
    ) -> Handled:
        now = self.clock()
        current = ap.expire_if_due(record, now)
        if current is not record:
            current = self._persist(
                record, lambda r: ap.expire_if_due(r, self.clock()), "Expired", "expired undecided"
            )
        if current.state == "pending" and current.remote is not None:
            current = self._poll_remote(server, current)
        if current.state == "approved" and current.execution == "none":
            return self._complete(server, current, request_id, claims, cnf=cnf)
        if current.execution == "claimed":
            patience = self.settings.completion_patience
            # A claim without a readable time (a hand-edited status) has waited long enough.
            current = self._persist(
                current, lambda r: ap.lose(r, self.clock(), patience), "Lost", "no result"
            )
        answer = tasks.task_result(current, self.settings.poll_interval_ms)
        return Handled(
            False, f"approval:task-{answer['status']}", current, tasks.response(request_id, answer)
        )

    def _complete(
        self,
        server: CompiledServer,
        record: ap.AccessRequestRecord,
        request_id: Any,
        claims: Mapping[str, Any],
        *,
        cnf: Mapping[str, Any] | None = None,
    ) -> Handled:
        """The first tasks/get after approval: re-evaluate the bound call now, claim it, run it once."""
        approval = record.approval()
        if approval is None:  # "approved" without its times (a hand-edited status): not an approval
            answer = tasks.task_result(record, self.settings.poll_interval_ms)
            return Handled(False, "approval:unverifiable", record, tasks.response(request_id, answer))
        verdict = decide_with_approval(server, record.call, claims, approval, cnf)
        if not _permits(server, verdict, approval):
            why = (
                verdict.error.message
                if verdict.error is not None
                else "the approval does not cover this call"
            )
            refused = self._persist(record, lambda r: ap.refuse(r, why), "NotExecuted", why)
            answer = tasks.task_result(refused, self.settings.poll_interval_ms)
            return Handled(False, "approval:denied-not-executed", refused, tasks.response(request_id, answer))
        try:
            claimed = ap.transition(
                self.store, record.namespace, record.id, lambda r: ap.claim(r, self.clock())
            )
        except (ap.InvalidTransition, ap.StoreConflict, LookupError):
            stored = self.store.get(record.namespace, record.id) or record  # another request won: report it
            answer = tasks.task_result(stored, self.settings.poll_interval_ms)
            return Handled(False, "approval:task-running", stored, tasks.response(request_id, answer))
        self.note(claimed, "Executing", f"the approved call to {record.tool} is running")
        return Handled(True, "approval:completing", claimed, hook=COMPLETION_HOOK, verdict=verdict)

    def _persist(
        self, record: ap.AccessRequestRecord, step: ap.Transition, reason: str, message: str
    ) -> ap.AccessRequestRecord:
        try:
            changed = ap.transition(self.store, record.namespace, record.id, step)
        except (ap.InvalidTransition, ap.StoreConflict, LookupError):
            return self.store.get(record.namespace, record.id) or record
        self.note(changed, reason, message, warning=reason != "Expired")
        return changed

    def note(
        self, record: ap.AccessRequestRecord, reason: str, message: str, *, warning: bool = False
    ) -> None:
        """Record an Event for a transition, off the request path (Envoy's check has a deadline)."""
        event = getattr(self.store, "event", None)
        if event is not None:
            self._events.submit(_post_event, event, record, reason, message, warning)

    def close(self) -> None:
        """Post the Events still queued."""
        self._events.shutdown(wait=True)

    def warm(self) -> None:
        """Ask the store once before serving: the first request to an API server pays for the
        connection and authentication (about a second), which must not land inside Envoy's
        check deadline; a store that cannot answer (no CRD, no RBAC) fails startup instead."""
        self.store.for_subject(self.home_namespace, "callwarden-startup")


def _submit_remote(
    pdp: RemoteAuthzenPdp, request: Mapping[str, Any], denial: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """A remote PDP's requestable denial goes to its ARS: the task handle to keep, or None when
    the submission failed (then the denial is plain)."""
    if denial is None:
        return None
    try:
        task = pdp.submit_access_request(request, denial)
    except RemotePdpError as error:
        log.warning("the ARS of %s did not take an access request: %s", pdp.url, error)
        return None
    handle = {"taskId": task["id"], "statusEndpoint": task["status_endpoint"]}
    links = task.get("links")
    cancel = links.get("cancel") if isinstance(links, Mapping) else None
    return handle if not isinstance(cancel, str) else {**handle, "cancel": cancel}


def _permits(server: CompiledServer, verdict: Verdict, approval: Mapping[str, Any]) -> bool:
    """Whether a re-evaluation with `approval` permits: callwarden's PDP names the approval it
    verified; a remote PDP's permit of the request carrying its own approval is its word."""
    if not verdict.allowed:
        return False
    return isinstance(server.pdp, RemoteAuthzenPdp) or verdict.approvals == (approval["id"],)


def _post_event(
    event: Callable[..., None], record: ap.AccessRequestRecord, reason: str, message: str, warning: bool
) -> None:
    try:
        event(record, reason, message, warning=warning)
    except Exception:  # an Event is a courtesy: the status and the decision log say it all
        log.warning("cannot record event %s for %s", reason, record.id, exc_info=True)


def approval_desk(
    store: ap.ApprovalStore,
    key_path: str | Path,
    issuer: str,
    *,
    create_key: bool = False,
    settings: ApprovalSettings | None = None,
    home_namespace: str = "default",
) -> ApprovalDesk:
    """The desk over `store`, with binding tokens signed by the ES256 key at `key_path` (generated
    there when `create_key` and missing: standalone use; in a cluster, a mounted Secret). callwarden
    is its own ARS, so its binding tokens are issued by and for `issuer`."""
    signer = JwsSigner(load_signing_key(key_path, create=create_key), issuer)
    authority = ap.BoundApprovals(store, signer, audience=issuer)
    return ApprovalDesk(
        store, settings or ApprovalSettings(), authority=authority, home_namespace=home_namespace
    )


class ApprovalCompletion:
    """The ext_proc hook that runs an approved, claimed call once and wraps its result as the task's."""

    name = COMPLETION_HOOK
    methods: frozenset[str] = frozenset()  # never engaged by method: only the desk marks a request
    wants_request_body = True
    wants_response_body = True

    def __init__(self, desk: ApprovalDesk) -> None:
        self.desk = desk

    def _record(self, exchange: Exchange, body: bytes) -> tuple[Any, ap.AccessRequestRecord]:
        try:
            message = orjson.loads(body)
            request_id, task_id = message["id"], message["params"]["taskId"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as error:
            raise HookFailure("approval completion: not a tasks/get request") from error
        record = self.desk.store.get(exchange.server.server.metadata.namespace, str(task_id))
        if record is None or record.execution != "claimed" or record.server != exchange.server.key:
            raise HookFailure("approval completion: the task is not running", request_id=request_id)
        return request_id, record

    def request_body(self, exchange: Exchange, body: bytes) -> bytes | None:
        request_id, record = self._record(exchange, body)
        # The original call, exactly as approved; it goes upstream with this request's credentials.
        return orjson.dumps(
            {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": dict(record.call)}
        )

    def response_body(self, exchange: Exchange, body: bytes) -> bytes | None:
        request_id, record = self._record(exchange, exchange.request_body)
        event_stream = exchange.response_content_type == "text/event-stream"
        answer = _sse_message(body) if event_stream else _json(body)
        if isinstance(answer.get("result"), Mapping):
            result = tasks.executed(answer["result"], answer["result"].get("isError") is True)
        else:
            error = answer["error"] if isinstance(answer.get("error"), Mapping) else {}
            failed = {
                "content": [{"type": "text", "text": str(error.get("message", "the server sent no result"))}]
            }
            result = tasks.executed(failed, True)
        disposition = result["_meta"][tasks.DISPOSITION_META]
        kept = (
            result if len(orjson.dumps(result)) <= MAX_KEPT_RESULT_BYTES else tasks.too_large_to_keep(result)
        )
        done = ap.transition(
            self.desk.store, record.namespace, record.id, lambda r: ap.finish(r, kept, disposition)
        )
        self.desk.note(done, "Executed", f"the approved call to {record.tool} ran once")
        answer_now = tasks.task_result(done.with_changes(result=result), self.desk.settings.poll_interval_ms)
        wrapped = tasks.response(request_id, answer_now)  # the whole result, even when too large to keep
        return b"event: message\ndata: " + wrapped + b"\n\n" if event_stream else wrapped


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise HookFailure("approval completion: the server's answer is not JSON") from error
    if not isinstance(value, dict):
        raise HookFailure("approval completion: the server's answer is not one JSON-RPC response")
    return value


def _sse_message(body: bytes) -> dict[str, Any]:
    """The JSON-RPC response in an SSE body (the last `data:` event that carries an id)."""
    for line in reversed(body.splitlines()):
        if line.startswith(b"data:"):
            found = _json(line[5:].strip())
            if "id" in found:
                return found
    raise HookFailure("approval completion: the server's event stream carries no response")
