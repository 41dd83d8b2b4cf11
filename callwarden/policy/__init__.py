"""The pure policy core: specs, CEL, mapping, PDP and bundles. No gRPC, no Kubernetes, no I/O."""
