"""Prometheus export. The engine and signaling layers record into plain counters and
histograms (pipeline/stats.py); this collector reads them at scrape time into a
per-app CollectorRegistry (no global registry)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline.client import EngineClient
from pipeline.health import HEALTH_STATUSES
from pipeline.stats import Histogram
from signaling.registry import SessionRegistry

REASON_CHARS = 200
"""Longest reason label (a label value is kept by Prometheus per distinct string)."""


def _histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    cumulative, total, _count = hist.snapshot()
    buckets = [("+Inf" if b == float("inf") else f"{b:g}", c) for b, c in cumulative]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


class LivestyleCollector(Collector):
    def __init__(self, engine: EngineClient, registry: SessionRegistry) -> None:
        self.engine = engine
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        e, s = self.engine.stats, self.registry.stats
        yield GaugeMetricFamily("livestyle_sessions", "Open WebRTC sessions", value=len(self.registry))
        yield GaugeMetricFamily("livestyle_sessions_capacity", "max_sessions", value=self.registry.max_sessions)
        # What an autoscaler adds pods on: 0 while warming, failed or draining (no offer lands).
        free = self.registry.free_slots if self.engine.state == "ready" else 0
        yield GaugeMetricFamily("livestyle_free_slots", "Sessions this server would accept now", value=free)
        yield GaugeMetricFamily("livestyle_draining", "1 while draining before a stop", value=self.registry.draining)
        yield GaugeMetricFamily("livestyle_viewers", "Viewers of shared streams", value=self.registry.viewer_count())
        up = GaugeMetricFamily("livestyle_engine_up", "1 while the engine is healthy", labels=["kind", "state"])
        up.add_metric([self.engine.info.kind, self.engine.state], 1.0 if self.engine.healthy else 0.0)
        yield up
        yield from self._health()
        yield CounterMetricFamily("livestyle_sessions_created", "Sessions negotiated", value=s.sessions_created.value)
        yield CounterMetricFamily(
            "livestyle_sessions_rejected",
            "Offers refused because the server was full",
            value=s.sessions_rejected.value,
        )
        yield CounterMetricFamily("livestyle_frames_in", "Frames handed to the engine", value=e.frames_in.value)
        yield CounterMetricFamily("livestyle_frames_out", "Frames stylized", value=e.frames_out.value)
        yield CounterMetricFamily(
            "livestyle_frames_dropped",
            "Input frames replaced before the engine took them",
            value=e.frames_dropped.value,
        )
        yield CounterMetricFamily("livestyle_frames_sent", "Stylized frames sent", value=s.frames_sent.value)
        yield CounterMetricFamily("livestyle_engine_steps", "Engine steps (batches)", value=e.steps.value)
        yield CounterMetricFamily(
            "livestyle_engine_steps_overlapped", "Steps launched behind one in flight", value=e.steps_overlapped.value
        )
        yield CounterMetricFamily(
            "livestyle_prompts_coalesced",
            "Prompt changes replaced by a newer one before the engine took them",
            value=e.prompts_coalesced.value,
        )
        yield CounterMetricFamily(
            "livestyle_frames_lost", "Frames dropped with the steps of a transient fault", value=e.frames_lost.value
        )
        yield _histogram("livestyle_engine_step_ms", "Engine step duration (ms)", e.step_ms)
        yield _histogram("livestyle_engine_batch_size", "Frames per engine step", e.batch_size)
        yield _histogram("livestyle_frame_latency_ms", "Frame handed to engine -> stylized (ms)", e.frame_latency_ms)
        yield _histogram(
            "livestyle_prompt_apply_ms", "set_prompt received -> first frame with it (ms)", e.prompt_apply_ms
        )
        yield _histogram(
            "livestyle_encode_ms", "Stylized frame handed to the encoder -> next request (ms)", s.encode_ms
        )

    def _health(self) -> Iterator[Metric]:
        health = self.engine.health
        status = health.status
        states = GaugeMetricFamily(
            "livestyle_engine_health", "1 for the engine's current health status", labels=["status"]
        )
        for name in HEALTH_STATUSES:
            states.add_metric([name], 1.0 if name == status else 0.0)
        yield states
        info = GaugeMetricFamily(
            "livestyle_engine_health_info", "The current health status and its reason", labels=["status", "reason"]
        )
        info.add_metric([status, health.reason[:REASON_CHARS]], 1.0)
        yield info
        yield CounterMetricFamily("livestyle_engine_restarts", "Engine rebuilds after a failure", value=health.restarts)
        yield CounterMetricFamily(
            "livestyle_engine_transient_faults",
            "Backend errors recovered from without a rebuild (e.g. out of GPU memory)",
            value=health.transient_faults,
        )


def build_registry(engine: EngineClient, registry: SessionRegistry) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LivestyleCollector(engine, registry))
    return reg
