"""Observe: what a run tells the world. Events and hooks, OpenTelemetry, the error report.

Owns the `Event` types and their dispatcher (hooks run from a task of their
own), the OpenTelemetry spans and metrics of a run, and the `ErrorReport`
(built as the run goes, merged over invocations, rendered with rich only
when shown). It records what happened and never decides anything. May
import the value types and `_policy`.
"""
