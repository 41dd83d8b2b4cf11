"""Fixtures for tests against the real kube-apiserver as the operator sees it: the CRDs installed,
least-privilege kubeconfigs (deploy/rbac/<component>.yaml, exactly) and API clients. Opt in with

    pytest_plugins = ("tests.support.kube", "tests.support.operator_fixtures")

    def test_x(operator_api: Kube, admin: Kube) -> None: ...

A separate module from tests.support.operator because test modules import that one directly, and
a module imported before pytest loads it as a plugin cannot have its asserts rewritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from callwarden.kube.client import Kube, new_api_client
from tests.support.operator import admin_api, install_crds, rbac_kubeconfig

if TYPE_CHECKING:  # imported for real by pytest_plugins, which must come first (assert rewriting)
    from tests.support.kube import Kube as KubeEnv


@pytest.fixture(scope="module")
def operator_kubeconfig(kube: KubeEnv) -> Path:
    """The CRDs installed, and a kubeconfig for the operator's ServiceAccount."""
    install_crds(kube)
    return rbac_kubeconfig(kube, "operator")


@pytest.fixture(scope="module")
def extauthz_kubeconfig(kube: KubeEnv) -> Path:
    return rbac_kubeconfig(kube, "extauthz")


@pytest.fixture(scope="module")
def operator_api(operator_kubeconfig: Path) -> Kube:
    return Kube(new_api_client(str(operator_kubeconfig)))


@pytest.fixture(scope="module")
def admin(kube: KubeEnv) -> Kube:
    return admin_api(kube)
