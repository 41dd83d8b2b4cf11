"""AuthZEN 1.0 conformance of `callwarden pdp`, over real HTTP on loopback.

Every request/expected pair of the vendored vectors (tests/vectors/authzen-interop/, see
SOURCE.md) is sent to the served API, each scenario loaded from its fixture in
examples/authzen-interop/ (ToolPolicies + PIP data):

- the certification scenario's 49 literal cases (Basic, Batch, Search) plus its transport,
  pagination-token, idempotency and Discovery requirements;
- Todo 1.0 (`decisions-authorization-api-1_0-02.json`), compared like the upstream runner:
  `JSON.stringify` equality of `decision` and of `evaluations`;
- the API gateway decisions;
- the Search scenario (subject, resource, action) and the IdP scenario's searches, compared like
  the upstream harness: results sorted, then the whole response deep-compared.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

from callwarden.authzen.api import ApiOptions, start_pdp
from callwarden.authzen.serve import load_pdp

ROOT = Path(__file__).parent.parent
VECTORS = Path(__file__).parent / "vectors" / "authzen-interop"
INTEROP = VECTORS / "interop"
EXAMPLES = ROOT / "examples" / "authzen-interop"
CERTIFICATION = json.loads((VECTORS / "certification" / "certification-cases.derived.json").read_text())
SCENARIO_MD = (VECTORS / "certification" / "authorization-api-1_0-scenario.md").read_text()
JSON_HEADERS = {"Content-Type": "application/json"}


@contextmanager
def served(scenario: str, options: ApiOptions | None = None) -> Iterator[httpx2.Client]:
    """The scenario's fixture served on a free loopback port, and a client for it."""
    fixture = EXAMPLES / scenario
    pdp, _ = load_pdp([str(fixture)], str(fixture / "data.json"))
    with (
        start_pdp(pdp, listen="127.0.0.1:0", options=options) as running,
        httpx2.Client(base_url=running.base_url, timeout=10) as client,
    ):
        yield client


def post(client: httpx2.Client, endpoint: str, body: Any) -> httpx2.Response:
    return client.post(f"/access/v1/{endpoint}", content=json.dumps(body), headers=JSON_HEADERS)


def result_key(entity: dict[str, Any]) -> tuple[str, str, str]:
    return (entity.get("type", ""), entity.get("id", ""), entity.get("name", ""))


def sorted_results(body: dict[str, Any]) -> dict[str, Any]:
    """The upstream search harness's normalisation: results sorted, the rest untouched."""
    return {**body, "results": sorted(body["results"], key=result_key)}


def js_stringify(value: Any) -> str:
    """JSON.stringify of a parsed JSON value (member order kept, no whitespace)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def cases(path: Path, key: str) -> list[Any]:
    return list(json.loads(path.read_text())[key])


def case_id(case: dict[str, Any]) -> str:
    request = case["request"]
    parts = [request.get(kind, {}).get("id", "") for kind in ("subject", "resource")]
    action = request.get("action", {}).get("name", "")
    return "/".join(part[:12] for part in (parts[0], action, parts[1]) if part)


# --- Certification: the literal cases -------------------------------------------------------------


@pytest.fixture(scope="module")
def certification() -> Iterator[httpx2.Client]:
    with served("certification") as client:
        yield client


def check_case(case: dict[str, Any], response: httpx2.Response) -> None:
    expected = case["expected"]
    assert response.status_code == expected["http_status"], response.text
    if case["match"] == "status":
        return
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    match case["match"]:
        case "exact":
            assert body == expected["body"]
        case "decisions":
            assert [item["decision"] for item in body["evaluations"]] == expected["decisions"]
        case "structure" if "evaluations" in expected:
            assert [type(item["decision"]) for item in body["evaluations"]] == [bool] * expected[
                "evaluations"
            ]
        case "structure":
            assert isinstance(body["results"], list)
            assert isinstance(body.get("page", {}), dict)
            assert isinstance(body.get("page", {}).get("next_token", ""), str)
        case "results_superset":
            shape = {"name"} if case["endpoint"] == "search/action" else {"type", "id"}
            assert all(set(result) == shape for result in body["results"])
            missing = [entity for entity in expected["body"]["results"] if entity not in body["results"]]
            assert not missing


@pytest.mark.parametrize("case", CERTIFICATION["cases"], ids=[case["id"] for case in CERTIFICATION["cases"]])
def test_certification_case(certification: httpx2.Client, case: dict[str, Any]) -> None:
    check_case(case, post(certification, case["endpoint"], case["request"]))


@pytest.mark.parametrize("case", CERTIFICATION["cases"], ids=[case["id"] for case in CERTIFICATION["cases"]])
def test_certification_case_is_the_scenarios_own_request(case: dict[str, Any]) -> None:
    """The derived table is faithful: each request is the JSON block at its line of the scenario."""
    lines = SCENARIO_MD.splitlines()
    opening = case["source_line"] - 1
    assert lines[opening] == "~~~ json"
    closing = lines.index("~~~", opening + 1)
    assert json.loads("\n".join(lines[opening + 1 : closing])) == case["request"]


def test_certification_table_covers_every_request_block_but_the_token_follow_up() -> None:
    lines = SCENARIO_MD.splitlines()
    lines = lines[: lines.index("# Transport Requirements {#c-5}")]  # c-5 and c-6 have no requests
    request_blocks = [
        number + 1
        for number, line in enumerate(lines)
        if line == "~~~ json"
        and _label_before(lines, number).startswith("**")
        and "Expected" not in _label_before(lines, number)
    ]
    table = {case["source_line"] for case in CERTIFICATION["cases"]}
    assert [line for line in request_blocks if line not in table] == [
        _line_of(lines, '"token": "<next_token')
    ]


def _label_before(lines: list[str], number: int) -> str:
    return next((line for line in reversed(lines[:number]) if line.strip()), "")


def _line_of(lines: list[str], text: str) -> int:
    """The line of the ~~~ json block that contains `text`."""
    inside = next(number for number, line in enumerate(lines) if text in line)
    return max(number for number in range(inside) if lines[number] == "~~~ json") + 1


# --- Certification: transport, pagination token, idempotency, ordering ----------------------------

ALICE_READS_RECORD_1 = {
    "subject": {"type": "user", "id": "alice"},
    "action": {"name": "read"},
    "resource": {"type": "record", "id": "record-1"},
}


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/jsonx", None], ids=str
)
def test_c_2_4_3_a_content_type_other_than_json_is_400(
    certification: httpx2.Client, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = certification.post(
        "/access/v1/evaluation", content=json.dumps(ALICE_READS_RECORD_1), headers=headers
    )
    assert response.status_code == 400


@pytest.mark.parametrize("raw", [b"{", b'{"subject": }', b"not json", b"[1, 2"], ids=repr)
def test_c_2_4_4_malformed_json_is_400(certification: httpx2.Client, raw: bytes) -> None:
    assert certification.post("/access/v1/evaluation", content=raw, headers=JSON_HEADERS).status_code == 400


def test_c_2_4_5_an_empty_body_is_400(certification: httpx2.Client) -> None:
    assert certification.post("/access/v1/evaluation", content=b"", headers=JSON_HEADERS).status_code == 400


@pytest.mark.parametrize(
    "endpoint", ["evaluation", "evaluations", "search/subject", "search/resource", "search/action"]
)
def test_c_2_5_1_x_request_id_is_echoed(certification: httpx2.Client, endpoint: str) -> None:
    headers = {**JSON_HEADERS, "X-Request-ID": "bfe9eb29-ab87-4ca3-be83-a1d5d8305716"}
    response = certification.post(
        f"/access/v1/{endpoint}", content=json.dumps(ALICE_READS_RECORD_1), headers=headers
    )
    assert response.headers["x-request-id"] == "bfe9eb29-ab87-4ca3-be83-a1d5d8305716"


def test_c_2_5_2_without_x_request_id_the_pdp_answers_with_one_of_its_own(
    certification: httpx2.Client,
) -> None:
    response = post(certification, "evaluation", ALICE_READS_RECORD_1)
    assert response.status_code == 200
    assert response.headers["x-request-id"]


def test_c_2_6_the_same_request_gets_the_same_decision(certification: httpx2.Client) -> None:
    answers = {post(certification, "evaluation", ALICE_READS_RECORD_1).text for _ in range(5)}
    assert answers == {'{"decision":true}'}


def test_c_4_5_2_the_next_token_pages_to_the_end(certification: httpx2.Client) -> None:
    request = {
        "subject": {"type": "user"},
        "action": {"name": "read"},
        "resource": {"type": "record", "id": "record-1"},
    }
    first = post(certification, "search/subject", {**request, "page": {"limit": 1}}).json()
    second = post(
        certification, "search/subject", {**request, "page": {"token": first["page"]["next_token"]}}
    )
    assert second.status_code == 200
    assert first["page"]["next_token"] != ""
    assert second.json() == {
        "page": {"next_token": "", "count": 1},
        "results": [{"type": "user", "id": "bob"}],
    }


def test_c_5_2_search_answers_are_json(certification: httpx2.Client) -> None:
    response = post(
        certification, "search/resource", {**ALICE_READS_RECORD_1, "resource": {"type": "record"}}
    )
    assert response.headers["content-type"] == "application/json"


def test_c_5_5_unknown_members_are_ignored_in_every_entity(certification: httpx2.Client) -> None:
    body = {
        "subject": {"type": "user", "id": "alice", "extra": 1},
        "action": {"name": "read", "extra": [1]},
        "resource": {"type": "record", "id": "record-1", "extra": {"a": None}},
        "context": {"anything": "goes"},
        "future": True,
    }
    assert post(certification, "evaluation", body).json() == {"decision": True}


# --- Certification: Discovery (c-6) ---------------------------------------------------------------


def test_c_6_metadata_names_the_base_url_and_every_endpoint(certification: httpx2.Client) -> None:
    response = certification.get("/.well-known/authzen-configuration")
    base = str(certification.base_url).rstrip("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "policy_decision_point": base,
        "access_evaluation_endpoint": f"{base}/access/v1/evaluation",
        "access_evaluations_endpoint": f"{base}/access/v1/evaluations",
        "search_subject_endpoint": f"{base}/access/v1/search/subject",
        "search_resource_endpoint": f"{base}/access/v1/search/resource",
        "search_action_endpoint": f"{base}/access/v1/search/action",
        "capabilities": [],
    }


# --- Interop: Todo 1.0 and API gateway --------------------------------------------------------------

TODO = INTEROP / "authzen-todo-backend" / "test" / "decisions-authorization-api-1_0-02.json"
GATEWAY = INTEROP / "authzen-api-gateways" / "test-harness" / "test" / "decisions.json"


@pytest.fixture(scope="module")
def todo() -> Iterator[httpx2.Client]:
    with served("todo") as client:
        yield client


@pytest.mark.parametrize("case", cases(TODO, "evaluation"), ids=case_id)
def test_todo_evaluation(todo: httpx2.Client, case: dict[str, Any]) -> None:
    data = post(todo, "evaluation", case["request"]).json()
    assert js_stringify(data.get("decision") or False) == js_stringify(case["expected"])


@pytest.mark.parametrize("case", cases(TODO, "evaluations"), ids=[f"boxcar-{n}" for n in range(3)])
def test_todo_evaluations(todo: httpx2.Client, case: dict[str, Any]) -> None:
    data = post(todo, "evaluations", case["request"]).json()
    assert js_stringify(data.get("evaluations") or []) == js_stringify(case["expected"])


@pytest.mark.parametrize("case", cases(GATEWAY, "evaluation"), ids=case_id)
def test_api_gateway_evaluation(todo: httpx2.Client, case: dict[str, Any]) -> None:
    data = post(todo, "evaluation", case["request"]).json()
    assert js_stringify(data.get("decision") or False) == js_stringify(case["expected"])


# --- Interop: Search and IdP ------------------------------------------------------------------------

SEARCH = INTEROP / "authzen-search-demo" / "test"
IDP = INTEROP / "authzen-idp" / "test-harness" / "src" / "results.json"


@pytest.fixture(scope="module")
def search_demo() -> Iterator[httpx2.Client]:
    with served("search") as client:
        yield client


def check_search(client: httpx2.Client, kind: str, case: dict[str, Any]) -> None:
    response = post(client, f"search/{kind}", case["request"])
    assert response.status_code == 200
    assert sorted_results(response.json()) == sorted_results(case["expected"])


@pytest.mark.parametrize("case", cases(SEARCH / "subject" / "results.json", "evaluation"), ids=case_id)
def test_search_subject(search_demo: httpx2.Client, case: dict[str, Any]) -> None:
    check_search(search_demo, "subject", case)


@pytest.mark.parametrize("case", cases(SEARCH / "resource" / "results.json", "evaluation"), ids=case_id)
def test_search_resource(search_demo: httpx2.Client, case: dict[str, Any]) -> None:
    check_search(search_demo, "resource", case)


@pytest.mark.parametrize("case", cases(SEARCH / "action" / "results.json", "evaluation"), ids=case_id)
def test_search_action(search_demo: httpx2.Client, case: dict[str, Any]) -> None:
    check_search(search_demo, "action", case)


@pytest.mark.parametrize("case", cases(IDP, "search"), ids=case_id)
def test_idp_resource_search(search_demo: httpx2.Client, case: dict[str, Any]) -> None:
    check_search(search_demo, "resource", case)


def test_search_fixture_holds_the_scenarios_users_and_records() -> None:
    """examples/authzen-interop/search/data.json is the scenario's data/*.json, as PIP data."""
    data = json.loads((EXAMPLES / "search" / "data.json").read_text())
    users = json.loads((INTEROP / "authzen-search-demo" / "data" / "users.json").read_text())
    records = json.loads((INTEROP / "authzen-search-demo" / "data" / "records.json").read_text())
    assert data["subjects"]["user"] == {user.pop("id"): user for user in users}
    assert data["resources"]["record"] == {str(record.pop("id")): record for record in records}
