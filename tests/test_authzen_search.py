"""Search semantics and pagination (callwarden.authzen.search), over the Search scenario's fixture.

Answers are computed by `search()` directly: the HTTP binding around it is the same for every
endpoint and is covered by test_authzen_api.py and test_authzen_conformance.py.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callwarden.authzen.search import SearchKind, search
from callwarden.authzen.serve import load_pdp
from callwarden.policy.evaluation import AuthzenRequestError
from callwarden.policy.pdp import compile_pdp
from tests.test_pdp import policy, rule

FIXTURE = Path(__file__).parent.parent / "examples" / "authzen-interop" / "search"
PDP, _ = load_pdp([str(FIXTURE)], str(FIXTURE / "data.json"))
# alice is a manager: she may view all 20 records.
ALICE_VIEWS = {
    "subject": {"type": "user", "id": "alice"},
    "action": {"name": "view"},
    "resource": {"type": "record"},
}
ALL_RECORDS = [{"type": "record", "id": str(number)} for number in range(101, 121)]


def pages(body: dict[str, Any], limit: int | None) -> list[dict[str, Any]]:
    """Every page of a paginated resource search, following next_token to the end."""
    page: dict[str, Any] = {} if limit is None else {"limit": limit}
    answers = [search(PDP, "resource", {**body, "page": page})]
    while answers[-1]["page"]["next_token"]:
        answers.append(
            search(PDP, "resource", {**body, "page": {"token": answers[-1]["page"]["next_token"]}})
        )
        assert len(answers) <= 21
    return answers


def test_a_plain_search_answers_results_alone() -> None:
    assert search(PDP, "resource", ALICE_VIEWS) == {"results": ALL_RECORDS}


def test_the_searched_entitys_id_is_ignored() -> None:
    with_id = {**ALICE_VIEWS, "resource": {"type": "record", "id": "101"}}
    assert search(PDP, "resource", with_id) == search(PDP, "resource", ALICE_VIEWS)


def test_an_action_search_ignores_an_action_member() -> None:
    body = {"subject": {"type": "user", "id": "erin"}, "resource": {"type": "record", "id": "105"}}
    assert search(PDP, "action", {**body, "action": {"name": "view"}}) == search(PDP, "action", body)


@pytest.mark.parametrize("kind", ["subject", "resource"])
def test_an_unknown_type_has_no_results(kind: SearchKind) -> None:
    body = {
        "subject": {"type": "user", "id": "alice"},
        "action": {"name": "view"},
        "resource": {"type": "record", "id": "101"},
    }
    body[kind] = {"type": "spaceship"}
    assert search(PDP, kind, body) == {"results": []}


def test_action_search_offers_the_names_rules_target_literally() -> None:
    pdp = compile_pdp([policy(rule("everyone", tools=["open", "close", "x-*"]))])
    body = {"subject": {"type": "user", "id": "u"}, "resource": {"type": "door", "id": "d"}}
    assert search(pdp, "action", body) == {"results": [{"name": "open"}, {"name": "close"}]}


def test_a_limited_search_answers_a_page_with_a_token() -> None:
    first = search(PDP, "resource", {**ALICE_VIEWS, "page": {"limit": 3}})
    assert first["results"] == ALL_RECORDS[:3]
    assert first["page"]["count"] == 3
    assert first["page"]["next_token"]
    assert next(iter(first)) == "page"  # RECOMMENDED first member


@pytest.mark.parametrize("limit", [1, 3, 7, 19, 20, 21, 1000])
def test_paging_returns_every_result_once_in_order(limit: int) -> None:
    answers = pages(ALICE_VIEWS, limit)
    assert [result for answer in answers for result in answer["results"]] == ALL_RECORDS
    assert answers[-1]["page"]["next_token"] == ""


@given(
    user=st.sampled_from(["alice", "bob", "carol", "dan", "erin", "felix", "nobody"]),
    action=st.sampled_from(["view", "edit", "delete", "fly"]),
    limit=st.integers(min_value=1, max_value=25),
)
@settings(max_examples=60, deadline=None)
def test_paging_never_changes_the_result_set(user: str, action: str, limit: int) -> None:
    body = {
        "subject": {"type": "user", "id": user},
        "action": {"name": action},
        "resource": {"type": "record"},
    }
    paged = [result for answer in pages(body, limit) for result in answer["results"]]
    assert paged == search(PDP, "resource", body)["results"]


def test_a_follow_up_may_repeat_the_same_limit() -> None:
    token = search(PDP, "resource", {**ALICE_VIEWS, "page": {"limit": 5}})["page"]["next_token"]
    answer = search(PDP, "resource", {**ALICE_VIEWS, "page": {"token": token, "limit": 5}})
    assert answer["results"] == ALL_RECORDS[5:10]


def test_the_servers_page_size_cuts_an_unlimited_search_and_says_so() -> None:
    answer = search(PDP, "resource", ALICE_VIEWS, max_page_size=8)
    assert (answer["results"], answer["page"]["count"]) == (ALL_RECORDS[:8], 8)
    assert answer["page"]["next_token"]


def test_limit_zero_answers_no_results_but_says_more_exist() -> None:
    answer = search(PDP, "resource", {**ALICE_VIEWS, "page": {"limit": 0}})
    assert answer["results"] == []
    assert answer["page"]["next_token"]


def test_an_empty_token_starts_from_the_beginning() -> None:
    answer = search(PDP, "resource", {**ALICE_VIEWS, "page": {"token": "", "limit": 2}})
    assert answer["results"] == ALL_RECORDS[:2]


def test_a_page_object_without_limit_or_token_is_ignored() -> None:
    assert search(PDP, "resource", {**ALICE_VIEWS, "page": {"properties": {"sort": "id"}}}) == {
        "results": ALL_RECORDS
    }


def first_token(limit: int = 2) -> str:
    token: str = search(PDP, "resource", {**ALICE_VIEWS, "page": {"limit": limit}})["page"]["next_token"]
    return token


def forged(*fields: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(fields))).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"action": {"name": "edit"}}, "different request", id="changed-action"),
        pytest.param({"subject": {"type": "user", "id": "bob"}}, "different request", id="changed-subject"),
        pytest.param({"context": {"time": "now"}}, "different request", id="added-context"),
        pytest.param(
            {"resource": {"type": "record", "id": "101"}}, "different request", id="added-searched-id"
        ),
    ],
)
def test_a_token_with_a_changed_request_is_refused(change: dict[str, Any], message: str) -> None:
    body = {**ALICE_VIEWS, **change, "page": {"token": first_token()}}
    with pytest.raises(AuthzenRequestError, match=message):
        search(PDP, "resource", body)


def test_a_token_on_another_endpoint_is_refused() -> None:
    body = {"subject": {"type": "user", "id": "alice"}, "resource": {"type": "record", "id": "101"}}
    token = search(PDP, "action", {**body, "page": {"limit": 1}})["page"]["next_token"]
    with pytest.raises(AuthzenRequestError, match="different request"):
        search(
            PDP,
            "subject",
            {**body, "action": {"name": "view"}, "subject": {"type": "user"}, "page": {"token": token}},
        )


def test_a_token_with_a_changed_limit_is_refused() -> None:
    with pytest.raises(AuthzenRequestError, match=r"page\.limit differs"):
        search(PDP, "resource", {**ALICE_VIEWS, "page": {"token": first_token(2), "limit": 3}})


@pytest.mark.parametrize(
    "token",
    [
        "not-a-token",
        "!!!!",
        "x" * 300,
        forged(2, 0, None, "0" * 32),
        forged(1, -1, None, "0" * 32),
        forged(1, 0, -5, "0" * 32),
        forged(1, "0", None, "0" * 32),
        forged(1, 0, None),
        base64.urlsafe_b64encode(b'{"o": 1}').decode(),
    ],
    ids=[
        "garbage",
        "punctuation",
        "oversized",
        "version",
        "negative-position",
        "negative-limit",
        "string-position",
        "short",
        "object",
    ],
)
def test_a_token_this_pdp_did_not_issue_is_refused(token: str) -> None:
    with pytest.raises(AuthzenRequestError, match=r"page\.token"):
        search(PDP, "resource", {**ALICE_VIEWS, "page": {"token": token}})


@pytest.mark.parametrize(
    ("page", "message"),
    [
        ([], "page must be an object"),
        ({"limit": -1}, "non-negative integer"),
        ({"limit": 1.5}, "non-negative integer"),
        ({"limit": True}, "non-negative integer"),
        ({"limit": "2"}, "non-negative integer"),
        ({"token": 5}, "page.token must be a string"),
    ],
    ids=["array", "negative", "float", "bool", "string", "number-token"],
)
def test_a_malformed_page_is_refused(page: Any, message: str) -> None:
    with pytest.raises(AuthzenRequestError, match=message):
        search(PDP, "resource", {**ALICE_VIEWS, "page": page})


@pytest.mark.parametrize(
    ("kind", "body", "message"),
    [
        (
            "subject",
            {"subject": "user", "action": {"name": "view"}, "resource": {"type": "record", "id": "1"}},
            "subject must be an object",
        ),
        (
            "subject",
            {"subject": {}, "action": {"name": "view"}, "resource": {"type": "record", "id": "1"}},
            "subject.type is required",
        ),
        (
            "resource",
            {
                "subject": {"type": "user", "id": 7},
                "action": {"name": "view"},
                "resource": {"type": "record"},
            },
            "subject.id must be a string",
        ),
        (
            "resource",
            {
                "subject": {"type": "user", "id": "a"},
                "action": {"name": "view"},
                "resource": {"type": "record", "properties": []},
            },
            "resource.properties must be an object",
        ),
        (
            "action",
            {
                "subject": {"type": "user", "id": "a"},
                "resource": {"type": "record", "id": "1"},
                "context": "now",
            },
            "context must be an object",
        ),
    ],
    ids=[
        "searched-not-object",
        "searched-no-type",
        "input-id-not-string",
        "searched-properties-array",
        "context-string",
    ],
)
def test_a_search_that_could_not_be_evaluated_is_refused(
    kind: SearchKind, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(AuthzenRequestError, match=message):
        search(PDP, kind, body)


def test_a_token_is_opaque_ascii_safe_for_urls_and_json() -> None:
    token = first_token()
    assert token.isascii()
    assert json.loads(json.dumps(token)) == token
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
