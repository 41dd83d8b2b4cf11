"""What one namespace should look like: bundle ConfigMaps and statuses, from what is there now.

Pure: objects in (as the API returns them), a plan out; `reconcile.py` carries it out. One
namespace at a time, because a ToolPolicy reaches the McpServers of its own namespace only.

Last-good handling (the choice, and why). An object whose current spec is invalid is never
published. Its server's bundle keeps the object's last valid spec instead, read back from the
bundle ConfigMaps themselves (they are the operator's memory, so this survives restarts and
leader changes). Dropping an invalid ToolPolicy instead would be unsafe: a Deny policy with a
typo would open what it denied. A policy that never had a valid spec is simply absent; the
embedded PDP denies what no rule allows, so absence fails closed. The same holds for an
McpServer: an invalid spec keeps its last valid bundle; one never valid has no bundle and
ext_authz denies every call to it (no route). A last-good spec is used only for the same object
(same uid): a deleted and re-created object starts afresh.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from callwarden.kube.bundles import (
    MANAGED_BY_LABEL,
    MANAGER,
    SERVER_KEY_ANNOTATION,
    ServerBundle,
    ShardTooLarge,
    assemble,
    build_configmaps,
    bundle_object,
    merge_objects,
    read_shard,
)
from callwarden.operator.pinning import DiscoveryResult, Pinning, pin
from callwarden.operator.status import (
    INVALID,
    MAPPING_CHANGED,
    READY,
    Condition,
    EventSpec,
    conditions,
    status_patch,
    transition,
    transition_of,
)
from callwarden.operator.validation import (
    PolicyCheck,
    Problem,
    ServerCheck,
    check_policy_object,
    check_server,
)
from callwarden.policy.bundle import BundleError, compile_bundle
from callwarden.policy.loader import ConfigError, config_from_objects
from callwarden.policy.model import McpServer, ToolPolicy

PUBLISHED: Final = "Published"
VALID: Final = "Valid"
TARGET_NOT_FOUND: Final = "TargetNotFound"
BUNDLE_TOO_LARGE: Final = "BundleTooLarge"
BUNDLE_ERROR: Final = "BundleError"


@dataclass(frozen=True)
class StatusUpdate:
    """A status to write (as a merge patch guarded by `resource_version`) and maybe an Event."""

    plural: str
    kind: str
    namespace: str
    name: str
    uid: str
    resource_version: str
    patch: dict[str, Any]
    event: EventSpec | None  # a Ready transition
    mapping_event: EventSpec | None = None  # a MappingChanged transition (pinning.py)


@dataclass
class NamespacePlan:
    namespace: str
    writes: list[tuple[dict[str, Any], dict[str, Any] | None]] = field(
        default_factory=list
    )  # (desired, existing)
    deletes: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.writes or self.deletes or self.statuses)


@dataclass
class _ServerOutcome:
    check: ServerCheck
    model: McpServer | None = None  # the spec enforced: the current one, or the last good one
    enforced_generation: int | None = None
    bundle: ServerBundle | None = None  # what its ConfigMaps hold once the plan is carried out
    problem: tuple[str, str] | None = None  # (reason, message) when the bundle cannot be published
    pinning: Pinning | None = None  # mapping discovery's part (pinning.py), when the spec asks for it


@dataclass
class _PolicyOutcome:
    model: ToolPolicy
    obj: dict[str, Any]  # the bundle form of the spec enforced
    generation: int | None


def plan_namespace(
    namespace: str,
    servers: Sequence[Mapping[str, Any]],
    policies: Sequence[Mapping[str, Any]],
    configmaps: Sequence[dict[str, Any]],
    now: str,
    *,
    enforcement: Mapping[str, Mapping[str, Any]] | None = None,
    discovered: Mapping[str, DiscoveryResult] | None = None,
) -> NamespacePlan:
    """`enforcement`: McpServer name -> `status.enforcement` (mesh coverage, from mesh.py).
    `discovered`: McpServer name -> its latest mapping discovery (discovery.py), as data."""
    plan = NamespacePlan(namespace)
    ours = [cm for cm in configmaps if (cm["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGER]
    existing = {cm["metadata"]["name"]: cm for cm in ours}
    published, _ = assemble(read_shard(cm) for cm in ours)
    last_policies = {
        obj["metadata"].get("name"): obj
        for obj in merge_objects(published.values())
        if obj.get("kind") == "ToolPolicy"
    }
    live_servers = {obj["metadata"]["name"]: obj for obj in servers}

    effective: dict[str, _PolicyOutcome] = {}
    policy_checks: dict[str, PolicyCheck] = {}
    for obj in sorted(policies, key=_name):
        check = policy_checks[_name(obj)] = check_policy_object(obj)
        if check.policy is not None and check.reason is None:
            effective[_name(obj)] = _PolicyOutcome(check.policy, bundle_object(obj), _generation(obj))
        else:
            last = _same_object(last_policies.get(_name(obj)), obj)
            model = _validated(last)
            if last is not None and isinstance(model, ToolPolicy):
                effective[_name(obj)] = _PolicyOutcome(model, last, _generation(last))

    outcomes: dict[str, _ServerOutcome] = {}
    for name, obj in sorted(live_servers.items()):
        key = f"{namespace}/{name}"
        outcome = outcomes[name] = _plan_server(
            plan, obj, published.get(key), effective, existing, discovered=(discovered or {}).get(name)
        )
        if outcome.bundle is None:  # nothing to enforce: no ConfigMaps may linger
            plan.deletes.extend(cm for cm in ours if _server_key(cm) == key)
    live_keys = {f"{namespace}/{name}" for name in live_servers}
    plan.deletes.extend(cm for cm in ours if _server_key(cm) not in live_keys)

    for name, obj in sorted(live_servers.items()):
        _server_status(plan, obj, outcomes[name], now, (enforcement or {}).get(name))
    for obj in sorted(policies, key=_name):
        _policy_status(
            plan,
            obj=obj,
            check=policy_checks[_name(obj)],
            enforced=effective.get(_name(obj)),
            servers=outcomes,
            now=now,
        )
    return plan


# --- McpServers ----------------------------------------------------------------------------------


def _plan_server(
    plan: NamespacePlan,
    obj: Mapping[str, Any],
    published: ServerBundle | None,
    effective: Mapping[str, _PolicyOutcome],
    existing: Mapping[str, dict[str, Any]],
    *,
    discovered: DiscoveryResult | None,
) -> _ServerOutcome:
    check = check_server(obj)
    outcome = _ServerOutcome(check, bundle=published)
    if check.reason is None and check.server is not None:
        source, outcome.model, outcome.enforced_generation = (
            bundle_object(obj),
            check.server,
            _generation(obj),
        )
        if check.server.spec.discovery is not None:
            last = published.objects[0] if published else None
            outcome.pinning = pin(check.server, source, discovered, last, obj.get("status") or {})
            source = outcome.pinning.source
    else:
        last = _same_object(published.objects[0] if published else None, obj)
        model = _validated(last)
        if last is None or not isinstance(model, McpServer):
            outcome.bundle = None
            return outcome
        source, outcome.model, outcome.enforced_generation = last, model, _generation(last)
    model = outcome.model
    objects = [source] + [p.obj for _, p in sorted(effective.items()) if p.model.targets_server(model)]
    try:
        config = config_from_objects(objects)
        compile_bundle(config)  # exactly what ext_authz will run on these ConfigMaps
        desired = build_configmaps(obj, objects, config.revision)
    except ShardTooLarge as error:
        outcome.problem = (BUNDLE_TOO_LARGE, f"bundle not updated: {error}")
        return outcome
    except (ConfigError, BundleError) as error:
        outcome.problem = (BUNDLE_ERROR, f"bundle not updated, it does not compile: {error}")
        return outcome
    names = {cm["metadata"]["name"] for cm in desired}
    for cm in desired:
        before = existing.get(cm["metadata"]["name"])
        if before is None or not _same_content(before, cm):
            plan.writes.append((cm, before))
    key = f"{model.metadata.namespace}/{model.metadata.name}"
    plan.deletes.extend(
        cm for name, cm in sorted(existing.items()) if _server_key(cm) == key and name not in names
    )
    outcome.bundle = ServerBundle(key, config.revision, tuple(objects), tuple(sorted(names)))
    return outcome


def _server_status(
    plan: NamespacePlan,
    obj: Mapping[str, Any],
    outcome: _ServerOutcome,
    now: str,
    enforcement: Mapping[str, Any] | None = None,
) -> None:
    check, bundle = outcome.check, outcome.bundle
    wanted: list[Condition]
    if check.reason is not None:
        enforced = (
            f"still enforcing its last valid spec (generation {outcome.enforced_generation})"
            if outcome.model is not None
            else "it has no bundle: ext_authz denies every call to it"
        )
        message = f"{_problems(check.problems)}; {enforced}"
        wanted = [
            Condition(READY, False, check.reason, message),
            Condition(INVALID, True, check.reason, message),
        ]
    elif outcome.problem is not None:
        reason, message = outcome.problem
        wanted = [Condition(READY, False, reason, message), Condition(INVALID, False, VALID, "")]
    else:
        assert bundle is not None
        message = f"bundle revision {bundle.revision} published in ConfigMap {', '.join(bundle.configmaps)}"
        wanted = [Condition(READY, True, PUBLISHED, message), Condition(INVALID, False, VALID, "")]
    pinning = outcome.pinning
    if pinning is not None:
        wanted.extend(pinning.conditions)
    previous = obj.get("status") or {}
    status: dict[str, Any] = {
        "observedGeneration": _generation(obj),
        "conditions": conditions(previous, wanted, _generation(obj), now),
    }
    if check.server is not None:
        status["tools"] = [t.to_status() for t in check.tools] if pinning is None else pinning.tools
        status["toolCount"] = len(status["tools"])
    if pinning is not None:
        status["discovery"] = pinning.discovery
    if bundle is not None:
        status["enforcedGeneration"] = _generation(bundle.objects[0])
        status["bundleRevision"] = bundle.revision
        status["bundleConfigMaps"] = list(bundle.configmaps)
        status["policies"] = sorted(_name(o) for o in bundle.objects[1:])
    if enforcement is not None:
        status["enforcement"] = dict(enforcement)
    _add_status(plan, plural="mcpservers", kind="McpServer", obj=obj, previous=previous, status=status)


# --- ToolPolicies --------------------------------------------------------------------------------


def _policy_status(
    plan: NamespacePlan,
    *,
    obj: Mapping[str, Any],
    check: PolicyCheck,
    enforced: _PolicyOutcome | None,
    servers: Mapping[str, _ServerOutcome],
    now: str,
) -> None:
    name = _name(obj)
    carriers = sorted(
        server
        for server, outcome in servers.items()
        if outcome.bundle is not None
        and any(_name(o) == name for o in outcome.bundle.objects[1:] if o.get("kind") == "ToolPolicy")
    )
    on = f"enforced on McpServer {', '.join(carriers)}" if carriers else "enforced on no McpServer"
    wanted: list[Condition]
    if check.reason is not None:
        kept = (
            f"still enforcing its last valid spec (generation {enforced.generation}): {on}"
            if enforced is not None
            else "not enforced (it never had a valid spec)"
        )
        message = f"{_problems(check.problems)}; {kept}"
        wanted = [
            Condition(READY, False, check.reason, message),
            Condition(INVALID, True, check.reason, message),
        ]
    else:
        assert check.policy is not None
        missing = _missing_targets(check.policy, servers)
        stuck = [
            (server, outcome.problem)
            for server, outcome in sorted(servers.items())
            if outcome.problem is not None
            and outcome.model is not None
            and check.policy.targets_server(outcome.model)
        ]
        if missing:
            message = f"{'; '.join(missing)}; {on}"
            wanted = [Condition(READY, False, TARGET_NOT_FOUND, message)]
        elif stuck:
            message = "; ".join(f"McpServer {server}: {why}" for server, (_, why) in stuck)
            wanted = [Condition(READY, False, stuck[0][1][0], message)]
        else:
            wanted = [Condition(READY, True, PUBLISHED, on)]
        wanted.append(Condition(INVALID, False, VALID, ""))
    previous = obj.get("status") or {}
    status: dict[str, Any] = {
        "observedGeneration": _generation(obj),
        "conditions": conditions(previous, wanted, _generation(obj), now),
        "servers": carriers,
    }
    if enforced is not None:
        status["enforcedGeneration"] = enforced.generation
    _add_status(plan, plural="toolpolicies", kind="ToolPolicy", obj=obj, previous=previous, status=status)


def _missing_targets(policy: ToolPolicy, servers: Mapping[str, _ServerOutcome]) -> list[str]:
    namespace = policy.metadata.namespace
    if "*" in policy.spec.targets and not servers:
        return [f"target '*': namespace {namespace!r} has no McpServer"]
    return [
        f"target {target!r}: no McpServer {namespace}/{target}"
        for target in policy.spec.targets
        if target != "*" and target not in servers
    ]


# --- Helpers ---------------------------------------------------------------------------------------


def _add_status(
    plan: NamespacePlan,
    *,
    plural: str,
    kind: str,
    obj: Mapping[str, Any],
    previous: Mapping[str, Any],
    status: dict[str, Any],
) -> None:
    if dict(previous) == status:
        return
    metadata = obj["metadata"]
    plan.statuses.append(
        StatusUpdate(
            plural=plural,
            kind=kind,
            namespace=metadata.get("namespace", plan.namespace),
            name=metadata["name"],
            uid=metadata.get("uid", ""),
            resource_version=metadata.get("resourceVersion", ""),
            patch=status_patch(previous, status),
            event=transition(previous, status),
            mapping_event=transition_of(MAPPING_CHANGED, previous, status),
        )
    )


def _problems(problems: Sequence[Problem]) -> str:
    return "; ".join(str(p) for p in problems)


def _name(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"]["name"])


def _generation(obj: Mapping[str, Any]) -> int | None:
    generation = (obj.get("metadata") or {}).get("generation")
    return generation if isinstance(generation, int) else None


def _server_key(cm: Mapping[str, Any]) -> str:
    return str((cm["metadata"].get("annotations") or {}).get(SERVER_KEY_ANNOTATION, ""))


def _same_object(last: dict[str, Any] | None, live: Mapping[str, Any]) -> dict[str, Any] | None:
    """`last` if it is a former spec of the very object `live` (same uid), else None."""
    if last is None or (last.get("metadata") or {}).get("uid") != live["metadata"].get("uid"):
        return None
    return last


def _validated(obj: Mapping[str, Any] | None) -> McpServer | ToolPolicy | None:
    if obj is None:
        return None
    try:
        config = config_from_objects([obj])
    except ConfigError:  # valid when published, not any more (a stricter callwarden): drop it
        return None
    found: list[McpServer | ToolPolicy] = [*config.servers.values(), *config.policies.values()]
    return found[0]


def _same_content(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether a ConfigMap already says what `desired` says (ignoring what the server adds)."""
    have, want = existing["metadata"], desired["metadata"]
    return (
        existing.get("data") == desired.get("data")
        and (have.get("labels") or {}) == want["labels"]
        and (have.get("annotations") or {}) == want["annotations"]
        and [_owner(o) for o in have.get("ownerReferences") or []]
        == [_owner(o) for o in want["ownerReferences"]]
    )


def _owner(reference: Mapping[str, Any]) -> tuple[Any, ...]:
    return (reference.get("apiVersion"), reference.get("kind"), reference.get("name"), reference.get("uid"))
