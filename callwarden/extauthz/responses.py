"""CheckResponse builders: the only way the data path answers Envoy.

Allow -> `OkHttpResponse` that stamps `x-callwarden-decision-id` on the upstream request and strips
the `x-callwarden-*` headers the client sent (the upstream must be able to trust that prefix).
Deny -> `DeniedHttpResponse`: Envoy answers the client itself; the upstream never sees the request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envoy.config.core.v3.base_pb2 import HeaderValueOption
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse

DECISION_ID_HEADER = "x-callwarden-decision-id"
JSON_CONTENT_TYPE = "application/json"
# The id is unknown when a check failed (it may have failed parsing the body): JSON-RPC says null.
CHECKER_FAILED_BODY = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,'
    b'"message":"callwarden: authorization check failed; request denied"}}'
)

# google.rpc.Code values: Envoy reads only "OK or not" from them, but logs and stats show the code.
_RPC_OK = 0
_RPC_PERMISSION_DENIED = 7
_RPC_UNAUTHENTICATED = 16

# Overwrite, never append: a client-sent header of the same name must not survive next to ours.
_OVERWRITE = HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD


def allow_response(
    headers_to_add: Mapping[str, str],
    headers_to_remove: Sequence[str] = (),
    client_headers: Mapping[str, str] | None = None,
) -> CheckResponse:
    """Let the request through with `headers_to_add` set (overwriting any client-sent value),
    and `client_headers` added to the response the client gets (e.g. a fresh `DPoP-Nonce`).

    `headers_to_add` must carry `x-callwarden-decision-id`: every allowed request is traceable to
    its decision log line. `headers_to_remove` are the client-sent `x-callwarden-*` names; a name
    that is also set is left out of the removals, so the order Envoy applies them in never matters.
    """
    added = {name.lower(): value for name, value in headers_to_add.items()}
    if DECISION_ID_HEADER not in added:
        raise ValueError(f"an allow must set {DECISION_ID_HEADER}")
    removed = {name.lower() for name in headers_to_remove} - added.keys()
    response = CheckResponse()
    response.status.code = _RPC_OK
    ok = response.ok_response
    for name, value in added.items():
        option = ok.headers.add()
        option.header.key = name
        option.header.value = value
        option.append_action = _OVERWRITE
    ok.headers_to_remove.extend(sorted(removed))
    for name, value in (client_headers or {}).items():
        option = ok.response_headers_to_add.add()
        option.header.key = name.lower()
        option.header.value = value
        option.append_action = _OVERWRITE
    return response


def deny_response(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> CheckResponse:
    """Answer the client with `status` and a JSON `body`; the request goes no further.

    `headers` are sent to the client (e.g. `WWW-Authenticate`, the decision id); `content-type`
    is always `application/json` unless `headers` sets it.
    """
    if not 200 <= status <= 599:
        raise ValueError(f"deny status must be 200..599, got {status}")
    response = CheckResponse()
    response.status.code = _RPC_UNAUTHENTICATED if status == 401 else _RPC_PERMISSION_DENIED
    denied = response.denied_response
    # Envoy's HttpStatus is an open enum: any code in range reaches the client as sent.
    denied.status.code = status
    # The proto field is a string: the body must be UTF-8 (ours is JSON, so it is).
    denied.body = body.decode("utf-8")
    sent = {name.lower(): value for name, value in (headers or {}).items()}
    for name, value in {"content-type": JSON_CONTENT_TYPE, **sent}.items():
        option = denied.headers.add()
        option.header.key = name
        option.header.value = value
        option.append_action = _OVERWRITE
    return response
