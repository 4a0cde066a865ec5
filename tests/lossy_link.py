"""A lossy in-memory datagram link for transport tests: a real loss model, seeded.

``LossyLink`` is one direction: each datagram sent is dropped with probability ``loss``,
sent twice with ``dup``, and delayed by ``delay_ms`` plus, with probability ``reorder``,
1..``jitter_ms`` more (so later datagrams overtake it). ``due(now)`` hands out what has
arrived by then, in arrival order. Nothing here knows the protocol.
"""
from __future__ import annotations

import heapq
import random


class LossyLink:
    def __init__(self, rng: random.Random, clock, *, loss: float = 0.0, dup: float = 0.0,
                 reorder: float = 0.0, delay_ms: int = 1, jitter_ms: int = 4):
        self.rng, self.clock = rng, clock
        self.loss, self.dup, self.reorder = loss, dup, reorder
        self.delay_ms, self.jitter_ms = delay_ms, jitter_ms
        self._q: list[tuple[int, int, bytes]] = []
        self._n = 0
        self.sent = self.dropped = self.duplicated = self.delivered = 0
        self.tap: list[bytes] = []      # every datagram offered, for replay tests

    def send(self, data: bytes) -> None:
        self.sent += 1
        self.tap.append(data)
        if self.rng.random() < self.loss:
            self.dropped += 1
            return
        copies = 1
        if self.rng.random() < self.dup:
            copies, self.duplicated = 2, self.duplicated + 1
        for _ in range(copies):
            t = self.clock() + self.delay_ms
            if self.rng.random() < self.reorder:
                t += self.rng.randint(1, self.jitter_ms)
            self._n += 1
            heapq.heappush(self._q, (t, self._n, data))

    def due(self, now: int) -> list[bytes]:
        out = []
        while self._q and self._q[0][0] <= now:
            out.append(heapq.heappop(self._q)[2])
        self.delivered += len(out)
        return out

    def __len__(self) -> int:
        return len(self._q)
