"""Mapping detection and compilation (standards.md §2): structure decides the form, never a date.

- COAZ Draft 1: a tool with `coaz: true` and arrays `subject`, `action?`, `resource`,
  `context` under `inputSchema["x-coaz-mapping"]`; every string is CEL.
- Current COAZ-MCP binding: exactly one envelope key, `evaluation` or `evaluations`;
  `$`-prefixed strings are CEL, `$$` escapes a literal `$`, everything else is literal.
  Platform mappings (McpServer `tools[].mapping`) and the default mappings use it too.
- Anything else (Draft 0 objects, the reverted value/expr draft, the reference server's
  shape, unknown or several envelope keys) is a mapping error that says what it saw.

Every problem is collected as a `MappingCompileError` naming the tool, the field and the
expression; a mapping with any problem yields no plan, so its tool fails closed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from callwarden.policy.cel import CelCompileError, compile_expression
from callwarden.policy.mapping.plan import Context, Entity, Entry, Plan, Subject
from callwarden.policy.mapping.results import MappingCompileError
from callwarden.policy.mapping.values import (
    VARIABLES,
    Audience,
    Constant,
    Expression,
    ListNode,
    Node,
    ObjectNode,
)

ENVELOPES: Final = ("evaluation", "evaluations")
ENTITIES: Final = ("subject", "action", "resource", "context")
MEMBERS: Final = {
    "subject": ("type", "id", "properties"),
    "action": ("name", "properties"),
    "resource": ("type", "id", "properties"),
}
REQUIRED: Final = {"action": ("name",), "resource": ("type", "id")}
PEP_OWNED_CONTEXT: Final = ("mcp", "actors", "cnf")
# One tools/call must not fan out into unbounded PDP work, nor a mapping into unbounded recursion.
MAX_EVALUATIONS: Final = 64
MAX_MAPPING_DEPTH: Final = 32

_MISSING: Final = object()


class Syntax(Enum):
    DRAFT1 = "COAZ Draft 1"  # every string is CEL
    BINDING = "COAZ-MCP binding"  # `$` marks CEL, `$$` escapes


@dataclass(frozen=True)
class Settings:
    """What compilation needs from the McpServer."""

    resource_id: str  # RFC 8707 resource id: what `token.aud` resolves to
    subject_claim: str  # the subject-identity claim that anchors subject.id


class NoMapping:
    """A declared tool that carries no mapping: the default tools/call mapping applies."""


NO_MAPPING: Final = NoMapping()


def compile_binding(
    mapping: Any, path: str, tool: str | None, settings: Settings, errors: list[MappingCompileError]
) -> Plan | None:
    """A current-binding mapping (platform, declared `x-authzen-mapping`, or a default)."""
    return _Compiler(tool, Syntax.BINDING, settings, errors).binding(mapping, path)


def compile_declared(
    declared: dict[str, Any], tool: str, settings: Settings, errors: list[MappingCompileError]
) -> Plan | NoMapping | None:
    """The mapping a server declares on its own Tool object, in whichever form it uses."""
    start = len(errors)

    def error(field: str, message: str) -> None:
        errors.append(MappingCompileError(tool, field, None, message))

    name = declared.get("name", _MISSING)
    if name is not _MISSING and name != tool:
        error("name", f"the declared tool is named {_quote(name)}, not {tool!r}")
    coaz = declared.get("coaz", _MISSING)
    if coaz is not _MISSING and coaz is not True:
        error("coaz", "must be the boolean true (COAZ Draft 1 §Declaring AuthZen Compatibility)")
    schema = declared.get("inputSchema", _MISSING)
    if type(schema) is not dict:
        if coaz is True:
            error("inputSchema", "must be an object carrying x-coaz-mapping (the tool declares coaz: true)")
        return NO_MAPPING if len(errors) == start else None
    found = [key for key in ("x-coaz-mapping", "x-authzen-mapping") if key in schema]
    if len(found) == 2:
        error("inputSchema", "declares both x-coaz-mapping and x-authzen-mapping; a tool has one mapping")
    elif not found and coaz is True:
        error(
            "inputSchema.x-coaz-mapping", "is missing: a tool with coaz: true must carry one (COAZ Draft 1)"
        )
    if len(errors) > start:
        return None
    if not found:
        return NO_MAPPING
    key = found[0]
    mapping, path = schema[key], f"inputSchema.{key}"
    if _looks_like_draft1(mapping):
        if coaz is not True:
            error("coaz", f"{path} is in the COAZ Draft 1 array form, which a tool declares with coaz: true")
            return None
        return _Compiler(tool, Syntax.DRAFT1, settings, errors).draft1(mapping, path, tool)
    return _Compiler(tool, Syntax.BINDING, settings, errors).binding(mapping, path)


def _looks_like_draft1(mapping: Any) -> bool:
    """Draft 1 by structure: no envelope key, and subject/action/resource/context arrays."""
    return (
        type(mapping) is dict
        and not any(key in ENVELOPES for key in mapping)
        and any(type(mapping.get(key)) is list for key in ENTITIES)
    )


def _envelope_problem(mapping: dict[Any, Any]) -> str | None:
    """None for exactly one known envelope key; otherwise what the mapping looks like instead."""
    keys = list(mapping)
    if len(keys) == 1 and keys[0] in ENVELOPES:
        return None
    expected = "a mapping has exactly one envelope key, 'evaluation' or 'evaluations'"
    if not keys:
        return f"is empty: {expected}"
    if _looks_like_draft1(mapping):
        return (
            "is in the COAZ Draft 1 array form, which only a tool's own declaration may use (coaz: true "
            f"with inputSchema.x-coaz-mapping); {expected}"
        )
    if all(key in (*ENTITIES, "evaluations") for key in keys):
        if type(mapping.get("evaluations")) is list:
            return f"is in the reference server's form {{subject, evaluations: [...]}}; {expected}"
        return (
            "is in the COAZ Draft 0 object form (JSONPath references such as $token['sub']), which is not "
            f"supported; {expected}, with $-prefixed CEL"
        )
    names = ", ".join(_quote(key) for key in keys)
    if len(keys) > 1 and any(key in ENVELOPES for key in keys):
        return f"has {len(keys)} top-level keys ({names}); {expected}"
    return f"has the unknown envelope key(s) {names}; {expected}"


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def mentions_token(source: str) -> bool:
    """Does the CEL text reference the `token` variable (outside string literals)?"""
    return re.search(r"(?<![\w.])token\b", _without_string_literals(source)) is not None


def _without_string_literals(source: str) -> str:
    kept = []
    quote: str | None = None
    escaped = False
    for char in source:
        if quote is None:
            if char in "'\"":
                quote = char
            kept.append(char)
        elif escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == quote:
            quote = None
            kept.append(char)
    return "".join(kept)


def _strings_in(value: Any) -> list[str]:
    if type(value) is str:
        return [value]
    if type(value) is dict:
        return [text for item in value.values() for text in _strings_in(item)]
    if type(value) is list:
        return [text for item in value for text in _strings_in(item)]
    return []


class _Compiler:
    """Compiles one mapping of one tool in one syntax, appending every problem it finds."""

    def __init__(
        self, tool: str | None, syntax: Syntax, settings: Settings, errors: list[MappingCompileError]
    ) -> None:
        self.tool = tool
        self.syntax = syntax
        self.settings = settings
        self.errors = errors

    def error(self, field: str, message: str, expression: str | None = None) -> None:
        self.errors.append(MappingCompileError(self.tool, field, expression, message))

    # --- the two mapping forms ----------------------------------------------------------

    def binding(self, mapping: Any, path: str) -> Plan | None:
        start = len(self.errors)
        if type(mapping) is not dict:
            self.error(path, "must be an object with one envelope key, 'evaluation' or 'evaluations'")
            return None
        problem = _envelope_problem(mapping)
        if problem is not None:
            self.error(path, problem)
            return None
        envelope = next(iter(mapping))
        body, path = mapping[envelope], f"{path}.{envelope}"
        if type(body) is not dict:
            self.error(path, f"must be an object: the template of an Access {envelope.title()} request")
            return None
        allowed = ENTITIES if envelope == "evaluation" else (*ENTITIES, "evaluations")
        for member in body:
            if member == "options":
                self.error(
                    f"{path}.options",
                    "is chosen by the PEP (every decision must permit); a mapping cannot set it",
                )
            elif member not in allowed:
                self.error(
                    f"{path}.{_text(member)}", f"is not a member of an Access {envelope.title()} request"
                )
        subject = self.subject(body["subject"], f"{path}.subject", "subject") if "subject" in body else None
        action = (
            self.entity("action", body["action"], f"{path}.action", "action") if "action" in body else None
        )
        resource = (
            self.entity("resource", body["resource"], f"{path}.resource", "resource")
            if "resource" in body
            else None
        )
        context = self.context(body["context"], f"{path}.context", "context") if "context" in body else None
        entries: tuple[Entry, ...] | None = None
        if envelope == "evaluation":
            for kind in ("action", "resource"):
                if kind not in body:
                    self.error(path, f"{kind} is required in an evaluation")
        else:
            entries = self.entries(
                body.get("evaluations", _MISSING), path, "action" in body, "resource" in body
            )
        if len(self.errors) > start:
            return None
        return Plan(subject or Subject("subject"), action, resource, context or Context("context"), entries)

    def entries(self, raw: Any, path: str, top_action: bool, top_resource: bool) -> tuple[Entry, ...] | None:
        path = f"{path}.evaluations"
        if type(raw) is not list or not raw:
            self.error(path, "must be a non-empty array of evaluation objects")
            return None
        if len(raw) > MAX_EVALUATIONS:
            self.error(path, f"has {len(raw)} entries; the limit is {MAX_EVALUATIONS}")
            return None
        entries = []
        for index, item in enumerate(raw):
            item_path, where = f"{path}[{index}]", f"evaluations[{index}]"
            if type(item) is not dict:
                self.error(item_path, "must be an object")
                continue
            for member in item:
                if member == "subject":
                    self.error(
                        f"{item_path}.subject",
                        "a per-entry subject is identity smuggling: the "
                        "top-level subject applies to every evaluation (COAZ-MCP §Declared Mappings)",
                    )
                elif member not in ENTITIES:
                    self.error(f"{item_path}.{_text(member)}", "is not a member of an evaluation")
            action = resource = None
            if "action" in item:
                action = self.entity("action", item["action"], f"{item_path}.action", f"{where}.action")
            elif not top_action:
                self.error(item_path, "has no action and there is no top-level action to inherit")
            if "resource" in item:
                resource = self.entity(
                    "resource", item["resource"], f"{item_path}.resource", f"{where}.resource"
                )
            elif not top_resource:
                self.error(item_path, "has no resource and there is no top-level resource to inherit")
            context = None
            if "context" in item:
                context = self.context(item["context"], f"{item_path}.context", f"{where}.context")
            entries.append(Entry(action, resource, context))
        return tuple(entries)

    def draft1(self, mapping: dict[str, Any], path: str, tool: str) -> Plan | None:
        start = len(self.errors)
        for key in mapping:
            if key not in ENTITIES:
                self.error(f"{path}.{_text(key)}", "is not a member of a COAZ Draft 1 mapping")
        arrays: dict[str, list[Any]] = {}
        for kind in ENTITIES:
            raw = mapping.get(kind, _MISSING)
            if raw is _MISSING:
                if kind != "action":
                    self.error(path, f"{kind} is required (COAZ Draft 1 §Mapping Object Schema)")
            elif type(raw) is dict:
                self.error(
                    f"{path}.{kind}",
                    "is an object, the COAZ Draft 0 form; Draft 1 uses an array of "
                    "objects whose strings are CEL",
                )
            elif type(raw) is not list or not raw:
                self.error(f"{path}.{kind}", "must be a non-empty array of objects")
            elif len(raw) > MAX_EVALUATIONS:
                self.error(f"{path}.{kind}", f"has {len(raw)} elements; the limit is {MAX_EVALUATIONS}")
            else:
                arrays[kind] = raw
        if len(self.errors) > start:
            return None
        lengths = {kind: len(array) for kind, array in arrays.items()}
        multi = {kind: length for kind, length in lengths.items() if length > 1}
        if len(set(multi.values())) > 1:
            listed = ", ".join(f"{kind} has {length}" for kind, length in lengths.items())
            self.error(path, f"arrays with more than one element must all have the same length ({listed})")
        if "subject" in multi:
            self.error(
                f"{path}.subject",
                "must have exactly one element: a subject per evaluation would be "
                "identity smuggling (the subject is anchored to the token)",
            )
        elif not any(mentions_token(text) for text in _strings_in(arrays["subject"][0])):
            self.error(
                f"{path}.subject[0]",
                "at least one field of the subject must be derived from the token "
                "(COAZ Draft 1 §Mapping Object Schema)",
            )
        if len(self.errors) > start:
            return None
        count = max(multi.values(), default=1)
        subject = self.subject(arrays["subject"][0], f"{path}.subject[0]", "subject")
        top: dict[str, Any] = {}
        per_entry: dict[str, list[Any]] = {}
        for kind in ("action", "resource", "context"):
            for index, raw in enumerate(arrays.get(kind, ())):
                item_path = f"{path}.{kind}[{index}]"
                where = kind if lengths[kind] == 1 else f"evaluations[{index}].{kind}"
                node = (
                    self.context(raw, item_path, where)
                    if kind == "context"
                    else self.entity(kind, raw, item_path, where)
                )
                if lengths[kind] == 1:
                    top[kind] = node
                else:
                    per_entry.setdefault(kind, []).append(node)
        if "action" not in arrays:  # COAZ Draft 1 processing rule 5
            top["action"] = Entity("action", (("name", Constant(tool)),), ("name",))
        if len(self.errors) > start or subject is None:
            return None
        entries = None
        if count > 1:
            entries = tuple(
                Entry(*(per_entry[kind][index] if kind in per_entry else None for kind in ENTITIES[1:]))
                for index in range(count)
            )
        return Plan(
            subject, top.get("action"), top.get("resource"), top.get("context", Context("context")), entries
        )

    # --- entities -------------------------------------------------------------------------

    def subject(self, raw: Any, path: str, where: str) -> Subject | None:
        members = self.members("subject", raw, path)
        if members is None:
            return None
        start = len(self.errors)
        type_node = properties_node = id_node = None
        if "type" in members:
            type_node = self.member("subject", "type", members["type"], path, where)
        if "properties" in members:
            properties_node = self.member("subject", "properties", members["properties"], path, where)
        id_written = members["id"] if type(members.get("id")) is str else ""
        if "id" in members:
            id_node = self.subject_id(members["id"], f"{path}.id", f"{where}.id")
        if len(self.errors) > start:
            return None
        return Subject(where, type_node, id_node, id_written, properties_node)

    def subject_id(self, raw: Any, path: str, where: str) -> Node | None:
        """subject.id is anchored (contracts): the claim itself needs no evaluation, a literal
        can never be verified, any other expression is checked against the claim per call."""
        claim = self.settings.subject_claim
        source = self.expression_source(raw)
        if source is None:
            self.error(
                path,
                f"subject.id is anchored to the token's {claim!r} claim, so it cannot be a literal; "
                "write it as the claim's expression or leave it out",
            )
            return None
        # COAZ-MCP §Subject-Identity Claim: `token.sub` as subject.id is read as the designated claim.
        if source.strip() in ("token.sub", f"token.{claim}"):
            return None
        return self.expression(source, raw, path, where)

    def entity(self, kind: str, raw: Any, path: str, where: str) -> Entity | None:
        members = self.members(kind, raw, path)
        if members is None:
            return None
        start = len(self.errors)
        nodes = []
        for key, value in members.items():
            node = self.member(kind, key, value, path, where)
            if node is not None:
                nodes.append((key, node))
        for key in REQUIRED[kind]:
            if key not in members:
                self.error(path, f"{kind}.{key} is required")
        if len(self.errors) > start:
            return None
        return Entity(where, tuple(nodes), REQUIRED[kind])

    def member(self, kind: str, key: str, raw: Any, path: str, where: str) -> Node | None:
        """One member of an entity, with the literal checks AuthZEN 1.0 allows at compile time."""
        node = self.value(raw, f"{path}.{key}", f"{where}.{key}", 1)
        if isinstance(node, Constant):
            wanted = dict if key == "properties" else str
            if type(node.value) is not wanted:
                self.error(
                    f"{path}.{key}", f"{kind}.{key} must be {'an object' if wanted is dict else 'a string'}"
                )
                return None
        return node

    def members(self, kind: str, raw: Any, path: str) -> dict[str, Any] | None:
        """The entity's members. Custom attributes belong under `properties` (AuthZEN 1.0): the
        binding rejects siblings; Draft 1, whose own examples use siblings, moves them there."""
        if type(raw) is not dict:
            self.error(path, f"{kind} must be an object")
            return None
        allowed = MEMBERS[kind]
        if self.syntax is Syntax.DRAFT1:
            rejected = [self.rejects_value_expr(value, f"{path}.{_text(key)}") for key, value in raw.items()]
            if any(rejected):
                return None
        extras = [key for key in raw if key not in allowed]
        if not extras:
            return raw
        if self.syntax is Syntax.BINDING:
            for key in extras:
                self.error(
                    f"{path}.{_text(key)}",
                    f"custom attribute of {kind}: it must be nested under {kind}.properties (AuthZEN 1.0)",
                )
            return None
        properties = raw.get("properties", {})
        if type(properties) is not dict:
            self.error(
                f"{path}.properties",
                "must be an object to receive the sibling custom attributes "
                f"{', '.join(_quote(key) for key in extras)}",
            )
            return None
        clashes = [key for key in extras if key in properties]
        if clashes:
            self.error(
                path,
                f"custom attribute(s) {', '.join(map(_quote, clashes))} appear both beside and "
                "inside properties",
            )
            return None
        moved = {key: value for key, value in raw.items() if key in allowed}
        moved["properties"] = {**properties, **{key: raw[key] for key in extras}}
        return moved

    def context(self, raw: Any, path: str, where: str) -> Context | None:
        if type(raw) is not dict:
            self.error(path, "context must be an object")
            return None
        start = len(self.errors)
        members = []
        agent_node: Node | None = None
        agent_written = ""
        for key, value in raw.items():
            field = f"{path}.{_text(key)}"
            if key in PEP_OWNED_CONTEXT:
                self.error(field, f"context.{key} is set by the PEP; a mapping cannot write it")
                continue
            if self.syntax is Syntax.DRAFT1 and self.rejects_value_expr(value, field):
                continue
            node = self.value(value, field, f"{where}.{_text(key)}", 1)
            if node is None:
                continue
            if key == "agent":
                agent_node, agent_written = node, value if type(value) is str else repr(value)
            else:
                members.append((key, node))
        if len(self.errors) > start:
            return None
        return Context(where, tuple(members), agent_node, agent_written)

    def rejects_value_expr(self, value: Any, path: str) -> bool:
        """Draft 1 only: `{value: ...}` / `{expr: ...}` members come from a reverted draft."""
        if type(value) is dict and value and all(key in ("value", "expr") for key in value):
            self.error(
                path,
                "uses the {value}/{expr} form of a draft reverted on 2026-04-28; in COAZ Draft 1 "
                "every string is CEL and literals are quoted, e.g. \"'customer'\"",
            )
            return True
        return False

    # --- values ---------------------------------------------------------------------------

    def value(self, raw: Any, path: str, where: str, depth: int) -> Node | None:
        if depth > MAX_MAPPING_DEPTH:
            self.error(path, f"nests deeper than {MAX_MAPPING_DEPTH} levels")
            return None
        kind = type(raw)
        if kind is str:
            source = self.expression_source(raw)
            if source is None:
                return Constant(raw[1:] if raw.startswith("$$") else raw)
            return self.expression(source, raw, path, where)
        if kind is dict:
            members = []
            for key, item in raw.items():
                if type(key) is not str:
                    self.error(path, f"has the non-string key {_quote(key)}")
                    return None
                node = self.value(item, f"{path}.{key}", f"{where}.{key}", depth + 1)
                if node is None:
                    return None
                members.append((key, node))
            constants = [node for _, node in members if isinstance(node, Constant)]
            if len(constants) == len(members):
                return Constant(
                    {key: constant.value for (key, _), constant in zip(members, constants, strict=True)}
                )
            return ObjectNode(tuple(members))
        if kind is list:
            items = []
            for index, item in enumerate(raw):
                node = self.value(item, f"{path}[{index}]", f"{where}[{index}]", depth + 1)
                if node is None:
                    return None
                items.append(node)
            constants = [node for node in items if isinstance(node, Constant)]
            if len(constants) == len(items):
                return Constant([constant.value for constant in constants])
            return ListNode(tuple(items), where)
        if raw is None or kind is bool or kind is int or (kind is float and math.isfinite(raw)):
            return Constant(raw)
        self.error(path, f"holds {_quote(raw)}, which is not a JSON value")
        return None

    def expression_source(self, raw: Any) -> str | None:
        """The CEL text of a string value, or None for a literal (Draft 1: every string is CEL)."""
        if type(raw) is not str:
            return None
        if self.syntax is Syntax.DRAFT1:
            return raw
        return raw[1:] if raw.startswith("$") and not raw.startswith("$$") else None

    def expression(self, source: str, written: str, path: str, where: str) -> Node | None:
        if source.strip() == "token.aud":
            return Audience(self.settings.resource_id, written, where)
        try:
            program = compile_expression(source, VARIABLES)
        except CelCompileError as error:
            self.error(path, error.message, written)
            return None
        return Expression(program, written, where)


def _text(key: Any) -> str:
    return key if type(key) is str else _quote(key)
