"""policy.crds: structural CRDs generated from the spec models, and the committed files kept current."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel, ValidationError

from callwarden.policy import crds
from callwarden.policy.cel import compile_expression
from callwarden.policy.loader import ConfigError, config_from_objects
from callwarden.policy.model import Rule

ROOT = Path(__file__).resolve().parents[1]
CRDS = {crd["spec"]["names"]["kind"]: crd for crd in crds.custom_resource_definitions()}
REGENERATE = "stale: run `.venv/bin/python -m callwarden.policy.crds` and commit crds/"


def schema_of(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def schema_nodes(node: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from schema_nodes(child, f"{path}.{name}")
    if "items" in node:
        yield from schema_nodes(node["items"], f"{path}[]")


ALL_NODES = [
    pytest.param(path, node, id=f"{kind}{path or '.'}")
    for kind in CRDS
    for path, node in schema_nodes(schema_of(kind))
]


def test_committed_crd_files_are_current() -> None:
    for name, content in crds.rendered_files().items():
        path = ROOT / "crds" / name
        assert path.is_file(), f"crds/{name} is missing; {REGENERATE}"
        assert path.read_text(encoding="utf-8") == content, f"crds/{name} is {REGENERATE}"


def test_crds_directory_holds_only_generated_files() -> None:
    assert sorted(path.name for path in (ROOT / "crds").iterdir()) == sorted(crds.rendered_files())


def test_main_writes_the_same_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crds.main([str(tmp_path / "out")])
    written = {path.name: path.read_text(encoding="utf-8") for path in (tmp_path / "out").iterdir()}
    assert written == crds.rendered_files()
    assert "callwarden.io_mcpservers.yaml" in capsys.readouterr().out


def test_committed_files_parse_back_to_the_generated_objects() -> None:
    for name, content in crds.rendered_files().items():
        assert yaml.safe_load(content) in list(CRDS.values()), name


@pytest.mark.parametrize(
    ("kind", "plural", "short_name"),
    [
        ("McpServer", "mcpservers", "mcps"),
        ("ToolPolicy", "toolpolicies", "tpol"),
        ("Mission", "missions", "mission"),
    ],
    ids=["McpServer", "ToolPolicy", "Mission"],
)
def test_names_group_version_and_scope(kind: str, plural: str, short_name: str) -> None:
    crd = CRDS[kind]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1" and crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{plural}.callwarden.io"
    spec = crd["spec"]
    assert (spec["group"], spec["scope"]) == ("callwarden.io", "Namespaced")
    assert spec["names"] == {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": kind.lower(),
        "shortNames": [short_name],
        "categories": ["callwarden"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize(
    ("kind", "columns"),
    [
        ("McpServer", ["Resource", "Ready", "Tools", "Enforced", "Age"]),
        ("ToolPolicy", ["Ready", "Age"]),
        ("Mission", ["Purpose", "Subject", "Phase", "Calls", "Age", "Expires"]),
    ],
    ids=["McpServer", "ToolPolicy", "Mission"],
)
def test_printer_columns(kind: str, columns: list[str]) -> None:
    printed = {c["name"]: c for c in CRDS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert list(printed) == columns
    if "Ready" in printed:
        assert printed["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert printed["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def test_mcp_server_tools_column_reads_the_status_tool_count() -> None:
    columns = CRDS["McpServer"]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert {"name": "Tools", "type": "integer", "jsonPath": ".status.toolCount"} in columns


@pytest.mark.parametrize("kind", list(CRDS))
def test_status_is_free_form_and_spec_is_required(kind: str) -> None:
    schema = schema_of(kind)
    assert schema["required"] == ["spec"]
    assert schema["properties"]["status"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


@pytest.mark.parametrize(("path", "node"), ALL_NODES)
def test_schema_node_is_structural(path: str, node: Mapping[str, Any]) -> None:
    assert "type" in node
    forbidden = {
        "$ref",
        "$defs",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "const",
        "additionalProperties",
        "default",
        "title",
    }
    assert forbidden.isdisjoint(node)
    if node["type"] == "object" and path != ".metadata":  # the API server owns metadata's schema
        assert ("properties" in node) != bool(node.get("x-kubernetes-preserve-unknown-fields"))
    if node["type"] == "array":
        assert "items" in node


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("McpServer", ".spec.workloadSelector"),
        ("McpServer", ".spec.tools[].mapping"),
        ("McpServer", ".spec.tools[].declared"),
        ("McpServer", ".metadata"),
        ("ToolPolicy", ".metadata"),
    ],
    ids=["workloadSelector", "mapping", "declared", "McpServer-metadata", "ToolPolicy-metadata"],
)
def test_free_form_objects_keep_unknown_fields(kind: str, path: str) -> None:
    nodes = dict(schema_nodes(schema_of(kind)))
    if path == ".metadata":
        assert nodes[path] == {"type": "object"}
    else:
        assert nodes[path]["x-kubernetes-preserve-unknown-fields"] is True


def test_nullable_fields_are_plain_optional_properties() -> None:
    spec = schema_of("McpServer")["properties"]["spec"]
    assert "upstream" not in spec["required"]
    assert spec["properties"]["upstream"]["type"] == "object"
    assert spec["properties"]["pdp"]["properties"]["authzen"]["required"] == ["url"]


def test_exclusive_bounds_use_the_openapi_3_0_form() -> None:
    timeout = schema_of("McpServer")["properties"]["spec"]["properties"]["pdp"]["properties"]["authzen"]
    assert timeout["properties"]["timeoutSeconds"] | {"description": ""} == {
        "type": "number",
        "description": "",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 30,
    }


def test_defaults_are_described_not_applied() -> None:
    path_prefix = schema_of("McpServer")["properties"]["spec"]["properties"]["route"]["properties"][
        "pathPrefix"
    ]
    assert "default" not in path_prefix and path_prefix["description"].endswith('Defaults to "/".')


@pytest.mark.parametrize(
    ("kind", "path"),
    [("McpServer", ".spec.tools"), ("ToolPolicy", ".spec.rules")],
    ids=["tools", "rules"],
)
def test_named_lists_are_maps_keyed_by_a_required_name(kind: str, path: str) -> None:
    node = dict(schema_nodes(schema_of(kind)))[path]
    assert node["x-kubernetes-list-type"] == "map"
    assert node["x-kubernetes-list-map-keys"] == ["name"]
    assert "name" in node["items"]["required"]


PATTERNS = sorted(
    {node["pattern"] for kind in CRDS for _, node in schema_nodes(schema_of(kind)) if "pattern" in node}
)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_patterns_are_regular_expressions(pattern: str) -> None:
    re.compile(pattern)


RULE_VALIDATION = schema_of("ToolPolicy")["properties"]["spec"]["properties"]["rules"]["items"][
    "x-kubernetes-validations"
]


@pytest.mark.parametrize(
    "targets",
    [
        {},
        {"tools": []},
        {"methods": []},
        {"tools": [], "methods": []},
        {"tools": ["q"]},
        {"methods": ["initialize"]},
    ],
    ids=["none", "empty-tools", "empty-methods", "both-empty", "tools", "methods"],
)
def test_rule_validation_agrees_with_the_model(targets: dict[str, Any]) -> None:
    [validation] = RULE_VALIDATION
    rule = {"name": "r", "effect": "Allow", **targets}
    accepted_by_cel = compile_expression(validation["rule"], ("self",)).evaluate({"self": rule})
    try:
        Rule.model_validate(rule)
    except ValidationError:
        accepted_by_model = False
    else:
        accepted_by_model = True
    assert accepted_by_cel is accepted_by_model


def example_objects() -> list[dict[str, Any]]:
    texts = [path.read_text() for path in sorted((ROOT / "examples" / "board-packet").glob("*.yaml"))]
    return [document for text in texts for document in yaml.safe_load_all(text)]


def validator_for(kind: str) -> jsonschema.Draft4Validator:
    """OpenAPI 3.0 schemas are draft-4 JSON Schema plus `x-kubernetes-*`, which draft 4 ignores."""
    return jsonschema.Draft4Validator(schema_of(kind))


@pytest.mark.parametrize("document", example_objects(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_example_objects_satisfy_the_crd_schema(document: dict[str, Any]) -> None:
    validator_for(document["kind"]).validate(document)


INVALID_SPECS = [
    pytest.param("McpServer", {"resource": "https://x/mcp", "issuers": []}, id="no-issuers"),
    pytest.param(
        "McpServer", {"resource": "ftp://x", "issuers": [{"issuer": "i", "jwksUri": "http://j"}]}, id="ftp"
    ),
    pytest.param(
        "McpServer",
        {
            "resource": "https://x/mcp",
            "issuers": [{"issuer": "i", "jwksUri": "http://j", "algorithms": ["HS256"]}],
        },
        id="hmac-algorithm",
    ),
    pytest.param(
        "McpServer",
        {
            "resource": "https://x/mcp",
            "issuers": [{"issuer": "i", "jwksUri": "http://j"}],
            "maxRequestBytes": 1,
        },
        id="tiny-body-limit",
    ),
    pytest.param(
        "McpServer",
        {
            "resource": "https://x/mcp",
            "issuers": [{"issuer": "i", "jwksUri": "http://j"}],
            "tools": [{"name": "a b"}],
        },
        id="tool-name-with-space",
    ),
    pytest.param(
        "ToolPolicy",
        {"targets": [], "rules": [{"name": "r", "effect": "Allow", "tools": ["*"]}]},
        id="no-target",
    ),
    pytest.param("ToolPolicy", {"targets": ["*"], "rules": [{"name": "r", "tools": ["*"]}]}, id="no-effect"),
    pytest.param(
        "ToolPolicy",
        {"targets": ["*"], "rules": [{"name": "r", "effect": "Permit", "tools": ["*"]}]},
        id="effect",
    ),
    pytest.param(
        "ToolPolicy",
        {"targets": ["*"], "rules": [{"name": "r", "effect": "Allow", "when": ""}]},
        id="empty-when",
    ),
]


@pytest.mark.parametrize(("kind", "spec"), INVALID_SPECS)
def test_specs_the_loader_rejects_the_crd_schema_rejects_too(kind: str, spec: dict[str, Any]) -> None:
    document = {"apiVersion": "callwarden.io/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}
    with pytest.raises(ConfigError):
        config_from_objects([document])
    assert not validator_for(kind).is_valid(document)


def test_generation_is_deterministic() -> None:
    assert crds.custom_resource_definitions() == crds.custom_resource_definitions()


def test_unions_without_a_structural_form_are_refused() -> None:
    class Either(BaseModel):
        value: int | str

    schema = Either.model_json_schema()
    with pytest.raises(ValueError, match=re.escape("only `X | None` unions")):
        crds._Translator().translate(schema, {})
