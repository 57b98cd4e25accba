"""The Open Inference Protocol's vocabulary, shared by the client and the server:
tensor datatypes (``datatypes``), tensor contents to and from numpy (``tensors``),
the one error type (``errors``), ``NAME=VALUE`` lists (``pairs``) and the bound on
the names a request carries (``names``).

May import: nothing of icow but the compiled base (icow._wire, icow._proto).
Needs numpy, grpcio and protobuf only: the client imports it.
"""
