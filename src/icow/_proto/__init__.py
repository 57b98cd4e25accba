"""Protobuf and gRPC stubs generated from proto/ when the package is built.

The descriptors live in a pool of icow's own (see ``_pool``), so icow's
messages and tritonclient's, which share the protobuf package ``inference``,
can be loaded in one process.
"""
