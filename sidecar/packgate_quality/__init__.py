"""Training and evaluation of packgate's detectors: never imported by the sidecar or operator.

Why a package of its own: the runtime packages hold only what runs in a pod; the code that
retrains the shipped injection model and measures detection quality (numpy, datasets) lives
beside them and is reached through `packgate quality ...` in a development install.
"""
