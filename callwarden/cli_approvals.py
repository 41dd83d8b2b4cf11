"""`callwarden approvals list|show|approve|deny|prune`: the reviewer's side of held tool calls.

Against the cluster (`--kubernetes`: AccessRequest objects; approving is a conditional update of
their status subresource, so RBAC decides who may approve, see deploy/rbac/approver.yaml, and the
approver recorded is the identity the API server authenticated) or against a standalone store
(`--store FILE`, the SQLite file `callwarden extauthz --approvals-store` uses; the approver is
`--as`, default $USER). Every transition posts an Event (a row of the store's event table
standalone) and, with `--audit-log`, appends a decision-log line naming the approver.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from callwarden.policy import approval as ap
from callwarden.stores.approvals import ApprovalRecords, to_object

_DURATION: Final = re.compile(r"(\d{1,6})([smhd])")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class ApprovalsError(Exception):
    """A reviewer's command that cannot be carried out (exit 2, message on stderr)."""


def add_parser(commands: Any) -> None:
    """Register `approvals` under the top-level subcommands."""
    approvals = commands.add_parser(
        "approvals",
        help="list, show, approve or deny held tool calls (AccessRequests)",
        description="Review tool calls a RequireApproval rule held. Use --kubernetes in a cluster or "
        "--store FILE standalone.",
    )
    where = approvals.add_mutually_exclusive_group(required=True)
    where.add_argument("--kubernetes", action="store_true", help="AccessRequest objects in the cluster")
    where.add_argument("--store", help="the standalone SQLite store file")
    approvals.add_argument("--kubeconfig", help="with --kubernetes: kubeconfig file (default: in-cluster)")
    approvals.add_argument("-n", "--namespace", help="namespace of the requests (default: all)")
    approvals.add_argument("--audit-log", help="append one decision-log line per transition to this file")
    actions = approvals.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the requests, oldest first")
    listing.add_argument("--state", choices=ap.APPROVAL_STATES, help="only requests in this state")
    listing.add_argument("-o", "--output", choices=("table", "json"), default="table")
    show = actions.add_parser("show", help="one request, as JSON")
    show.add_argument("id")
    approve = actions.add_parser("approve", help="approve one pending request")
    approve.add_argument("id")
    approve.add_argument("--until", help="approval valid until RFC 3339 time or for a duration (30m, 2h, 1d)")
    approve.add_argument("--comment", help="why (kept with the request)")
    approve.add_argument("--as", dest="approver", help="standalone only: the approver's name (default $USER)")
    prune = actions.add_parser("prune", help="delete requests that are over, decided or run, for a while")
    prune.add_argument("--older-than", required=True, help="a duration: 30d, 12h, ...")
    deny = actions.add_parser("deny", help="deny one pending request")
    deny.add_argument("id")
    deny.add_argument("--comment", help="why (kept with the request)")
    deny.add_argument("--as", dest="approver", help="standalone only: the approver's name (default $USER)")
    approvals.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ApprovalsError as error:
        print(f"callwarden: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if not args.kubernetes:
            raise
        from callwarden.kube.client import describe_error  # noqa: PLC0415

        # RBAC decides who may approve: a refusal is the answer, not a crash.
        print(f"callwarden: the API server refused: {describe_error(error)}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    store, identity = _open(args)
    if args.action == "list":
        return _list(store, args)
    if args.action == "prune":
        return _prune(store, args)
    record = _find(store, args.namespace, args.id)
    if args.action == "show":
        print(json.dumps(to_object(record), indent=2, sort_keys=False))
        return 0
    return _decide(store, record, args, identity)


def _open(args: argparse.Namespace) -> tuple[ApprovalRecords, Callable[[], str]]:
    if args.store:
        from callwarden.stores.sqlite import SqliteDocuments  # noqa: PLC0415

        chosen = getattr(args, "approver", None)
        return ApprovalRecords(SqliteDocuments(args.store)), lambda: chosen or getpass.getuser()
    if getattr(args, "approver", None):
        raise ApprovalsError(
            "--as is for the standalone store: in a cluster the approver is who you log in as"
        )
    from callwarden.kube.client import Kube, new_api_client  # noqa: PLC0415
    from callwarden.stores.kube import KubeDocuments  # noqa: PLC0415

    kube = Kube(new_api_client(args.kubeconfig))
    return ApprovalRecords(KubeDocuments(kube, "callwarden-approvals-cli")), lambda: _who_am_i(kube)


def _who_am_i(kube: Any) -> str:
    """The username the API server authenticated (SelfSubjectReview): the approver on record."""
    from kubernetes import client  # noqa: PLC0415

    review: Any = client.AuthenticationV1Api(kube.api).create_self_subject_review(
        client.V1SelfSubjectReview(metadata=client.V1ObjectMeta())
    )
    username: str = review.status.user_info.username
    return username


def _list(store: ApprovalRecords, args: argparse.Namespace) -> int:
    records = [r for r in store.all(args.namespace) if args.state is None or r.state == args.state]
    if args.output == "json":
        print(json.dumps([to_object(r) for r in records], indent=2))
        return 0
    rows = [("NAMESPACE", "ID", "TOOL", "SUBJECT", "RESOURCE", "STATE", "EXECUTION", "EXPIRES")]
    rows += [
        (
            r.namespace,
            r.id,
            r.tool or "",
            r.subject_id,
            str(r.resource.get("id", "")),
            ap.expire_if_due(r, datetime.now(UTC)).state,
            r.execution,
            r.expires_at,
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _prune(store: ApprovalRecords, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    duration = _DURATION.fullmatch(args.older_than)
    if duration is None:
        raise ApprovalsError(f"--older-than {args.older_than!r}: expected a duration like 30d")
    older_than = timedelta(**{_UNITS[duration.group(2)]: int(duration.group(1))})
    pruned = []
    for record in store.all(args.namespace):
        if ap.prunable(record, now, older_than):
            try:
                store.delete(record)
            except ap.StoreConflict:
                continue  # it changed since it was read: decide again next time
            pruned.append(f"{record.namespace}/{record.id}")
    print(json.dumps({"pruned": pruned}))
    return 0


def _find(store: ApprovalRecords, namespace: str | None, task_id: str) -> ap.AccessRequestRecord:
    found = (
        store.get(namespace, task_id)
        if namespace
        else next((r for r in store.all() if r.id == task_id), None)
    )
    if found is None:
        where = f" in namespace {namespace}" if namespace else ""
        raise ApprovalsError(f"no access request {task_id}{where}")
    return found


def _until(text: str | None, now: datetime) -> datetime | None:
    if text is None:
        return None
    duration = _DURATION.fullmatch(text)
    if duration is not None:
        return now + timedelta(**{_UNITS[duration.group(2)]: int(duration.group(1))})
    try:
        return ap.parse_time(text)
    except ValueError as error:
        raise ApprovalsError(f"--until {text!r}: expected an RFC 3339 time or a duration like 30m") from error


def _decide(
    store: ApprovalRecords,
    record: ap.AccessRequestRecord,
    args: argparse.Namespace,
    identity: Callable[[], str],
) -> int:
    approver = identity()
    now = datetime.now(UTC)
    step: ap.Transition
    if args.action == "approve":
        until = _until(args.until, now)
        step = lambda r: ap.approve(r, approver, datetime.now(UTC), until, args.comment)  # noqa: E731
    else:
        step = lambda r: ap.deny(r, approver, datetime.now(UTC), args.comment)  # noqa: E731
    try:
        decided = ap.transition(store, record.namespace, record.id, step)
    except (ap.InvalidTransition, ap.StoreConflict) as error:
        raise ApprovalsError(str(error)) from error
    verb = "Approved" if decided.state == "approved" else "Denied"
    until_text = f" until {decided.approved_until}" if decided.approved_until else ""
    store.event(
        decided, verb, f"{verb.lower()} by {approver}{until_text}: {decided.tool} for {decided.subject_id}"
    )
    line = _log_line(decided, approver, now)
    if args.audit_log:
        with open(args.audit_log, "a", encoding="utf-8") as log:
            log.write(json.dumps(line) + "\n")
    print(json.dumps(line))
    return 0


def _log_line(record: ap.AccessRequestRecord, approver: str, now: datetime) -> dict[str, Any]:
    """The decision-log line of a reviewer's transition (same sink and shape family as the data path's)."""
    return {
        "time": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "kind": "approval",
        "server": record.server,
        "tool": record.tool,
        "decision": record.state,
        "approver": approver,
        "approval": {"id": record.id, "state": record.state, "approved_until": record.approved_until},
        "subject": record.subject_id,
        "revision": record.revision,
    }
