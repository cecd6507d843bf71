"""Bounded retries with exponential backoff, shared by the HTTP backends."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")


async def with_retries(make_request: Callable[[], Awaitable[T]], *, retries: int, backoff_s: float,
                       retryable: tuple[type[BaseException], ...]) -> T:
    """Call `make_request` up to `retries + 1` times, sleeping backoff_s, 2·backoff_s, … between
    tries, while it raises one of `retryable` (connection errors, HTTP 5xx). Anything else
    (e.g. HTTP 4xx) propagates at once; after the last try the last error is raised."""
    last: BaseException | None = None
    for attempt in range(retries + 1):
        if attempt:
            await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            return await make_request()
        except retryable as exc:
            last = exc
    assert last is not None
    raise last
