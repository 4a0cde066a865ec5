"""The anti-replay window of one peer: which datagrams of its epoch were already seen.

Owns ``ReplayWindow``. Every datagram carries its sender's epoch (a boot id that grows
at every start) and a transmission counter ``xmit`` (1, 2, ... per datagram sent in that
epoch, retransmissions included). As in IPsec ESP (RFC 4303 3.4.3) the window remembers
the highest ``xmit`` seen and a bitmap of the ``size`` below it:

- an older epoch than the current one is ``stale_epoch`` (a replay from before a restart);
- a newer epoch means the peer restarted: the window starts again there;
- below the window: ``stale``; inside it and already seen: ``replay``.

``check`` changes nothing; ``commit`` (after every other check passed) records the datagram.
"""
from __future__ import annotations


class ReplayWindow:
    def __init__(self, size: int = 1024):
        if size < 1:
            raise ValueError("window size must be >= 1")
        self.size = size
        self.epoch: int | None = None
        self.top = 0            # highest xmit seen in this epoch
        self._bits = 0          # bit i set: top - i seen

    def check(self, epoch: int, xmit: int) -> str | None:
        """The reason to refuse (epoch, xmit), or None."""
        if xmit == 0:
            return "stale"
        if self.epoch is None or epoch > self.epoch:
            return None
        if epoch < self.epoch:
            return "stale_epoch"
        if xmit > self.top:
            return None
        back = self.top - xmit
        if back >= self.size:
            return "stale"
        if self._bits >> back & 1:
            return "replay"
        return None

    def commit(self, epoch: int, xmit: int) -> bool:
        """Record a checked datagram; True when it opened a new epoch (first contact or restart)."""
        if self.epoch is None or epoch != self.epoch:
            self.epoch, self.top, self._bits = epoch, xmit, 1
            return True
        if xmit > self.top:
            shift = xmit - self.top
            self._bits = ((self._bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.top = xmit
        else:
            self._bits |= 1 << (self.top - xmit)
        return False
