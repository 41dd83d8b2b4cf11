"""Validate one McpServer or ToolPolicy object with the policy core, as the data path would.

The same calls the data path makes when it loads a bundle (`config_from_objects`,
`compile_server_mapping`, `check_policy`), one object at a time, so one object's status names
every problem of that object (field in CRD form, expression at fault) and one broken object
never hides another's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from callwarden.policy.loader import ConfigError, config_from_objects
from callwarden.policy.mapping import MappingCompileError, compile_server_mapping
from callwarden.policy.mapping.defaults import default_mappings
from callwarden.policy.mapping.digest import DECLARED_KEYS, mapping_sha256
from callwarden.policy.model import McpServer, Tool, ToolPolicy
from callwarden.policy.pdp import check_policy

# Condition reasons (CamelCase, as Kubernetes conventions want).
SCHEMA_ERROR: Final = "SchemaError"
MAPPING_ERROR: Final = "MappingError"
COMPILE_ERROR: Final = "CompileError"

MappingSource = Literal["platform", "declared", "default"]


@dataclass(frozen=True)
class Problem:
    """What is wrong, where (`spec.rules[2].when`), and the expression at fault if any."""

    field: str
    expression: str | None
    message: str

    def __str__(self) -> str:
        parts = [self.field] if self.field else []
        if self.expression is not None:
            shown = self.expression if len(self.expression) <= 200 else self.expression[:200] + "..."
            parts.append(f"expression {shown!r}")
        return ": ".join([*parts, self.message])


@dataclass(frozen=True)
class ToolMapping:
    """A tool as the status reports it: which mapping applies, and that mapping's SHA-256."""

    name: str
    source: MappingSource
    sha256: str

    def to_status(self) -> dict[str, str]:
        return {"name": self.name, "source": self.source, "sha256": self.sha256}


@dataclass(frozen=True)
class ServerCheck:
    server: McpServer | None  # None when the object fails schema validation
    reason: str | None  # None when valid
    problems: tuple[Problem, ...] = ()
    tools: tuple[ToolMapping, ...] = ()


@dataclass(frozen=True)
class PolicyCheck:
    policy: ToolPolicy | None
    reason: str | None
    problems: tuple[Problem, ...] = ()


def _schema_problems(error: ConfigError) -> tuple[Problem, ...]:
    return tuple(Problem(p.path, None, p.message) for p in error.problems)


def check_server(obj: Mapping[str, Any]) -> ServerCheck:
    try:
        config = config_from_objects([obj])
    except ConfigError as error:
        return ServerCheck(None, SCHEMA_ERROR, _schema_problems(error))
    (server,) = config.servers.values()
    tools = tuple(describe_tool(server, tool) for tool in server.spec.tools)
    errors = compile_server_mapping(server).errors
    if errors:
        problems = tuple(_mapping_problem(server, error) for error in errors)
        return ServerCheck(server, MAPPING_ERROR, problems, tools)
    return ServerCheck(server, None, (), tools)


def check_policy_object(obj: Mapping[str, Any]) -> PolicyCheck:
    try:
        config = config_from_objects([obj])
    except ConfigError as error:
        return PolicyCheck(None, SCHEMA_ERROR, _schema_problems(error))
    (policy,) = config.policies.values()
    errors = check_policy(policy)
    if errors:
        problems = tuple(
            Problem(e.field, e.expression, f"rule {e.rule!r}: {e.message}" if e.rule else e.message)
            for e in errors
        )
        return PolicyCheck(policy, COMPILE_ERROR, problems)
    return PolicyCheck(policy, None)


def _mapping_problem(server: McpServer, error: MappingCompileError) -> Problem:
    """A mapping error with its field as a CRD path (`spec.tools[3].mapping.evaluation...`)."""
    if error.tool is None:
        return Problem(error.field, error.expression, error.message)
    index = next(i for i, tool in enumerate(server.spec.tools) if tool.name == error.tool)
    within = "" if error.field.startswith("mapping") else "declared."
    return Problem(f"spec.tools[{index}].{within}{error.field}", error.expression, error.message)


def describe_tool(server: McpServer, tool: Tool) -> ToolMapping:
    """Which mapping a tools/call to this tool uses (platform > declared > default), hashed."""
    if tool.mapping is not None:
        return ToolMapping(tool.name, "platform", mapping_sha256(tool.mapping))
    schema = (tool.declared or {}).get("inputSchema")
    if isinstance(schema, dict):
        for key in DECLARED_KEYS:
            if key in schema:
                return ToolMapping(tool.name, "declared", mapping_sha256(schema[key]))
    default = default_mappings(server.spec.identity.agent_claim)["tools/call"]
    return ToolMapping(tool.name, "default", mapping_sha256(default))
