"""Prometheus metrics over HTTP, with Triton's metric names so that existing
dashboards work.

Nothing is counted here: the counters are the per-version statistics that the
core keeps anyway for the ModelStatistics RPC (stats.py). They are read when
Prometheus scrapes, so serving metrics costs the hot path nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .repository import Repository
from .stats import LATENCY_BUCKETS_US

log = logging.getLogger("icow.metrics")

LABELS = ["model", "version"]


class InferenceCollector(Collector):
    """Triton's ``nv_inference_*`` families, one sample per ready model version,
    plus a request latency histogram."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository

    def collect(self) -> Iterator:
        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=LABELS)

        success = counter("nv_inference_request_success", "Number of successful inference requests")
        failure = counter("nv_inference_request_failure", "Number of failed inference requests")
        count = counter("nv_inference_count", "Number of inferences performed (a batch of n counts n)")
        exec_count = counter("nv_inference_exec_count", "Number of model executions performed")
        duration = counter("nv_inference_request_duration_us", "Cumulative inference request duration in µs")
        queue = counter("nv_inference_queue_duration_us", "Cumulative inference queuing duration in µs")
        c_input = counter("nv_inference_compute_input_duration_us", "Cumulative compute input duration in µs")
        c_infer = counter("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in µs")
        c_output = counter("nv_inference_compute_output_duration_us", "Cumulative compute output duration in µs")
        pending = GaugeMetricFamily("nv_inference_pending_request_count",
                                    "Instantaneous number of pending requests awaiting execution", labels=LABELS)
        latency = HistogramMetricFamily("icow_inference_request_duration_seconds",
                                        "Latency of successful inference requests, in seconds", labels=LABELS)
        bounds = [f"{us / 1e6:g}" for us in LATENCY_BUCKETS_US] + ["+Inf"]
        for loaded in self.repository.loaded():
            for model in loaded.ready().values():
                s = model.stats.snapshot()
                labels = [model.name, str(model.version)]
                success.add_metric(labels, s.success.count)
                failure.add_metric(labels, s.fail.count)
                count.add_metric(labels, s.inference_count)
                exec_count.add_metric(labels, s.execution_count)
                duration.add_metric(labels, (s.success.ns + s.fail.ns) // 1000)
                queue.add_metric(labels, s.queue.ns // 1000)
                c_input.add_metric(labels, s.compute_input.ns // 1000)
                c_infer.add_metric(labels, s.compute_infer.ns // 1000)
                c_output.add_metric(labels, s.compute_output.ns // 1000)
                pending.add_metric(labels, s.pending)
                cumulative, buckets = 0, []
                for bound, n in zip(bounds, s.latency_buckets):
                    cumulative += n
                    buckets.append((bound, cumulative))
                latency.add_metric(labels, buckets, s.success.ns / 1e9)
        yield from (success, failure, count, exec_count, duration, queue, c_input, c_infer, c_output, pending,
                    latency)


class MetricsServer:
    """The HTTP endpoint (``/metrics``) with the inference metrics and the
    process's CPU, memory and file descriptors (``process_*``)."""

    def __init__(self, repository: Repository, host: str, port: int) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(InferenceCollector(repository))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise OSError(f"cannot listen for metrics on {host}:{port}: {e.strerror or e}; "
                          "choose another --metrics-port or pass --no-metrics") from None
        self.port = self._httpd.server_port
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        # shutdown() waits for the serving loop; run it aside so a stop never blocks on a scrape
        threading.Thread(target=self._httpd.shutdown, daemon=True).start()
