"""What the mapping hands back: compile-time problems and the four per-call outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final


@dataclass(frozen=True)
class MappingCompileError:
    """A problem found when a server's configuration loads; it is reported, never raised per call."""

    tool: str | None  # None for server-wide problems
    field: str  # where in the configuration, e.g. "mapping.evaluation.subject.id"
    expression: str | None  # the expression text at fault, as written
    message: str

    def __str__(self) -> str:
        parts = [f"tool {self.tool!r}" if self.tool is not None else "server", f"field {self.field}"]
        if self.expression is not None:
            parts.append(f"expression {_shorten(self.expression)!r}")
        parts.append(self.message)
        return ": ".join(parts)


@dataclass(frozen=True)
class PassThrough:
    """`ping` and `notifications/*`: allowed without asking the PDP (COAZ-MCP §Pass-through)."""


PASS_THROUGH: Final = PassThrough()


@dataclass(frozen=True)
class UnknownMethod:
    """A method with no mapping: the binding requires a deny (-32001), never a pass."""

    method: str


@dataclass(frozen=True)
class MappingFailure:
    """No valid AuthZEN request could be built: JSON-RPC -32602, the call never runs."""

    message: str


@dataclass(frozen=True)
class AuthorizationRequests:
    """The AuthZEN request(s) one MCP request needs; every decision must permit.

    `wire` is the body to send (an Access Evaluation request, or an Access Evaluations
    request with top-level defaults); `requests` is the same expanded by AuthZEN default
    inheritance into one complete SARC request per decision. Both share their inner dicts:
    treat them as read-only.
    """

    wire: dict[str, Any]
    requests: tuple[dict[str, Any], ...]
    tool: str | None


MappingResult = PassThrough | UnknownMethod | MappingFailure | AuthorizationRequests


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
