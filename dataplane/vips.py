"""The virtual addresses of a pair: held by the active unit, moved at a failover.

Owns ``VirtualAddresses``: the ``[[failover.vip]]`` entries of one unit put on (``add``)
and taken off (``remove``) its data legs with pyroute2, in the unit's own namespace (the
daemon's threads live there), and announced with gratuitous ARP (``announce``): for each
address an ARP request and an ARP reply with sender = target = the address, from the leg's
MAC, to the broadcast address, built with scapy and sent on an AF_PACKET socket of the
leg, opened by ``prepare`` and kept until ``close``: closing a packet socket waits for an
RCU grace period (synchronize_net, ~10 ms measured), which a takeover must not pay. Both
idempotent: adding an address that is there, or removing one that is not, is no error.
Counters: added, removed, garp_sent, garp_errors.
"""
from __future__ import annotations

import collections
import errno
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

GARP_COUNT = 2          # rounds of (request, reply) per address and announce()


class VirtualAddresses:
    def __init__(self, vips: list[tuple[str, str]]):
        """``vips``: (interface name, "a.b.c.d/len")."""
        self.vips = list(vips)
        self.counters: collections.Counter[str] = collections.Counter()
        self._frames: dict[str, list[bytes]] | None = None
        self._socks: dict[str, socket.socket] = {}
        if self.vips:
            import scapy.layers.l2  # noqa: F401  (scapy takes ~1 s to import: not at takeover)

    def _index(self, ipr: IPRoute, ifname: str) -> int:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise RuntimeError(f"interface {ifname!r} not found")
        return found[0]

    def add(self) -> None:
        with IPRoute() as ipr:
            for ifname, cidr in self.vips:
                addr, plen = cidr.split("/")
                try:
                    ipr.addr("add", index=self._index(ipr, ifname), address=addr, prefixlen=int(plen))
                    self.counters["added"] += 1
                except NetlinkError as e:
                    if e.code != errno.EEXIST:
                        raise

    def remove(self) -> None:
        with IPRoute() as ipr:
            for ifname, cidr in self.vips:
                addr, plen = cidr.split("/")
                found = ipr.link_lookup(ifname=ifname)
                if not found:
                    continue                    # the leg vanished: nothing to remove
                try:
                    ipr.addr("del", index=found[0], address=addr, prefixlen=int(plen))
                    self.counters["removed"] += 1
                except NetlinkError as e:
                    if e.code not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                        raise

    def held(self) -> list[str]:
        """The virtual addresses present on their legs now."""
        out = []
        with IPRoute() as ipr:
            for ifname, cidr in self.vips:
                found = ipr.link_lookup(ifname=ifname)
                addr = cidr.split("/")[0]
                if found and any(a.get_attr("IFA_ADDRESS") == addr
                                 for a in ipr.get_addr(index=found[0], family=socket.AF_INET)):
                    out.append(cidr)
        return out

    def _garp_frames(self) -> dict[str, list[bytes]]:
        from scapy.layers.l2 import ARP, Ether

        frames: dict[str, list[bytes]] = collections.defaultdict(list)
        with IPRoute() as ipr:
            for ifname, cidr in self.vips:
                link = ipr.get_links(self._index(ipr, ifname))[0]
                mac = link.get_attr("IFLA_ADDRESS")
                ip = cidr.split("/")[0]
                for op in (1, 2):               # who-has and is-at, sender == target
                    frames[ifname].append(bytes(
                        Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
                        / ARP(op=op, hwsrc=mac, psrc=ip, hwdst="ff:ff:ff:ff:ff:ff" if op == 2
                              else "00:00:00:00:00:00", pdst=ip)))
        return frames

    def prepare(self) -> None:
        """Build the ARP frames and open the packet sockets now, not at the takeover."""
        self._frames = self._garp_frames()
        for ifname in self._frames:
            self._socket(ifname)

    def _socket(self, ifname: str) -> socket.socket:
        s = self._socks.get(ifname)
        if s is None:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)   # protocol 0: receives nothing
            try:
                s.bind((ifname, 0))
            except OSError:
                s.close()
                raise
            self._socks[ifname] = s
        return s

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()

    def announce(self, rounds: int = GARP_COUNT) -> None:
        if self._frames is None:
            self._frames = self._garp_frames()
        for ifname, frames in self._frames.items():
            try:
                s = self._socket(ifname)
                for _ in range(rounds):
                    for f in frames:
                        s.send(f)
                        self.counters["garp_sent"] += 1
            except OSError:
                self.counters["garp_errors"] += 1
                old = self._socks.pop(ifname, None)      # the leg may have been recreated
                if old is not None:
                    old.close()
                raise
