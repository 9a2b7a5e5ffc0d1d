"""Shared fixtures.

Virtual time comes from looptime: mark a test ``@pytest.mark.looptime`` and its
event loop's clock only moves when every task waits, so backoffs of seconds
take no real time.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _loop_for_sync_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    """Give sync tests a loop that is closed afterwards.

    looptime's plugin asks the policy for the current loop even in sync tests,
    which creates one and leaves it unclosed (a ResourceWarning, an error here).
    """
    if inspect.iscoroutinefunction(request.function):
        yield
        return
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        loop.close()
