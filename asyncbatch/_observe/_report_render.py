"""How an `ErrorReport` looks: rich tables for a console, plain text for ``print``.

Kept apart from `asyncbatch._report` so that building and storing reports
never imports rich: `ErrorReport.render` and ``str(report)`` import this
module on first use.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from ._report import ErrorReport

__all__ = ["render", "to_text"]

_MAX_ROWS = 20
_KIND_STYLE = {
    "transient": "yellow",
    "recoverable": "dark_orange",
    "permanent": "red",
    "fatal": "bold red",
}


def _short_type(error_type: str) -> str:
    """``pkg.mod.Outer.Inner`` → ``Outer.Inner``: module parts are lower-case by convention."""
    parts = error_type.split(".")
    while len(parts) > 1 and not parts[0][:1].isupper():
        parts.pop(0)
    return ".".join(parts)


def _secs(value: float) -> str:
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.3g} ms"
    if value < 120:
        return f"{value:.3g} s"
    return f"{value / 60:.1f} min"


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


def _counts_line(report: ErrorReport) -> str:
    parts = [f"{n} {s.replace('_', '-')}" for s, n in report.counts.items() if n]
    line = ", ".join(parts) or "no jobs"
    return f"{line} · {report.retries} retries · {_secs(max(report.duration, 0.0))}"


def render(report: ErrorReport) -> RenderableType:
    """The report as a rich renderable: a `rich.console.Group` of lines and tables."""
    parts: list[RenderableType] = [
        Text.assemble(("Error report", "bold"), f" · run {report.run_id}"),
        Text(_counts_line(report)),
    ]
    if report.aborted:
        parts.append(Text(f"ABORTED: {report.aborted}", style="bold red"))
    if report.groups:
        table = Table(
            title="Failures by kind, error and message",
            title_justify="left",
            caption="Final: jobs that ended with this error (dead-lettered or failed)",
            caption_justify="left",
        )
        table.add_column("Kind", no_wrap=True)
        table.add_column("Error · message · keys · seen", overflow="fold", ratio=1)
        table.add_column("Attempts", justify="right", no_wrap=True)
        table.add_column("Jobs", justify="right", no_wrap=True)
        table.add_column("Final", justify="right", no_wrap=True)
        for g in report.groups[:_MAX_ROWS]:
            seen = _clock(g.first_seen)
            if _clock(g.last_seen) != seen:
                seen += f"-{_clock(g.last_seen)}"
            keys = ", ".join(g.sample_keys[:3]) + (", ..." if g.jobs > 3 else "")
            table.add_row(
                Text(g.kind.value, style=_KIND_STYLE.get(g.kind.value, "")),
                Text.assemble(
                    (_short_type(g.error_type), "bold"),
                    "\n",
                    g.fingerprint,
                    "\n",
                    (f"{keys} · {seen}", "dim"),
                ),
                str(g.count),
                str(g.jobs),
                str(g.final),
            )
        parts.append(table)
        if len(report.groups) > _MAX_ROWS:
            rest = report.groups[_MAX_ROWS:]
            parts.append(
                Text(
                    f"... and {len(rest)} more groups ({sum(g.count for g in rest)} attempts)",
                    style="dim",
                )
            )
    else:
        parts.append(Text("No failed attempts.", style="green"))
    if report.breakers:
        parts.append(_breakers_table(report.breakers))
    if report.budget:
        parts.append(_budget_line(report.budget))
    if report.traffic:
        parts.extend(_traffic_lines(report.traffic))
    if report.compensation:
        c = report.compensation
        parts.append(
            Text(
                f"Compensation: {c.get('compensated', 0)} undone, {c.get('failed', 0)} failed"
                + (" (resumed)" if c.get("resumed") else ""),
                style="red" if c.get("failed") else "",
            )
        )
    parts.append(_durations_line(report.durations))
    return Group(*parts)


def to_text(report: ErrorReport) -> str:
    """The report as plain text, 100 columns wide, without colours: what ``str(report)`` gives."""
    console = Console(
        file=io.StringIO(),
        record=True,
        width=100,
        color_system=None,
        force_terminal=False,
        force_jupyter=False,
        highlight=False,
        emoji=False,
    )
    console.print(render(report))
    return console.export_text().rstrip() + "\n"


def _breakers_table(breakers: Mapping[str, Mapping[str, Any]]) -> RenderableType:
    table = Table(title="Dependencies", title_justify="left")
    for name in ("Name", "State", "Calls", "Failures", "Rejected", "Trips", "Open for"):
        table.add_column(name, justify="left" if name in ("Name", "State") else "right")
    for name, s in breakers.items():
        state = str(s.get("state", "?"))
        table.add_row(
            name,
            f"[red]{state}[/]" if state != "closed" else state,
            str(s.get("calls", 0)),
            str(s.get("failures", 0)),
            str(s.get("rejections", 0)),
            str(s.get("trips", 0)),
            _secs(float(s.get("time_open") or 0.0)),
        )
    return table


def _traffic_lines(traffic: Mapping[str, Any]) -> list[RenderableType]:
    lines: list[RenderableType] = []
    rb = traffic.get("retry_budget")
    if rb:
        lines.append(
            Text(
                f"Retry budget ({rb.get('ratio', 0):.0%} + {rb.get('min_per_second', 0):g}/s): "
                f"{rb.get('retries', 0)} retries for {rb.get('calls', 0)} jobs "
                f"({rb.get('retry_ratio', 0.0):.1%}), {rb.get('held', 0)} held back"
            )
        )
    limit = traffic.get("concurrency")
    if limit:
        lines.append(
            Text(
                f"Adaptive concurrency: {limit.get('limit')} at the end "
                f"(lowest {limit.get('lowest')}, highest {limit.get('highest')}, "
                f"{limit.get('decreases', 0)} backoffs)"
            )
        )
    for name, dep in (traffic.get("limits") or {}).items():
        lines.append(
            Text(
                f"Adaptive limit {name!r}: {dep.get('limit')} at the end "
                f"(lowest {dep.get('lowest')}, highest {dep.get('highest')}, "
                f"{dep.get('decreases', 0)} backoffs)"
            )
        )
    return lines


def _budget_line(budget: Mapping[str, Any]) -> RenderableType:
    if budget.get("exhausted"):
        action = budget.get("action", "abort")
        return Text(f"Budget exhausted ({action}): {budget.get('message') or ''}", style="bold red")
    limits = budget.get("limits") or {}
    jobs = budget.get("jobs", 0)
    bits = [f"{budget.get('failures', 0)} failed of {jobs} jobs"]
    if limits.get("max_failure_rate") is not None:
        bits.append(
            f"failure rate {budget.get('failure_rate', 0.0):.1%} "
            f"(limit {limits['max_failure_rate']:.1%})"
        )
    if limits.get("max_failures") is not None:
        bits.append(f"limit {limits['max_failures']} failures")
    for kind, limit in (limits.get("per_kind") or {}).items():
        n = (budget.get("failures_by_kind") or {}).get(kind, 0)
        bits.append(f"{kind} {n / jobs if jobs else 0.0:.1%} (limit {limit:.1%})")
    if limits.get("max_retry_ratio") is not None:
        bits.append(
            f"retry ratio {budget.get('retry_ratio', 0.0):.2f} "
            f"(limit {limits['max_retry_ratio']:g})"
        )
    return Text("Budget ok: " + ", ".join(bits), style="green")


def _durations_line(durations: Mapping[str, float]) -> RenderableType:
    n = int(durations.get("count", 0))
    if not n:
        return Text("Durations: no succeeded jobs", style="dim")
    stats = " · ".join(
        f"{name} {_secs(durations[name])}"
        for name in ("p50", "p95", "p99", "max", "mean")
        if name in durations
    )
    return Text(f"Durations of {n} succeeded jobs: {stats}")
