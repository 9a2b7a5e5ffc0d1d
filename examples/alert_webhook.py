"""Alerts from a batch: an ``on_event`` hook posting to a webhook.

The hook sees every event of the run. It posts an alert to a webhook (a
local receiver here; Slack, PagerDuty or your own service in real life)
when a dependency's circuit opens or closes, when the error budget is
spent, and a summary when the run ends. Hooks run in a task of their own:
a slow webhook delays the alerts, never the jobs. Run it:
``python examples/alert_webhook.py``.
"""

from __future__ import annotations

import asyncio

import aiohttp

import asyncbatch as ab

# Local stand-ins, so the example runs offline: a flaky API and a webhook
# receiver (POST /hooks), both aiohttp servers on 127.0.0.1.
from asyncbatch.testing import FaultInjector, FlakyService


class WebhookAlerts:
    """An ``on_event`` hook that turns the events worth a human's attention into alerts."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session
        self.dead = 0

    async def __call__(self, event: ab.Event) -> None:
        if isinstance(event, ab.JobDeadLettered):
            self.dead += 1  # summarised at the end rather than one page per job
            return
        if isinstance(event, ab.BreakerOpened):
            error = event.error_type.rsplit(".", 1)[-1]
            text = f"{event.dependency} is failing ({error}); calls paused"
        elif isinstance(event, ab.BreakerClosed):
            text = f"{event.dependency} recovered"
        elif isinstance(event, ab.BudgetExhausted):
            text = f"error budget spent: {event.reason}"
        elif isinstance(event, ab.RunFinished):
            text = f"run finished: {event.counts['succeeded']} ok, {self.dead} dead-lettered"
        else:
            return
        body = {"run": event.run_id, "event": event.name, "text": text}
        async with self.session.post(self.url, json=body) as response:
            response.raise_for_status()


async def main() -> None:
    faults = FaultInjector(
        seed=3,
        rates={ab.ErrorKind.TRANSIENT: 0.05},
        retry_after=0.05,
        outages=[(0.1, 0.4)],  # the API is down for 0.3 s
        poison=lambda key: key.endswith("7"),  # items 7, 17, 27, ... are malformed: 422
    )
    async with (
        FlakyService(faults) as api,
        FlakyService() as webhook,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=10)) as session,
    ):

        async def fetch(item_id: int) -> object:
            async with session.get(f"{api.url}/items/{item_id}") as response:
                response.raise_for_status()  # 422 for poison items: dead-lettered at once
                return await response.json()

        result = await ab.run_batch(
            fetch,
            range(150),
            concurrency=10,
            rates={"api": ab.Rate(100)},
            breakers={"api": ab.Breaker(fail_max=4, reset_timeout=0.2)},
            uses=["api"],
            budget=ab.ErrorBudget(max_failure_rate=0.05, min_jobs=50, action="alert"),
            on_event=WebhookAlerts(f"{webhook.url}/hooks", session),
        )
        # The run's hooks have all been delivered when run_batch returns.
        alerts = list(webhook.received)
    print(
        f"{result.counts[ab.JobStatus.SUCCEEDED]} fetched, {len(result.dead_letters)} dead-lettered"
    )
    print(f"the webhook received {len(alerts)} alert(s):")
    for alert in alerts:
        print(f"  [{alert['event']}] {alert['text']}")


if __name__ == "__main__":
    asyncio.run(main())
