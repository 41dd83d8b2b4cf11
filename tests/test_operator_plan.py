"""operator.plan: what a namespace's bundles and statuses should be, from the objects in it (pure)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from callwarden.kube.bundles import (
    BUNDLE_LABEL,
    DATA_KEY,
    MANAGED_BY_LABEL,
    MAX_SHARD_BYTES,
    REVISION_ANNOTATION,
    SERVER_KEY_ANNOTATION,
    SERVER_LABEL,
    SHARD_TARGET_BYTES,
)
from callwarden.operator.plan import NamespacePlan, StatusUpdate, plan_namespace
from callwarden.policy.loader import config_from_objects
from tests.support.operator import policy_object, rule, server_object

NS = "team-a"
NOW = "2026-11-24T10:00:00Z"
LATER = "2026-11-24T11:00:00Z"
BAD_WHEN = "subject.id =="


def live(obj: dict[str, Any], uid: str, generation: int = 1) -> dict[str, Any]:
    """An object as the API server returns it: uid, generation, resourceVersion."""
    result = copy.deepcopy(obj)
    result["metadata"].update(uid=uid, generation=generation, resourceVersion=str(generation * 10))
    return result


def finance(**spec: Any) -> dict[str, Any]:
    return live(
        server_object(NS, "finance", "http://127.0.0.1:1/jwks.json", "https://issuer.example", **spec), "s1"
    )


def allow_all(generation: int = 1, uid: str = "p1", **changes: Any) -> dict[str, Any]:
    obj = policy_object(NS, "allow-all", [rule("everything", "Allow")], **changes)
    return live(obj, uid, generation)


def deny_when(when: str, generation: int = 1, uid: str = "p2") -> dict[str, Any]:
    return live(policy_object(NS, "guard", [rule("block", "Deny", when=when)]), uid, generation)


def applied(plan: NamespacePlan, configmaps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The namespace's ConfigMaps once `plan` is carried out (what the API server would hold)."""
    held = {cm["metadata"]["name"]: cm for cm in configmaps}
    for desired, _ in plan.writes:
        held[desired["metadata"]["name"]] = copy.deepcopy(desired)
    for gone in plan.deletes:
        held.pop(gone["metadata"]["name"], None)
    return list(held.values())


def with_status(obj: dict[str, Any], plan: NamespacePlan) -> dict[str, Any]:
    """`obj` with the status the plan writes for it."""
    update = status_of(plan, obj["metadata"]["name"])
    result = copy.deepcopy(obj)
    status = dict(result.get("status") or {})
    for key, value in update.patch.items():
        if value is None:
            status.pop(key, None)
        else:
            status[key] = value
    result["status"] = status
    return result


def status_of(plan: NamespacePlan, name: str) -> StatusUpdate:
    return next(update for update in plan.statuses if update.name == name)


def ready(update: StatusUpdate, kind: str = "Ready") -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in update.patch["conditions"] if c["type"] == kind)
    return found


def bundled(configmaps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for cm in sorted(
        configmaps, key=lambda c: int(c["metadata"]["annotations"]["callwarden.io/shard-index"])
    ):
        objects.extend(json.loads(cm["data"][DATA_KEY]))
    return objects


def test_a_valid_server_and_policy_become_one_labelled_owned_configmap() -> None:
    plan = plan_namespace(NS, [finance()], [allow_all()], [], NOW)
    ((configmap, existing),) = plan.writes
    metadata = configmap["metadata"]
    assert existing is None
    assert metadata["name"] == "callwarden-bundle-finance-0"
    assert metadata["namespace"] == NS
    assert metadata["labels"][BUNDLE_LABEL] == "true"
    assert metadata["labels"][SERVER_LABEL] == "finance"
    assert metadata["labels"][MANAGED_BY_LABEL] == "callwarden-operator"
    assert metadata["annotations"][SERVER_KEY_ANNOTATION] == f"{NS}/finance"
    owner = metadata["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "McpServer",
        "finance",
        "s1",
        True,
    )


def test_the_bundle_holds_the_server_then_its_policies_without_status() -> None:
    server = finance()
    server["status"] = {"observedGeneration": 1}
    plan = plan_namespace(NS, [server], [allow_all()], [], NOW)
    objects = bundled([cm for cm, _ in plan.writes])
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("McpServer", "finance"),
        ("ToolPolicy", "allow-all"),
    ]
    assert all("status" not in o and "resourceVersion" not in o["metadata"] for o in objects)
    assert objects[1]["spec"] == allow_all()["spec"]


def test_the_revision_annotation_is_the_loaders_content_address_of_the_bundle() -> None:
    plan = plan_namespace(NS, [finance()], [allow_all()], [], NOW)
    ((configmap, _),) = plan.writes
    expected = config_from_objects(bundled([configmap])).revision
    assert configmap["metadata"]["annotations"][REVISION_ANNOTATION] == expected
    assert status_of(plan, "finance").patch["bundleRevision"] == expected


def test_a_published_server_is_ready_and_not_invalid() -> None:
    update = status_of(plan_namespace(NS, [finance()], [], [], NOW), "finance")
    assert (ready(update)["status"], ready(update)["reason"]) == ("True", "Published")
    assert (ready(update, "Invalid")["status"], ready(update, "Invalid")["reason"]) == ("False", "Valid")
    assert update.patch["observedGeneration"] == 1
    assert ready(update)["lastTransitionTime"] == NOW


def test_server_status_lists_each_tool_with_its_mapping_source_and_hash() -> None:
    mapping = {"evaluation": {"resource": {"type": "report", "id": "$params.arguments.id"}}}
    declared = {"name": "b", "inputSchema": {"type": "object", "x-authzen-mapping": mapping}}
    server = finance(
        tools=[{"name": "a", "mapping": mapping}, {"name": "b", "declared": declared}, {"name": "c"}]
    )
    status = status_of(plan_namespace(NS, [server], [], [], NOW), "finance").patch
    assert status["toolCount"] == 3
    assert [(t["name"], t["source"]) for t in status["tools"]] == [
        ("a", "platform"),
        ("b", "declared"),
        ("c", "default"),
    ]
    assert status["tools"][0]["sha256"] == status["tools"][1]["sha256"]  # the same mapping, the same hash
    assert len(status["tools"][2]["sha256"]) == 64


def test_a_policy_with_a_bad_expression_is_invalid_naming_field_and_expression() -> None:
    update = status_of(plan_namespace(NS, [finance()], [deny_when(BAD_WHEN)], [], NOW), "guard")
    invalid = ready(update, "Invalid")
    assert (invalid["status"], invalid["reason"]) == ("True", "CompileError")
    assert "spec.rules[0].when" in invalid["message"]
    assert repr(BAD_WHEN) in invalid["message"]
    assert (ready(update)["status"], ready(update)["reason"]) == ("False", "CompileError")


def test_a_policy_that_was_never_valid_is_absent_from_the_bundle() -> None:
    plan = plan_namespace(NS, [finance()], [deny_when(BAD_WHEN)], [], NOW)
    assert [o["kind"] for o in bundled([cm for cm, _ in plan.writes])] == ["McpServer"]
    assert "never had a valid spec" in ready(status_of(plan, "guard"))["message"]


def test_a_policy_turned_invalid_keeps_its_last_valid_spec_in_the_bundle() -> None:
    good = deny_when("resource.id == 'secret'")
    first = plan_namespace(NS, [finance()], [good], [], NOW)
    configmaps = applied(first, [])
    broken = deny_when(BAD_WHEN, generation=2)
    second = plan_namespace(NS, [finance()], [broken], configmaps, LATER)
    assert second.writes == []  # the bundle already holds the last good spec: nothing to change
    assert bundled(configmaps)[1]["spec"] == good["spec"]
    update = status_of(second, "guard")
    assert "still enforcing its last valid spec (generation 1)" in ready(update)["message"]
    assert update.patch["enforcedGeneration"] == 1
    assert update.patch["observedGeneration"] == 2


def test_a_recreated_policy_does_not_inherit_the_deleted_ones_last_valid_spec() -> None:
    configmaps = applied(plan_namespace(NS, [finance()], [deny_when("true")], [], NOW), [])
    recreated = deny_when(BAD_WHEN, uid="another-uid")
    plan = plan_namespace(NS, [finance()], [recreated], configmaps, LATER)
    assert [o["kind"] for o in bundled(applied(plan, configmaps))] == ["McpServer"]


def test_fixing_an_invalid_policy_publishes_the_fix() -> None:
    configmaps = applied(plan_namespace(NS, [finance()], [deny_when("true")], [], NOW), [])
    configmaps = applied(
        plan_namespace(NS, [finance()], [deny_when(BAD_WHEN, 2)], configmaps, NOW), configmaps
    )
    fixed = deny_when("false", generation=3)
    plan = plan_namespace(NS, [finance()], [fixed], configmaps, LATER)
    assert bundled(applied(plan, configmaps))[1]["spec"] == fixed["spec"]
    assert ready(status_of(plan, "guard"))["reason"] == "Published"


@pytest.mark.parametrize(
    ("targets", "servers", "expected"),
    [
        (["payroll"], [finance()], "target 'payroll': no McpServer team-a/payroll"),
        (["*"], [], "target '*': namespace 'team-a' has no McpServer"),
        (["finance", "payroll"], [finance()], "target 'payroll'"),
    ],
    ids=["named-missing", "star-empty-namespace", "one-of-two-missing"],
)
def test_a_policy_whose_target_is_missing_reports_target_not_found(
    targets: list[str], servers: list[dict[str, Any]], expected: str
) -> None:
    update = status_of(plan_namespace(NS, servers, [allow_all(targets=targets)], [], NOW), "allow-all")
    condition = ready(update)
    assert (condition["status"], condition["reason"]) == ("False", "TargetNotFound")
    assert expected in condition["message"]
    assert ready(update, "Invalid")["status"] == "False"


def test_a_server_with_a_bad_mapping_expression_is_invalid_naming_the_tool_field() -> None:
    mapping = {"evaluation": {"resource": {"type": "report", "id": "$params.arguments.("}}}
    plan = plan_namespace(NS, [finance(tools=[{"name": "report", "mapping": mapping}])], [], [], NOW)
    invalid = ready(status_of(plan, "finance"), "Invalid")
    assert (invalid["status"], invalid["reason"]) == ("True", "MappingError")
    assert "spec.tools[0].mapping.evaluation.resource.id" in invalid["message"]
    assert "params.arguments.(" in invalid["message"]
    assert plan.writes == []  # never valid: no bundle, ext_authz has no route to it (denied)


def test_a_server_failing_the_schema_is_invalid_naming_the_field() -> None:
    server = finance()
    server["spec"]["issuers"][0]["jwksUri"] = "not a url"
    invalid = ready(status_of(plan_namespace(NS, [server], [], [], NOW), "finance"), "Invalid")
    assert invalid["reason"] == "SchemaError"
    assert "spec.issuers[0].jwksUri" in invalid["message"]


def test_a_server_turned_invalid_keeps_its_last_valid_bundle() -> None:
    configmaps = applied(plan_namespace(NS, [finance()], [], [], NOW), [])
    broken = finance()
    broken["metadata"]["generation"] = 2
    broken["spec"]["issuers"] = []
    plan = plan_namespace(NS, [broken], [], configmaps, LATER)
    assert (plan.writes, plan.deletes) == ([], [])
    assert (
        "still enforcing its last valid spec (generation 1)" in ready(status_of(plan, "finance"))["message"]
    )


def test_a_deleted_server_has_its_configmaps_deleted() -> None:
    configmaps = applied(plan_namespace(NS, [finance()], [allow_all()], [], NOW), [])
    plan = plan_namespace(NS, [], [allow_all()], configmaps, LATER)
    assert [cm["metadata"]["name"] for cm in plan.deletes] == ["callwarden-bundle-finance-0"]


def test_a_deleted_policy_leaves_the_bundle() -> None:
    configmaps = applied(plan_namespace(NS, [finance()], [allow_all()], [], NOW), [])
    plan = plan_namespace(NS, [finance()], [], configmaps, LATER)
    assert [o["kind"] for o in bundled(applied(plan, configmaps))] == ["McpServer"]


def test_configmaps_the_operator_does_not_manage_are_left_alone() -> None:
    foreign = {"metadata": {"name": "callwarden-bundle-x-0", "labels": {BUNDLE_LABEL: "true"}}, "data": {}}
    plan = plan_namespace(NS, [], [], [foreign], NOW)
    assert plan.deletes == []


def test_a_second_plan_over_its_own_result_changes_nothing() -> None:
    servers, policies = [finance()], [allow_all(), deny_when(BAD_WHEN)]
    first = plan_namespace(NS, servers, policies, [], NOW)
    configmaps = applied(first, [])
    servers = [with_status(s, first) for s in servers]
    policies = [with_status(p, first) for p in policies]
    assert plan_namespace(NS, servers, policies, configmaps, LATER).empty


def test_a_condition_keeps_its_transition_time_until_its_status_flips() -> None:
    first = plan_namespace(NS, [finance()], [deny_when("true")], [], NOW)
    policy = with_status(deny_when(BAD_WHEN, generation=2), first)
    second = plan_namespace(NS, [finance()], [policy], applied(first, []), LATER)
    assert ready(status_of(second, "guard"))["lastTransitionTime"] == LATER
    assert ready(status_of(second, "guard"), "Invalid")["lastTransitionTime"] == LATER
    policy = with_status(deny_when(BAD_WHEN + " ", generation=3), second)
    third = plan_namespace(NS, [finance()], [policy], applied(first, []), "2026-11-24T12:00:00Z")
    assert ready(status_of(third, "guard"))["lastTransitionTime"] == LATER


def test_ready_to_invalid_posts_a_warning_event_naming_the_expression() -> None:
    first = plan_namespace(NS, [finance()], [deny_when("true")], [], NOW)
    assert status_of(first, "guard").event is not None
    policy = with_status(deny_when(BAD_WHEN, generation=2), first)
    event = status_of(plan_namespace(NS, [finance()], [policy], applied(first, []), LATER), "guard").event
    assert event is not None
    assert (event.type, event.reason) == ("Warning", "CompileError")
    assert repr(BAD_WHEN) in event.message


def test_a_status_change_without_a_ready_transition_posts_no_event() -> None:
    first = plan_namespace(NS, [finance()], [deny_when(BAD_WHEN)], [], NOW)
    policy = with_status(deny_when("subject.id ==  ", generation=2), first)
    update = status_of(plan_namespace(NS, [finance()], [policy], applied(first, []), LATER), "guard")
    assert update.event is None


def test_a_bundle_larger_than_a_shard_is_split_across_configmaps() -> None:
    rules = [rule(f"r{i}", "Allow", tools=[f"tool-{i}-" + "x" * 100]) for i in range(200)]
    policies = [live(policy_object(NS, f"p{n}", rules), f"u{n}") for n in range(30)]
    plan = plan_namespace(NS, [finance()], policies, [], NOW)
    configmaps = [cm for cm, _ in plan.writes]
    assert len(configmaps) > 1
    assert all(len(cm["data"][DATA_KEY].encode()) <= SHARD_TARGET_BYTES for cm in configmaps)
    assert [o["metadata"]["name"] for o in bundled(configmaps)] == [
        "finance",
        *sorted(f"p{n}" for n in range(30)),
    ]
    assert {cm["metadata"]["annotations"]["callwarden.io/shard-count"] for cm in configmaps} == {
        str(len(configmaps))
    }


def test_an_object_too_large_for_a_shard_is_refused_and_the_old_bundle_kept() -> None:
    configmaps = applied(plan_namespace(NS, [finance()], [], [], NOW), [])
    long_when = "'" + "x" * 4000 + "' != ''"
    huge = live(policy_object(NS, "huge", [rule(f"r{i}", "Allow", when=long_when) for i in range(240)]), "h")
    plan = plan_namespace(NS, [finance()], [huge], configmaps, LATER)
    assert (plan.writes, plan.deletes) == ([], [])
    condition = ready(status_of(plan, "finance"))
    assert (condition["status"], condition["reason"]) == ("False", "BundleTooLarge")
    assert str(MAX_SHARD_BYTES) in condition["message"]


def test_a_valid_policy_its_server_cannot_publish_is_not_ready() -> None:
    configmaps = applied(plan_namespace(NS, [finance()], [], [], NOW), [])
    long_when = "'" + "x" * 4000 + "' != ''"
    huge = live(policy_object(NS, "huge", [rule(f"r{i}", "Allow", when=long_when) for i in range(240)]), "h")
    condition = ready(status_of(plan_namespace(NS, [finance()], [huge], configmaps, LATER), "huge"))
    assert (condition["status"], condition["reason"]) == ("False", "BundleTooLarge")
    assert condition["message"].startswith("McpServer finance: bundle not updated")
