"""Replication lag: how long a change made on the active takes to be live on the standby.

Owns ``LagHistogram``, a fixed-bucket histogram of lags in milliseconds (the buckets are
Prometheus-style upper bounds, cumulative on export) with ``observe(ms)``,
``percentile(p)`` and ``snapshot()``. It is written by the replication thread only and
read by others (status, metrics) without a lock: a reader may see a count one behind its
buckets, never a torn bucket list (the list is replaced, never resized).

What is measured (the active's side, so no clocks of two machines are compared): from the
moment the feed thread drained the change from the core's journal to the moment the
standby's cumulative ack covering it arrived. The standby acks after importing, so this is
an upper bound of "created on the active -> live on the standby" (it includes the ack's
trip back).
"""
from __future__ import annotations

import bisect

# upper bounds in ms; the last bucket is +Inf
BOUNDS_MS = (0.25, 0.5, 1, 2, 3, 5, 10, 20, 50, 100, 250, 1000)


class LagHistogram:
    def __init__(self, bounds_ms: tuple[float, ...] = BOUNDS_MS):
        self.bounds = tuple(bounds_ms)
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum_ms = 0.0
        self.max_ms = 0.0

    def observe(self, ms: float, n: int = 1) -> None:
        """Count ``n`` changes that took ``ms`` milliseconds."""
        if ms < 0:
            ms = 0.0
        self.counts[bisect.bisect_left(self.bounds, ms)] += n
        self.count += n
        self.sum_ms += ms * n
        if ms > self.max_ms:
            self.max_ms = ms

    def percentile(self, p: float) -> float | None:
        """The upper bound of the bucket holding the p-th percentile (None when empty;
        the largest lag seen when it is in the +Inf bucket)."""
        counts = list(self.counts)
        total = sum(counts)
        if total == 0:
            return None
        rank = max(1, -(-total * p // 100))
        seen = 0
        for i, c in enumerate(counts):
            seen += c
            if seen >= rank:
                return self.bounds[i] if i < len(self.bounds) else self.max_ms
        return self.max_ms

    def snapshot(self) -> dict:
        """count, sum_ms, max_ms, p50_ms, p99_ms and cumulative buckets [(le_ms, count)]."""
        counts = list(self.counts)
        cumulative, seen = [], 0
        for bound, c in zip(self.bounds + (float("inf"),), counts):
            seen += c
            cumulative.append((bound, seen))
        return {"count": seen, "sum_ms": self.sum_ms, "max_ms": self.max_ms,
                "p50_ms": self.percentile(50), "p99_ms": self.percentile(99),
                "buckets": cumulative}

    def reset(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum_ms = 0.0
        self.max_ms = 0.0
