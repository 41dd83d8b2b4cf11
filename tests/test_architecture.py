"""Imports flow one way between callwarden's subpackages, and the core stays free of I/O libraries."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "callwarden"

# Each subpackage, and the subpackages it may import (besides itself).
ALLOWED = {
    "policy": set(),
    "kube": {"policy"},
    "authzen": {"policy"},
    "stores": {"policy", "kube"},
    "extauthz": {"policy", "kube", "authzen", "stores"},
    "operator": {"policy", "kube"},
}
# Third-party modules the pure core must never import: it decides, it does not talk.
NOT_IN_CORE = {
    "grpc",
    "envoy",
    "kubernetes",
    "kopf",
    "httpx",
    "prometheus_client",
    "mcp",
    "uvicorn",
    "starlette",
}


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def callwarden_subpackages(path: Path) -> set[str]:
    return {
        module.split(".")[1]
        for module in imported_modules(path)
        if module.startswith("callwarden.") and module.count(".") >= 1
    }


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_subpackage_imports_only_the_layers_below_it(package: str) -> None:
    offending = {
        f"{path.relative_to(PACKAGE)} imports callwarden.{imported}"
        for path in (PACKAGE / package).rglob("*.py")
        for imported in callwarden_subpackages(path)
        if imported != package and imported not in ALLOWED[package]
    }
    assert not offending


def test_the_policy_core_imports_no_transport_or_kubernetes_library() -> None:
    offending = {
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in (PACKAGE / "policy").rglob("*.py")
        for module in imported_modules(path)
        if module.split(".")[0] in NOT_IN_CORE
    }
    assert not offending
