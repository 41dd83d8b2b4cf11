"""Canonical JSON (RFC 8785, JCS) and what ARAP binds with it: digests, the binding hash, equality.

An approval covers exactly one call. Two requests are "the same" when their JCS forms are the
same bytes: that is ARAP §4.5's structural equality (same JSON types, numbers in their RFC 8785
form, strings by code point, arrays in order, the same member sets, and an absent member unequal
to a `null` one), because JCS maps equal values to equal bytes and unequal values to unequal ones.
A value JCS cannot represent (a NaN, an integer beyond 2^53) equals nothing: the comparison fails
closed instead of raising on the enforcement path.

The binding set (ARAP §4.1, §4.5) is the subject, resource, action and the authorization-relevant
context: `subject.properties.act` is left out (the delegation chain is checked against the
credential, not bound), and so are the profile's own context members and the volatile `time`.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any, Final

import rfc8785

__all__ = [
    "NOT_BOUND_CONTEXT",
    "CanonicalizationError",
    "argument_digest",
    "binding_hash",
    "binding_set",
    "canonical",
    "structurally_equal",
]

# Context members that never bind: ARAP's registered decision-context members (profile machinery)
# and the volatile request time.
NOT_BOUND_CONTEXT: Final = frozenset(
    {
        "access_request",
        "evaluation_id",
        "evaluated_at",
        "reason",
        "approval",
        "next_action",
        "retry_after",
        "time",
    }
)
CanonicalizationError = rfc8785.CanonicalizationError


def canonical(value: Any) -> bytes:
    """The RFC 8785 form of a JSON value; raises CanonicalizationError for what JCS cannot represent."""
    return rfc8785.dumps(value)


def _sha256_b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def structurally_equal(left: Any, right: Any) -> bool:
    """ARAP §4.5 structural equality; False (never an exception) when either side is not JCS-able."""
    try:
        return canonical(left) == canonical(right)
    except (CanonicalizationError, TypeError, ValueError):
        return False


def argument_digest(arguments: Any) -> str:
    """`sha256:` + base64url(SHA-256(JCS(arguments))): the call's arguments as the binding record keeps them.

    Absent arguments are the empty object, as MCP reads them.
    """
    return "sha256:" + _sha256_b64url(canonical({} if arguments is None else arguments))


def binding_set(request: Mapping[str, Any]) -> dict[str, Any]:
    """The members of an AuthZEN request an approval binds (the request itself is not modified)."""
    subject = dict(request["subject"])
    properties = subject.get("properties")
    if isinstance(properties, Mapping) and "act" in properties:
        subject["properties"] = {key: value for key, value in properties.items() if key != "act"}
    context = request.get("context") or {}
    return {
        "subject": subject,
        "resource": request["resource"],
        "action": request["action"],
        "context": {key: value for key, value in context.items() if key not in NOT_BOUND_CONTEXT},
    }


def binding_hash(request: Mapping[str, Any]) -> str:
    """ARAP §4.5 hashed binding: base64url(SHA-256(JCS(binding set))); raises CanonicalizationError."""
    return _sha256_b64url(canonical(binding_set(request)))
