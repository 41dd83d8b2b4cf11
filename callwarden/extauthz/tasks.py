"""The MCP wire of held calls: SEP-2663 task shapes, the SEP-2848 disposition, the SEP-2643 envelope.

Pure shapes (standards.md §4.6-4.8): which status a record shows, what a client that declared the
tasks extension gets (`CreateTaskResult`, then `tasks/get` results), and what a client without
tasks gets (a `CallToolResult` with `isError: true` saying a reviewer must approve and that the
identical call may then be retried once). Nothing here ever carries a binding token, an
evaluation id, the approval object or an ARS endpoint: those stay between callwarden and its store.
Messages are fixed text plus the tool name, and only a name in the model's tool-name alphabet
(`policy.model.TOOL_NAME`) is shown: nothing else a caller or a server wrote reaches
`statusMessage` or the model-facing text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import orjson

from callwarden.policy.approval import AccessRequestRecord, parse_time
from callwarden.policy.model import TOOL_NAME

TASKS_EXTENSION: Final = "io.modelcontextprotocol/tasks"
CLIENT_CAPABILITIES: Final = "io.modelcontextprotocol/clientCapabilities"
AUTHORIZATION_META: Final = "io.modelcontextprotocol/authorization"
DISPOSITION_META: Final = "net.openid.authzen/disposition"
IMMEDIATE_RESPONSE_META: Final = "io.modelcontextprotocol/model-immediate-response"
TASK_METHODS: Final = frozenset({"tasks/get", "tasks/cancel"})
_TOOL_NAME: Final = re.compile(TOOL_NAME)
# SEP-2663: an unknown (or someone else's) taskId is invalid params.
UNKNOWN_TASK: Final = -32602


def declares_tasks(params: Mapping[str, Any] | None) -> bool:
    """Whether the request declares the SEP-2663 tasks extension in its per-request capabilities."""
    meta = params.get("_meta") if isinstance(params, Mapping) else None
    capabilities = meta.get(CLIENT_CAPABILITIES) if isinstance(meta, Mapping) else None
    extensions = capabilities.get("extensions") if isinstance(capabilities, Mapping) else None
    return isinstance(extensions, Mapping) and isinstance(extensions.get(TASKS_EXTENSION), Mapping)


def task_status(record: AccessRequestRecord) -> str:
    """The SEP-2663 status of a record (SEP-2848's mapping): a denial is `completed`, never `failed`."""
    if record.state == "cancelled" or (record.state == "approved" and record.execution == "withdrawn"):
        return "completed" if record.disposition is not None else "cancelled"
    if record.state == "failed" or record.execution == "lost":
        return "failed"
    if record.state in ("denied", "expired") or record.execution == "executed":
        return "completed"
    return "working"


def envelope(record: AccessRequestRecord, remediation: str) -> dict[str, Any]:
    """The SEP-2643 denial envelope; the task id is the context id a retry echoes."""
    found: dict[str, Any] = {
        "reason": "insufficient_authorization",
        "remediation": remediation,
        "authorizationContextId": record.id,
    }
    if remediation == "available":
        found["remediationHints"] = [{"type": "task"}]
    return found


def _ttl_ms(record: AccessRequestRecord) -> int:
    lifetime = parse_time(record.expires_at) - parse_time(record.created_at)
    return max(0, int(lifetime.total_seconds() * 1000))


def tool_shown(record: AccessRequestRecord) -> str:
    """The tool's name for text a model reads; a name outside the tool alphabet is not repeated."""
    tool = record.tool or ""
    return tool if _TOOL_NAME.fullmatch(tool) else "the requested tool"


def _pending_text(record: AccessRequestRecord) -> str:
    return f"Calling {tool_shown(record)} requires a reviewer's approval. The call has not run."


def _task(record: AccessRequestRecord, result_type: str, poll_ms: int) -> dict[str, Any]:
    status = task_status(record)
    task: dict[str, Any] = {
        "resultType": result_type,
        "taskId": record.id,
        "status": status,
        "createdAt": record.created_at,
        "lastUpdatedAt": record.decided_at or record.created_at,
        "ttlMs": _ttl_ms(record),
    }
    if status == "working":
        task["pollIntervalMs"] = poll_ms
        task["statusMessage"] = _pending_text(record) if record.state == "pending" else "Approved; running."
        task["_meta"] = {AUTHORIZATION_META: envelope(record, "available")}  # repeated while non-terminal
    return task


def created(record: AccessRequestRecord, poll_ms: int) -> dict[str, Any]:
    """The `CreateTaskResult` a tasks-capable client gets instead of the tool result."""
    task = _task(record, "task", poll_ms)
    task["_meta"][IMMEDIATE_RESPONSE_META] = (
        f"Calling {tool_shown(record)} is pending a reviewer's approval. "
        "You can continue other work and check back."
    )
    return task


def task_result(record: AccessRequestRecord, poll_ms: int) -> dict[str, Any]:
    """The `tasks/get` (and `tasks/cancel`) result for a record as it stands."""
    task = _task(record, "complete", poll_ms)
    if task["status"] == "completed":
        task["result"] = completed_result(record)
    elif task["status"] == "failed":  # SEP-2663: a failed task says why, and carries no result
        task["statusMessage"] = "No result came back from the tool; it will not be run again."
        task["error"] = {"code": -32603, "message": "the approved call gave no result"}
    return task


def completed_result(record: AccessRequestRecord) -> dict[str, Any]:
    """The CallToolResult of a finished task: the stored result, or why the tool did not run."""
    if record.execution == "executed" and record.result is not None:
        return dict(record.result)
    why = {
        "denied": "A reviewer denied the request.",
        "expired": "The request expired before a reviewer decided.",
    }.get(record.state, record.comment or "The approved call no longer matches what was approved.")
    return not_executed(f"{why} The tool {tool_shown(record)} did not run.", record, "unavailable")


def not_executed(text: str, record: AccessRequestRecord | None, remediation: str) -> dict[str, Any]:
    """A CallToolResult saying the tool did not run (SEP-2848 `denied-not-executed`)."""
    meta: dict[str, Any] = {DISPOSITION_META: "denied-not-executed"}
    if record is not None:
        meta[AUTHORIZATION_META] = envelope(record, remediation)
    else:
        meta[AUTHORIZATION_META] = {"reason": "insufficient_authorization", "remediation": remediation}
    return {"content": [{"type": "text", "text": text}], "isError": True, "_meta": meta}


def pending_call(record: AccessRequestRecord) -> dict[str, Any]:
    """What a client without tasks gets: the call is held; retry it unchanged after approval."""
    text = (
        f"{_pending_text(record)} A reviewer must approve it (access request {record.id}); once approved, "
        "send the identical call again and it will run once."
    )
    result = not_executed(text, record, "available")
    del result["_meta"][DISPOSITION_META]  # not a terminal outcome: the request is still open
    return result


def executed(result: Mapping[str, Any], is_error: bool) -> dict[str, Any]:
    """The tool's own CallToolResult, marked with the SEP-2848 disposition and saying that it ran."""
    disposition = "execution-error" if is_error else "approved-executed"
    ran = "ran once after a reviewer's approval" + (" and reported an error." if is_error else ".")
    content = [*list(result.get("content") or []), {"type": "text", "text": f"callwarden: the tool {ran}"}]
    meta = {**dict(result.get("_meta") or {}), DISPOSITION_META: disposition}
    return {**dict(result), "content": content, "isError": is_error, "_meta": meta}


def too_large_to_keep(result: Mapping[str, Any]) -> dict[str, Any]:
    """What later tasks/get return for a result too large to store: that the tool ran, and how it went."""
    size = len(orjson.dumps(dict(result)))
    text = (
        f"callwarden: the tool ran once; its result ({size} bytes) was too large to keep and was "
        "returned only to the tasks/get that ran it."
    )
    meta = {DISPOSITION_META: dict(result.get("_meta") or {}).get(DISPOSITION_META, "approved-executed")}
    return {
        "content": [{"type": "text", "text": text}],
        "isError": result.get("isError") is True,
        "_meta": meta,
    }


def response(request_id: Any, result: Mapping[str, Any]) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": result})


def error(request_id: Any, code: int, message: str) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})
