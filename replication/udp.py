"""The UDP socket under a transport: one failover-link endpoint (no root needed).

Owns ``UdpLink``: a non-blocking datagram socket bound to the local address and
connected to the peer's, a ``FtfwTransport`` writing to it, and ``pump`` that reads
every waiting datagram into the transport and runs its timers. ``run`` is a small
selector loop for a daemon thread or a test; time is CLOCK_MONOTONIC in ms.
"""
from __future__ import annotations

import selectors
import socket
import time
from typing import Any, Callable

from replication.transport import FtfwTransport
from replication.wire import Codec


RCVBUF = 4 << 20
SO_RCVBUFFORCE = 33             # Linux; not in Python's socket module


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class UdpLink:
    def __init__(self, codec: Codec, local: tuple[str, int], peer: tuple[str, int] | None,
                 deliver: Callable[[int, Any], None], **transport_kw):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        try:        # root may pass net.core.rmem_max: a bulk sync's burst must not overflow
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock.bind(local)
        self.peer = peer
        self.transport = FtfwTransport(codec, self._send, deliver, **transport_kw)

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    def connect(self, peer: tuple[str, int]) -> None:
        self.peer = peer

    def _send(self, data: bytes) -> None:
        if self.peer is not None:
            self.sock.sendto(data, self.peer)

    def fileno(self) -> int:
        return self.sock.fileno()

    def pump(self, now: int | None = None) -> int:
        """Read all waiting datagrams (from the peer only), then run the timers."""
        n = 0
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:         # e.g. ECONNREFUSED reported by ICMP: the peer is away
                self.transport.counters.bump("rx_socket_errors")
                continue
            if self.peer is not None and addr != self.peer:
                self.transport.counters.bump("rx_wrong_source")
                continue
            self.transport.on_datagram(data, now_ms() if now is None else now)
            n += 1
        self.transport.poll(now_ms() if now is None else now)
        return n

    def run(self, until: Callable[[], bool], timeout_ms: int, tick_ms: int = 1) -> bool:
        """Pump until ``until()`` is true or ``timeout_ms`` passed; True if it became true."""
        end = now_ms() + timeout_ms
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ)
            while not until():
                if now_ms() >= end:
                    return False
                sel.select(tick_ms / 1000)
                self.pump()
        return True

    def close(self) -> None:
        self.sock.close()
