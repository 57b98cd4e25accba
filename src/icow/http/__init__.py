"""The Open Inference Protocol's HTTP/REST binding (KServe v2, with Triton's binary
tensor extension) on its own port: the ASGI app (app.py) on the HTTP server
(listener.py), URLs to endpoints (routes.py), the endpoints themselves, which ask the
gRPC front end's service for everything but inference so that both transports
answer alike (endpoints.py), inference requests and responses in JSON and binary
(infer.py, body.py), and gRPC status codes as HTTP statuses (status.py).

May import: icow.protocol, icow.runtime, icow.repository, icow.shm, icow.codecs, icow.services
(and the compiled base: icow._wire, icow._plane, icow._proto).
"""
