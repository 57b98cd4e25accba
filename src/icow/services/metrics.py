"""Prometheus metrics over HTTP, with Triton's metric names so that existing
dashboards work.

Nothing is counted here: the values are the per-version statistics that the
core keeps anyway for the ModelStatistics RPC (runtime/stats.py). They are read when
Prometheus scrapes, so serving metrics costs the hot path nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from ..repository.repository import Repository
from ..runtime.model import Model
from ..runtime.stats import FAILURE_REASONS, LATENCY_BUCKETS_US, VersionStats

log = logging.getLogger(__name__)

LABELS = ["model", "version"]


# Triton's families: (name, type, help). Triton writes its counters without the
# "_total" suffix that prometheus-client would add, so these are rendered here.
TRITON_FAMILIES = (
    ("nv_inference_request_success", "counter", "Number of successful inference requests, all batch sizes"),
    ("nv_inference_request_failure", "counter", "Number of failed inference requests, all batch sizes"),
    ("nv_inference_count", "counter", "Number of inferences performed (does not include cached requests)"),
    ("nv_inference_exec_count", "counter", "Number of model executions performed"),
    ("nv_inference_request_duration_us", "counter", "Cumulative inference request duration in microseconds"),
    ("nv_inference_queue_duration_us", "counter", "Cumulative inference queuing duration in microseconds"),
    ("nv_inference_compute_input_duration_us", "counter", "Cumulative compute input duration in microseconds"),
    ("nv_inference_compute_infer_duration_us", "counter", "Cumulative compute inference duration in microseconds"),
    ("nv_inference_compute_output_duration_us", "counter", "Cumulative inference compute output duration in "
                                                           "microseconds"),
    ("nv_inference_pending_request_count", "gauge", "Instantaneous number of pending requests awaiting execution"),
)


# icow's own, of the full path's scheduler (runtime/scheduler.py; a model the native planes
# serve fast also waits and runs in C++, counted in the pending gauge only): the pending
# requests not running yet, and the instances busy.
QUEUED = ("icow_inference_queued_request_count", "Requests waiting in the model's queue (the full path's), "
                                                 "not yet running")
BUSY = ("icow_inference_busy_instance_count", "Instances of the model running a request or batch now "
                                             "(the full path's)")
FAILURE = "nv_inference_request_failure"  # labelled with its reason too: REJECTED, CANCELED, BACKEND, OTHER


# Per model version whose answers the response cache keeps (Triton's, since 23.03).
CACHE_FAMILIES = (
    ("nv_cache_num_hits_per_model", "counter", "Number of response cache hits per model"),
    ("nv_cache_num_misses_per_model", "counter", "Number of response cache misses per model"),
    ("nv_cache_hit_duration_per_model", "counter", "Cumulative time requests spend retrieving a cached "
                                                   "response per model on cache hits (microseconds)"),
    ("nv_cache_miss_duration_per_model", "counter", "Cumulative time requests spend looking up and inserting "
                                                    "responses into the cache on a cache miss (microseconds)"),
)
# The whole cache, server-wide (the names of Triton's local cache).
CACHE_GAUGES = (
    ("nv_cache_util", "Cache utilization [0.0 - 1.0]"),
    ("nv_cache_num_entries", "Number of responses stored in response cache"),
    ("nv_cache_num_lookups", "Number of cache lookups in response cache"),
    ("nv_cache_num_hits", "Number of cache hits in response cache"),
    ("nv_cache_num_misses", "Number of cache misses in response cache"),
    ("nv_cache_num_evictions", "Number of cache evictions in response cache"),
)


def _values(s: VersionStats) -> tuple[int, ...]:
    """The TRITON_FAMILIES values of one version's statistics, in that order."""
    return (s.success.count, s.fail.count, s.inference_count, s.execution_count,
            (s.success.ns + s.fail.ns) // 1000, s.queue.ns // 1000, s.compute_input.ns // 1000,
            s.compute_infer.ns // 1000, s.compute_output.ns // 1000, s.pending)


def _ready_models(repository: Repository) -> list[Model]:
    return [m for loaded in repository.loaded() for m in loaded.ready().values()]


def triton_text(repository: Repository) -> str:
    """Triton's ``nv_inference_*`` families in the Prometheus text format, one
    sample per ready model version."""
    snapshots = [(_label_text(m), m.stats.snapshot()) for m in _ready_models(repository)]
    rows = [(labels, _values(s)) for labels, s in snapshots]
    lines = []
    for i, (name, kind, doc) in enumerate(TRITON_FAMILIES):
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]
        if name == FAILURE:  # as recent Triton writes it: a sample per reason
            lines += [f'{name}{{{labels},reason="{reason}"}} {s.failures[reason]}'
                      for labels, s in snapshots for reason in FAILURE_REASONS]
        else:
            lines += [f"{name}{{{labels}}} {values[i]}" for labels, values in rows]
    for (name, doc), value in ((QUEUED, lambda m: m.scheduler.queued), (BUSY, lambda m: m.scheduler.busy)):
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} gauge"]
        lines += [f"{name}{{{_label_text(m)}}} {value(m)}" for m in _ready_models(repository)]
    return "\n".join(lines + _cache_lines(repository)) + "\n"


def _cache_lines(repository: Repository) -> list[str]:
    """The response cache's families: none on a server without a cache."""
    cache = repository.cache
    if cache is None:
        return []
    rows = [(_label_text(m), (s.cache_hit.count, s.cache_miss.count, s.cache_hit.ns // 1000, s.cache_miss.ns // 1000))
            for m in _ready_models(repository) if m.cache is not None for s in (m.stats.snapshot(),)]
    lines = []
    for i, (name, kind, doc) in enumerate(CACHE_FAMILIES):
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{{{labels}}} {values[i]}" for labels, values in rows]
    values = (cache.bytes / cache.capacity, cache.entries, cache.lookups, cache.hits, cache.lookups - cache.hits,
              cache.evictions)
    for (name, doc), value in zip(CACHE_GAUGES, values):
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} gauge", f"{name} {value:g}"]
    return lines


def _label_text(model: Model) -> str:
    def quote(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    return f"model={quote(model.name)},version={quote(str(model.version))}"


class LatencyCollector(Collector):
    """A histogram of successful requests' latency per model version."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository

    def collect(self) -> Iterator[HistogramMetricFamily]:
        latency = HistogramMetricFamily("icow_inference_request_duration_seconds",
                                        "Latency of successful inference requests, in seconds", labels=LABELS)
        bounds = [f"{us / 1e6:g}" for us in LATENCY_BUCKETS_US] + ["+Inf"]
        for model in _ready_models(self.repository):
            s = model.stats.snapshot()
            cumulative, buckets = 0, []
            for bound, n in zip(bounds, s.latency_buckets):
                cumulative += n
                buckets.append((bound, cumulative))
            latency.add_metric([model.name, str(model.version)], buckets, s.success.ns / 1e9)
        yield latency


class MetricsServer:
    """The HTTP endpoint ``/metrics``: Triton's inference families, the latency
    histogram, and the process's CPU, memory and file descriptors (``process_*``)."""

    def __init__(self, repository: Repository, host: str, port: int) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(LatencyCollector(repository))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404, "metrics are at /metrics")
                    return
                body = triton_text(repository).encode() + generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # scrapes are not worth a log line
                pass

        try:
            self._httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            raise OSError(f"cannot listen for metrics on {host}:{port}: {e.strerror or e}; "
                          "choose another --metrics-port or pass --no-metrics") from None
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, name="icow-metrics", daemon=True).start()
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        # shutdown() waits for the serving loop; run it aside so that a stop never blocks on a scrape
        threading.Thread(target=self._httpd.shutdown, daemon=True).start()
