"""The board-packet demo: MCP servers, OAuth issuers and an agent driver, all local and real.

`servers` runs three official-SDK MCP servers over streamable HTTP that count the tool calls they
execute (so a test can prove a denied call never arrived), `issuers` runs three local OAuth issuers
that publish JWKS and mint access tokens, and `agent` drives calls with the official MCP client and
reports each outcome (allowed, denied, unauthenticated, error).
"""
