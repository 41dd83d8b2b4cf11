"""The policy information point: precedence over request properties, data validation, strict files."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from callwarden.authzen.pip import DataFileError, load_information
from callwarden.policy.pdp import compile_pdp
from callwarden.policy.pip import InformationError, StaticInformation, enrich
from tests.test_pdp import policy, rule

DATA = {
    "subjects": {"user": {"alice": {"role": "editor", "team": "blue"}, "bob": {"role": "admin"}}},
    "resources": {"doc": {"d1": {"status": "active"}}},
    "actions": ["read", "write"],
}
INFO = StaticInformation.from_json(DATA)


def request(subject: dict[str, Any], resource: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "subject": subject,
        "action": {"name": "read"},
        "resource": resource or {"type": "doc", "id": "d9"},
    }


def test_pip_attributes_win_over_request_properties() -> None:
    enriched = enrich(request({"type": "user", "id": "alice", "properties": {"role": "admin"}}), INFO)
    assert enriched["subject"]["properties"]["role"] == "editor"


def test_request_properties_the_pip_does_not_define_are_kept() -> None:
    enriched = enrich(request({"type": "user", "id": "alice", "properties": {"device": "laptop"}}), INFO)
    assert enriched["subject"]["properties"] == {"device": "laptop", "role": "editor", "team": "blue"}


def test_an_entity_the_pip_does_not_know_keeps_the_requests_properties() -> None:
    original = request({"type": "user", "id": "carol", "properties": {"role": "admin"}})
    assert enrich(original, INFO) is original


def test_the_same_id_of_another_type_is_another_entity() -> None:
    original = request({"type": "identity", "id": "alice"})
    assert enrich(original, INFO) is original


def test_resources_are_enriched_too() -> None:
    enriched = enrich(request({"type": "user", "id": "zed"}, {"type": "doc", "id": "d1"}), INFO)
    assert enriched["resource"]["properties"] == {"status": "active"}


def test_enrichment_never_modifies_the_request() -> None:
    original = request({"type": "user", "id": "alice", "properties": {"role": "admin"}})
    before = copy.deepcopy(original)
    enrich(original, INFO)
    assert original == before


def test_the_pdp_decides_on_pip_attributes() -> None:
    pdp = compile_pdp(
        [policy(rule("admins", tools=["read"], when="subject.properties.role == 'admin'"))], INFO
    )
    claimed = request({"type": "user", "id": "alice", "properties": {"role": "admin"}})
    assert (pdp.evaluate(claimed).allowed, pdp.evaluate(request({"type": "user", "id": "bob"})).allowed) == (
        False,
        True,
    )


def test_a_pdp_without_pip_decides_on_request_properties() -> None:
    pdp = compile_pdp([policy(rule("admins", tools=["read"], when="subject.properties.role == 'admin'"))])
    assert pdp.evaluate(request({"type": "user", "id": "alice", "properties": {"role": "admin"}})).allowed


def test_entities_are_listed_in_document_order() -> None:
    assert (INFO.entity_ids("subject", "user"), INFO.entity_ids("resource", "user")) == (("alice", "bob"), ())


def test_action_names_are_listed_in_document_order() -> None:
    assert INFO.action_names() == ("read", "write")


@pytest.mark.parametrize(
    ("data", "path"),
    [
        pytest.param([], "", id="not-an-object"),
        pytest.param({"users": {}}, "users", id="unknown-section"),
        pytest.param({"subjects": []}, "subjects", id="section-not-object"),
        pytest.param({"subjects": {"user": ["alice"]}}, "subjects.user", id="ids-not-object"),
        pytest.param(
            {"resources": {"doc": {"d1": "active"}}}, "resources.doc.d1", id="attributes-not-object"
        ),
        pytest.param({"actions": "read"}, "actions", id="actions-not-array"),
        pytest.param({"actions": ["read", 1]}, "actions", id="action-not-string"),
        pytest.param({"actions": ["read", "read"]}, "actions", id="action-twice"),
    ],
)
def test_pip_data_of_the_wrong_shape_is_refused(data: Any, path: str) -> None:
    with pytest.raises(InformationError) as raised:
        StaticInformation.from_json(data)
    assert raised.value.path == path


def test_a_data_file_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(DATA))
    assert load_information(path).attributes("subject", "user", "bob") == {"role": "admin"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(b'{"subjects": {"user": {"a": {}, "a": {}}}}', "not strict JSON", id="duplicate-id"),
        pytest.param(b'{"actions": [], "Actions": []}', "not strict JSON", id="case-folded-duplicate"),
        pytest.param(b"{", "not strict JSON", id="truncated"),
        pytest.param(b'{"subjects": {"user": {"a": []}}}', "attributes must be an object", id="wrong-shape"),
    ],
)
def test_a_data_file_that_is_not_strict_or_well_formed_is_refused(
    tmp_path: Path, raw: bytes, message: str
) -> None:
    path = tmp_path / "data.json"
    path.write_bytes(raw)
    with pytest.raises(DataFileError, match=message):
        load_information(path)


def test_a_missing_data_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="cannot read"):
        load_information(tmp_path / "absent.json")
