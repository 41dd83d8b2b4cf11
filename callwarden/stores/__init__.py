"""Stores for records that every replica must share: one document interface, two backends.

`documents.DocumentStore` holds CRD-shaped objects (`metadata`, `spec`, `status`) with the
Kubernetes semantics callwarden needs: create, get, list by labels, and a status write that
succeeds only on the `resourceVersion` it read (at-most-once transitions). `kube.KubeDocuments`
is the API server (custom resources with a status subresource); `sqlite.SqliteDocuments` is one
local file (standard-library sqlite3, WAL mode, one transaction per write) for standalone use.
Typed stores are built on top: `approvals.ApprovalRecords` (AccessRequest).
"""
