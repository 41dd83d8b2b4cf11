"""AuthZEN 1.0 wire formats: request shapes, validation and boxcar expansion.

Pure and dependency-free, so the policy core can speak AuthZEN without any I/O; the HTTP
API of the embedded PDP and the remote-PDP client build on these shapes, not the reverse.
"""
