"""The virtual addresses of a pair: held by the active unit, moved at a failover.

Owns ``VirtualAddresses``: the ``[[failover.vip]]`` entries of one unit put on (``add``)
and taken off (``remove``) its data legs with pyroute2, in the unit's own namespace (the
daemon's threads live there), and announced with gratuitous ARP (``announce``): for each
address an ARP request and an ARP reply with sender = target = the address, from the leg's
MAC, to the broadcast address, built with scapy and sent on an AF_PACKET socket of the
leg, opened by ``prepare`` and kept until ``close``: closing a packet socket waits for an
RCU grace period (synchronize_net, ~10 ms measured), which a takeover must not pay. Both
idempotent: adding an address that is there, or removing one that is not, is no error.

With virtual MACs (``macs``, a dataplane.vmac.VirtualMacs) ``add`` first puts the virtual
MAC on each leg and sends one round of the announce at once (the hosts already send to that
MAC: the switches only need to learn where it is, and forwarding does not need the addresses),
writes back the neighbour entries the MAC change flushed, then adds the addresses; the
gratuitous ARP is sent from the virtual MAC, and it also announces the unit's own
addresses on those legs (their MAC changed with the leg's: the peer's data-path hellos go
there); ``remove`` gives the MACs back after the addresses and announces the own
addresses with the own MAC again.
``add_timings``: the last add's steps (us). Counters: added, removed, garp_sent, garp_errors.
"""
from __future__ import annotations

import collections
import errno
import socket
import time

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

GARP_COUNT = 2          # rounds of (request, reply) per address and announce()


class VirtualAddresses:
    def __init__(self, vips: list[tuple[str, str]], macs=None):
        """``vips``: (interface name, "a.b.c.d/len"); ``macs``: a dataplane.vmac.VirtualMacs."""
        self.vips = list(vips)
        self.macs = macs
        self.counters: collections.Counter[str] = collections.Counter()
        self._frames: dict[str, list[bytes]] | None = None
        self._own_frames: dict[str, list[bytes]] = {}   # own addresses from the own MAC
        self._ipr: IPRoute | None = None        # kept open for the takeover (replication thread)
        self._idx: dict[str, int] = {}
        self._socks: dict[str, socket.socket] = {}
        self.add_timings: dict[str, int] = {}   # the last add()'s steps, microseconds each
        if self.vips:
            import scapy.layers.l2  # noqa: F401  (scapy takes ~1 s to import: not at takeover)

    def _index(self, ipr: IPRoute, ifname: str) -> int:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise RuntimeError(f"interface {ifname!r} not found")
        return found[0]

    def warm(self) -> None:
        """Open the takeover's netlink socket and look the legs up, from the thread that
        will take over (a pyroute2 0.9 IPRoute belongs to the thread that made it)."""
        if self._ipr is None:
            self._ipr = IPRoute()
        for ifname, _ in self.vips:
            self._idx[ifname] = self._index(self._ipr, ifname)
        if self.macs is not None:
            for ifname in self.macs.macs:
                self.macs._index(self._ipr, ifname, fresh=True)

    def add(self) -> None:
        """The virtual MACs, then the addresses: on the takeover path, so one netlink socket
        kept open and ifindexes looked up once (each call costs ~0.4 ms with pyroute2 0.9)."""
        if self._ipr is None:
            self._ipr = IPRoute()
        ipr = self._ipr
        timings, t = self.add_timings, time.monotonic_ns()
        timings.clear()

        def lap(step: str) -> None:
            nonlocal t
            now = time.monotonic_ns()
            timings[step] = (now - t) // 1000
            t = now

        if self.macs is not None:
            # the hosts already send to the virtual MAC: forwarding works once the leg has
            # it and the switches learned where it is (one round of the announce now); then
            # the neighbour entries the MAC change flushed (else the first packets out wait
            # for an ARP answer that the switch may still deliver to the dead unit); then
            # the addresses, needed only for ARP answers and the unit's own traffic
            neigh = self.macs.take(ipr)
            lap("vmac")
            if self._frames is None:
                self._frames = self._garp_frames()
            self._send(self._frames, 1)
            lap("garp")
            self.macs.restore(ipr, neigh)
            lap("neigh")
        for ifname, cidr in self.vips:
            addr, plen = cidr.split("/")
            for fresh in (False, True):
                if fresh or ifname not in self._idx:
                    self._idx[ifname] = self._index(ipr, ifname)
                try:
                    ipr.addr("add", index=self._idx[ifname], address=addr, prefixlen=int(plen))
                    self.counters["added"] += 1
                except NetlinkError as e:
                    if e.code == errno.EEXIST:
                        break
                    if fresh or e.code not in (errno.ENODEV, errno.ENOENT):
                        raise
                    continue                    # the leg was recreated: a new index
                break
        lap("addr")

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
        if self.macs is not None and self.macs.own:
            with IPRoute() as ipr:
                self.macs.restore(ipr, self.macs.give_back(ipr))
            try:
                self._send(self._own_frames, 1)
            except OSError:
                pass                            # counted; the own addresses re-resolve anyway

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

    def _garp_frames(self, active: bool = True) -> dict[str, list[bytes]]:
        """Gratuitous ARP per leg: the virtual addresses (``active``; plus the own addresses
        of legs with a virtual MAC), or only those own addresses with the own MAC."""
        from scapy.layers.l2 import ARP, Ether

        frames: dict[str, list[bytes]] = collections.defaultdict(list)
        vip_ips = {cidr.split("/")[0] for _, cidr in self.vips}
        with IPRoute() as ipr:
            announce = [(i, c.split("/")[0]) for i, c in self.vips] if active else []
            if self.macs is not None:
                for ifname in self.macs.macs:
                    idx = self._index(ipr, ifname)
                    announce += [(ifname, a.get_attr("IFA_ADDRESS"))
                                 for a in ipr.get_addr(index=idx, family=socket.AF_INET)
                                 if a.get_attr("IFA_ADDRESS") not in vip_ips]
            for ifname, ip in announce:
                if self.macs is not None and ifname in self.macs.macs:
                    mac = self.macs.mac(ifname, active)
                else:
                    mac = ipr.get_links(self._index(ipr, ifname))[0].get_attr("IFLA_ADDRESS")
                for op in (1, 2):               # who-has and is-at, sender == target
                    frames[ifname].append(bytes(
                        Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
                        / ARP(op=op, hwsrc=mac, psrc=ip, hwdst="ff:ff:ff:ff:ff:ff" if op == 2
                              else "00:00:00:00:00:00", pdst=ip)))
        return frames

    def prepare(self) -> None:
        """Learn the own MACs, build the ARP frames and open the packet sockets now, not at
        the takeover."""
        if self.macs is not None:
            self.macs.prepare()
            self._own_frames = self._garp_frames(active=False)
        self._frames = self._garp_frames()
        for ifname in (*self._frames, *self._own_frames):
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
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self.macs is not None:
            self.macs.close()

    def announce(self, rounds: int = GARP_COUNT) -> None:
        if self._frames is None:
            self._frames = self._garp_frames()
        self._send(self._frames, rounds)

    def _send(self, frames_by_leg: dict[str, list[bytes]], rounds: int) -> None:
        for ifname, frames in frames_by_leg.items():
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
