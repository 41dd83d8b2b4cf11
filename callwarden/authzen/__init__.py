"""AuthZEN 1.0 over HTTP: the embedded PDP's Authorization API and the client for remote PDPs.

The request shapes themselves (validation, boxcar expansion) belong to the policy core,
in `callwarden.policy.evaluation`, so the core speaks AuthZEN without any I/O.
"""
