"""The failover leg's carrier, watched through netlink (RTMGRP_LINK), never polled.

Owns ``CarrierWatch(ifname)``: a netlink route socket subscribed to link events in the
unit's namespace, read without blocking by the replication loop (``fileno``, ``poll``).
The carrier is up when the interface exists, is administratively up and reports carrier
(IFLA_CARRIER = 1); it is down when any of these is lost, and when the interface is
deleted (RTM_DELLINK), which is what a failover link made of one veth pair does when the
peer's namespace goes. An interface of the same name that comes back is followed by name.

``poll()`` returns the changes since the last call (``[True]``, ``[False]``, ...), to give
to ``replication.pair.Pair.carrier``. Counters: events, changes_down, changes_up,
overruns (the socket's buffer overflowed: the state is read again from the kernel).

Why a socket of our own and pyroute2 only to parse: pyroute2 0.9's ``IPRoute.get()``
returns one message per call and keeps the rest of a datagram buffered, so after a
``select`` the second event of a burst (the carrier of our end after the peer's end went
down) waited for the next, unrelated event (measured: 300 ms late).
"""
from __future__ import annotations

import collections
import errno
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

IFF_UP = 0x1
RTM_NEWLINK, RTM_DELLINK = 16, 17


class CarrierWatch:
    def __init__(self, ifname: str):
        self.ifname = ifname
        self.counters: collections.Counter[str] = collections.Counter()
        self._marshal = MarshalRtnl()
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.bind((0, RTMGRP_LINK))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.up = self._read_state()

    def fileno(self) -> int:
        return self.sock.fileno()

    def _read_state(self) -> bool:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=self.ifname)
            if not found:
                return False
            return self._is_up(ipr.get_links(found[0])[0])

    @staticmethod
    def _is_up(msg) -> bool:
        return bool(msg["flags"] & IFF_UP) and msg.get_attr("IFLA_CARRIER") == 1

    def poll(self) -> list[bool]:
        """The carrier changes that netlink reported since the last call, oldest first."""
        out: list[bool] = []
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self.counters["overruns"] += 1       # events lost: ask the kernel instead
                self._set(self._read_state(), out)
                continue
            for msg in self._marshal.parse(data):
                if msg.get_attr("IFLA_IFNAME") != self.ifname:
                    continue
                kind = msg["header"]["type"]
                if kind not in (RTM_NEWLINK, RTM_DELLINK):
                    continue
                self.counters["events"] += 1
                self._set(kind == RTM_NEWLINK and self._is_up(msg), out)
        return out

    def _set(self, up: bool, out: list[bool]) -> None:
        if up == self.up:
            return
        self.up = up
        self.counters["changes_up" if up else "changes_down"] += 1
        out.append(up)

    def close(self) -> None:
        self.sock.close()
