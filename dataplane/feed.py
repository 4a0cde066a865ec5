"""The fast feed's driver loop: packets from NFQUEUE through the C core.

Owns the loop that keeps one ``core.NfQueue`` (the C reader in
cext/np_feed.c) turning: it sets the core's clock before every batch, lets C
receive, translate and answer up to ``max_pkts`` packets per batch (the GIL is
released meanwhile), and sweeps expired states between calls. With
``drain_us`` > 0 one call goes on with further batches, not waiting, while
packets are queued, for up to that many microseconds: a burst costs one trip
through Python instead of one per batch. It does not
touch the cffi ``lib``: dataplane/core.py does. Names used:

- ``FastFeed``: one queue bound to one core; ``sides`` maps the ifindex of
  each data leg to ``"inside"`` or ``"outside"`` (other interfaces: dropped,
  counted as ``unknown_ifindex``).
- ``kernel_queue_stats``: the kernel's own figures for the queue, from
  /proc/net/netfilter/nfnetlink_queue of the caller's namespace (an overrun
  of our socket shows as ``user_dropped``, a full queue as ``queue_dropped``).

The core is not thread-safe: while the loop runs, only the loop's thread uses
the core (replication drains its journal from that thread, between batches).
"""
from __future__ import annotations

import threading
import time

from dataplane.core import Core, NfQueue

NFQUEUE_PROC = "/proc/net/netfilter/nfnetlink_queue"
NFQUEUE_PROC_FIELDS = ("queue", "portid", "queue_total", "copy_mode", "copy_range",
                       "queue_dropped", "user_dropped", "id_sequence")


def kernel_queue_stats(queue_num: int, path: str = NFQUEUE_PROC) -> dict[str, int] | None:
    """The kernel's line for ``queue_num``, or None when the queue is not bound."""
    try:
        with open(path) as fh:
            for line in fh:
                values = [int(v) for v in line.split()]
                if values and values[0] == queue_num:
                    return dict(zip(NFQUEUE_PROC_FIELDS, values))
    except FileNotFoundError:
        return None
    return None


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class FastFeed:
    """One NFQUEUE queue feeding one core through the C reader."""

    def __init__(self, core: Core, queue_num: int, sides: dict[int, str], *, batch: int = 64,
                 fail_open: bool = False, queue_maxlen: int = 0, sweep_every_ms: int = 100,
                 drain_us: int = 0):
        self.core = core
        self.queue_num = queue_num
        self.nfq = NfQueue(core, queue_num, batch=batch, fail_open=fail_open,
                           queue_maxlen=queue_maxlen)
        for ifindex, side in sides.items():
            self.nfq.set_side(ifindex, side)
        self.sweep_every_ms = sweep_every_ms
        self.drain_us = drain_us
        self._next_sweep = 0

    def run_once(self, max_pkts: int = 64, timeout_ms: int = 100) -> int:
        """One batch of up to ``max_pkts`` packets, waiting up to ``timeout_ms`` (then, with
        ``drain_us``, more batches while packets are queued); the packets handled."""
        now = monotonic_ms()
        self.core.set_clock(now)
        if now >= self._next_sweep:
            self.core.sweep()
            self._next_sweep = now + self.sweep_every_ms
        if self.drain_us:
            return self.nfq.drain(max_pkts, timeout_ms, self.drain_us)
        return self.nfq.run(max_pkts, timeout_ms)

    def run(self, stop: threading.Event, max_pkts: int = 64, timeout_ms: int = 100) -> None:
        """Loop until ``stop`` is set (checked at least every ``timeout_ms``)."""
        while not stop.is_set():
            self.run_once(max_pkts, timeout_ms)

    def counters(self) -> dict[str, int]:
        """The feed's counters, plus the kernel's for the queue (prefixed ``kernel_``)."""
        out = self.nfq.counters()
        stats = kernel_queue_stats(self.queue_num)
        for name in ("queue_total", "queue_dropped", "user_dropped"):
            if stats is not None:
                out[f"kernel_{name}"] = stats[name]
        return out

    def fileno(self) -> int:
        """The netlink socket: a caller may wait on it outside the core's lock."""
        return self.nfq.fileno()

    def close(self) -> None:
        self.nfq.close()
