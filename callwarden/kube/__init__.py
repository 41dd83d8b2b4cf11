"""Kubernetes plumbing shared by the operator (which writes bundles) and ext_authz (which reads them).

`bundles` is the bundle ConfigMap format, pure data in and out; `client` is a thin wrapper over
the Kubernetes API client. Imports only from `callwarden.policy`.
"""
