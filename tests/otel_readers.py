"""What grantkeeper reports through OpenTelemetry, read with the SDK's in-memory readers.

:class:`Readers` installs an SDK meter and tracer provider in a process, as an application
would, and turns what they collected into a :class:`Report`: plain data, so a child process
can send its own to the test. The suite installs one for the whole test process
(``tests/conftest.py``), so every test runs with an SDK taking grantkeeper's calls, and the
secret check reads its attributes too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

SCOPE = "grantkeeper"
TRANSACTION = "grantkeeper.refresh_transaction"


@dataclass(frozen=True)
class Point:
    """One data point of a metric: a counter's ``value``, a histogram's ``count`` and ``sum``."""

    metric: str
    attributes: dict[str, Any]
    value: float = 0.0
    count: int = 0
    total: float = 0.0


@dataclass(frozen=True)
class SpanData:
    """A finished span of grantkeeper's, with its links as ``(trace_id, span_id, attributes)``."""

    name: str
    trace_id: int
    span_id: int
    parent: int | None
    attributes: dict[str, Any]
    links: list[tuple[int, int, dict[str, Any]]]
    status: str
    description: str | None


@dataclass
class Report:
    """What one process's readers collected of grantkeeper's instrumentation scope."""

    points: list[Point] = field(default_factory=list)
    spans: list[SpanData] = field(default_factory=list)

    def count(self, metric: str, attributes: dict[str, Any] | None = None) -> float:
        """The sum of counter ``metric`` over points whose attributes include ``attributes``."""
        return sum(p.value for p in self.matching(metric, attributes))

    def recorded(self, metric: str, attributes: dict[str, Any] | None = None) -> int:
        """How many values histogram ``metric`` took, over matching points."""
        return sum(p.count for p in self.matching(metric, attributes))

    def matching(self, metric: str, attributes: dict[str, Any] | None = None) -> list[Point]:
        wanted = attributes or {}
        return [
            point
            for point in self.points
            if point.metric == metric
            and all(point.attributes.get(name) == value for name, value in wanted.items())
        ]

    def transactions(self) -> list[SpanData]:
        return [s for s in self.spans if s.name == TRANSACTION]

    def texts(self) -> Iterator[str]:
        """Every text grantkeeper put in a metric or span: where no secret may be."""
        for point in self.points:
            yield point.metric
            yield from _texts(point.attributes)
        for span in self.spans:
            yield span.name
            yield span.description or ""
            yield from _texts(span.attributes)
            for _, _, attributes in span.links:
                yield from _texts(attributes)

    def __add__(self, other: Report) -> Report:
        return Report(self.points + other.points, self.spans + other.spans)


def _texts(attributes: dict[str, Any]) -> Iterator[str]:
    for name, value in attributes.items():
        yield name
        yield str(value)


class Readers:
    """An SDK meter provider with an in-memory reader (delta temporality: each collection
    holds what was measured since the last), and a tracer provider with an in-memory
    exporter."""

    def __init__(self) -> None:
        delta = AggregationTemporality.DELTA
        self.reader = InMemoryMetricReader(preferred_temporality={Counter: delta, Histogram: delta})
        self.exporter = InMemorySpanExporter()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self._report = Report()

    def install(self) -> Readers:
        """Make these the process's global providers (once per process: the API refuses a
        second)."""
        metrics.set_meter_provider(self.meter_provider)
        trace.set_tracer_provider(self.tracer_provider)
        return self

    def report(self) -> Report:
        """Everything collected of grantkeeper's scope since :meth:`reset`."""
        self._drain()
        return Report(list(self._report.points), list(self._report.spans))

    def reset(self) -> None:
        self._drain()
        self._report = Report()

    def _drain(self) -> None:
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                if scope.scope.name != SCOPE:
                    continue
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        attributes = dict(point.attributes or {})
                        if isinstance(point, NumberDataPoint):
                            self._report.points.append(
                                Point(metric.name, attributes, value=point.value)
                            )
                        elif isinstance(point, HistogramDataPoint):
                            self._report.points.append(
                                Point(metric.name, attributes, count=point.count, total=point.sum)
                            )
        finished = self.exporter.get_finished_spans()
        self.exporter.clear()
        for span in finished:
            if span.instrumentation_scope is None or span.instrumentation_scope.name != SCOPE:
                continue
            context = span.get_span_context()
            assert context is not None
            self._report.spans.append(
                SpanData(
                    name=span.name,
                    trace_id=context.trace_id,
                    span_id=context.span_id,
                    parent=span.parent.span_id if span.parent is not None else None,
                    attributes=dict(span.attributes or {}),
                    links=[
                        (link.context.trace_id, link.context.span_id, dict(link.attributes or {}))
                        for link in span.links
                    ],
                    status=span.status.status_code.name,
                    description=span.status.description,
                )
            )
