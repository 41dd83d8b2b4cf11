"""callwarden: a per-call enforcement point for MCP tool calls at the Envoy ext_authz choke point.

Subpackages, each importing only from those listed above it:
  policy    the pure core: CRD specs, loader, CEL, COAZ mapping, AuthZEN request shapes, the
            embedded PDP, bundles, the decision, strict JSON (no gRPC, no Kubernetes, no I/O)
  kube      Kubernetes plumbing: the bundle ConfigMap format and a thin API client wrapper
  authzen   AuthZEN 1.0 over HTTP: the embedded PDP's API, the client for remote PDPs
  extauthz  the data path: Envoy ext_authz (gRPC and HTTP), Layer 1 tokens, strict JSON-RPC,
            decision log, metrics, Envoy configuration, the Kubernetes bundle watcher
  operator  the kopf operator: status, bundle ConfigMaps, leader election, discovery, mesh
  demo      the board-packet demo: MCP servers, issuers, an agent (uses everything above)
"""

__version__ = "0.1.0"
