"""The packgate sidecar: an OpenAI-compatible reverse proxy that enforces a policy chain.

It runs next to the application in the pod (or on a laptop via `packgate gateway run`), holds the
provider keys, applies the configured policies to every request and response, and forwards to the
configured provider targets in order.
"""
