"""The simple feed: the `netfilterqueue` binding calling the core once per packet.

Slow (design.md: no GSO flag, one verdict per packet, copies capped at 4016
bytes) but portable; it is the cross-check of the C feed (dataplane/feed.py)
and has the same face, so the daemon drives both alike:

- ``SimpleFeed(core, queue_num, sides)``: binds NFQUEUE ``queue_num``;
  ``sides`` maps an input interface index to "inside" / "outside".
- ``run_once(max_pkts, timeout_ms)``: waits up to timeout_ms for the queue to
  become readable, then handles at most max_pkts packets and returns how many.
- ``counters()``, ``close()``; ``fileno()`` lets a caller wait outside its lock.

The side of a packet is its input interface (``Packet.indev``, set by
netfilterqueue 1.1.0 from NFQA_IFINDEX_INDEV); a packet from any other
interface is dropped and counted (fail closed). The binding does not ask for
GSO packets, so the kernel completes checksums before queueing and the core
gets no packet flags. run_once is bounded by handing ``run_socket`` a reader
whose ``recv`` reports EAGAIN once max_pkts messages were read (the kernel
sends one packet per netlink message).
"""
from __future__ import annotations

import errno
import select
import socket

from netfilterqueue import NetfilterQueue

COUNTERS = ("received", "accepted", "dropped", "modified", "unknown_ifindex", "truncated",
            "recv_errors", "enobufs")


class _BoundedReader:
    """A socket face for NetfilterQueue.run_socket that stops after `left` messages."""

    def __init__(self, sock: socket.socket, counts: dict[str, int]):
        self._sock = sock
        self._counts = counts
        self.left = 0

    def recv(self, size: int) -> bytes:
        if self.left <= 0:
            raise BlockingIOError(errno.EAGAIN, "batch done")
        self.left -= 1
        try:
            return self._sock.recv(max(size, 65536), socket.MSG_DONTWAIT)
        except OSError as e:
            if e.errno == errno.ENOBUFS:      # the kernel dropped queued packets
                self._counts["enobufs"] += 1
            raise


class SimpleFeed:
    kind = "netfilterqueue"

    def __init__(self, core, queue_num: int, sides: dict[int, str], *, max_len: int = 1024):
        self._core = core
        self._sides = dict(sides)
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._done = 0
        self._nfq = NetfilterQueue()
        try:
            self._nfq.bind(queue_num, self._on_packet, max_len=max_len)
            # a second descriptor of the same netlink socket (closing it leaves the queue's)
            self._sock = socket.fromfd(self._nfq.get_fd(), socket.AF_NETLINK, socket.SOCK_RAW)
        except BaseException:
            self._nfq.unbind()
            raise
        self._reader = _BoundedReader(self._sock, self._counts)

    def fileno(self) -> int:
        return self._sock.fileno()

    def _on_packet(self, pkt) -> None:
        c = self._counts
        c["received"] += 1
        self._done += 1
        try:
            side = self._sides.get(pkt.indev)
            if side is None:
                c["unknown_ifindex"] += 1
                c["dropped"] += 1
                pkt.drop()
                return
            buf = bytearray(pkt.get_payload())
            if len(buf) >= 4 and int.from_bytes(buf[2:4], "big") > len(buf):
                c["truncated"] += 1       # larger than the binding's copy range
                c["dropped"] += 1
                pkt.drop()
                return
            v = self._core.process_buffer(buf, side)
            if v.accepted:
                if v.modified:
                    c["modified"] += 1
                    pkt.set_payload(bytes(buf))
                c["accepted"] += 1
                pkt.accept()
            else:
                c["dropped"] += 1
                pkt.drop()
        except Exception:
            c["recv_errors"] += 1
            try:
                pkt.drop()
            except Exception:
                pass

    def run_once(self, max_pkts: int, timeout_ms: int) -> int:
        """Handle up to max_pkts queued packets, waiting up to timeout_ms for the first."""
        if timeout_ms > 0:
            ready, _, _ = select.select([self._sock], [], [], timeout_ms / 1000)
            if not ready:
                return 0
        self._done = 0
        self._reader.left = max_pkts
        self._nfq.run_socket(self._reader)
        return self._done

    def counters(self) -> dict[str, int]:
        return dict(self._counts)

    def close(self) -> None:
        if self._nfq is not None:
            self._nfq.unbind()
            self._sock.close()
            self._nfq = None
