"""AuthZEN 1.0: wire formats, the embedded PDP's HTTP API, and the client for remote PDPs."""
