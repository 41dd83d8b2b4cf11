"""The data path: Envoy ext_authz service, Layer 1 token checks, strict JSON-RPC, decision log."""
