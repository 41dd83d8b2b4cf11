"""Mesh wiring: put an Envoy that calls ext_authz in front of every McpServer, and say whether one is.

`--mesh` picks the integration:
- `istio`: one `security.istio.io/v1 AuthorizationPolicy` per McpServer with a workloadSelector,
  `action: CUSTOM` naming the extensionProvider (`--istio-provider`) that the mesh config points at
  ext_authz (see charts/callwarden/README.md). Coverage: every selected pod carries an Istio sidecar
  (`sidecar.istio.io/status` annotation) or is in the ambient data plane
  (`istio.io/dataplane-mode=ambient` on the pod or its namespace).
- `envoy-gateway`: one `gateway.envoyproxy.io/v1alpha1 SecurityPolicy` per McpServer with a
  workloadSelector, targeting its HTTPRoute (annotation `callwarden.io/httproute`, default the
  McpServer's name), `extAuth.grpc` to the ext_authz Service with the request body forwarded.
  Coverage: the HTTPRoute exists.
- `gateway`: the chart's own Envoy routes to the servers; there is nothing to write per server.
- `none`: nothing is written and no coverage is reported.

Objects are owned by their McpServer (ownerReference, so the garbage collector removes them with
it) and labelled as ours; the operator also deletes those whose McpServer is gone, because a
cluster without a garbage collector (or a missed event) must not keep enforcing a stale wiring.
An McpServer whose spec no longer validates keeps its objects: the last good spec is still
enforced (see plan.py), so its wiring must stay too.

Coverage is re-read on every reconcile of the namespace, so pods that gain or lose a sidecar are
noticed at the latest on the next periodic resync (`--resync-seconds`); pods are not watched.

A failing mesh call (say, Istio's CRDs are not installed) never stops the bundle from being
published: it is reported in `status.enforcement` as not covered, with the API error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from kubernetes.client.exceptions import ApiException

from callwarden.kube.client import REQUEST_TIMEOUT, Kube, describe_error
from callwarden.operator.validation import check_server
from callwarden.policy.model import GROUP_VERSION, McpServer

MODES: Final = ("none", "istio", "envoy-gateway", "gateway")
MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGER: Final = "callwarden-operator"
SERVER_LABEL: Final = "callwarden.io/mcpserver"
HTTPROUTE_ANNOTATION: Final = "callwarden.io/httproute"
SIDECAR_ANNOTATION: Final = "sidecar.istio.io/status"
AMBIENT_LABEL: Final = "istio.io/dataplane-mode"


@dataclass(frozen=True)
class MeshOptions:
    mode: str = "none"
    extauthz_service: str = "callwarden-extauthz.callwarden-system.svc.cluster.local:9001"
    istio_provider: str = "callwarden-ext-authz"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mesh mode must be one of {', '.join(MODES)}, not {self.mode!r}")


@dataclass(frozen=True)
class _Kind:
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


AUTHORIZATION_POLICY: Final = _Kind("security.istio.io", "v1", "authorizationpolicies", "AuthorizationPolicy")
SECURITY_POLICY: Final = _Kind("gateway.envoyproxy.io", "v1alpha1", "securitypolicies", "SecurityPolicy")
_KINDS: Final = {"istio": AUTHORIZATION_POLICY, "envoy-gateway": SECURITY_POLICY}


def selector_labels(workload_selector: Mapping[str, Any] | None) -> dict[str, str] | None:
    """matchLabels of a workloadSelector (a LabelSelector, or plain labels); None if unusable.

    Istio's selector is labels only, so a selector with matchExpressions cannot be expressed.
    """
    if not workload_selector:
        return None
    labels = workload_selector.get("matchLabels", workload_selector)
    if "matchExpressions" in workload_selector or not isinstance(labels, Mapping) or not labels:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        return None
    return dict(sorted(labels.items()))


def object_name(server_name: str) -> str:
    return f"callwarden-{server_name}"[:253]


def _metadata(server: Mapping[str, Any]) -> dict[str, Any]:
    meta = server["metadata"]
    return {
        "name": object_name(meta["name"]),
        "namespace": meta["namespace"],
        "labels": {MANAGED_BY: MANAGER, SERVER_LABEL: meta["name"][:63]},
        "ownerReferences": [
            {
                "apiVersion": GROUP_VERSION,
                "kind": "McpServer",
                "name": meta["name"],
                "uid": meta.get("uid", ""),
                "controller": True,
            }
        ],
    }


def httproute_name(server: Mapping[str, Any]) -> str:
    annotations = server["metadata"].get("annotations") or {}
    return str(annotations.get(HTTPROUTE_ANNOTATION) or server["metadata"]["name"])


def desired_object(
    options: MeshOptions, server: Mapping[str, Any], model: McpServer
) -> dict[str, Any] | None:
    """The mesh object wiring `server` to ext_authz, or None (no integration, or no selector)."""
    labels = selector_labels(model.spec.workload_selector)
    if labels is None or options.mode not in _KINDS:
        return None
    kind = _KINDS[options.mode]
    spec: dict[str, Any]
    if kind is AUTHORIZATION_POLICY:
        spec = {
            "selector": {"matchLabels": labels},
            "action": "CUSTOM",
            "provider": {"name": options.istio_provider},
            "rules": [{}],  # every request to the selected workloads
        }
    else:
        host, _, port = options.extauthz_service.rpartition(":")
        service, _, namespace = host.partition(".")
        backend: dict[str, Any] = {"name": service, "port": int(port)}
        if namespace:
            backend["namespace"] = namespace.split(".", 1)[0]
        spec = {
            "targetRefs": [
                {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": httproute_name(server)}
            ],
            "extAuth": {
                "grpc": {"backendRefs": [backend]},
                # Mapping needs the JSON-RPC body; a body over the limit is refused, never checked in part.
                "bodyToExtAuth": {"maxRequestBytes": model.spec.max_request_bytes},
                "failOpen": False,
            },
        }
    return {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": _metadata(server), "spec": spec}


def istio_coverage(
    pods: Sequence[Mapping[str, Any]], namespace_labels: Mapping[str, str]
) -> tuple[bool, str]:
    """Whether Istio puts an Envoy in front of every one of `pods` (those the selector matches)."""
    if not pods:
        return False, "no pod matches the workloadSelector"
    if namespace_labels.get(AMBIENT_LABEL) == "ambient":
        return True, f"{len(pods)} pod(s) in an ambient namespace (CUSTOM authorization needs a waypoint)"
    bare = sorted(
        str(pod["metadata"]["name"])
        for pod in pods
        if SIDECAR_ANNOTATION not in (pod["metadata"].get("annotations") or {})
        and (pod["metadata"].get("labels") or {}).get(AMBIENT_LABEL) != "ambient"
    )
    if bare:
        return False, f"{len(bare)} of {len(pods)} pod(s) have no Istio sidecar: {', '.join(bare[:5])}"
    return True, f"{len(pods)} pod(s) selected, each with an Istio sidecar"


def enforcement(mode: str, covered: bool, reason: str) -> dict[str, Any]:
    return {"mode": mode, "covered": covered, "reason": reason}


class MeshWiring:
    """Writes the mesh objects of one namespace and reports each McpServer's coverage."""

    def __init__(self, kube: Kube, options: MeshOptions) -> None:
        self.kube = kube
        self.options = options

    def wire(
        self, namespace: str, servers: Sequence[Mapping[str, Any]], guard: Callable[[], None]
    ) -> dict[str, dict[str, Any]]:
        """McpServer name -> `status.enforcement`. `guard` raises when this replica may not write."""
        mode = self.options.mode
        if mode == "none":
            return {}
        if mode == "gateway":
            reason = "enforced on calls through the callwarden gateway; direct calls to the pods bypass it"
            return {_name(s): enforcement(mode, True, reason) for s in servers}
        kind = _KINDS[mode]
        try:
            existing = {_name(o): o for o in self._list(kind, namespace)}
        except ApiException as error:
            reason = f"cannot list {kind.kind} objects: {describe_error(error)}"
            return {_name(s): enforcement(mode, False, reason) for s in servers}
        result = {_name(server): self._wire_server(kind, server, existing, guard) for server in servers}
        for name in sorted(existing):  # what is left belongs to no McpServer that wants it
            guard()
            self._delete(kind, namespace, name)
        return result

    def _wire_server(
        self,
        kind: _Kind,
        server: Mapping[str, Any],
        existing: dict[str, dict[str, Any]],
        guard: Callable[[], None],
    ) -> dict[str, Any]:
        mode, name = self.options.mode, object_name(_name(server))
        check = check_server(server)
        if check.server is None:  # the last good spec is enforced: keep its wiring as it is
            existing.pop(name, None)
            return enforcement(mode, False, "the McpServer's spec is invalid; its wiring is left unchanged")
        desired = desired_object(self.options, server, check.server)
        if desired is None:
            return enforcement(
                mode, False, "spec.workloadSelector is missing or not plain matchLabels: nothing to wire"
            )
        current = existing.pop(name, None)
        try:
            if current is None:
                guard()
                self._create(kind, desired)
            elif not _same(current, desired):
                guard()
                desired["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                self._replace(kind, desired)
            return self._coverage(kind, server, desired)
        except ApiException as error:
            return enforcement(mode, False, f"cannot write {kind.kind} {name}: {describe_error(error)}")

    def _coverage(self, kind: _Kind, server: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
        namespace, mode = server["metadata"]["namespace"], self.options.mode
        if kind is AUTHORIZATION_POLICY:
            labels = desired["spec"]["selector"]["matchLabels"]
            selector = ",".join(f"{k}={v}" for k, v in labels.items())
            pods = self.kube.to_json(
                self.kube.core.list_namespaced_pod(
                    namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
                )
            )
            ns = self.kube.to_json(self.kube.core.read_namespace(namespace, _request_timeout=REQUEST_TIMEOUT))
            covered, why = istio_coverage(pods.get("items") or [], ns["metadata"].get("labels") or {})
            return enforcement(mode, covered, f"AuthorizationPolicy {desired['metadata']['name']}: {why}")
        route = httproute_name(server)
        try:
            self.kube.custom.get_namespaced_custom_object(
                "gateway.networking.k8s.io",
                "v1",
                namespace,
                "httproutes",
                route,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as error:
            if error.status != 404:
                raise
            return enforcement(mode, False, f"SecurityPolicy targets HTTPRoute {route}, which does not exist")
        return enforcement(mode, True, f"SecurityPolicy {desired['metadata']['name']} on HTTPRoute {route}")

    # -- API calls --

    def _list(self, kind: _Kind, namespace: str) -> list[dict[str, Any]]:
        listed: Any = self.kube.custom.list_namespaced_custom_object(
            kind.group,
            kind.version,
            namespace,
            kind.plural,
            label_selector=f"{MANAGED_BY}={MANAGER}",
            _request_timeout=REQUEST_TIMEOUT,
        )
        return [o for o in listed.get("items") or [] if isinstance(o, dict)]

    def _create(self, kind: _Kind, body: dict[str, Any]) -> None:
        self.kube.custom.create_namespaced_custom_object(
            kind.group, kind.version, body["metadata"]["namespace"], kind.plural, body,
            _request_timeout=REQUEST_TIMEOUT,
        )  # fmt: skip

    def _replace(self, kind: _Kind, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        self.kube.custom.replace_namespaced_custom_object(
            kind.group, kind.version, meta["namespace"], kind.plural, meta["name"], body,
            _request_timeout=REQUEST_TIMEOUT,
        )  # fmt: skip

    def _delete(self, kind: _Kind, namespace: str, name: str) -> None:
        try:
            self.kube.custom.delete_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, name, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as error:
            if error.status != 404:
                raise


def _name(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"]["name"])


def _same(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    have, want = current["metadata"], desired["metadata"]
    return (
        current.get("spec") == desired["spec"]
        and (have.get("labels") or {}) == want["labels"]
        and [(o.get("kind"), o.get("name"), o.get("uid")) for o in have.get("ownerReferences") or []]
        == [(o["kind"], o["name"], o["uid"]) for o in want["ownerReferences"]]
    )
