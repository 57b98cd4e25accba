"""ModelInfer bytes to a decoded request (request.py) and a model's outputs back to
response bytes: the native codec, parsed and built by the compiled icow._wire with
no protobuf objects (native.py), and the protobuf codec, its baseline (protobuf.py).

May import: icow.protocol, icow.runtime, icow.shm (and the compiled base: icow._wire, icow._proto).
"""
