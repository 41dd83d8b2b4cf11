"""The kopf operator: reconciles McpServer and ToolPolicy objects into bundles (Kubernetes only)."""
