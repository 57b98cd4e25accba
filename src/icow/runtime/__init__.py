"""One loaded model version, as the server runs it: its config.pbtxt completed from
the graph (config.py), how it runs (execution.py: instances, threads, batching, queue
policy), its execution providers (providers.py), the ONNX Runtime session and IOBinding
(model.py, binding.py), the queue in front of its instances (scheduler.py) and its
statistics (stats.py). Knows nothing of the wire, the repository or shared memory.

May import: icow.protocol (and the compiled base: icow._wire, icow._proto).
"""
