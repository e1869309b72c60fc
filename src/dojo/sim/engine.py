"""The event core: a time-ordered queue with one ordering key, (time, sequence number).

Ties in time resolve in the order events were scheduled, so a run is a pure function of its
inputs. No wall clock, no globals: each `Engine` owns its clock and counter.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

# (time, sequence, action): tuples compare on the first two fields, which are never equal.
_Event = tuple[float, int, Callable[[], None]]


class Engine:
    """Run callbacks in (time, scheduling order). `now` is the time of the event being run."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[_Event] = []
        self._seq = 0
        self.events = 0

    def at(self, time: float, action: Callable[[], None]) -> None:
        """Schedule `action` at `time` (seconds); never earlier than `now`."""
        if time < self.now:
            time = self.now
        heapq.heappush(self._queue, (time, self._seq, action))
        self._seq += 1

    def run(self) -> float:
        """Process every event; returns the time of the last one."""
        while self._queue:
            self.now, _, action = heapq.heappop(self._queue)
            self.events += 1
            action()
        return self.now
