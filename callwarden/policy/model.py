"""The `McpServer`, `ToolPolicy`, `AccessRequest` and `Mission` specs: the single source of the CRD schemas.

These models validate configuration (CRD objects or the same YAML on disk) once, at load
time. The hot path never touches pydantic: `policy.bundle` compiles validated specs into
plain objects.

Every field name is the camelCase one the CRD carries; Python attributes are snake_case.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic.alias_generators import to_camel

API_GROUP = "callwarden.io"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"

# Kubernetes object names (RFC 1123 subdomain, the rule for namespaced custom objects).
KUBERNETES_NAME = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
Name = Annotated[str, StringConstraints(pattern=KUBERNETES_NAME, max_length=253)]
# MCP tool names: the 2025-11-25 schema recommends 1-128 of [A-Za-z0-9_.-]; we accept that
# alphabet only, so a look-alike (a Cyrillic letter for a Latin one) can never name a tool.
TOOL_NAME = r"^[A-Za-z0-9_.\-/]{1,128}$"
ToolName = Annotated[str, StringConstraints(pattern=TOOL_NAME)]
# Globs over tool names or MCP methods: the tool-name alphabet plus fnmatch's * ? [ ].
GLOB = r"^[A-Za-z0-9_.\-/*?\[\]!]{1,128}$"
Glob = Annotated[str, StringConstraints(pattern=GLOB)]
CelSource = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
Url = Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$", max_length=2048)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]

Algorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
]  # fmt: skip


class Spec(BaseModel):
    """Base of every spec object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


# --- McpServer ---------------------------------------------------------------------------


class Route(Spec):
    """Which HTTP requests belong to this server at the gateway (Envoy :authority and path)."""

    hosts: list[Annotated[str, StringConstraints(min_length=1, max_length=253)]] = Field(
        default_factory=list,
        description="Hosts (the :authority, with or without port) that reach this server; "
        "empty means any host.",
    )
    path_prefix: Annotated[str, StringConstraints(pattern=r"^/[^\s]*$")] = Field(
        default="/", description="Path prefix of the MCP endpoint, e.g. /mcp."
    )


class Upstream(Spec):
    """Where the standalone gateway forwards allowed traffic."""

    url: Url = Field(description="Base URL of the MCP server, e.g. http://127.0.0.1:9001.")


class ProtectedResourceMetadata(Spec):
    """RFC 9728 metadata published for this resource; the 401 challenge points at `url`."""

    url: Url | None = Field(
        default=None,
        description="Metadata URL; defaults to the path-inserted well-known URL of `resource`.",
    )
    authorization_servers: list[Url] = Field(default_factory=list)
    scopes_supported: list[str] = Field(default_factory=list)


class Issuer(Spec):
    """A trusted OAuth authorization server whose access tokens this server accepts."""

    issuer: Annotated[str, StringConstraints(min_length=1, max_length=2048)] = Field(
        description="Exact `iss` value."
    )
    jwks_uri: Url = Field(description="Where the issuer's signing keys (JWKS) are fetched.")
    audiences: list[str] = Field(
        default_factory=list,
        description="Extra audiences accepted besides the server's resource id (RFC 8707).",
    )
    algorithms: list[Algorithm] = Field(
        default_factory=lambda: list[Algorithm](["RS256", "ES256"]),
        min_length=1,
        description="Allowed signature algorithms; `none` and HMAC are never accepted.",
    )
    leeway_seconds: int = Field(default=30, ge=0, le=300, description="Clock skew for exp/nbf.")


class Identity(Spec):
    """Which token claims name the user (the Subject) and the agent (in the Context)."""

    subject_claim: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")] = Field(
        default="sub", description="The on-behalf-of claim that anchors subject.id."
    )
    agent_claim: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")] = Field(
        default="client_id", description="The claim that names the agent (context.agent)."
    )


class Tool(Spec):
    """A tool of this server and how its calls map to AuthZEN requests.

    `mapping` is the platform-declared mapping (current-binding syntax: one envelope key,
    `evaluation` or `evaluations`, `$`-prefixed CEL). `declared` is the Tool object the
    server itself publishes in tools/list (D1 `coaz: true` + `inputSchema["x-coaz-mapping"]`,
    or `inputSchema["x-authzen-mapping"]`). The platform's mapping wins when both exist:
    a server's own declaration is untrusted input (DESIGN.md §4).
    """

    name: ToolName
    mapping: dict[str, Any] | None = None
    declared: dict[str, Any] | None = None
    accepted_mapping_hash: Sha256Hex | None = Field(
        default=None,
        description="SHA-256 (hex, of the canonical JSON) of the declared mapping that discovery may "
        "enforce for this tool; the operator reports each discovered mapping's hash in status.tools.",
    )


class SecretKeyRef(Spec):
    """One key of a Secret in the McpServer's own namespace."""

    name: Name
    key: Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z0-9]{1,253}$")]


class Discovery(Spec):
    """Mapping discovery: the operator lists the server's tools (MCP tools/list) on an interval.

    Declared mappings learned this way are untrusted input, pinned by hash: a tool's declared
    mapping is enforced only while its hash equals the tool's `acceptedMappingHash`.
    """

    url: Url = Field(description="The MCP endpoint the operator calls, e.g. the in-cluster Service URL.")
    credential_secret_ref: SecretKeyRef = Field(
        description="A bearer token the operator sends (Secret in this namespace; the operator needs "
        "`get` on it, see deploy/rbac/operator.yaml)."
    )
    interval_seconds: int = Field(default=300, ge=10, le=86_400)


class AuthzenPdp(Spec):
    """A remote AuthZEN 1.0 PDP."""

    url: Url = Field(description="The PDP's base URL (its `policy_decision_point`).")
    timeout_seconds: float = Field(default=0.5, gt=0, le=30)
    decision_cache_seconds: float = Field(
        default=0,
        ge=0,
        le=60,
        description="How long a decision may be reused for an identical request; 0 (default) asks "
        "the PDP every time. Bounds how stale an answer can be after a policy change.",
    )


class Pdp(Spec):
    """Which PDP decides: the embedded one (default) or a remote AuthZEN PDP."""

    authzen: AuthzenPdp | None = None


DpopMode = Literal["disabled", "allowed", "required"]


class DpopNonce(Spec):
    """Server-issued DPoP nonces (RFC 9449 §9), stateless: any replica verifies any other's."""

    enabled: bool = Field(
        default=False,
        description="Require a server nonce in every proof (401 use_dpop_nonce with DPoP-Nonce until "
        "the client sends one). Bounds replay across replicas to the nonce lifetime (maxAge to 2 x maxAge).",
    )


class Dpop(Spec):
    """Sender-constrained tokens (RFC 9449): `Authorization: DPoP <token>` plus a proof per request."""

    mode: DpopMode = Field(
        default="disabled",
        description="disabled: Bearer only; allowed: Bearer or DPoP; required: DPoP only. A token bound "
        "to a key (cnf.jkt) is refused as Bearer in every mode.",
    )
    algorithms: list[Algorithm] = Field(
        default_factory=lambda: list[Algorithm](["ES256", "PS256", "RS256", "EdDSA"]),
        min_length=1,
        description="Proof signature algorithms accepted (advertised in the challenge and the metadata).",
    )
    max_age: int = Field(
        default=300,
        ge=5,
        le=300,
        description="Seconds a proof is accepted after its iat (at most 5 minutes, SEP-1932).",
    )
    nonce: DpopNonce = Field(default_factory=DpopNonce)

    @field_validator("algorithms")
    @classmethod
    def _algorithms_unique(cls, algorithms: list[Algorithm]) -> list[Algorithm]:
        return list(dict.fromkeys(algorithms))


class McpServerSpec(Spec):
    """An MCP server: its route, resource id, trusted issuers and tool mappings."""

    resource: Url = Field(description="The server's RFC 8707 resource identifier (token audience).")
    route: Route = Field(default_factory=Route)
    upstream: Upstream | None = None
    workload_selector: dict[str, Any] | None = Field(
        default=None, description="Label selector of the server's pods (Kubernetes only)."
    )
    protected_resource_metadata: ProtectedResourceMetadata = Field(default_factory=ProtectedResourceMetadata)
    issuers: list[Issuer] = Field(min_length=1)
    identity: Identity = Field(default_factory=Identity)
    tools: list[Tool] = Field(default_factory=list, max_length=1024)
    pdp: Pdp = Field(default_factory=Pdp)
    deny_http_status: int = Field(
        default=200,
        ge=200,
        le=599,
        description="HTTP status of a JSON-RPC deny (200 lets MCP clients see a protocol error).",
    )
    max_request_bytes: int = Field(default=1_048_576, ge=1024, le=8_388_608)
    discovery: Discovery | None = None
    dpop: Dpop = Field(default_factory=Dpop)

    @field_validator("tools")
    @classmethod
    def _tool_names_unique(cls, tools: list[Tool]) -> list[Tool]:
        seen: set[str] = set()
        for tool in tools:
            if tool.name in seen:
                raise ValueError(f"tool {tool.name!r} is listed twice")
            seen.add(tool.name)
        return tools


# --- ToolPolicy --------------------------------------------------------------------------

Effect = Literal["Allow", "Deny", "RequireApproval"]
TargetName = Annotated[str, StringConstraints(pattern=r"^(\*|[a-z0-9]([-a-z0-9.]*[a-z0-9])?)$")]


class Rule(Spec):
    """One rule. It applies to a request when a `tools` or `methods` glob matches and `when`
    (CEL over subject, action, resource, context) is true. Deny overrides RequireApproval,
    which overrides Allow; when no rule applies, the request is denied."""

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")]
    tools: list[Glob] = Field(default_factory=list, description="Globs over the called tool's name.")
    methods: list[Glob] = Field(
        default_factory=list, description="Globs over MCP methods other than tools/call."
    )
    effect: Effect
    when: CelSource | None = Field(default=None, description="CEL condition; absent means always.")
    description: str | None = None

    @model_validator(mode="after")
    def _has_a_target(self) -> Rule:
        if not self.tools and not self.methods:
            raise ValueError(f"rule {self.name!r} names no tools and no methods")
        return self


class ToolPolicySpec(Spec):
    """Rules for the target McpServers of this namespace."""

    targets: list[TargetName] = Field(
        min_length=1, description="McpServer names in this namespace, or * for all of them."
    )
    rules: list[Rule] = Field(min_length=1, max_length=16_384)

    @field_validator("rules")
    @classmethod
    def _rule_names_unique(cls, rules: list[Rule]) -> list[Rule]:
        seen: set[str] = set()
        for rule in rules:
            if rule.name in seen:
                raise ValueError(f"rule {rule.name!r} is defined twice")
            seen.add(rule.name)
        return rules


# --- AccessRequest ------------------------------------------------------------------------

Timestamp = Annotated[
    str, StringConstraints(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
]


class Requester(Spec):
    """Who asked: the agent (the token's agent claim) and the RFC 8693 actor chain, current first."""

    agent: str | None = None
    actors: list[dict[str, Any]] = Field(default_factory=list)


class Submission(Spec):
    """How an access request reached callwarden's ARS endpoint (absent for held MCP calls)."""

    binding_token_id: Annotated[str, StringConstraints(max_length=128)] = Field(
        description="The `jti` of the binding token submitted: each token opens one request."
    )
    idempotency_key: Annotated[str, StringConstraints(max_length=256)] | None = None
    body_digest: Annotated[str, StringConstraints(max_length=128)] = Field(
        description="sha256 of the submitted body's RFC 8785 form: a same-key retry must match it."
    )


class AccessRequestSpec(Spec):
    """The binding record of one requested tool call (SEP-2848), written once and never changed.

    An approval covers exactly this subject, tool, argument digest, resource, action and context;
    the decision (`status.state`: pending, then one of approved, denied, expired, cancelled,
    failed) is a change of the status subresource, which is what approving means in RBAC terms.
    """

    server: Annotated[str, StringConstraints(min_length=1, max_length=507)] = Field(
        description="The McpServer key, `namespace/name` (`authzen` for a request made at the ARS endpoint)."
    )
    tool: ToolName | None = Field(default=None, description="The called tool.")
    arguments_digest: Annotated[str, StringConstraints(pattern=r"^sha256:[A-Za-z0-9_-]{43}$")] = Field(
        description="sha256 (base64url) of the RFC 8785 form of the call's arguments."
    )
    call: dict[str, Any] = Field(description="The original tools/call params, run once when approved.")
    subject: dict[str, Any] = Field(description="The AuthZEN subject the PDP decided.")
    resource: dict[str, Any]
    action: dict[str, Any]
    context: dict[str, Any] = Field(description="The authorization-relevant context (bound).")
    binding_hash: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{43}$")] = Field(
        description="ARAP binding hash over the JCS subject, resource, action and context."
    )
    bundle_revision: Annotated[str, StringConstraints(max_length=128)] = Field(
        description="The configuration revision that required the approval."
    )
    requester: Requester = Field(default_factory=Requester)
    created_at: Timestamp
    expires_at: Timestamp = Field(description="When a pending request expires; approvals never outlive it.")
    submission: Submission | None = None
    remote: dict[str, Any] | None = Field(
        default=None,
        description="When a remote PDP's ARS holds the request: its task (`taskId`, `statusEndpoint`); "
        "the approval it grants is kept in status and placed unchanged at context.approval.",
    )


# --- Mission -----------------------------------------------------------------------------

# `sha256:` + unpadded base64url of a SHA-256 digest: how a Mission is referenced (policy.mission).
MISSION_REFERENCE = r"^sha256:[A-Za-z0-9_-]{43}$"
MissionReference = Annotated[str, StringConstraints(pattern=MISSION_REFERENCE)]
# RFC 3339 in UTC with a `Z`, seconds precision: one spelling per instant, so the reference (a hash
# of the spec's text) cannot change under a reformatting of the same expiry.
UTC_TIMESTAMP = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"
UtcTimestamp = Annotated[str, StringConstraints(pattern=UTC_TIMESTAMP)]
# Text a person reads before approving: no control (Cc), format (Cf: bidi overrides, zero-width)
# or line/paragraph separator (Zl, Zp) characters, which could make it say something it does not.
# The Mission CRD checks the same categories (policy.crds), so the API server refuses it too.
UNREADABLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
MissionPhase = Literal["Proposed", "Approved", "Denied", "Expired", "Revoked"]


def readable_text(value: str) -> str:
    """`value` if a person can read it as it will be shown, else ValueError naming the character."""
    for char in value:
        if unicodedata.category(char) in UNREADABLE_CATEGORIES:
            raise ValueError(f"contains the invisible or control character U+{ord(char):04X}")
    return value


class MissionAgent(Spec):
    """An agent that may act under the mission: the token's agent claim, and optionally the exact
    RFC 8693 actor chain (the `sub` of each `act`, the current actor first)."""

    client_id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    actors: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] | None = Field(
        default=None, max_length=16, description="When set, the token's actor chain must be exactly this."
    )

    @field_validator("client_id")
    @classmethod
    def _readable(cls, value: str) -> str:
        return readable_text(value)


class Grant(Spec):
    """What the mission covers: calls of these tools on these McpServers of its namespace, when
    `when` (CEL over subject, action, resource, context) is true."""

    servers: list[TargetName] = Field(min_length=1, max_length=64, description="McpServer names, or *.")
    tools: list[Glob] = Field(min_length=1, max_length=256, description="Globs over tool names.")
    when: CelSource | None = Field(default=None, description="CEL condition; absent means always.")


class MissionSpec(Spec):
    """What a person approves: one task, for one user, by named agents, until an expiry."""

    purpose: Annotated[str, StringConstraints(min_length=1, max_length=512)] = Field(
        description="What the task is for, as the approver reads it."
    )
    subject: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        description="The user the agents act for: the token's subject (its subject claim)."
    )
    agents: list[MissionAgent] = Field(min_length=1, max_length=64)
    expires: UtcTimestamp = Field(description="RFC 3339 UTC instant (e.g. 2026-12-03T18:00:00Z).")
    scope: list[Grant] = Field(min_length=1, max_length=256)
    parent: MissionReference | None = Field(
        default=None, description="The reference of the approved mission this one expands."
    )

    @field_validator("purpose", "subject")
    @classmethod
    def _readable(cls, value: str) -> str:
        return readable_text(value)


# When a transition happened, to the microsecond: the audit orders it among decision-log lines.
PreciseTimestamp = Annotated[
    str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z$")
]


class MissionTransition(BaseModel):
    """One change of phase, kept in `status.history` for the audit trail."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    phase: MissionPhase
    by: str
    time: PreciseTimestamp
    reference: MissionReference


class MissionStatus(BaseModel):
    """Written by approvers (`callwarden missions approve`), never by the proposer."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    phase: MissionPhase = "Proposed"
    reference: MissionReference | None = Field(
        default=None, description="The spec's reference when it was approved, denied or revoked."
    )
    approver: str | None = None
    time: UtcTimestamp | None = Field(default=None, description="When the phase last changed.")
    message: str | None = None
    calls: int | None = None
    history: list[MissionTransition] = Field(default_factory=list)


# --- Objects -----------------------------------------------------------------------------


class ObjectMeta(BaseModel):
    """The part of Kubernetes metadata callwarden reads; the rest is ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: Name
    namespace: Name = "default"
    generation: int | None = None
    resource_version: str | None = Field(default=None, alias="resourceVersion")
    annotations: dict[str, str] = Field(default_factory=dict)


class CustomObject(BaseModel):
    """What McpServer and ToolPolicy objects share: group/version, metadata, the key."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    api_version: Literal["callwarden.io/v1alpha1"] = Field(alias="apiVersion")
    metadata: ObjectMeta

    @property
    def key(self) -> str:
        """`namespace/name`, the object's identity everywhere in callwarden."""
        return f"{self.metadata.namespace}/{self.metadata.name}"


class McpServer(CustomObject):
    kind: Literal["McpServer"]
    spec: McpServerSpec


class ToolPolicy(CustomObject):
    kind: Literal["ToolPolicy"]
    spec: ToolPolicySpec

    def targets_server(self, server: McpServer) -> bool:
        if server.metadata.namespace != self.metadata.namespace:
            return False
        return "*" in self.spec.targets or server.metadata.name in self.spec.targets


class AccessRequest(CustomObject):
    kind: Literal["AccessRequest"]
    spec: AccessRequestSpec
    status: dict[str, Any] | None = None


class Mission(CustomObject):
    kind: Literal["Mission"]
    spec: MissionSpec
    status: MissionStatus = Field(default_factory=MissionStatus)


def resource_metadata_url(resource: str) -> str:
    """RFC 9728 §3.1: the path-inserted well-known URL of a resource identifier."""
    match = re.match(r"^(https?://[^/?#]+)(/[^?#]*)?", resource)
    if match is None:
        raise ValueError(f"not an absolute http(s) URL: {resource!r}")
    origin, path = match.group(1), (match.group(2) or "").rstrip("/")
    return f"{origin}/.well-known/oauth-protected-resource{path}"
