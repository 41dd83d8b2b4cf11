"""Load McpServer and ToolPolicy objects from CRD-shaped YAML files, or from Kubernetes objects.

Both entry points validate the same way and report every problem found, each with its file,
document number and the field's CRD path (`spec.issuers[0].jwksUri`), so a broken
configuration can be fixed in one pass.

Files are read as strictly as the data path reads JSON-RPC: UTF-8 only, at most 4 MiB, no
duplicate keys (PyYAML would silently keep the last one: a reviewer reading the first one
would approve a policy that is not the one enforced), keys must be strings, and only the
JSON-like YAML types (no timestamps, binaries, sets or custom tags). YAML aliases (`*name`)
and merge keys (`<<`) are rejected outright: an alias can expand exponentially (billion
laughs), and what Kubernetes stores is the expanded JSON anyway, so writing values out keeps
the file and the cluster's copy identical. Nesting depth and the number of YAML nodes per file
are bounded, because libyaml-based loaders crash or use gigabytes on hostile input.

Values are validated in pydantic's strict mode and by their camelCase names only, i.e. as the
Kubernetes API server's schema would (`"5"` is not an integer, `jwks_uri` is an unknown field).

A directory is read non-recursively, like `kubectl apply -f DIR` without `-R`: its `*.yaml`
and `*.yml` files in name order. Subdirectories (an example's `claims/`, `requests/`) are not
configuration.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError
from yaml import MarkedYAMLError, YAMLError
from yaml._yaml import CParser
from yaml.composer import Composer, ComposerError
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError
from yaml.resolver import Resolver

from callwarden.policy.cel import CelCompileError, compile_expression
from callwarden.policy.model import GROUP_VERSION, McpServer, Mission, ToolPolicy
from callwarden.policy.pdp import RULE_VARIABLES

MAX_FILE_BYTES: Final = 4 * 1024 * 1024
MAX_DEPTH: Final = 64  # the data path's JSON-RPC depth bound; configuration needs ~12
# A hostile 4 MiB flow list (`[1,1,1,...]`) is 2 million nodes, ~750 MB and ~10 s to load; an
# ordinary configuration file of that size has well under a quarter of a million.
MAX_NODES_PER_FILE: Final = 250_000

KINDS: Final[Mapping[str, type[McpServer] | type[ToolPolicy]]] = {
    "McpServer": McpServer,
    "ToolPolicy": ToolPolicy,
}


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the configuration (or, in `Config.warnings`, worth a look).

    `document` is 1-based within `file`; 0 means the file as a whole. `path` is the field in
    CRD form (`spec.rules[2].when`), empty for the whole document.
    """

    file: str
    document: int
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.document == 0 else f"{self.file} (document {self.document})"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists every problem found, in file order."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        count = f"{len(self.problems)} problem" + ("s" if len(self.problems) != 1 else "")
        super().__init__(f"invalid configuration, {count}:\n" + "\n".join(f"  {p}" for p in self.problems))


@dataclass(frozen=True)
class Config:
    """A validated configuration.

    `revision` is a content address: the first 16 hex digits of the SHA-256 of a canonical JSON
    of every object's kind, key and validated spec (defaults filled in), so the same meaning
    gives the same revision whatever the file layout, order, comments or metadata.
    """

    servers: dict[str, McpServer]
    policies: dict[str, ToolPolicy]
    revision: str
    warnings: list[ConfigProblem] = field(default_factory=list)


def load_config(paths: Sequence[str | Path]) -> Config:
    """Load every object from the given files and directories; raises ConfigError."""
    collector = _Collector()
    for file in _config_files(paths, collector):
        for document, data in _read_documents(file, collector):
            collector.add_object(data, str(file), document)
    return collector.config()


def config_from_objects(objects: Sequence[Mapping[str, Any]]) -> Config:
    """Validate objects already parsed (e.g. from the Kubernetes API); raises ConfigError.

    Problems name the file `<objects>` and, as the document, the object's 1-based index.
    """
    collector = _Collector()
    for index, data in enumerate(objects, start=1):
        collector.add_object(data, "<objects>", index)
    return collector.config()


def load_missions(paths: Sequence[str | Path]) -> list[Mission]:
    """Mission objects from files, read as strictly as configuration; raises ConfigError.

    Only `spec` and metadata are taken from a file: a status (an approval) is never proposed.
    """
    collector = _Collector()
    missions: list[Mission] = []
    for file in _config_files(paths, collector):
        for document, data in _read_documents(file, collector):
            mission = _mission(data, str(file), document, collector)
            if mission is not None:
                missions.append(mission)
    if collector.problems:
        raise ConfigError(collector.problems)
    return missions


def _mission(data: object, file: str, document: int, collector: _Collector) -> Mission | None:
    if (
        not isinstance(data, Mapping)
        or data.get("kind") != "Mission"
        or data.get("apiVersion") != GROUP_VERSION
    ):
        collector.problem(file, document, "", f"expected a {GROUP_VERSION} Mission object")
        return None
    if "status" in data:
        collector.problem(
            file, document, "status", "a proposal carries no status (approving is a separate step)"
        )
        return None
    try:
        mission = Mission.model_validate(dict(data), strict=True, by_alias=True, by_name=False)
    except ValidationError as error:
        for detail in error.errors():
            collector.problem(file, document, _path(detail["loc"]), _message(detail))
        return None
    for index, grant in enumerate(mission.spec.scope):  # a reviewer must not approve what cannot run
        if grant.when is not None:
            try:
                compile_expression(grant.when, RULE_VARIABLES)
            except CelCompileError as error:
                collector.problem(file, document, f"spec.scope[{index}].when", error.message)
    return mission


# --- Collecting objects ----------------------------------------------------------------------


class _Collector:
    def __init__(self) -> None:
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []
        self.servers: dict[str, McpServer] = {}
        self.policies: dict[str, ToolPolicy] = {}
        self.origins: dict[tuple[str, str], tuple[str, int]] = {}

    def problem(self, file: str, document: int, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(file, document, path, message))

    def add_object(self, data: object, file: str, document: int) -> None:
        if not isinstance(data, Mapping):
            found = _describe(data)
            self.problem(file, document, "", f"expected a Kubernetes object (a mapping), found {found}")
            return
        model = self._model_for(data, file, document)
        if model is None:
            return
        try:
            item = model.model_validate(dict(data), strict=True, by_alias=True, by_name=False)
        except ValidationError as error:
            for detail in error.errors():
                self.problem(file, document, _path(detail["loc"]), _message(detail))
            return
        origin = self.origins.setdefault((item.kind, item.key), (file, document))
        if origin != (file, document):
            self.problem(
                file,
                document,
                "metadata.name",
                f"{item.kind} {item.key!r} is already defined in {origin[0]} (document {origin[1]})",
            )
        elif isinstance(item, McpServer):
            self.servers[item.key] = item
        else:
            self.policies[item.key] = item

    def _model_for(
        self, data: Mapping[str, Any], file: str, document: int
    ) -> type[McpServer] | type[ToolPolicy] | None:
        api_version, kind = data.get("apiVersion"), data.get("kind")
        expected_kinds = " or ".join(repr(k) for k in KINDS)
        if api_version != GROUP_VERSION:
            found = "it is missing" if api_version is None else f"found {_describe(api_version)}"
            self.problem(file, document, "apiVersion", f"expected {GROUP_VERSION!r}; {found}")
        if not isinstance(kind, str) or kind not in KINDS:
            found = "it is missing" if kind is None else f"found {_describe(kind)}"
            self.problem(file, document, "kind", f"expected {expected_kinds}; {found}")
            return None
        return KINDS[kind] if api_version == GROUP_VERSION else None

    def config(self) -> Config:
        if self.problems:
            raise ConfigError(self.problems)
        return Config(
            servers=self.servers,
            policies=self.policies,
            revision=_revision(self.servers, self.policies),
            warnings=[*self.warnings, *self._dangling_targets()],
        )

    def _dangling_targets(self) -> Iterator[ConfigProblem]:
        """Targets that name no server: legal (the server may come later), but worth a warning."""
        namespaces = {server.metadata.namespace for server in self.servers.values()}
        for policy in self.policies.values():
            file, document = self.origins[("ToolPolicy", policy.key)]
            for index, target in enumerate(policy.spec.targets):
                namespace = policy.metadata.namespace
                if target == "*" and namespace not in namespaces:
                    message = f"'*' matches no McpServer: namespace {namespace!r} has none"
                elif target != "*" and f"{namespace}/{target}" not in self.servers:
                    message = f"no McpServer {namespace}/{target} in this configuration"
                else:
                    continue
                yield ConfigProblem(file, document, f"spec.targets[{index}]", message)


def _revision(servers: Mapping[str, McpServer], policies: Mapping[str, ToolPolicy]) -> str:
    content = {
        "McpServer": {
            key: server.spec.model_dump(mode="json", by_alias=True) for key, server in servers.items()
        },
        "ToolPolicy": {
            key: policy.spec.model_dump(mode="json", by_alias=True) for key, policy in policies.items()
        },
    }
    canonical = json.dumps(
        content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# --- Pydantic errors as CRD paths and readable messages ----------------------------------------


def _path(location: Sequence[int | str]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path


def _message(detail: Mapping[str, Any]) -> str:
    kind, text, found = detail["type"], str(detail["msg"]), detail.get("input")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field (fields are camelCase, as in the CRD)"
    if kind == "value_error":
        return text.removeprefix("Value error, ")
    if text.startswith("Input should be "):
        text = "expected " + text.removeprefix("Input should be ")
    return f"{text[0].lower()}{text[1:]}; found {_describe(found)}"


def _describe(value: object) -> str:
    """A value for an error message: scalars shown (repr escapes control and bidi characters)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    for kind, noun in ((str, "string"), (int, "integer"), (float, "number")):
        if isinstance(value, kind):
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            return f"the {noun} {shown}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return f"a list of {len(value)} item" + ("s" if len(value) != 1 else "")
    return f"a value of type {type(value).__name__}"


# --- Files ---------------------------------------------------------------------------------------


def _config_files(paths: Sequence[str | Path], collector: _Collector) -> Iterator[Path]:
    """The files to read, in order, each once (a file also named through its directory)."""
    seen: set[Path] = set()
    for given in map(Path, paths):
        if given.is_dir():
            files = sorted(p for p in given.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            if not files:
                collector.warnings.append(ConfigProblem(str(given), 0, "", "no *.yaml or *.yml files here"))
        elif given.is_file():
            files = [given]
        else:
            reason = "no such file or directory" if not given.exists() else "not a regular file or directory"
            collector.problem(str(given), 0, "", reason)
            continue
        for file in files:
            if file.resolve() not in seen:
                seen.add(file.resolve())
                yield file


def _read_documents(file: Path, collector: _Collector) -> Iterator[tuple[int, object]]:
    """(1-based document number, data) for every non-empty YAML document of `file`."""
    name = str(file)
    try:
        with file.open("rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        collector.problem(name, 0, "", f"cannot be read: {error.strerror}")
        return
    if len(raw) > MAX_FILE_BYTES:
        collector.problem(name, 0, "", f"file is larger than {MAX_FILE_BYTES} bytes (4 MiB)")
        return
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        byte = raw[error.start]
        collector.problem(name, 0, "", f"not UTF-8: byte 0x{byte:02x} at offset {error.start} (line {line})")
        return
    loader = _StrictLoader(text)
    document = 0
    try:
        while True:
            document += 1
            if not loader.check_node():
                return
            node = loader.get_node()
            if node is None:
                return
            problems = list(_node_problems(node, ""))
            for path, message in problems:
                collector.problem(name, document, path, message)
            if not problems:
                data = loader.construct_document(node)
                if data is not None:  # an empty document (`---` alone)
                    yield document, data
    except YAMLError as error:
        collector.problem(name, document, "", _yaml_error_message(error, raw))
    finally:
        loader.dispose()


# --- Strict YAML -------------------------------------------------------------------------------

_STR, _NULL, _FLOAT = "tag:yaml.org,2002:str", "tag:yaml.org,2002:null", "tag:yaml.org,2002:float"
_JSON_TAGS: Final[Mapping[type[Node], frozenset[str]]] = {
    ScalarNode: frozenset({_STR, _NULL, _FLOAT, "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int"}),
    SequenceNode: frozenset({"tag:yaml.org,2002:seq"}),
    MappingNode: frozenset({"tag:yaml.org,2002:map"}),
}
_TIMESTAMP: Final = "tag:yaml.org,2002:timestamp"


class _JsonResolver(Resolver):
    """YAML 1.1 plain-scalar resolution minus timestamps: `2026-10-01` stays a string, as in
    the JSON that Kubernetes stores."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP]
        for first, resolvers in Resolver.yaml_implicit_resolvers.items()
    }


_RESOLVER: Final = _JsonResolver()


class _AliasNode(ScalarNode):
    """Stands in for an alias so the rest of the document can still be checked."""

    def __init__(self, event: Any) -> None:
        super().__init__(_NULL, "", event.start_mark, event.end_mark)
        self.anchor = event.anchor


class _StrictLoader(Composer, CParser, SafeConstructor, _JsonResolver):
    """libyaml's parser (fast) under PyYAML's Python composer (which we can bound): libyaml's own
    composer recurses without limit and segfaults at ~100,000 nested brackets. Aliases become
    `_AliasNode`s, reported later with their paths, and are never expanded."""

    def __init__(self, text: str) -> None:
        CParser.__init__(self, text)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        _JsonResolver.__init__(self)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self._nodes += 1
        event: Any = self.peek_event()  # the stubs type libyaml's events and marks loosely
        if isinstance(event, AliasEvent):
            self.get_event()
            return _AliasNode(event)
        if self._nodes > MAX_NODES_PER_FILE:
            raise ComposerError(None, None, f"more than {MAX_NODES_PER_FILE} YAML nodes", event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self._depth += 1
        try:
            node: Node | None = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        return node


def _node_problems(node: Node, path: str) -> Iterator[tuple[str, str]]:
    """What makes a composed document ambiguous or not JSON-like, with CRD paths."""
    if isinstance(node, _AliasNode):
        yield path, f"{_at(node)}: YAML aliases (*{node.anchor}) are not accepted; write the value out"
    elif node.tag not in _JSON_TAGS[type(node)]:  # !!set, !!omap, !!binary, !!timestamp, !custom...
        yield path, f"{_at(node)}: tag {node.tag!r} is not accepted; use JSON-like values only"
    elif isinstance(node, MappingNode):
        first_seen: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key_problem = _key_problem(key_node)
            if key_problem is not None:
                yield path, key_problem
                continue
            key = key_node.value
            child = f"{path}.{key}" if path else key
            if key in first_seen:
                yield child, f"{_at(key_node)}: duplicate key {key!r} (first at {_at(first_seen[key])})"
            else:
                first_seen[key] = key_node
            yield from _node_problems(value_node, child)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            yield from _node_problems(item, f"{path}[{index}]")
    elif node.tag != _STR and _implicit_tag(node.value) != node.tag:
        yield path, f"{_at(node)}: {node.value!r} is not a valid {node.tag.rsplit(':', 1)[-1]}"  # `!!int abc`
    elif node.tag == _FLOAT and node.value.lstrip("+-").lower() in (".inf", ".nan"):
        yield path, f"{_at(node)}: {node.value} is not a finite number"


def _implicit_tag(value: str) -> str:
    """The tag a plain scalar resolves to: what an explicit `!!int` etc. must agree with."""
    tag: str = _RESOLVER.resolve(ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
    return tag


def _key_problem(key_node: Node) -> str | None:
    if key_node.tag == "tag:yaml.org,2002:merge":
        return f"{_at(key_node)}: merge keys (<<) are not accepted; write the values out"
    if isinstance(key_node, _AliasNode):
        return f"{_at(key_node)}: YAML aliases (*{key_node.anchor}) are not accepted; write the value out"
    if not isinstance(key_node, ScalarNode) or key_node.tag != _STR:
        shown = f" {key_node.value!r}" if isinstance(key_node, ScalarNode) else ""
        return f"{_at(key_node)}: mapping keys must be strings; found the key{shown} (quote it)"
    return None


def _at(node: Node) -> str:
    return f"line {node.start_mark.line + 1}, column {node.start_mark.column + 1}"


def _yaml_error_message(error: YAMLError, raw: bytes) -> str:
    if isinstance(error, MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        context = f" ({error.context})" if error.context else ""
        return f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}{context}"
    if isinstance(error, ReaderError):  # libyaml reports a byte offset, not a line
        line = raw.count(b"\n", 0, error.position) + 1
        return f"line {line}: character #x{error.character:04x} is not allowed in YAML ({error.reason})"
    return f"invalid YAML: {error}"
