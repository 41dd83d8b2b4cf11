"""The embedded PDP's AuthZEN 1.0 wire API: Access Evaluation and Access Evaluations (boxcar).

Vectors: the spec's own examples (vendored under tests/vectors/, see SOURCE.md), and the
certification scenario's request/expected pairs (openid/authzen
`certification/authorization-api-1_0-scenario.md` @ db50373, section ids in the test ids),
transcribed below against the scenario's fixture expressed as a ToolPolicy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from callwarden.policy.evaluation import AuthzenRequestError, InvalidItem, parse_evaluations
from callwarden.policy.pdp import compile_pdp
from tests.test_pdp import policy, rule

SPEC = Path(__file__).parent / "vectors" / "authzen-api-1_0-spec-examples"


def spec_example(number: int) -> Any:
    [path] = SPEC.glob(f"{number:02d}-*.json")
    return json.loads(path.read_text())


# The certification fixture (scenario §c-1-4) as rules over action.name (no context.mcp).
CERTIFICATION = compile_pdp(
    [
        policy(
            rule("read", tools=["read"]),
            rule(
                "alice-writes-unarchived",
                tools=["write"],
                when="subject.id == 'alice' && resource.?properties.status.orValue('active') != 'archived'",
            ),
            rule("admins-write", tools=["write"], when="subject.?properties.role.orValue('') == 'admin'"),
            rule("soft-delete", tools=["delete"], when="action.?properties.soft.orValue(false) == true"),
        )
    ]
)
ALICE = {"type": "user", "id": "alice"}
BOB = {"type": "user", "id": "bob"}
BOB_ADMIN = {**BOB, "properties": {"role": "admin"}}
RECORD_1 = {"type": "record", "id": "record-1"}
RECORD_2 = {"type": "record", "id": "record-2"}
ARCHIVED = {**RECORD_2, "properties": {"status": "archived"}}
READ = {"name": "read"}
WRITE = {"name": "write"}

# The spec's semantics examples decide alice reading documents 1, 2 and 3 as permit, deny, permit.
DOCUMENTS = compile_pdp([policy(rule("read-but-2", tools=["read"], when="resource.id != '2'"))])


def decisions(answer: dict[str, Any]) -> list[bool]:
    return [item["decision"] for item in answer["evaluations"]]


# --- Access Evaluation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "decision"),
    [
        pytest.param({"subject": ALICE, "action": READ, "resource": RECORD_1}, True, id="c-2-2-1"),
        pytest.param({"subject": BOB, "action": WRITE, "resource": RECORD_1}, False, id="c-2-2-2"),
        pytest.param(
            {"subject": ALICE, "action": READ, "resource": RECORD_1, "context": {"ip": "192.168.1.1"}},
            True,
            id="c-2-2-3",
        ),
        pytest.param({"subject": ALICE, "action": WRITE, "resource": ARCHIVED}, False, id="c-2-2-4"),
        pytest.param({"subject": BOB_ADMIN, "action": WRITE, "resource": ARCHIVED}, True, id="c-2-2-5"),
        pytest.param(
            {
                "subject": ALICE,
                "action": {"name": "delete", "properties": {"soft": True}},
                "resource": RECORD_1,
            },
            True,
            id="c-2-2-6",
        ),
        pytest.param(
            {
                "subject": ALICE,
                "action": {"name": "delete", "properties": {"soft": False}},
                "resource": RECORD_1,
            },
            False,
            id="c-2-2-7",
        ),
        pytest.param(
            {
                "subject": {**ALICE, "properties": {"department": "Sales", "role": "manager"}},
                "action": {"name": "read", "properties": {"method": "GET"}},
                "resource": {**RECORD_1, "properties": {"status": "active", "owner": "bob"}},
            },
            True,
            id="c-2-2-8",
        ),
        pytest.param(
            {
                "subject": ALICE,
                "action": READ,
                "resource": RECORD_1,
                "foo": "bar",
                "futureField": {"nested": True},
            },
            True,
            id="c-2-2-9",
        ),
    ],
)
def test_certification_access_evaluation(body: dict[str, Any], decision: bool) -> None:
    answer = CERTIFICATION.access_evaluation(body)
    assert answer["decision"] is decision
    assert isinstance(answer["context"], dict)


def test_spec_request_example_is_evaluated() -> None:
    pdp = compile_pdp(
        [policy(rule("can-read", tools=["can_read"], when="action.properties.method == 'GET'"))]
    )
    assert pdp.access_evaluation(spec_example(14)) == {
        "decision": True,
        "context": {
            "reasons": ["default/rules/can-read"],
            "reason": "allowed by rule 'default/rules/can-read'",
        },
    }


BAD_BODIES = [
    pytest.param({"action": READ, "resource": RECORD_1}, "subject is required", id="c-2-4-1-no-subject"),
    pytest.param({"subject": ALICE, "resource": RECORD_1}, "action is required", id="c-2-4-1-no-action"),
    pytest.param({"subject": ALICE, "action": READ}, "resource is required", id="c-2-4-1-no-resource"),
    pytest.param(
        {"subject": {"id": "alice"}, "action": READ, "resource": RECORD_1}, "subject.type", id="c-2-4-2-type"
    ),
    pytest.param(
        {"subject": {"type": "user"}, "action": READ, "resource": RECORD_1}, "subject.id", id="c-2-4-2-id"
    ),
    pytest.param({"subject": ALICE, "action": {}, "resource": RECORD_1}, "action.name", id="c-2-4-2-name"),
    pytest.param(
        {"subject": ALICE, "action": READ, "resource": {"id": "r"}}, "resource.type", id="c-2-4-2-rtype"
    ),
    pytest.param(
        {"subject": ALICE, "action": READ, "resource": {"type": "r"}}, "resource.id", id="c-2-4-2-rid"
    ),
    pytest.param(
        {"subject": "alice", "action": READ, "resource": RECORD_1}, "subject must", id="c-2-4-6-subject"
    ),
    pytest.param(
        {"subject": ALICE, "action": {"name": 123}, "resource": RECORD_1}, "action.name", id="c-2-4-6-name"
    ),
    pytest.param(
        {"subject": {**ALICE, "id": 7}, "action": READ, "resource": RECORD_1},
        "subject.id must",
        id="id-number",
    ),
    pytest.param({"subject": None, "action": READ, "resource": RECORD_1}, "subject must", id="subject-null"),
    pytest.param(
        {"subject": ALICE, "action": {"name": "read", "properties": "x"}, "resource": RECORD_1},
        "action.properties",
        id="properties-string",
    ),
    pytest.param(
        {"subject": ALICE, "action": READ, "resource": RECORD_1, "context": "now"},
        "context must",
        id="context-string",
    ),
    pytest.param(["subject", "action", "resource"], "JSON object", id="array-body"),
    pytest.param("{}", "JSON object", id="string-body"),
]


@pytest.mark.parametrize(("body", "fragment"), BAD_BODIES)
def test_malformed_access_evaluation_is_a_request_error(body: Any, fragment: str) -> None:
    with pytest.raises(AuthzenRequestError, match=fragment):
        CERTIFICATION.access_evaluation(body)


def test_request_error_is_a_value_error() -> None:
    assert issubclass(AuthzenRequestError, ValueError)


# --- Access Evaluations: the spec's examples ----------------------------------------------------


@pytest.mark.parametrize(
    ("request_number", "response_number"),
    [
        pytest.param(19, 20, id="execute_all"),
        pytest.param(21, 22, id="deny_on_first_deny-truncates"),
        pytest.param(23, 24, id="permit_on_first_permit-truncates"),
    ],
)
def test_spec_semantics_examples(request_number: int, response_number: int) -> None:
    answer = DOCUMENTS.access_evaluations(spec_example(request_number))
    assert decisions(answer) == decisions(spec_example(response_number))
    assert set(answer) == {"evaluations"}  # the spec recommends omitting a top-level decision


def test_spec_example_with_defaults_expands_like_the_one_without() -> None:
    assert parse_evaluations(spec_example(16)) == parse_evaluations(spec_example(15))


def test_spec_example_item_overrides_one_default() -> None:
    expanded = parse_evaluations(spec_example(17))
    assert expanded is not None
    assert [item["action"]["name"] for item in expanded.items if isinstance(item, dict)] == [
        "can_read",
        "can_read",
        "can_edit",
    ]
    assert all(
        item["context"] == {"time": "2024-05-31T15:22-07:00"}
        for item in expanded.items
        if isinstance(item, dict)
    )


def test_spec_options_example_ignores_unknown_options_and_answers_the_incomplete_item() -> None:
    # The example's only item has no action and there is no default: a per-item error.
    [answer] = DOCUMENTS.access_evaluations(spec_example(18))["evaluations"]
    error_shape = spec_example(26)["evaluations"][1]
    assert answer["decision"] is False
    assert set(answer["context"]["error"]) == set(error_shape["context"]["error"])
    assert answer["context"]["error"]["status"] == 400
    assert "evaluations[0]: action is required" in answer["context"]["error"]["message"]


# --- Access Evaluations: certification ----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            {
                "subject": ALICE,
                "action": READ,
                "evaluations": [{"resource": RECORD_1}, {"resource": RECORD_2}],
            },
            [True, True],  # the scenario checks only the shape; this fixture lets alice read anything
            id="c-3-2-1",
        ),
        pytest.param(
            {"subject": BOB, "resource": RECORD_1, "evaluations": [{"action": READ}, {"action": WRITE}]},
            [True, False],
            id="c-3-2-2",
        ),
        pytest.param(
            {
                "subject": ALICE,
                "action": WRITE,
                "evaluations": [
                    {"resource": {**RECORD_1, "properties": {"status": "active"}}},
                    {"resource": ARCHIVED},
                ],
            },
            [True, False],
            id="c-3-2-3",
        ),
        pytest.param(
            {
                "action": WRITE,
                "resource": ARCHIVED,
                "evaluations": [{"subject": ALICE}, {"subject": BOB_ADMIN}],
            },
            [False, True],
            id="c-3-2-4",
        ),
        pytest.param(
            {
                "evaluations": [
                    {"subject": ALICE, "action": READ, "resource": RECORD_1},
                    {"subject": BOB, "action": WRITE, "resource": RECORD_1},
                ]
            },
            [True, False],
            id="c-3-2-5",
        ),
        pytest.param(
            {
                "subject": ALICE,
                "action": READ,
                "context": {"time": "2025-06-27T18:03-07:00"},
                "evaluations": [
                    {"resource": RECORD_1},
                    {
                        "resource": RECORD_2,
                        "context": {"time": "2025-06-27T19:00-07:00", "source": "batch-override"},
                    },
                ],
            },
            [True, True],
            id="c-3-2-6",
        ),
        pytest.param(
            {
                "subject": ALICE,
                "action": WRITE,
                "resource": {**RECORD_1, "properties": {"status": "active"}},
                "evaluations": [{}, {"resource": ARCHIVED}],
            },
            [True, False],
            id="c-3-2-7",
        ),
        pytest.param(
            {
                "subject": ALICE,
                "action": READ,
                "options": {"evaluations_semantic": "execute_all"},
                "evaluations": [{"resource": RECORD_1}, {}],
            },
            [True, False],
            id="c-3-4-1",
        ),
    ],
)
def test_certification_access_evaluations(body: dict[str, Any], expected: list[bool]) -> None:
    assert decisions(CERTIFICATION.access_evaluations(body)) == expected


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"subject": ALICE, "action": READ, "resource": RECORD_1}, id="c-3-4-2-absent"),
        pytest.param(
            {"subject": ALICE, "action": READ, "resource": RECORD_1, "evaluations": []}, id="c-3-4-3-empty"
        ),
    ],
)
def test_no_evaluations_behaves_like_access_evaluation(body: dict[str, Any]) -> None:
    answer = CERTIFICATION.access_evaluations(body)
    assert answer == CERTIFICATION.access_evaluation(body)
    assert answer["decision"] is True


def test_empty_evaluations_with_an_incomplete_body_is_a_request_error() -> None:
    with pytest.raises(AuthzenRequestError, match="resource is required"):
        CERTIFICATION.access_evaluations({"subject": ALICE, "action": READ, "evaluations": []})


# --- Access Evaluations: inheritance ------------------------------------------------------------

CONTEXT_A = {"a": 1}
CONTEXT_B = {"b": 2}
DOC_1 = {"type": "doc", "id": "1"}
DOC_2 = {"type": "doc", "id": "2", "properties": {"x": 1}}


@pytest.mark.parametrize(
    ("defaults", "item", "expanded"),
    [
        pytest.param(
            {"subject": ALICE, "action": READ, "resource": DOC_1},
            {},
            {"subject": ALICE, "action": READ, "resource": DOC_1},
            id="empty-item-inherits-everything",
        ),
        pytest.param(
            {"subject": ALICE, "action": READ, "resource": DOC_2},
            {"resource": DOC_1},
            {"subject": ALICE, "action": READ, "resource": DOC_1},
            id="entity-replaced-whole-no-properties-merge",
        ),
        pytest.param(
            {"subject": ALICE, "action": READ, "resource": DOC_1, "context": CONTEXT_A},
            {"context": CONTEXT_B},
            {"subject": ALICE, "action": READ, "resource": DOC_1, "context": CONTEXT_B},
            id="context-replaced-not-merged",
        ),
        pytest.param(
            {"subject": ALICE, "action": READ, "resource": DOC_1, "context": CONTEXT_A},
            {"resource": DOC_2},
            {"subject": ALICE, "action": READ, "resource": DOC_2, "context": CONTEXT_A},
            id="context-inherited",
        ),
        pytest.param(
            {"subject": ALICE, "action": READ, "resource": DOC_1},
            {"context": CONTEXT_B},
            {"subject": ALICE, "action": READ, "resource": DOC_1, "context": CONTEXT_B},
            id="item-context-without-default",
        ),
        pytest.param(
            {},
            {"subject": BOB, "action": WRITE, "resource": DOC_1},
            {"subject": BOB, "action": WRITE, "resource": DOC_1},
            id="no-defaults",
        ),
        pytest.param(
            {"subject": ALICE, "action": READ, "resource": DOC_1},
            {"subject": BOB, "options": {"x": 1}, "decision": True},
            {"subject": BOB, "action": READ, "resource": DOC_1},
            id="unknown-item-members-ignored",
        ),
    ],
)
def test_defaults_inheritance(
    defaults: dict[str, Any], item: dict[str, Any], expanded: dict[str, Any]
) -> None:
    parsed = parse_evaluations({**defaults, "evaluations": [item]})
    assert parsed is not None
    assert parsed.items == (expanded,)


def test_item_context_replaces_the_default_when_rules_read_it() -> None:
    pdp = compile_pdp([policy(rule("allow", tools=["read"], when="!has(context.a) && context.b == 2"))])
    body = {"subject": ALICE, "action": READ, "resource": DOC_1, "context": CONTEXT_A}
    assert decisions(pdp.access_evaluations({**body, "evaluations": [{"context": CONTEXT_B}, {}]})) == [
        True,
        False,
    ]


# --- Access Evaluations: semantics --------------------------------------------------------------

PERMIT = {"resource": {"type": "document", "id": "1"}}
DENY = {"resource": {"type": "document", "id": "2"}}
BROKEN = {"resource": {"type": "document"}}
PERMISSIVE = compile_pdp([policy(rule("all", tools=["*"]))])


@pytest.mark.parametrize(
    ("semantic", "items", "expected"),
    [
        pytest.param(
            None, [DENY, PERMIT, BROKEN, PERMIT], [False, True, False, True], id="default-executes-all"
        ),
        pytest.param("execute_all", [DENY, DENY, PERMIT], [False, False, True], id="execute_all"),
        pytest.param(
            "deny_on_first_deny", [PERMIT, PERMIT, PERMIT], [True, True, True], id="dofd-all-permit"
        ),
        pytest.param("deny_on_first_deny", [DENY, PERMIT, PERMIT], [False], id="dofd-first-denies"),
        pytest.param(
            "deny_on_first_deny", [PERMIT, BROKEN, PERMIT], [True, False], id="dofd-error-is-a-deny"
        ),
        pytest.param("permit_on_first_permit", [DENY, DENY, DENY], [False, False, False], id="pofp-all-deny"),
        pytest.param("permit_on_first_permit", [DENY, PERMIT, DENY], [False, True], id="pofp-second-permits"),
        pytest.param(
            "permit_on_first_permit", [BROKEN, PERMIT, DENY], [False, True], id="pofp-error-continues"
        ),
    ],
)
def test_evaluations_semantic(
    semantic: str | None, items: list[dict[str, Any]], expected: list[bool]
) -> None:
    body: dict[str, Any] = {"subject": ALICE, "action": READ, "evaluations": items}
    if semantic is not None:
        body["options"] = {"evaluations_semantic": semantic}
    assert decisions(DOCUMENTS.access_evaluations(body)) == expected


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        pytest.param("read", "evaluations[0] must be an object", id="item-string"),
        pytest.param(None, "evaluations[0] must be an object", id="item-null"),
        pytest.param(
            {"subject": ALICE}, "evaluations[0]: action is required (in the item or", id="no-default"
        ),
        pytest.param(
            {"subject": "alice", "action": READ}, "evaluations[0]: subject must be", id="subject-string"
        ),
        pytest.param(
            {"subject": ALICE, "action": {"name": 1}}, "evaluations[0]: action.name", id="name-number"
        ),
        pytest.param({"subject": ALICE, "action": READ, "context": []}, "context must be", id="context-list"),
    ],
)
def test_invalid_item_is_answered_false(item: Any, fragment: str) -> None:
    body = {"resource": DOC_1, "evaluations": [item, {"subject": ALICE, "action": READ}]}
    first, second = PERMISSIVE.access_evaluations(body)["evaluations"]
    assert second["decision"] is True
    assert first == InvalidItem(first["context"]["error"]["message"]).to_authzen()
    assert fragment in first["context"]["error"]["message"]


def test_ordinarily_nested_item_is_evaluated() -> None:
    context = {"deep": [[[[[[[[]]]]]]]], "wide": [[[]]] * 3}
    body = {"resource": DOC_1, "evaluations": [{"subject": ALICE, "action": READ, "context": context}]}
    assert decisions(PERMISSIVE.access_evaluations(body)) == [True]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param([{"evaluations": []}], "JSON object", id="array-body"),
        pytest.param(
            {"subject": ALICE, "evaluations": {"0": PERMIT}}, "evaluations must be an array", id="object"
        ),
        pytest.param({"subject": ALICE, "evaluations": None}, "evaluations must be an array", id="null"),
        pytest.param(
            {"evaluations": [PERMIT], "options": "all"}, "options must be an object", id="options-string"
        ),
        pytest.param(
            {"evaluations": [PERMIT], "options": {"evaluations_semantic": "first_match"}},
            "evaluations_semantic must be one of",
            id="unknown-semantic",
        ),
        pytest.param(
            {"evaluations": [PERMIT], "options": {"evaluations_semantic": None}},
            "evaluations_semantic",
            id="semantic-null",
        ),
        pytest.param(
            {"subject": "alice", "evaluations": [PERMIT]}, "top-level subject", id="default-subject-string"
        ),
        pytest.param(
            {"action": {"name": ["read"]}, "evaluations": [PERMIT]},
            "top-level action.name",
            id="default-name-list",
        ),
        pytest.param(
            {"context": [], "evaluations": [PERMIT]}, "top-level context", id="default-context-list"
        ),
    ],
)
def test_malformed_evaluations_is_a_request_error(body: Any, fragment: str) -> None:
    with pytest.raises(AuthzenRequestError, match=fragment):
        DOCUMENTS.access_evaluations(body)


def test_too_deep_default_context_is_a_request_error() -> None:
    deep: Any = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(AuthzenRequestError, match="top-level context nests deeper"):
        DOCUMENTS.access_evaluations({"context": {"deep": deep}, "evaluations": [PERMIT]})


def test_evaluations_answers_every_item_in_order() -> None:
    items = [{"resource": {"type": "document", "id": str(i % 3)}} for i in range(50)]
    answer = DOCUMENTS.access_evaluations({"subject": ALICE, "action": READ, "evaluations": items})
    assert decisions(answer) == [i % 3 != 2 for i in range(50)]
