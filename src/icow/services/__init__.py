"""The front ends: gRPC services that translate messages into calls on the repository
and its models, and decide nothing themselves. The Open Inference Protocol (oip.py;
its ModelStreamInfer in stream.py),
lIteCOW's ICOW service (litecow.py), the rollout admin service (rollout.py), health
(health.py), reflection (reflection.py), requests that do not parse (malformed.py), the
interceptors' shared handler wrapping (handlers.py),
bearer tokens (auth.py), the access log (logs.py), Prometheus metrics (metrics.py), the
native data plane's wiring to icow._plane (plane.py), and memory given back after bursts
(memory.py).

May import: icow.protocol, icow.runtime, icow.repository, icow.shm, icow.codecs
(and the compiled base: icow._wire, icow._plane, icow._proto).
"""
