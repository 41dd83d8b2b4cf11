"""Imports flow one way between callwarden's rooms, and the core stays free of I/O libraries.

Every import counts: at module level or inside a function, absolute or relative (resolved against
the importing module's package), and those only the type checker sees.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.support.dependencies import imports_of, module_name

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "callwarden"

# Each room, and the rooms it may import (besides itself). A room is a subpackage, or "cli": the
# package's top-level modules (cli.py and any command module beside it), which sit on top.
ALLOWED = {
    "policy": set(),
    "kube": {"policy"},
    "authzen": {"policy"},
    "stores": {"policy", "kube"},  # i10's approval and mission stores (on their branch)
    "extauthz": {"policy", "kube", "authzen", "stores"},
    "operator": {"policy", "kube"},
    "demo": {"policy", "kube", "authzen", "stores", "extauthz", "operator"},
    "cli": {"policy", "kube", "authzen", "stores", "extauthz", "operator", "demo"},
}
# Modules the pure core must never import: it decides, it does not talk. A name covers its submodules.
NOT_IN_CORE = {
    "grpc",
    "envoy",
    "kubernetes",
    "kopf",
    "httpx2",  # the package's one HTTP client
    "anyio",
    "uvloop",
    "prometheus_client",
    "mcp",
    "uvicorn",
    "starlette",
    "socket",
    "ssl",
    "http",
    "urllib.request",
    "asyncio",
}


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module `path` imports, relative imports made absolute; `from a import b` also names a.b."""
    modules: set[str] = set()
    for imported in imports_of(path, module_name(path, root), type_checking=True):
        modules.add(imported.module)
        modules.update(f"{imported.module}.{name}" for name in imported.names)
    return modules


def room_of(module: str) -> str | None:
    """The room of a callwarden module: its subpackage, or "cli"; None for anything else."""
    parts = module.split(".")
    if parts[0] != "callwarden" or len(parts) == 1:
        return None
    return parts[1] if (PACKAGE / parts[1]).is_dir() else "cli"


def sources(room: str) -> list[Path]:
    if room == "cli":
        return sorted(path for path in PACKAGE.glob("*.py") if path.name != "__init__.py")
    return sorted((PACKAGE / room).rglob("*.py"))


def test_every_room_of_the_package_has_its_layers_listed() -> None:
    rooms = {
        room_of(module_name(path, ROOT)) for path in PACKAGE.rglob("*.py") if path != PACKAGE / "__init__.py"
    }
    assert rooms <= set(ALLOWED)


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_a_room_imports_only_the_layers_below_it(room: str) -> None:
    offending = {
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in sources(room)
        for module in imported_modules(path)
        if (imported := room_of(module)) is not None and imported != room and imported not in ALLOWED[room]
    }
    assert not offending


def test_the_policy_core_imports_no_transport_or_kubernetes_library() -> None:
    offending = {
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in sources("policy")
        for module in imported_modules(path)
        if any(module == name or module.startswith(name + ".") for name in NOT_IN_CORE)
    }
    assert not offending


@pytest.mark.parametrize(
    ("text", "imported"),
    [
        ("from ..kube import client\n", "callwarden.kube.client"),
        ("from .. import operator\n", "callwarden.operator"),
        ("from . import cel\n", "callwarden.policy.cel"),
        ("def later():\n    import httpx2\n", "httpx2"),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import kopf\n", "kopf"),
    ],
    ids=["relative, two levels", "relative package", "relative sibling", "inside a function", "type-only"],
)
def test_every_kind_of_import_is_seen(tmp_path: Path, text: str, imported: str) -> None:
    path = tmp_path / "callwarden" / "policy" / "probe.py"
    path.parent.mkdir(parents=True)
    path.write_text(textwrap.dedent(text))
    assert imported in imported_modules(path, tmp_path)
