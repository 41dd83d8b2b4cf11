"""`callwarden missions ...` and `callwarden audit --mission`: propose, review and audit missions.

Both work against the standalone store (`--store FILE`, the SQLite file ext_authz reads with
`--missions FILE`) or a cluster (`--kubernetes`, the API server; approving is a write of the
Mission's status subresource, so RBAC on `missions/status` decides who may approve, see
deploy/rbac/missions.yaml).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from callwarden.policy.loader import ConfigError, load_missions
from callwarden.policy.mission import MissionIndex, MissionTransitionError, effective_phase, mission_reference
from callwarden.policy.trail import TrailError, build_trail, render_json, render_text
from callwarden.stores.documents import DocumentStore, StoreConflict
from callwarden.stores.missions import MissionRecords

EXIT_OK = 0
EXIT_UNVERIFIED = 1
EXIT_INPUT_ERROR = 2
# A decision-log file larger than this is refused rather than read into memory.
MAX_LOG_BYTES = 1 << 30


class MissionCommandError(Exception):
    """Bad input or a refused command: exit 2 with the message."""


def _open(args: argparse.Namespace) -> tuple[DocumentStore, Callable[[], str]]:
    """The store, and who acts: standalone the `--as` name (default the login name); in a
    cluster the user the API server authenticated, never a name given on the command line."""
    if args.kubernetes == bool(args.store):
        raise MissionCommandError("name the store: --store FILE (standalone) or --kubernetes (cluster)")
    claimed = getattr(args, "as_", None)
    if args.store:
        from callwarden.stores.sqlite import SqliteDocuments  # noqa: PLC0415

        return SqliteDocuments(args.store), lambda: claimed or getpass.getuser()
    if claimed:
        raise MissionCommandError(
            "--as is for the standalone store: in a cluster you act as who you log in as"
        )
    from callwarden.kube.client import Kube, new_api_client  # noqa: PLC0415 (kubernetes only here)
    from callwarden.stores.kube import KubeDocuments  # noqa: PLC0415

    kube = Kube(new_api_client(args.kubeconfig))
    return KubeDocuments(kube, instance="callwarden-missions"), kube.username


def _records(args: argparse.Namespace) -> MissionRecords:
    return MissionRecords(_open(args)[0])


def _key(value: str) -> str:
    if value.count("/") != 1:
        raise MissionCommandError(f"a mission is named NAMESPACE/NAME, not {value!r}")
    return value


def _propose(args: argparse.Namespace) -> int:
    try:
        missions = load_missions([Path(args.file)])
    except ConfigError as error:
        raise MissionCommandError("invalid mission:\n  " + "\n  ".join(map(str, error.problems))) from error
    documents, actor = _open(args)
    records = MissionRecords(documents)
    for mission in missions:
        try:
            records.propose(mission, actor())
        except StoreConflict as error:
            raise MissionCommandError(str(error)) from error
        print(f"proposed {mission.key} {mission_reference(mission.spec)}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    rows = [("MISSION", "PHASE", "SUBJECT", "EXPIRES", "REFERENCE", "PURPOSE")]
    for mission in _records(args).all(args.namespace):
        reference = mission_reference(mission.spec)
        rows.append(
            (
                mission.key,
                str(effective_phase(mission, now)),
                mission.spec.subject,
                mission.spec.expires,
                reference[:19] + "…",
                mission.spec.purpose,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    records = _records(args)
    key = _key(args.mission)
    mission = records.get(key)
    if mission is None:
        raise MissionCommandError(f"no mission {key}")
    lineage = MissionIndex(records.all(key.split("/")[0])).lineage_of(key)
    shown = mission.model_dump(mode="json", by_alias=True, exclude_none=True)
    shown["reference"] = mission_reference(mission.spec)
    shown["effectivePhase"] = effective_phase(mission, datetime.now(UTC))
    shown["expansions"] = [m.key for m in lineage[1:]]
    sys.stdout.write(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_OK


def _move(args: argparse.Namespace) -> int:
    key = _key(args.mission)
    try:
        documents, actor = _open(args)
        mission = MissionRecords(documents).move(key, args.command_name, actor())
    except (LookupError, MissionTransitionError, StoreConflict) as error:
        raise MissionCommandError(str(error)) from error
    print(f"{mission.key} {mission.status.phase} by {mission.status.approver} at {mission.status.reference}")
    return EXIT_OK


def _log_lines(paths: Sequence[str]) -> Iterator[tuple[str, Any]]:
    for path in paths:
        file = Path(path)
        try:
            if file.stat().st_size > MAX_LOG_BYTES:
                raise MissionCommandError(f"{path}: larger than {MAX_LOG_BYTES} bytes")
            with file.open("rb") as stream:
                for number, raw in enumerate(stream, start=1):
                    if raw.strip():
                        try:
                            yield f"{path}:{number}", orjson.loads(raw)
                        except orjson.JSONDecodeError as error:
                            raise MissionCommandError(f"{path}:{number}: not JSON ({error})") from error
        except OSError as error:
            raise MissionCommandError(f"{path}: {error.strerror}") from error


def _audit(args: argparse.Namespace) -> int:
    key = _key(args.mission)
    records = _records(args)
    lineage = MissionIndex(records.all(key.split("/")[0])).lineage_of(key)
    if not lineage:
        raise MissionCommandError(f"no mission {key}")
    try:
        trail = build_trail(lineage, _log_lines(args.logs))
    except TrailError as error:
        raise MissionCommandError(str(error)) from error
    sys.stdout.write(render_json(trail) if args.json else render_text(trail))
    return EXIT_OK if trail["verified"] else EXIT_UNVERIFIED


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", help="standalone: the SQLite file (ext_authz --missions FILE)")
    parser.add_argument(
        "--kubernetes", action="store_true", help="cluster: Mission objects in the API server"
    )
    parser.add_argument("--kubeconfig", help="with --kubernetes: kubeconfig file (default: in-cluster)")


def add_mission_commands(commands: Any) -> None:
    """`missions` and `audit` subcommands of the `callwarden` parser."""
    missions = commands.add_parser("missions", help="propose, list, show, approve, deny, revoke missions")
    actions = missions.add_subparsers(dest="command_name", required=True)
    propose = actions.add_parser("propose", help="propose the Mission(s) of a YAML file")
    propose.add_argument("-f", "--file", required=True, help="YAML file with Mission objects")
    propose.add_argument("--as", dest="as_", help="standalone: who proposes (default: the login name)")
    propose.set_defaults(handler=_guarded(_propose))
    listing = actions.add_parser("list", help="every mission and its phase as enforcement sees it")
    listing.add_argument("-n", "--namespace", help="one namespace only")
    listing.set_defaults(handler=_guarded(_list))
    show = actions.add_parser("show", help="one mission, its reference and its expansions (JSON)")
    show.add_argument("mission", help="NAMESPACE/NAME")
    show.set_defaults(handler=_guarded(_show))
    for verb, text in (
        ("approve", "approve the mission's current spec (its reference)"),
        ("deny", "deny a proposed mission"),
        ("revoke", "revoke an approved mission: the next call under it is denied"),
    ):
        action = actions.add_parser(verb, help=text)
        action.add_argument("mission", help="NAMESPACE/NAME")
        action.add_argument("--as", dest="as_", help="standalone: who decides (default: the login name)")
        action.set_defaults(handler=_guarded(_move))
    for parser in (propose, listing, show, *(actions.choices[v] for v in ("approve", "deny", "revoke"))):
        _store_arguments(parser)

    audit = commands.add_parser(
        "audit",
        help="a mission's whole trail from decision logs of any number of replicas and servers",
        description="Print the mission's approval, expansions and every call under it, in time order, "
        "and the calls its agents made under no mission meanwhile. Exit 0 when every allowed call "
        "carries the mission's approved reference, 1 when one does not, 2 on bad input.",
    )
    audit.add_argument("--mission", required=True, help="NAMESPACE/NAME")
    audit.add_argument("--json", action="store_true", help="the trail as JSON")
    audit.add_argument("logs", nargs="+", metavar="FILE", help="decision-log files (JSON lines)")
    _store_arguments(audit)
    audit.set_defaults(handler=_guarded(_audit))


def _api_message(error: Exception) -> str:
    try:
        message = orjson.loads(getattr(error, "body", None) or b"{}").get("message")
    except (orjson.JSONDecodeError, AttributeError):
        message = None
    return str(message or getattr(error, "reason", "") or error)


def _guarded(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            result: int = handler(args)
        except MissionCommandError as error:
            print(f"callwarden: {error}", file=sys.stderr)
            return EXIT_INPUT_ERROR
        except Exception as error:
            # The API server's refusal (kubernetes' ApiException, matched by its shape: the
            # client library is an optional extra): say what it said, e.g. RBAC's "forbidden".
            status = getattr(error, "status", None)
            if not isinstance(status, int):
                raise
            print(
                f"callwarden: the API server refused (HTTP {status}): {_api_message(error)}", file=sys.stderr
            )
            return EXIT_INPUT_ERROR
        return result

    return run
