"""The Search APIs (AuthZEN 1.0 §Search APIs): subjects, resources or actions a request permits.

A search is answered by evaluation, so it can never disagree with the Access Evaluation API:
every entity the PIP knows of the searched type (for actions: the PIP's action names, then the
names rules target literally) is put in place of the searched entity, and the entities whose
evaluation allows are the results, in the PIP's order. The searched entity's `id` is ignored,
as the spec requires; its `properties`, if any, are kept (the PIP's attributes still win).
Every *input* entity must be complete, so a request that could not be evaluated is a 400.
An unknown type simply has no known entities: `{"results": []}`.

Pagination: a response carries `page` only when the PEP paginates (sends `page.limit` or
`page.token`) or when the result set is cut at the server's page size, so a plain search
answers exactly `{"results": [...]}` (the interop harness compares whole responses). The
opaque `next_token` encodes where to resume, the requested limit, and a fingerprint of the
request minus `page`: a follow-up must send the same request (`limit` may be omitted, as in
the spec's and the certification's examples, or repeated unchanged) or it is refused (400).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from callwarden.policy.evaluation import AuthzenRequestError, request_problem
from callwarden.policy.pdp import EmbeddedPdp

SearchKind = Literal["subject", "resource", "action"]
SEARCH_KINDS: Final[tuple[SearchKind, ...]] = ("subject", "resource", "action")
DEFAULT_MAX_PAGE_SIZE: Final = 1000

_TOKEN_VERSION: Final = 1
_MAX_TOKEN_CHARS: Final = 256


@dataclass(frozen=True)
class _Paging:
    position: int  # index into the candidate list where this page starts
    limit: int | None  # what the PEP asked for (None: no limit), carried by every token
    paginating: bool  # the PEP sent page.limit or page.token: always answer a `page`


def search(
    pdp: EmbeddedPdp, kind: SearchKind, body: object, *, max_page_size: int = DEFAULT_MAX_PAGE_SIZE
) -> dict[str, Any]:
    """Answer one Search API request; raises AuthzenRequestError for a malformed body (400)."""
    if not isinstance(body, dict):
        raise AuthzenRequestError("the request must be a JSON object")
    template = _template(kind, body)
    fingerprint = _fingerprint(kind, body)
    paging = _paging(body.get("page"), fingerprint)
    page_size = max_page_size if paging.limit is None else min(paging.limit, max_page_size)
    candidates = _candidates(pdp, kind, template)
    results: list[dict[str, str]] = []
    position = paging.position
    more = False
    for index, (entity, request) in enumerate(candidates):
        if index < paging.position:
            continue
        if not pdp.evaluate(request).allowed:
            continue
        if len(results) == page_size:
            more = True
            break
        results.append(entity)
        position = index + 1
    if not paging.paginating and not more:
        return {"results": results}
    next_token = _token(position, paging.limit, fingerprint) if more else ""
    return {"page": {"next_token": next_token, "count": len(results)}, "results": results}


def _template(kind: SearchKind, body: Mapping[str, Any]) -> dict[str, Any]:
    """The request to evaluate, the searched entity's id a placeholder; checked as a whole."""
    template = dict(body)
    if kind == "action":
        template["action"] = {"name": ""}  # Action Search has no action; one is ignored if sent
    elif kind in body:
        searched = body[kind]
        if not isinstance(searched, dict):
            raise AuthzenRequestError(f"{kind} must be an object")
        template[kind] = {**searched, "id": ""}
    problem = request_problem(template)
    if problem is not None:
        raise AuthzenRequestError(problem)
    return template


def _candidates(
    pdp: EmbeddedPdp, kind: SearchKind, template: dict[str, Any]
) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    """(result entity, request that would permit it) for every known entity of the searched kind."""
    information = pdp.information
    if kind == "action":
        known = information.action_names() if information is not None else ()
        for name in dict.fromkeys([*known, *pdp.action_names()]):
            yield {"name": name}, {**template, "action": {"name": name}}
        return
    searched = template[kind]
    type_ = searched["type"]
    for id_ in information.entity_ids(kind, type_) if information is not None else ():
        yield {"type": type_, "id": id_}, {**template, kind: {**searched, "id": id_}}


def _fingerprint(kind: SearchKind, body: Mapping[str, Any]) -> str:
    """Identifies the request minus `page` (member order and whitespace do not matter)."""
    rest = {name: value for name, value in body.items() if name != "page"}
    canonical = json.dumps([kind, rest], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _paging(page: object, fingerprint: str) -> _Paging:
    if page is None:
        return _Paging(0, None, paginating=False)
    if not isinstance(page, dict):
        raise AuthzenRequestError("page must be an object")
    limit = page.get("limit")
    if limit is not None and (type(limit) is not int or limit < 0):
        raise AuthzenRequestError("page.limit must be a non-negative integer")
    token = page.get("token")
    if token is not None and not isinstance(token, str):
        raise AuthzenRequestError("page.token must be a string")
    if not token:  # absent, or "" (the end-of-results marker): a first page
        return _Paging(0, limit, paginating=limit is not None)
    position, token_limit = _read_token(token, fingerprint)
    if limit is not None and limit != token_limit:
        raise AuthzenRequestError("page.limit differs from the request that issued page.token")
    return _Paging(position, token_limit, paginating=True)


def _token(position: int, limit: int | None, fingerprint: str) -> str:
    payload = orjson.dumps([_TOKEN_VERSION, position, limit, fingerprint])
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")


def _read_token(token: str, fingerprint: str) -> tuple[int, int | None]:
    """(position, limit) from a token this PDP issued for this very request; else a 400."""
    try:
        if len(token) > _MAX_TOKEN_CHARS:
            raise ValueError("too long")
        fields = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error):
        raise AuthzenRequestError("page.token is not a token this PDP issued") from None
    if not isinstance(fields, list) or len(fields) != 4 or fields[0] != _TOKEN_VERSION:
        raise AuthzenRequestError("page.token is not a token this PDP issued")
    _, position, limit, issued_for = fields
    if not (_count(position) and (limit is None or _count(limit)) and isinstance(issued_for, str)):
        raise AuthzenRequestError("page.token is not a token this PDP issued")
    if issued_for != fingerprint:
        raise AuthzenRequestError(
            "page.token was issued for a different request: every member but page.token must stay the same"
        )
    return position, limit


def _count(value: object) -> bool:
    return type(value) is int and value >= 0
