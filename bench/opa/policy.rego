# The board-packet policy (examples/board-packet/policies.yaml + servers.yaml) for OPA's Envoy
# plugin, so the bench compares callwarden with OPA on the same decisions:
#
# - Layer 1: a Bearer JWT verified with io.jwt.decode_verify against the issuer's JWKS (given as
#   data.bench.jwks[issuer], the JWKS JSON text the bench's issuers publish), `iss` and `aud`
#   (the McpServer's resource id) checked; otherwise 401 with a Bearer challenge.
# - The body: OPA's plugin parses the JSON body into input.parsed_body (a single message or a
#   batch array). Every message must be allowed; a batch is denied whole.
# - tools/call: the tool's mapping (subject = token.sub + roles, resource = the tool's argument,
#   context.agent = token.client_id), then the same Allow/Deny rules, deny overriding allow.
# - initialize and tools/list are allowed for any authenticated caller; ping and notifications/*
#   pass; anything else is denied.
# - A deny answers HTTP 200 with a JSON-RPC error (-32001) echoing the request id, as callwarden.
#
# OPA does not do callwarden's strict parsing (duplicate members, depth, JSON-RPC shape), its
# per-decision audit line with the SARC request, or the RFC 9728 challenge URL: the comparison
# favours OPA slightly on work per request.
package callwarden.bench.authz

servers := {
	"board-packet/finance": {
		"resource": "https://finance.board.example/mcp",
		"issuer": "https://issuer.finance.board.example",
	},
	"board-packet/documents": {
		"resource": "https://documents.board.example/mcp",
		"issuer": "https://issuer.documents.board.example",
	},
	"board-packet/workflow": {
		"resource": "https://workflow.board.example/mcp",
		"issuer": "https://issuer.workflow.board.example",
	},
}

# Which argument each tool's mapping reads into resource.id and resource.properties.
tool_mappings := {
	"board-packet/finance": {"query_financials": {"id": "entity", "property": "period"}},
	"board-packet/documents": {"create_doc": {"id": "template", "property": "title"}},
	"board-packet/workflow": {"notify_reviewer": {"id": "group", "property": "deadline"}},
}

# The plugin hands the CheckRequest over as protojson: camelCase field names.
server_key := input.attributes.contextExtensions.mcp_server

server := servers[server_key]

bearer := token if {
	authorization := input.attributes.request.http.headers.authorization
	startswith(authorization, "Bearer ")
	token := substring(authorization, 7, -1)
}

claims := payload if {
	[valid, _, payload] := io.jwt.decode_verify(bearer, {
		"cert": data.bench.jwks[server.issuer],
		"iss": server.issuer,
		"aud": server.resource,
	})
	valid
}

messages := input.parsed_body if is_array(input.parsed_body)

messages := [input.parsed_body] if is_object(input.parsed_body)

# --- the mapping: one SARC request per tools/call ---------------------------------------------

sarc(params) := {
	"subject": {"type": "identity", "id": claims.sub, "properties": {"roles": object.get(claims, "roles", [])}},
	"action": {"name": params.name},
	"resource": {"id": params.arguments[mapping.id], "properties": {"value": params.arguments[mapping.property]}},
	"context": {"agent": claims.client_id, "tool": params.name},
} if {
	mapping := tool_mappings[server_key][params.name]
}

# --- the rules (examples/board-packet/policies.yaml) ------------------------------------------

allow_rule(request) if {
	request.context.tool == "query_financials"
	"analyst" in request.subject.properties.roles
	request.context.agent == "board-agent"
	request.resource.id == "example-corp"
	request.resource.properties.value == "2026-Q3"
}

allow_rule(request) if {
	request.context.tool == "create_doc"
	"analyst" in request.subject.properties.roles
	request.context.agent == "board-agent"
	request.resource.id == "board-packet"
}

allow_rule(request) if {
	request.context.tool == "notify_reviewer"
	"analyst" in request.subject.properties.roles
	request.context.agent == "board-agent"
	request.resource.id == "audit-committee"
}

allow_rule(request) if {
	server_key == "board-packet/finance"
	request.context.tool == "query_financials"
	"finance-admin" in request.subject.properties.roles
}

deny_rule(request) if {
	server_key == "board-packet/finance"
	request.context.tool == "query_financials"
	request.resource.id != "example-corp"
}

message_allowed(message) if {
	message.method == "tools/call"
	request := sarc(message.params)
	allow_rule(request)
	not deny_rule(request)
}

message_allowed(message) if message.method in {"initialize", "tools/list", "ping"}

message_allowed(message) if startswith(message.method, "notifications/")

denied contains i if {
	some i, message in messages
	not message_allowed(message)
}

# --- the answer -------------------------------------------------------------------------------

json_rpc_errors := [error |
	some message in messages
	message.id
	error := {"jsonrpc": "2.0", "id": message.id, "error": {"code": -32001, "message": "denied by policy"}}
]

deny_body := json.marshal(json_rpc_errors) if is_array(input.parsed_body)

deny_body := json.marshal(json_rpc_errors[0]) if is_object(input.parsed_body)

default result := {
	"allowed": false,
	"http_status": 401,
	"headers": {"www-authenticate": "Bearer error=\"invalid_token\""},
	"body": "{\"error\":\"invalid token\"}",
}

result := {"allowed": true, "headers": {"x-callwarden-decision": "allow"}} if {
	claims
	count(messages) > 0
	count(denied) == 0
} else := {
	"allowed": false,
	"http_status": 200,
	"headers": {"content-type": "application/json"},
	"body": deny_body,
} if {
	claims
}
