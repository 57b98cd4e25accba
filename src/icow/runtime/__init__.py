"""One loaded model version, as the server runs it: its config.pbtxt completed from
the graph (config.py), how it runs (execution.py: instances, threads, batching, queue
policy), its execution providers (providers.py), the ONNX Runtime session and IOBinding
(model.py, binding.py), the queue in front of its instances (scheduler.py), its
statistics (stats.py), its warm-up before it serves (warmup.py) and the response cache
that keeps its answers (cache.py); and an ensemble, a graph of steps on other models served
as one (ensemble.py, its graph and checks: ensemble_graph.py). Knows nothing of the wire,
the repository or shared memory.

May import: icow.protocol (and the compiled base: icow._wire, icow._proto).
"""

import os

# ONNX Runtime's official builds (1.32) keep a telemetry store (a device id and an event
# database under $HOME/.cache/Microsoft) and upload events; a server should neither keep
# one nor fail where $HOME is read-only (deploy/: readOnlyRootFilesystem). ONNX Runtime
# reads this once, as it is imported: so here, before any module of this package imports
# it. setdefault: an operator may still say otherwise.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
