"""How many requests one endpoint may have in flight, and when a server says to wait.

`AdaptiveLimit` is AIMD (additive increase, multiplicative decrease), as TCP and the clients of hosted
APIs do it: the limit starts at the configured `concurrency`, halves when the server says it is
overloaded (HTTP 429, or 503 with `Retry-After`), and climbs back by one after a run of successes,
never above `concurrency` nor below 1. A server that takes fewer requests than it is sent thus gets
about as many as it takes, instead of refusing most of every burst.

`retry_after` reads the `Retry-After` header: seconds, or an HTTP date.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

CLIMB_AFTER = 8  # successes in a row, since the last change, before the limit climbs by one


class AdaptiveLimit:
    """At most `limit` holders at once, a limit that moves between 1 and `ceiling`.

    `async with limit as epoch:` waits for a place and holds it. The holder reports how its request
    went, while it holds the place: `succeeded()`, or `throttled(epoch)` when the server refused it as
    overloaded. A shrink never cancels a request: the holders over the new limit finish, and no new
    one enters until fewer than `limit` are in flight.

    A burst of refusals halves the limit once, not once per refusal: `epoch` counts the shrinks, and a
    request that entered before the last one is no news (the limit already went down for the load
    that refused it). Otherwise 8 requests against a server that takes 2 would see 6 refusals and go
    down to 1, not to the 4 and then 2 that the server's answers call for.
    """

    def __init__(self, ceiling: int, climb_after: int = CLIMB_AFTER):
        if ceiling < 1:
            raise ValueError(f"concurrency must be at least 1, not {ceiling}")
        self.ceiling = ceiling
        self.limit = ceiling
        self.lowest = ceiling  # the lowest limit so far
        self.in_flight = 0
        self.climb_after = climb_after
        self.epoch = 0  # shrinks so far
        self._successes = 0  # in a row, since the last change
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> int:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1
            return self.epoch

    async def __aexit__(self, *exc) -> None:
        async with self._changed:
            self.in_flight -= 1
            # As many waiters as there are places now: one, or more where the limit has just climbed.
            self._changed.notify(max(self.limit - self.in_flight, 0))

    def succeeded(self) -> None:
        """One request answered: after `climb_after` in a row, one more place (up to `ceiling`)."""
        self._successes += 1
        if self._successes >= self.climb_after and self.limit < self.ceiling:
            self.limit += 1
            self._successes = 0

    def throttled(self, epoch: int) -> bool:
        """One request the server refused as overloaded, entered at `epoch`: the limit halves (at least
        1), unless it already went down since that request entered. Whether it went down now."""
        self._successes = 0
        if epoch != self.epoch:
            return False
        self.limit = max(self.limit // 2, 1)
        self.lowest = min(self.lowest, self.limit)
        self.epoch += 1
        return True


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """The seconds a `Retry-After` header asks to wait: a number of seconds, or an HTTP date (then
    the time until it, 0 where it has passed). None where there is no header or it says neither."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": UTC, as HTTP dates are
            when = when.replace(tzinfo=timezone.utc)
        return max((when - (now or datetime.now(timezone.utc))).total_seconds(), 0.0)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
