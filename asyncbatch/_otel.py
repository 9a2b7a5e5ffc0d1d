"""PLACEHOLDER — being replaced by the OpenTelemetry helper. Interface only."""

from __future__ import annotations

from typing import Any

__all__ = ["Instrumentation"]


class Instrumentation:
    @staticmethod
    def create(tracer_provider: Any, meter_provider: Any, run_id: str) -> Instrumentation | None:
        return None
