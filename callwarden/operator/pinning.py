"""Mapping integrity: which discovered declared mappings an McpServer's bundle may carry.

Pure, like `plan.py` (which calls it): a discovery result in (from `discovery.py`, whatever it
fetched), the bundle object and status entries out.

A declared mapping learned from a server's tools/list is untrusted input (DESIGN.md §4). It is
pinned by the SHA-256 of its canonical JSON (`policy.mapping.digest.mapping_sha256`, the hash status.tools
reports): the operator writes it into the bundle as the tool's `declared` object only while its
hash equals the tool's `spec.tools[].acceptedMappingHash`, and only if it compiles. When the
server publishes anything else (a new tool, a changed or removed mapping, one that does not
compile), the tool keeps the declared mapping last accepted, read back from the published bundle
(the operator's memory, as for last-good specs), or has none and gets the default tools/call
mapping; the `MappingChanged` condition lists what is waiting to be accepted.

A tool whose spec carries its own `mapping` or `declared` is the platform's word: discovery
never writes over it (its entry still shows what the server declares).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from callwarden.operator.status import DISCOVERED, MAPPING_CHANGED, Condition
from callwarden.operator.validation import describe_tool
from callwarden.policy.mapping import compile_server_mapping
from callwarden.policy.mapping.digest import DECLARED_KEYS, mapping_sha256
from callwarden.policy.model import TOOL_NAME, McpServer, Tool

# Reasons of Discovered.
LISTED: Final = "ToolsListed"
PENDING: Final = "Pending"
CREDENTIAL_MISSING: Final = "CredentialMissing"
CREDENTIAL_FORBIDDEN: Final = "CredentialForbidden"
CREDENTIAL_INVALID: Final = "CredentialInvalid"
CREDENTIAL_REJECTED: Final = "CredentialRejected"
SERVER_UNREACHABLE: Final = "ServerUnreachable"
LISTING_REJECTED: Final = "ListingRejected"
# Reasons of MappingChanged.
NOT_ACCEPTED: Final = "MappingNotAccepted"
INVALID_MAPPING: Final = "MappingInvalid"
ALL_ACCEPTED: Final = "MappingsAccepted"
NO_LISTING: Final = "NoListing"

_TOOL_NAME: Final = re.compile(TOOL_NAME)


@dataclass(frozen=True)
class DiscoveryLimits:
    """Bounds on what one discovery may fetch and keep: a server is untrusted."""

    timeout_seconds: float = 10.0  # the whole exchange: connect, initialize, every tools/list page
    max_tools: int = 1024  # as many as an McpServer spec may list
    max_pages: int = 32
    max_mapping_bytes: int = 65_536  # one declared mapping, as canonical JSON
    max_response_bytes: int = 8 * 1024 * 1024  # one HTTP response body


@dataclass(frozen=True)
class DiscoveredTool:
    """One tool of a listing. `declared` is the pinned form the bundle would carry: the tool's
    name, its `coaz` flag if any and an inputSchema holding the mapping only (nothing else a server
    publishes reaches the bundle); None when the tool declares no mapping or is unusable."""

    name: str
    declared: dict[str, Any] | None = None
    sha256: str | None = None
    problem: str | None = None  # why it can never be enforced (oversized, malformed...)


@dataclass(frozen=True)
class DiscoveryResult:
    url: str
    tools: tuple[DiscoveredTool, ...] | None  # the last listing that succeeded; None if none has
    listed_at: str | None  # when that listing's content was first seen
    problem: tuple[str, str] | None = None  # (reason, message) of the latest attempt that failed


class ListingRejected(Exception):
    """The listing as a whole cannot be used (too many tools, duplicate names...)."""


def read_listing(tools: Sequence[Any], limits: DiscoveryLimits) -> tuple[DiscoveredTool, ...]:
    """The tools of a tools/list result (JSON-shaped), each pinned or with its problem."""
    if len(tools) > limits.max_tools:
        raise ListingRejected(f"the server lists more than {limits.max_tools} tools")
    result: list[DiscoveredTool] = []
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        found = _read_tool(index, tool, limits)
        if found.name in seen:
            raise ListingRejected(f"tool {found.name!r} is listed twice")
        seen.add(found.name)
        result.append(found)
    return tuple(result)


def _read_tool(index: int, tool: Any, limits: DiscoveryLimits) -> DiscoveredTool:
    name = tool.get("name") if isinstance(tool, dict) else None
    if not isinstance(name, str) or not _TOOL_NAME.match(name):
        shown = f"{name[:64]!r}" if isinstance(name, str) else f"#{index}"
        return DiscoveredTool(f"<invalid name {shown}>", problem="the name is not a valid MCP tool name")
    schema = tool.get("inputSchema")
    keys = [key for key in DECLARED_KEYS if isinstance(schema, dict) and key in schema]
    if not keys:
        return DiscoveredTool(name)
    pinned: dict[str, Any] = {"name": name, "inputSchema": {key: schema[key] for key in keys}}
    if "coaz" in tool:
        pinned["coaz"] = tool["coaz"]
    value = schema[keys[0]] if len(keys) == 1 else pinned["inputSchema"]
    size = len(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    if size > limits.max_mapping_bytes:
        problem = f"the declared mapping is {size} bytes, over the {limits.max_mapping_bytes}-byte limit"
        return DiscoveredTool(name, problem=problem)
    return DiscoveredTool(name, pinned, mapping_sha256(value))


@dataclass(frozen=True)
class Pinning:
    source: dict[str, Any]  # the McpServer bundle object, accepted declared mappings written in
    tools: list[dict[str, Any]]  # status.tools
    conditions: list[Condition]
    discovery: dict[str, Any]  # status.discovery


def pin(
    model: McpServer,
    source: Mapping[str, Any],
    result: DiscoveryResult | None,
    published: Mapping[str, Any] | None,
    previous: Mapping[str, Any],
) -> Pinning:
    """Write the accepted declared mappings into `source` (not modified: a copy is returned).

    `result` is None until discovery has run for this server in this operator process: then the
    published bundle alone says what stays enforced, and the previous status is kept.
    `published` is the McpServer object of the server's current bundle, `previous` its status.
    """
    assert model.spec.discovery is not None
    listing = {tool.name: tool for tool in result.tools} if result and result.tools is not None else None
    errors = _compile_errors(model, listing.values() if listing else ())
    remembered = _published_declared(published)
    enforced: dict[str, dict[str, Any]] = {}
    for tool in model.spec.tools:
        accepted = tool.accepted_mapping_hash
        if accepted is None or tool.mapping is not None or tool.declared is not None:
            continue
        found = (listing or {}).get(tool.name)
        if found and found.declared and found.sha256 == accepted and tool.name not in errors:
            enforced[tool.name] = found.declared
        elif _declared_sha256(remembered.get(tool.name)) == accepted:
            enforced[tool.name] = remembered[tool.name]
    spec = dict(source["spec"])
    spec["tools"] = [
        {**entry, "declared": enforced[entry["name"]]} if entry["name"] in enforced else entry
        for entry in spec.get("tools") or []
    ]
    pinned_source = {**source, "spec": spec}
    if listing is None:
        return Pinning(
            pinned_source,
            list(previous.get("tools") or []) or _tool_entries(model, enforced, {}, {}),
            _kept_conditions(result, previous),
            dict(previous.get("discovery") or {}),
        )
    assert result is not None
    return Pinning(
        pinned_source,
        _tool_entries(model, enforced, listing, errors),
        [_discovered(result), _changed(model, enforced, listing, errors)],
        {"url": result.url, "listedTime": result.listed_at, "toolsListed": len(listing)},
    )


def _compile_errors(model: McpServer, tools: Any) -> dict[str, str]:
    """Per discovered tool, why its declared mapping does not compile (this server's settings)."""
    declared = [Tool(name=t.name, declared=t.declared) for t in tools if t.declared is not None]
    if not declared:
        return {}
    probe = model.model_copy(update={"spec": model.spec.model_copy(update={"tools": declared})})
    errors: dict[str, str] = {}
    for error in compile_server_mapping(probe).errors:
        if error.tool is not None:
            errors.setdefault(error.tool, str(error))
    return errors


def _published_declared(published: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    tools = ((published or {}).get("spec") or {}).get("tools") or []
    return {t["name"]: t["declared"] for t in tools if isinstance(t.get("declared"), dict)}


def _declared_sha256(declared: Mapping[str, Any] | None) -> str | None:
    schema = (declared or {}).get("inputSchema")
    if not isinstance(schema, Mapping):
        return None
    keys = [key for key in DECLARED_KEYS if key in schema]
    return mapping_sha256(schema[keys[0]]) if len(keys) == 1 else None


def _tool_entries(
    model: McpServer,
    enforced: Mapping[str, dict[str, Any]],
    listing: Mapping[str, DiscoveredTool],
    errors: Mapping[str, str],
) -> list[dict[str, Any]]:
    """status.tools: every tool of the spec, then every other listed tool; what each enforces and,
    for a listed tool, what the server declares and whether that is accepted."""
    spec_tools = {tool.name: tool for tool in model.spec.tools}
    names = [*spec_tools, *(name for name in listing if name not in spec_tools)]
    entries = []
    for name in names:
        tool = spec_tools.get(name)
        entry: dict[str, Any] = {"name": name}
        if _TOOL_NAME.match(name):
            effective = tool or Tool(name=name)
            if name in enforced:
                effective = effective.model_copy(update={"declared": enforced[name]})
            entry.update(describe_tool(model, effective).to_status())
        found = listing.get(name)
        if found is not None:
            entry["declaredMappingHash"] = found.sha256
            accepted = tool.accepted_mapping_hash if tool is not None else None
            entry["accepted"] = found.sha256 is not None and found.sha256 == accepted
            problem = found.problem or errors.get(name)
            if problem is not None:
                entry["error"] = problem
        entries.append(entry)
    return entries


def _discovered(result: DiscoveryResult) -> Condition:
    assert result.tools is not None
    if result.problem is None:
        return Condition(DISCOVERED, True, LISTED, f"{len(result.tools)} tools listed from {result.url}")
    reason, message = result.problem
    return Condition(
        DISCOVERED, False, reason, f"{message}; keeping the listing of {result.listed_at} from {result.url}"
    )


def _changed(
    model: McpServer,
    enforced: Mapping[str, dict[str, Any]],
    listing: Mapping[str, DiscoveredTool],
    errors: Mapping[str, str],
) -> Condition:
    accepted = {tool.name: tool.accepted_mapping_hash for tool in model.spec.tools}
    waiting: list[str] = []
    invalid: list[str] = []
    for name, found in listing.items():
        now = enforced.get(name)
        keeping = (
            f"enforcing the accepted mapping {_declared_sha256(now)}"
            if now is not None
            else "calls use the spec's or the default mapping"
        )
        problem = found.problem or errors.get(name)
        if problem is not None and (found.declared is not None or found.sha256 is not None):
            invalid.append(f"tool {name!r}: declared mapping {found.sha256} is not enforced: {problem}")
        elif problem is not None:
            invalid.append(f"tool {name!r}: {problem}")
        elif found.sha256 is not None and found.sha256 != accepted.get(name):
            was = accepted.get(name) or "none"
            waiting.append(f"tool {name!r} declares mapping {found.sha256} (accepted: {was}); {keeping}")
        elif found.sha256 is None and accepted.get(name) is not None:
            waiting.append(f"tool {name!r} no longer declares a mapping; {keeping}")
    if waiting:
        hint = "set spec.tools[].acceptedMappingHash to enforce a declared mapping"
        return Condition(MAPPING_CHANGED, True, NOT_ACCEPTED, "; ".join([*waiting, *invalid, hint]))
    if invalid:
        return Condition(MAPPING_CHANGED, True, INVALID_MAPPING, "; ".join(invalid))
    return Condition(MAPPING_CHANGED, False, ALL_ACCEPTED, "every declared mapping listed is accepted")


def _kept_conditions(result: DiscoveryResult | None, previous: Mapping[str, Any]) -> list[Condition]:
    """No listing yet: the previous Discovered/MappingChanged (or Pending), updated by a failure."""
    old = {c.get("type"): c for c in previous.get("conditions") or [] if isinstance(c, Mapping)}
    kept = []
    for kind, fallback in ((DISCOVERED, PENDING), (MAPPING_CHANGED, NO_LISTING)):
        before = old.get(kind)
        if kind == DISCOVERED and result is not None and result.problem is not None:
            reason, message = result.problem
            kept.append(Condition(DISCOVERED, False, reason, f"{message}; no listing yet"))
        elif before is not None:
            status = before.get("status") == "True"
            kept.append(Condition(kind, status, str(before.get("reason")), str(before.get("message", ""))))
        else:
            kept.append(Condition(kind, False, fallback, "no tools/list answer yet"))
    return kept
