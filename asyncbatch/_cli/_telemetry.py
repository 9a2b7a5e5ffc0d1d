"""OpenTelemetry for the CLI: console or OTLP export, and a Prometheus endpoint.

Only the CLI and the demo use the SDK and exporters; the library itself needs
just ``opentelemetry-api``. Everything here is imported on use.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from ._input import CLIError

__all__ = ["telemetry"]


@contextlib.contextmanager
def telemetry(otel: str, prometheus_port: int | None, *, service: str) -> Iterator[dict[str, Any]]:
    """Batch keywords (``tracer_provider``/``meter_provider``) for the chosen exports.

    Args:
        otel: ``"none"``, ``"console"`` (spans and metrics to stderr) or
            ``"otlp"`` (configured by the standard ``OTEL_EXPORTER_OTLP_*``
            variables; needs ``opentelemetry-exporter-otlp``).
        prometheus_port: serve metrics for Prometheus on 127.0.0.1 at this
            port while the run lasts (needs the ``prometheus`` extra).
        service: the ``service.name`` resource attribute.
    """
    if otel == "none" and prometheus_port is None:
        yield {}
        return
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service})
    readers: list[Any] = []
    options: dict[str, Any] = {}
    tracer_provider = None
    if otel != "none":
        span_exporter, metric_exporter = _exporters(otel)
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
        options["tracer_provider"] = tracer_provider
        readers.append(
            PeriodicExportingMetricReader(metric_exporter, export_interval_millis=60_000)
        )
    server = None
    if prometheus_port is not None:
        reader, server = _prometheus(prometheus_port)
        readers.append(reader)
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    options["meter_provider"] = meter_provider
    try:
        yield options
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()
        meter_provider.shutdown()
        if server is not None:
            server.shutdown()
            server.server_close()


def _exporters(otel: str) -> tuple[Any, Any]:
    if otel == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr), ConsoleMetricExporter(out=sys.stderr)
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise CLIError(
            "--otel otlp needs the OTLP exporter: "
            "pip install opentelemetry-exporter-otlp-proto-http"
        ) from None
    return OTLPSpanExporter(), OTLPMetricExporter()


def _prometheus(port: int) -> tuple[Any, Any]:
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise CLIError(
            "--prometheus-port needs the prometheus extra: pip install 'asyncbatch[prometheus]'"
        ) from None
    # A registry of our own: the process-wide default would keep collectors of
    # earlier runs (and prometheus_client's own process metrics) mixed in.
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    try:
        server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as exc:
        raise CLIError(
            f"cannot serve Prometheus metrics on 127.0.0.1:{port}: {exc.strerror}"
        ) from None
    return reader, server


def telemetry_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--otel`` and ``--prometheus-port``, shared by the commands that run batches."""
    f = click.option(
        "--prometheus-port",
        type=click.IntRange(1, 65535),
        default=None,
        metavar="PORT",
        help="Serve metrics for Prometheus on 127.0.0.1:PORT during the run (extra: prometheus).",
    )(f)
    return click.option(
        "--otel",
        type=click.Choice(["none", "console", "otlp"]),
        default="none",
        show_default=True,
        help="Export spans and metrics: console (stderr) or otlp (OTEL_EXPORTER_OTLP_*).",
    )(f)
