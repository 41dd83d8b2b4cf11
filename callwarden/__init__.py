"""callwarden: a per-call enforcement point for MCP tool calls at the Envoy ext_authz choke point.

Subpackages, with imports flowing downward only:
  policy    the pure core: CRD specs, CEL, COAZ mapping, the embedded PDP, bundles (no I/O)
  authzen   AuthZEN 1.0 wire formats, the PDP's HTTP API, the client for remote PDPs
  extauthz  the data path: Envoy ext_authz gRPC service, Layer 1 tokens, strict JSON-RPC, audit
  operator  the kopf operator (Kubernetes only)
"""

__version__ = "0.1.0"
