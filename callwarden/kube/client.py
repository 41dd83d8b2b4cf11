"""Kubernetes API clients for the operator and the ext_authz bundle watcher.

One function, so both components authenticate the same way: an explicit kubeconfig file when
given, else the pod's service account (in cluster), else the usual `$KUBECONFIG` /
`~/.kube/config`. No kopf here: the data path imports this module.
"""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from typing import Any, Final, cast

from kubernetes import client
from kubernetes import config as _config
from kubernetes.client.exceptions import ApiException

from callwarden.policy.model import API_GROUP, API_VERSION, GROUP_VERSION

# kubernetes.config has no type hints (the generated client has).
config: Any = _config

# Every request that is not a watch gets these (connect, read) timeouts: an API server that
# stops answering must fail a call, never hang a reconcile or a watcher thread forever.
REQUEST_TIMEOUT: Final = (5.0, 30.0)
FIELD_MANAGER: Final = "callwarden-operator"


def configuration(kubeconfig: str | None = None) -> client.Configuration:
    """The client configuration for `kubeconfig`, or in-cluster, or the default kubeconfig."""
    settings = client.Configuration()
    if kubeconfig is not None:
        config.load_kube_config(config_file=kubeconfig, client_configuration=settings)
        return settings
    try:
        config.load_incluster_config(client_configuration=settings)
    except config.ConfigException:
        config.load_kube_config(client_configuration=settings)
    return settings


def new_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    return client.ApiClient(configuration(kubeconfig))


class Kube:
    """The handful of API calls callwarden makes, on plain JSON-shaped dicts.

    The generated client's typed models are converted at this boundary (`to_json`), so the rest
    of the code reads objects exactly as `kubectl get -o json` shows them. Errors are the
    client's `ApiException` (`.status` 404, 409, 410...) or urllib3's connection errors.
    """

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.coordination = client.CoordinationV1Api(api)

    def to_json(self, value: Any) -> Any:
        return cast(Any, self.api).sanitize_for_serialization(value)

    def username(self) -> str:
        """Who the API server says these credentials are (SelfSubjectReview): the identity to put
        on record for an approval, rather than a name the caller claims."""
        review: Any = client.AuthenticationV1Api(self.api).create_self_subject_review(
            client.V1SelfSubjectReview(metadata=client.V1ObjectMeta()), _request_timeout=REQUEST_TIMEOUT
        )
        name: str = review.status.user_info.username
        return name

    # -- custom objects (McpServer, ToolPolicy) --

    def list_custom(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        listed: Any
        if namespace is None:
            listed = self.custom.list_cluster_custom_object(
                API_GROUP, API_VERSION, plural, _request_timeout=REQUEST_TIMEOUT
            )
        else:
            listed = self.custom.list_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, plural, _request_timeout=REQUEST_TIMEOUT
            )
        items: list[dict[str, Any]] = listed.get("items") or []
        return items

    def patch_status(self, plural: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            API_GROUP,
            API_VERSION,
            namespace,
            plural,
            name,
            patch,
            field_manager=FIELD_MANAGER,
            _content_type="application/merge-patch+json",
            _request_timeout=REQUEST_TIMEOUT,
        )

    def create_custom(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        created: Any = self.custom.create_namespaced_custom_object(
            API_GROUP,
            API_VERSION,
            namespace,
            plural,
            body,
            field_manager=FIELD_MANAGER,
            _request_timeout=REQUEST_TIMEOUT,
        )
        return cast(dict[str, Any], created)

    def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None if there is none."""
        try:
            found: Any = self.custom.get_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, plural, name, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return cast(dict[str, Any], found)

    def list_custom_labelled(self, plural: str, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        listed: Any
        if namespace is None:
            listed = self.custom.list_cluster_custom_object(
                API_GROUP, API_VERSION, plural, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
            )
        else:
            listed = self.custom.list_namespaced_custom_object(
                API_GROUP,
                API_VERSION,
                namespace,
                plural,
                label_selector=selector,
                _request_timeout=REQUEST_TIMEOUT,
            )
        items: list[dict[str, Any]] = listed.get("items") or []
        return items

    def replace_status(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT the status subresource, conditional on `body.metadata.resourceVersion` (409 if it moved)."""
        metadata = body["metadata"]
        replaced: Any = self.custom.replace_namespaced_custom_object_status(
            API_GROUP,
            API_VERSION,
            metadata["namespace"],
            plural,
            metadata["name"],
            body,
            field_manager=FIELD_MANAGER,
            _request_timeout=REQUEST_TIMEOUT,
        )
        return cast(dict[str, Any], replaced)

    def delete_custom(self, plural: str, namespace: str, name: str, resource_version: str) -> None:
        """Delete, on the version read (409 if it moved)."""
        self.custom.delete_namespaced_custom_object(
            API_GROUP,
            API_VERSION,
            namespace,
            plural,
            name,
            body=client.V1DeleteOptions(
                preconditions=client.V1Preconditions(resource_version=resource_version)
            ),
            _request_timeout=REQUEST_TIMEOUT,
        )

    # -- ConfigMaps --

    def list_configmaps(self, namespace: str | None, selector: str) -> tuple[list[dict[str, Any]], str]:
        """(items, the list's resourceVersion)."""
        if namespace is None:
            listed = self.core.list_config_map_for_all_namespaces(
                label_selector=selector, _request_timeout=REQUEST_TIMEOUT
            )
        else:
            listed = self.core.list_namespaced_config_map(
                namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
            )
        data = self.to_json(listed)
        return list(data.get("items") or []), str(data["metadata"]["resourceVersion"])

    def create_configmap(self, body: dict[str, Any]) -> None:
        namespace = body["metadata"]["namespace"]
        self.core.create_namespaced_config_map(
            namespace,
            _model(client.V1ConfigMap, body),
            field_manager=FIELD_MANAGER,
            _request_timeout=REQUEST_TIMEOUT,
        )

    def replace_configmap(self, body: dict[str, Any]) -> None:
        """Replace; `body.metadata.resourceVersion` makes it conditional (409 if it moved)."""
        metadata = body["metadata"]
        self.core.replace_namespaced_config_map(
            metadata["name"],
            metadata["namespace"],
            _model(client.V1ConfigMap, body),
            field_manager=FIELD_MANAGER,
            _request_timeout=REQUEST_TIMEOUT,
        )

    def delete_configmap(self, namespace: str, name: str, resource_version: str | None = None) -> None:
        preconditions = (
            client.V1Preconditions(resource_version=resource_version) if resource_version else None
        )
        self.core.delete_namespaced_config_map(
            name,
            namespace,
            body=client.V1DeleteOptions(preconditions=preconditions),
            _request_timeout=REQUEST_TIMEOUT,
        )

    # -- Secrets --

    def read_secret_value(self, namespace: str, name: str, key: str) -> bytes | None:
        """One key of a Secret, decoded; None if the Secret has no such key. 404/403 raise."""
        secret = self.core.read_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT)
        encoded = (secret.data or {}).get(key)
        return None if encoded is None else base64.b64decode(encoded)

    # -- Events --

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        self.core.create_namespaced_event(
            namespace, _model(client.CoreV1Event, body), _request_timeout=REQUEST_TIMEOUT
        )

    # -- Leases --

    def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Lease, or None if there is none."""
        try:
            lease = self.coordination.read_namespaced_lease(name, namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        data: dict[str, Any] = self.to_json(lease)
        return data

    def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        created = self.coordination.create_namespaced_lease(
            namespace, _model(client.V1Lease, body), _request_timeout=REQUEST_TIMEOUT
        )
        data: dict[str, Any] = self.to_json(created)
        return data

    def replace_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        replaced = self.coordination.replace_namespaced_lease(
            body["metadata"]["name"],
            namespace,
            _model(client.V1Lease, body),
            _request_timeout=REQUEST_TIMEOUT,
        )
        data: dict[str, Any] = self.to_json(replaced)
        return data


def event_body(
    involved: dict[str, Any], event_type: str, reason: str, message: str, *, component: str, instance: str
) -> dict[str, Any]:
    """A core/v1 Event about the callwarden.io object `involved` ({kind, name, namespace, uid})."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{involved['name'][:200]}.{time.time_ns():x}",
            "namespace": involved["namespace"],
        },
        "involvedObject": {"apiVersion": GROUP_VERSION, **involved},
        "type": event_type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": instance[:128],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def describe_error(error: Exception) -> str:
    """A short, log-safe description of a failed API call."""
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"[:300]


def _model(cls: Any, body: dict[str, Any]) -> Any:
    """A generated model from a JSON-shaped dict (camelCase keys, as the API server writes)."""
    model = cls.from_dict(body)
    if model is None:
        raise ValueError(f"not a {cls.__name__}: {body!r:.200}")
    return model
