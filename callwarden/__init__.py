"""callwarden: a per-call enforcement point for MCP tool calls at the Envoy ext_authz choke point.

Subpackages, each importing only from those listed above it:
  policy    the pure core: CRD specs, CEL, COAZ mapping, AuthZEN request shapes, the embedded
            PDP, bundles, the decision (no gRPC, no Kubernetes, no network)
  authzen   AuthZEN 1.0 over HTTP: the embedded PDP's API, the client for remote PDPs
  extauthz  the data path: Envoy ext_authz gRPC service, Layer 1 tokens, strict JSON-RPC, audit
  operator  the kopf operator (Kubernetes only)
  demo      the board-packet demo: MCP servers, issuers, an agent (uses everything above)
"""

__version__ = "0.1.0"
