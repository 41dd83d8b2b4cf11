"""policy.loader: CRD-shaped YAML (files, directories, objects) -> validated Config, or every problem."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callwarden.policy.loader import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES_PER_FILE,
    Config,
    ConfigError,
    ConfigProblem,
    config_from_objects,
    load_config,
)

SERVER = """\
apiVersion: callwarden.io/v1alpha1
kind: McpServer
metadata:
  name: finance
  namespace: bp
spec:
  resource: https://finance.example/mcp
  issuers:
    - issuer: https://issuer.example
      jwksUri: http://127.0.0.1:9111/jwks.json
"""
POLICY = """\
apiVersion: callwarden.io/v1alpha1
kind: ToolPolicy
metadata:
  name: read
  namespace: bp
spec:
  targets: [finance]
  rules:
    - name: allow-read
      tools: [query_*]
      effect: Allow
"""


def server_object(**spec: Any) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SERVER)
    loaded["spec"].update(spec)
    return loaded


def write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def problems_of(paths: Sequence[Path]) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load_config(paths)
    return caught.value.problems


# --- Loading valid configuration ----------------------------------------------------------------


def test_loads_servers_and_policies_from_one_multi_document_file(tmp_path: Path) -> None:
    config = load_config([write(tmp_path, "all.yaml", SERVER + "---\n" + POLICY)])
    assert list(config.servers) == ["bp/finance"]
    assert list(config.policies) == ["bp/read"]
    assert config.servers["bp/finance"].spec.issuers[0].jwks_uri == "http://127.0.0.1:9111/jwks.json"
    assert config.warnings == []


def test_directory_reads_yaml_and_yml_files_in_name_order_and_not_subdirectories(tmp_path: Path) -> None:
    write(tmp_path, "b.yml", POLICY)
    write(tmp_path, "a.yaml", SERVER)
    write(tmp_path, "notes.txt", "not: configuration")
    write(tmp_path, "claims.json", '{"sub": "alice"}')
    (tmp_path / "nested").mkdir()
    write(tmp_path / "nested", "broken.yaml", "kind: [")
    config = load_config([tmp_path])
    assert list(config.servers) == ["bp/finance"]
    assert list(config.policies) == ["bp/read"]


def test_problems_follow_file_name_order_in_a_directory(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", "kind: Nope\napiVersion: callwarden.io/v1alpha1\n")
    write(tmp_path, "a.yaml", "- not an object\n")
    assert [Path(problem.file).name for problem in problems_of([tmp_path])] == ["a.yaml", "b.yaml"]


def test_a_file_named_twice_is_loaded_once(tmp_path: Path) -> None:
    servers = write(tmp_path, "servers.yaml", SERVER)
    config = load_config([tmp_path, servers, str(servers)])
    assert list(config.servers) == ["bp/finance"]


@pytest.mark.parametrize(
    "content",
    [b"", b"# only a comment\n", b"---\n", b"---\n...\n---\n", b"\n\n"],
    ids=["empty", "comment-only", "one-empty-document", "empty-documents", "blank-lines"],
)
def test_empty_files_are_fine(tmp_path: Path, content: bytes) -> None:
    config = load_config([write(tmp_path, "empty.yaml", content)])
    assert config.servers == {} and config.policies == {}


def test_empty_documents_still_count_in_document_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "---\n---\n---\n" + SERVER + "---\nkind: Unknown\n")
    [problem] = [p for p in problems_of([path]) if p.path == "kind"]
    assert problem.document == 4


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    config = load_config([write(tmp_path, "bom.yaml", b"\xef\xbb\xbf" + SERVER.encode())])
    assert list(config.servers) == ["bp/finance"]


def test_date_like_scalars_stay_strings_as_in_kubernetes_json(tmp_path: Path) -> None:
    text = SERVER + "  tools:\n    - name: q\n      mapping: {evaluation: {context: {since: 2026-10-01}}}\n"
    config = load_config([write(tmp_path, "s.yaml", text)])
    mapping = config.servers["bp/finance"].spec.tools[0].mapping
    assert mapping == {"evaluation": {"context": {"since": "2026-10-01"}}}


def test_anchors_without_aliases_are_harmless(tmp_path: Path) -> None:
    config = load_config([write(tmp_path, "s.yaml", SERVER.replace("metadata:", "metadata: &meta"))])
    assert list(config.servers) == ["bp/finance"]


def test_namespace_defaults_to_default(tmp_path: Path) -> None:
    config = load_config([write(tmp_path, "s.yaml", SERVER.replace("  namespace: bp\n", ""))])
    assert list(config.servers) == ["default/finance"]


def test_no_paths_give_an_empty_config() -> None:
    config = load_config([])
    assert (config.servers, config.policies, config.warnings) == ({}, {}, [])


# --- Revision -----------------------------------------------------------------------------------


def test_revision_is_16_hex_digits(tmp_path: Path) -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", load_config([write(tmp_path, "s.yaml", SERVER)]).revision)


def test_revision_ignores_layout_order_comments_and_metadata(tmp_path: Path) -> None:
    one = load_config([write(tmp_path, "one.yaml", SERVER + "---\n" + POLICY)])
    (tmp_path / "split").mkdir()
    write(tmp_path / "split", "a.yaml", "# the policy first\n" + POLICY)
    write(
        tmp_path / "split",
        "b.yaml",
        SERVER.replace("  namespace: bp\n", "  namespace: bp\n  labels: {x: y}\n"),
    )
    assert load_config([tmp_path / "split"]).revision == one.revision


def test_revision_treats_explicit_defaults_like_omitted_ones(tmp_path: Path) -> None:
    implicit = load_config([write(tmp_path, "a.yaml", SERVER)])
    explicit = load_config([write(tmp_path, "b.yaml", SERVER + "  denyHttpStatus: 200\n")])
    assert explicit.revision == implicit.revision


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("https://finance.example/mcp", "https://finance.example/v2"),
        ("name: finance", "name: finance2"),
        ("namespace: bp", "namespace: other"),
    ],
    ids=["spec", "name", "namespace"],
)
def test_revision_changes_with_meaning(tmp_path: Path, old: str, new: str) -> None:
    before = load_config([write(tmp_path, "a.yaml", SERVER)])
    after = load_config([write(tmp_path, "b.yaml", SERVER.replace(old, new))])
    assert after.revision != before.revision


# --- Warnings -----------------------------------------------------------------------------------


def test_a_target_naming_no_server_is_a_warning_not_an_error(tmp_path: Path) -> None:
    config = load_config(
        [write(tmp_path, "p.yaml", SERVER + "---\n" + POLICY.replace("[finance]", "[finance, hr]"))]
    )
    assert config.warnings == [
        ConfigProblem(
            str(tmp_path / "p.yaml"), 2, "spec.targets[1]", "no McpServer bp/hr in this configuration"
        )
    ]


def test_a_wildcard_target_in_a_namespace_without_servers_is_a_warning(tmp_path: Path) -> None:
    config = load_config([write(tmp_path, "p.yaml", POLICY.replace("[finance]", '["*"]'))])
    [warning] = config.warnings
    assert warning.path == "spec.targets[0]" and "namespace 'bp' has none" in warning.message


def test_a_directory_without_yaml_files_is_a_warning(tmp_path: Path) -> None:
    write(tmp_path, "readme.md", "# nothing")
    [warning] = load_config([tmp_path]).warnings
    assert warning == ConfigProblem(str(tmp_path), 0, "", "no *.yaml or *.yml files here")


# --- Objects (the operator's entry point) -------------------------------------------------------


def test_objects_validate_like_files() -> None:
    config = config_from_objects([server_object(), yaml.safe_load(POLICY)])
    assert isinstance(config, Config) and list(config.servers) == ["bp/finance"]


def test_object_problems_name_the_objects_index() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_objects([server_object(), server_object(maxRequestBytes="big")])
    assert caught.value.problems == [
        ConfigProblem(
            "<objects>", 2, "spec.maxRequestBytes", "expected a valid integer; found the string 'big'"
        )
    ]


def test_objects_from_the_api_server_may_carry_status_and_extra_metadata() -> None:
    server = server_object()
    server["metadata"].update(uid="1234", managedFields=[{"manager": "kubectl"}], generation=3)
    server["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    assert config_from_objects([server]).servers["bp/finance"].metadata.generation == 3


# --- Problems: every one, precisely located -----------------------------------------------------


def test_every_problem_in_every_file_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", SERVER.replace("jwksUri", "jwks_uri") + "---\n- 1\n")
    write(tmp_path, "b.yaml", POLICY.replace("effect: Allow", "effect: Permit"))
    found = [(Path(p.file).name, p.document, p.path) for p in problems_of([tmp_path])]
    assert found == [
        ("a.yaml", 1, "spec.issuers[0].jwksUri"),
        ("a.yaml", 1, "spec.issuers[0].jwks_uri"),
        ("a.yaml", 2, ""),
        ("b.yaml", 1, "spec.rules[0].effect"),
    ]


def test_config_error_message_lists_every_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", "- 1\n---\n- 2\n")
    with pytest.raises(ConfigError) as caught:
        load_config([path])
    assert str(caught.value) == (
        "invalid configuration, 2 problems:\n"
        f"  {path} (document 1): expected a Kubernetes object (a mapping), found a list of 1 item\n"
        f"  {path} (document 2): expected a Kubernetes object (a mapping), found a list of 1 item"
    )


def test_a_syntax_error_is_reported_with_its_line_and_column(tmp_path: Path) -> None:
    [problem] = problems_of([write(tmp_path, "a.yaml", SERVER + "---\nkind: McpServer\nspec: {a: [1, 2}\n")])
    assert (problem.document, problem.path) == (2, "")
    assert problem.message.startswith("line 13, column 16: ")


@pytest.mark.parametrize(
    "path",
    ["missing.yaml", "missing-dir/"],
    ids=["missing-file", "missing-directory"],
)
def test_a_missing_path_is_a_problem(tmp_path: Path, path: str) -> None:
    assert problems_of([tmp_path / path]) == [
        ConfigProblem(str(tmp_path / path), 0, "", "no such file or directory")
    ]


def test_a_device_is_not_read() -> None:
    assert problems_of([Path("/dev/zero")]) == [
        ConfigProblem("/dev/zero", 0, "", "not a regular file or directory")
    ]


def _nested(levels: int) -> str:
    return SERVER + "  workloadSelector: " + "[" * levels + "]" * levels + "\n"


def _laughs(levels: int) -> str:
    lines = ['a0: &a0 "lol"']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


SPEC_ISSUER = "spec.issuers[0]"
# (content, [(document, path, message pattern)]): the loader must report exactly these problems.
HOSTILE: list[Any] = [
    pytest.param(
        "kind: [\n", [(1, "", r"^line 2, column 1: did not find expected node content")], id="syntax"
    ),
    pytest.param(
        "a: b: c\n", [(1, "", r"^line 1, column 5: mapping values are not allowed")], id="syntax-mapping"
    ),
    pytest.param(
        "a:\n\t- b\n",
        [(1, "", r"^line 2, column 1: found character that cannot start any token")],
        id="tab-indentation",
    ),
    pytest.param(
        SERVER + "  tools: [{name: a, mapping: {evaluation: ",
        [(1, "", r"^line 12, column 1: did not find expected node content")],
        id="truncated-document",
    ),
    pytest.param(
        SERVER + "kind: ToolPolicy\n",
        [(1, "kind", r"^line 11, column 1: duplicate key 'kind' \(first at line 2, column 1\)$")],
        id="duplicate-top-level-key",
    ),
    pytest.param(
        SERVER + "      jwksUri: http://127.0.0.1:1/other\n",
        [(1, f"{SPEC_ISSUER}.jwksUri", r"^line 11, column 7: duplicate key 'jwksUri' \(first at line 10")],
        id="duplicate-nested-key",
    ),
    pytest.param(
        SERVER + '  "resource": https://elsewhere.example/mcp\n',
        [(1, "spec.resource", r"duplicate key 'resource'")],
        id="duplicate-key-quoted-spelling",
    ),
    pytest.param(
        SERVER + "  resource: a\n  resource: b\n",
        [(1, "spec.resource", r"^line 11, "), (1, "spec.resource", r"^line 12, ")],
        id="every-duplicate-reported",
    ),
    pytest.param("1: one\n", [(1, "", r"mapping keys must be strings; found the key '1'")], id="integer-key"),
    pytest.param(
        "on: true\n", [(1, "", r"mapping keys must be strings; found the key 'on'")], id="boolean-key"
    ),
    pytest.param("~: x\n", [(1, "", r"mapping keys must be strings; found the key '~'")], id="null-key"),
    pytest.param(
        "? [a, b]\n: c\n", [(1, "", r"mapping keys must be strings; found the key \(")], id="complex-key"
    ),
    pytest.param(
        "base: &b {x: 1}\nother:\n  <<: *b\n",
        [(1, "other", r"^line 3, column 3: merge keys \(<<\) are not accepted")],
        id="merge-key",
    ),
    pytest.param(
        SERVER.replace("issuers:", "issuers: &i") + "  tools: *i\n",
        [(1, "spec.tools", r"^line 11, column 10: YAML aliases \(\*i\) are not accepted")],
        id="alias",
    ),
    pytest.param("a: &a [*a]\n", [(1, "a[0]", r"aliases \(\*a\) are not accepted")], id="recursive-alias"),
    pytest.param(
        "a: *nowhere\n", [(1, "a", r"aliases \(\*nowhere\) are not accepted")], id="undefined-alias"
    ),
    pytest.param(
        "*key : value\n",
        [(1, "", r"^line 1, column 1: YAML aliases \(\*key\) are not accepted")],
        id="alias-as-key",
    ),
    pytest.param(
        _laughs(10),
        [(1, f"a{i}[{j}]", r"aliases \(\*a\d\) are not accepted") for i in range(1, 10) for j in range(10)],
        id="billion-laughs",
    ),
    pytest.param(
        _nested(MAX_DEPTH),
        [(1, "", rf"^line 11, column \d+: nested deeper than {MAX_DEPTH} levels")],
        id="too-deep",
    ),
    pytest.param(_nested(100_000), [(1, "", r"nested deeper than")], id="deep-enough-to-crash-libyaml"),
    pytest.param(
        "[" + "1," * MAX_NODES_PER_FILE + "]",
        [(1, "", rf"more than {MAX_NODES_PER_FILE} YAML nodes")],
        id="too-many-nodes",
    ),
    pytest.param(
        "a: !!timestamp 2026-10-01\n", [(1, "a", r"tag '.*timestamp' is not accepted")], id="timestamp-tag"
    ),
    pytest.param("a: !!binary aGVsbG8=\n", [(1, "a", r"tag '.*binary' is not accepted")], id="binary-tag"),
    pytest.param("a: !!set {x: null}\n", [(1, "a", r"tag '.*set' is not accepted")], id="set-tag"),
    pytest.param("a: !!python/object:os.system x\n", [(1, "a", r"tag '.*python/object")], id="python-tag"),
    pytest.param("a: !custom x\n", [(1, "a", r"tag '!custom' is not accepted")], id="custom-tag"),
    pytest.param(
        "a: !custom {x: 1}\n", [(1, "a", r"tag '!custom' is not accepted")], id="custom-mapping-tag"
    ),
    pytest.param("a: !!omap [x: 1]\n", [(1, "a", r"tag '.*omap' is not accepted")], id="omap-tag"),
    pytest.param("a: !!str [x]\n", [(1, "a", r"tag '.*str' is not accepted")], id="str-tag-on-a-list"),
    pytest.param(
        "a: !!int abc\n", [(1, "a", r"^line 1, column 4: 'abc' is not a valid int$")], id="int-tag-on-text"
    ),
    pytest.param("a: !!bool maybe\n", [(1, "a", r"'maybe' is not a valid bool$")], id="bool-tag-on-text"),
    pytest.param("a: !!float x\n", [(1, "a", r"'x' is not a valid float$")], id="float-tag-on-text"),
    pytest.param("a: !!null x\n", [(1, "a", r"'x' is not a valid null$")], id="null-tag-on-text"),
    pytest.param(
        "a: [.nan, -.inf]\n", [(1, "a[0]", r"\.nan is not a finite"), (1, "a[1]", r"-\.inf")], id="nan-inf"
    ),
    pytest.param(
        "- a\n- b\n", [(1, "", r"^expected a Kubernetes object \(a mapping\), found a list of 2")], id="list"
    ),
    pytest.param("just text\n", [(1, "", r"found the string 'just text'$")], id="scalar-document"),
    pytest.param(
        "apiVersion: apps/v1\nkind: Deployment\n",
        [
            (1, "apiVersion", r"^expected 'callwarden.io/v1alpha1'; found the string 'apps/v1'$"),
            (1, "kind", r"^expected 'McpServer' or 'ToolPolicy'; found the string 'Deployment'$"),
        ],
        id="foreign-object",
    ),
    pytest.param(
        SERVER.replace("callwarden.io/v1alpha1", "callwarden.io/v1"),
        [(1, "apiVersion", r"found the string 'callwarden.io/v1'$")],
        id="unknown-version",
    ),
    pytest.param(
        SERVER.replace("kind: McpServer\n", ""), [(1, "kind", r"; it is missing$")], id="missing-kind"
    ),
    pytest.param(
        SERVER.replace("kind: McpServer", "kind: mcpserver"),
        [(1, "kind", r"found the string 'mcpserver'$")],
        id="kind-wrong-case",
    ),
    pytest.param(
        SERVER + "  maxRequestBytes: '5000'\n",
        [(1, "spec.maxRequestBytes", r"^expected a valid integer; found the string '5000'$")],
        id="string-for-integer",
    ),
    pytest.param(
        SERVER + "  maxRequestBytes: true\n",
        [(1, "spec.maxRequestBytes", r"^expected a valid integer; found true$")],
        id="boolean-for-integer",
    ),
    pytest.param(
        SERVER + "  maxRequestBytes: 10\n",
        [(1, "spec.maxRequestBytes", r"greater than or equal to 1024; found the integer 10$")],
        id="integer-out-of-range",
    ),
    pytest.param(
        SERVER.replace("jwksUri", "jwks_uri"),
        [
            (1, f"{SPEC_ISSUER}.jwksUri", r"^required field is missing$"),
            (1, f"{SPEC_ISSUER}.jwks_uri", r"^unknown field \(fields are camelCase, as in the CRD\)$"),
        ],
        id="snake-case-field",
    ),
    pytest.param(
        SERVER + "  resorce: https://x.example/mcp\n",
        [(1, "spec.resorce", r"^unknown field")],
        id="misspelt-field",
    ),
    pytest.param(
        SERVER.replace("http://127.0.0.1:9111/jwks.json", "file:///etc/jwks.json"),
        [
            (
                1,
                f"{SPEC_ISSUER}.jwksUri",
                r"should match pattern .*; found the string 'file:///etc/jwks.json'$",
            )
        ],
        id="non-http-jwks-uri",
    ),
    pytest.param(
        SERVER.replace(
            "  issuers:\n    - issuer: https://issuer.example\n      jwksUri: http://127.0.0.1:9111/jwks.json\n",
            "",
        )
        + "  issuers: []\n",
        [(1, "spec.issuers", r"at least 1 item")],
        id="no-issuers",
    ),
    pytest.param(
        SERVER.replace("name: finance", "name: Finance"),
        [(1, "metadata.name", r"should match pattern")],
        id="uppercase-name",
    ),
    pytest.param(
        SERVER + "  tools:\n    - name: query_fin\u0430ncials\n",  # Cyrillic a
        [(1, "spec.tools[0].name", r"found the string 'query_fin\u0430ncials'$")],
        id="homoglyph-tool-name",
    ),
    pytest.param(
        SERVER.replace("name: finance", "name: fin\u202eecnan"),
        [(1, "metadata.name", r"found the string 'fin\\u202eecnan'$")],
        id="bidi-override-in-name-is-escaped",
    ),
    pytest.param(
        SERVER + "  tools:\n    - name: a\n    - name: a\n",
        [(1, "spec.tools", r"^tool 'a' is listed twice$")],
        id="duplicate-tool",
    ),
    pytest.param(
        POLICY.replace("      tools: [query_*]\n", ""),
        [(1, "spec.rules[0]", r"^rule 'allow-read' names no tools and no methods$")],
        id="rule-without-target",
    ),
    pytest.param(
        POLICY.replace("[query_*]", "[query financials]"),
        [(1, "spec.rules[0].tools[0]", r"should match pattern")],
        id="glob-with-space",
    ),
    pytest.param(
        POLICY.replace("effect: Allow", "effect: allow"),
        [
            (
                1,
                "spec.rules[0].effect",
                r"^expected 'Allow', 'Deny' or 'RequireApproval'; found the string 'allow'$",
            )
        ],
        id="effect-wrong-case",
    ),
    pytest.param(
        SERVER + "---\n" + SERVER,
        [(2, "metadata.name", r"^McpServer 'bp/finance' is already defined in .*x\.yaml \(document 1\)$")],
        id="duplicate-object",
    ),
    pytest.param(
        SERVER + "---\n" + SERVER.replace("kind: McpServer", "kind: ToolPolicy"),
        [
            (2, "spec.targets", r"required field is missing"),
            (2, "spec.rules", r"required field is missing"),
            (2, "spec.resource", r"unknown field"),
            (2, "spec.issuers", r"unknown field"),
        ],
        id="same-name-other-kind-validates-as-that-kind",
    ),
    pytest.param(
        b"kind: \xff\xfe\n", [(0, "", r"^not UTF-8: byte 0xff at offset 6 \(line 1\)$")], id="not-utf8"
    ),
    pytest.param(
        "kind: McpServer\n".encode("utf-16"), [(0, "", r"^not UTF-8: byte 0xff at offset 0")], id="utf16"
    ),
    pytest.param(b"a: b\nkind: \xc3\n", [(0, "", r"offset 11 \(line 2\)$")], id="truncated-utf8-sequence"),
    pytest.param(
        "a: b\nc: \x00\n", [(1, "", r"^line 2: character #x0000 is not allowed in YAML")], id="nul-character"
    ),
    pytest.param(
        b"#" * (MAX_FILE_BYTES + 1), [(0, "", r"^file is larger than 4194304 bytes")], id="oversized"
    ),
]


@pytest.mark.parametrize(("content", "expected"), HOSTILE)
def test_hostile_input_is_reported_precisely(
    tmp_path: Path, content: str | bytes, expected: list[tuple[int, str, str]]
) -> None:
    path = write(tmp_path, "x.yaml", content)
    problems = problems_of([path])
    assert all(problem.file == str(path) for problem in problems)
    assert [(p.document, p.path) for p in problems] == [(document, where) for document, where, _ in expected]
    for problem, (_, _, pattern) in zip(problems, expected, strict=True):
        assert re.search(pattern, problem.message), problem.message


def test_a_file_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    padding = b"#" * (MAX_FILE_BYTES - len(SERVER) - 1) + b"\n"
    assert list(load_config([write(tmp_path, "big.yaml", SERVER.encode() + padding)]).servers) == [
        "bp/finance"
    ]


@pytest.mark.parametrize(
    "bad",
    [[1, 2], "text", None, {"apiVersion": "callwarden.io/v1alpha1", "kind": "McpServer", "spec": []}],
    ids=["list", "string", "null", "spec-not-a-mapping"],
)
def test_objects_that_are_not_servers_or_policies_are_problems(bad: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_objects([bad])
    assert caught.value.problems and all(p.document == 1 for p in caught.value.problems)


# --- Properties ---------------------------------------------------------------------------------

_yaml_alphabet = st.sampled_from([*"ab:-[]{},&*!|>'\"#\n \t?~0.%@`\\", "kind", "spec", "<<", "\x00", "é"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(_yaml_alphabet, max_size=60).map("".join))
def test_arbitrary_yaml_text_yields_a_config_or_config_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "fuzz.yaml", text)
    try:
        load_config([path])
    except ConfigError as error:
        assert error.problems


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=200))
def test_arbitrary_bytes_yield_a_config_or_config_error(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path, "fuzz.yaml", content)
    try:
        load_config([path])
    except ConfigError as error:
        assert error.problems


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(spec=_json)
def test_arbitrary_specs_yield_a_config_or_config_error(spec: Any) -> None:
    try:
        config_from_objects(
            [
                {
                    "apiVersion": "callwarden.io/v1alpha1",
                    "kind": "McpServer",
                    "metadata": {"name": "x"},
                    "spec": spec,
                }
            ]
        )
    except ConfigError as error:
        assert error.problems
