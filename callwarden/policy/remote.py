"""The seam between the decision and whichever PDP answers it.

`decide()` needs one thing of a PDP: decisions for the complete SARC requests a mapping built.
The embedded PDP gives them in process; a remote AuthZEN PDP (`callwarden.authzen.client`)
gives them over HTTP. The core does no I/O, so it cannot build a remote PDP itself: whoever
compiles a bundle for serving passes a factory, and without one (e.g. `callwarden check`) a
server whose spec names `pdp.authzen` gets `UnavailablePdp`, which fails every call (JSON-RPC
-32603), never an allow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from callwarden.policy.model import McpServer
from callwarden.policy.pdp import Decision


class Pdp(Protocol):
    """Decides complete SARC requests; safe to share between threads."""

    def evaluate(self, request: Mapping[str, Any]) -> Decision:
        """One complete request."""
        ...

    def evaluate_mapped(self, requests: Sequence[Mapping[str, Any]]) -> list[Decision]:
        """The requests of one mapped message, in order. Allowed only if every decision allows;
        a PDP may stop after the first deny. Raises when it cannot answer (the caller denies)."""
        ...


RemotePdpFactory = Callable[[McpServer], Pdp]


class PdpUnavailable(Exception):
    """The PDP cannot answer. The message is safe to show a client (no URL, no request data)."""


class UnavailablePdp:
    """The PDP of a server whose remote PDP cannot be reached from here: every call fails."""

    def __init__(self, message: str) -> None:
        self.message = message

    def evaluate(self, request: Mapping[str, Any]) -> Decision:
        raise PdpUnavailable(self.message)

    def evaluate_mapped(self, requests: Sequence[Mapping[str, Any]]) -> list[Decision]:
        raise PdpUnavailable(self.message)


OFFLINE: UnavailablePdp = UnavailablePdp("remote AuthZEN PDP not available offline")
