"""The packgate operator: reconciles PolicyPacks, injects the sidecar, propagates config changes.

Kopf handlers live in thin I/O modules; rendering and patch building are pure functions that the
handlers call, so most of the logic is testable without a cluster.
"""
