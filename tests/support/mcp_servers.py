"""pytest fixtures for the demo MCP servers and issuers, on free loopback ports.

Load them with `pytest_plugins = ("tests.support.mcp_servers",)` in a test module (or the root
conftest) and import nothing else from here, so pytest can register the module as a plugin before
anything imports it. Then ask for `demo_servers` (fresh per test, so call counts start at zero) or
`demo_issuers` (one set per session: generating RSA keys is the slow part). Reading a server's
counts from another process: `callwarden.demo.servers.read_executed(base_url, tool)`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from callwarden.demo.issuers import DEFAULT_ISSUERS, RunningIssuers, start_issuers
from callwarden.demo.servers import DEFAULT_PORTS, RunningServers, start_servers


@pytest.fixture
def demo_servers() -> Iterator[RunningServers]:
    """finance, documents and workflow, each on its own free port, counting from zero."""
    with start_servers(dict.fromkeys(DEFAULT_PORTS, 0)) as servers:
        yield servers


@pytest.fixture(scope="session")
def demo_issuers() -> Iterator[RunningIssuers]:
    """The three issuers (finance RS256, documents ES256, workflow RS256) on free ports.

    Shared by the session: a test that rotates keys or counts JWKS fetches starts its own.
    """
    with start_issuers(dict.fromkeys(DEFAULT_ISSUERS, 0)) as issuers:
        yield issuers
