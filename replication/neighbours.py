"""The neighbour (ARP) table of the data legs, replicated as an ASA pair replicates its ARP table.

Owns three things, from the pure to the kernel:

- ``NeighbourBook``: what a unit would tell its peer: its dynamic IPv4 neighbour entries with
  a MAC on the two data legs (states REACHABLE, STALE, DELAY, PROBE), keyed by (leg,
  address). Fed netlink events (``event``), it answers with the change to send, if any: only
  a new entry, a new MAC or a forgotten entry (FAILED, deleted, or made PERMANENT/NOARP) is a
  change; a REACHABLE -> STALE -> DELAY -> REACHABLE cycle with the same MAC is none.
- ``plan``: what the standby does with a received ``wire.Neighbour``: ADD is installed as
  NUD_STALE (replace): usable at once at a takeover (the kernel sends on a STALE entry without
  asking first), yet revalidated by the kernel (its first use moves it to DELAY, then a unicast
  probe confirms it or it fails): never a permanent lie. DEL removes the entry unless it is
  PERMANENT or NOARP (the standby's own configuration).
- ``Neighbours``: the kernel side of one unit, in the unit's namespace (the daemon's threads
  live there), with pyroute2 and one thread of its own (``natpair-neigh``): a netlink socket
  bound to RTNLGRP_NEIGH before the initial dump (so nothing falls between them), its messages
  parsed by pyroute2's MarshalRtnl; an overrun (ENOBUFS) dumps the table again. It also
  applies what the replication thread hands to ``install`` (so no netlink call ever runs on
  the replication thread, whose hellos are timed in ms).

The pair (replication/pair.py) sends ``outgoing`` changes as NEIGH records in its reliable
stream while the peer is a standby, the whole ``snapshot`` after each BULK_START (so a bulk
sync carries the table) and again every REFRESH_MS (the standby's unused STALE entries may be
garbage-collected by its kernel: the refresh puts them back).

Skipped on both ends: the unit's own addresses (every IPv4 address in its namespace at start)
and the virtual addresses. The standby skips its own, so the active's entry for the standby's
address (the peer) goes no further; the failover leg is not watched at all. Legs are named by
wire.LEG_INSIDE / LEG_OUTSIDE; each unit maps them to its own interface names (its config).

Counters (``counters``, in the pair's replication counters as ``neigh_*``): events, learned,
moved (a new MAC), forgotten, skipped_own, skipped_leg, resyncs, dropped_no_standby, sent,
refreshes, received, installed, removed, install_skipped_own, install_kept_static,
install_unknown_leg, install_errors, monitor_errors.
"""
from __future__ import annotations

import collections
import errno
import logging
import os
import select
import socket
import threading
from typing import Iterable

from replication import wire
from replication.wire import LEG_INSIDE, LEG_OUTSIDE, NEIGH_ADD, NEIGH_DEL, Neighbour

LOG = logging.getLogger("natpair")

NUD_INCOMPLETE, NUD_REACHABLE, NUD_STALE, NUD_DELAY = 0x01, 0x02, 0x04, 0x08
NUD_PROBE, NUD_FAILED, NUD_NOARP, NUD_PERMANENT = 0x10, 0x20, 0x40, 0x80
DYNAMIC = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE
STATIC = NUD_NOARP | NUD_PERMANENT
RTNLGRP_NEIGH = 3
NETLINK_RCVBUF = 1 << 20
REFRESH_MS = 30_000
NEW, DEL = "RTM_NEWNEIGH", "RTM_DELNEIGH"
LEG_NAMES = {LEG_INSIDE: "inside", LEG_OUTSIDE: "outside"}


class NeighbourBook:
    """The dynamic neighbour entries of the data legs; ``legs``: ifindex -> wire leg."""

    def __init__(self, legs: dict[int, int], skip: Iterable[str] = ()):
        self.legs = dict(legs)
        self.skip = set(skip)
        self.entries: dict[tuple[int, str], str] = {}
        self.counters: collections.Counter[str] = collections.Counter()

    def _entry(self, kind: str, ifindex: int, state: int, address: str | None,
               mac: str | None) -> tuple[tuple[int, str], str | None] | None:
        """(key, MAC) of an entry to have, (key, None) of one to forget, None: not ours."""
        leg = self.legs.get(ifindex)
        if leg is None or not address:
            self.counters["skipped_leg"] += 1
            return None
        if address in self.skip or not wire.neighbour_ok(address):
            self.counters["skipped_own"] += 1
            return None
        if kind == NEW and state & DYNAMIC and mac:
            return (leg, address), mac.lower()
        if kind == NEW and state == NUD_INCOMPLETE:
            return None                 # being resolved: it had no MAC we told (see FAILED)
        return (leg, address), None

    def event(self, kind: str, ifindex: int, state: int, address: str | None,
              mac: str | None) -> Neighbour | None:
        """One RTM_NEWNEIGH / RTM_DELNEIGH of family AF_INET; the change to send, or None."""
        self.counters["events"] += 1
        entry = self._entry(kind, ifindex, state, address, mac)
        if entry is None:
            return None
        key, mac = entry
        old = self.entries.get(key)
        if mac is not None:
            if old == mac:
                return None
            self.counters["learned" if old is None else "moved"] += 1
            self.entries[key] = mac
            return Neighbour(NEIGH_ADD, *key, mac)
        if old is None:
            return None
        del self.entries[key]
        self.counters["forgotten"] += 1
        return Neighbour(NEIGH_DEL, *key)

    def replace_all(self, dump: list[tuple[int, int, str | None, str | None]]) -> list[Neighbour]:
        """A full dump of (ifindex, state, address, mac): the book becomes it; returns the
        changes against what it was."""
        now: dict[tuple[int, str], str] = {}
        for ifindex, state, address, mac in dump:
            entry = self._entry(NEW, ifindex, state, address, mac)
            if entry is not None and entry[1] is not None:
                now[entry[0]] = entry[1]
        out = []
        for key, mac in sorted(now.items()):
            old = self.entries.get(key)
            if old != mac:
                self.counters["learned" if old is None else "moved"] += 1
                out.append(Neighbour(NEIGH_ADD, *key, mac))
        for key in sorted(self.entries.keys() - now.keys()):
            self.counters["forgotten"] += 1
            out.append(Neighbour(NEIGH_DEL, *key))
        self.entries = now
        return out

    def snapshot(self) -> list[Neighbour]:
        return [Neighbour(NEIGH_ADD, leg, address, mac)
                for (leg, address), mac in sorted(self.entries.items())]


def plan(rec: Neighbour, own: set[str], current_state: int | None) -> str:
    """What the standby does with ``rec``, given the state of its own entry for that leg and
    address (None: it has none): "replace" (as NUD_STALE), "delete", or why not:
    "skip_own", "keep_static", "absent"."""
    if rec.address in own:
        return "skip_own"
    if rec.op == NEIGH_ADD:
        return "replace"
    if current_state is None:
        return "absent"
    if current_state & STATIC:
        return "keep_static"
    return "delete"


def _message_fields(m) -> tuple[str, int, int, str | None, str | None] | None:
    if m.get("family") != socket.AF_INET or m.get("event") not in (NEW, DEL):
        return None
    return m["event"], m["ifindex"], m["state"], m.get_attr("NDA_DST"), m.get_attr("NDA_LLADDR")


class Neighbours:
    """One unit's neighbour table on its data legs: watched, and installed into.

    ``legs``: wire leg -> interface name (this unit's), ``skip``: addresses never replicated
    (the virtual ones; the unit's own are added at ``start``)."""

    def __init__(self, legs: dict[int, str], skip: Iterable[str] = ()):
        self.leg_names = dict(legs)
        self.skip = set(skip)
        self.book = NeighbourBook({}, self.skip)
        self.counters = self.book.counters
        self._lock = threading.Lock()            # the book: the thread vs snapshot()
        self._changes: collections.deque[Neighbour] = collections.deque()
        self._installs: collections.deque[Neighbour] = collections.deque()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._ifindex: dict[int, int] = {}       # wire leg -> ifindex
        self._next_refresh = 0

    # ---- life cycle ----

    def start(self) -> None:
        from pyroute2 import IPRoute

        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NETLINK_RCVBUF)
            sock.bind((0, 1 << (RTNLGRP_NEIGH - 1)))
            sock.setblocking(False)
            with IPRoute() as ipr:
                self._lookup_legs(ipr)
                for a in ipr.get_addr(family=socket.AF_INET):
                    self.skip.add(a.get_attr("IFA_ADDRESS"))
                self.book.skip = self.skip
                self._resync(ipr, initial=True)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="natpair-neigh", daemon=True)
        self._thread.start()
        LOG.info("neigh start legs=%s entries=%d skip=%d", ",".join(
            f"{LEG_NAMES[leg]}:{n}" for leg, n in sorted(self.leg_names.items())),
            len(self.book.entries), len(self.skip))

    def close(self) -> None:
        self._stop.set()
        if self._wake_w >= 0:
            self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # ---- the pair's side (replication thread) ----

    def outgoing(self, now: int, replicating: bool) -> list[Neighbour]:
        """Changes to send now: the book's changes while the peer is a standby (dropped
        otherwise: a joining standby gets the snapshot with its bulk sync), and the whole book
        every REFRESH_MS."""
        out = []
        while self._changes:
            out.append(self._changes.popleft())
        if not replicating:
            self.counters["dropped_no_standby"] += len(out)
            self._next_refresh = now + REFRESH_MS
            return []
        if now >= self._next_refresh:
            self._next_refresh = now + REFRESH_MS
            self.counters["refreshes"] += 1
            out = self.snapshot()
        self.counters["sent"] += len(out)
        return out

    def snapshot(self) -> list[Neighbour]:
        with self._lock:
            return self.book.snapshot()

    def status(self) -> dict:
        """Entries per leg in the book (what an active would send), for ``natpair status``."""
        with self._lock:
            legs = collections.Counter(leg for leg, _ in self.book.entries)
        return {LEG_NAMES[leg]: legs[leg] for leg in sorted(self.leg_names)}

    def install(self, rec: Neighbour) -> None:
        """A record received from the active: applied on the neighbour thread."""
        self.counters["received"] += 1
        self._installs.append(rec)
        self._wake()

    # ---- the thread ----

    def _wake(self) -> None:
        if self._wake_w < 0:
            return                      # not started: applied when it is
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass                        # already woken

    def _run(self) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl.marshal import MarshalRtnl

        marshal = MarshalRtnl()
        with IPRoute() as ipr:
            while not self._stop.is_set():
                try:
                    ready, _, _ = select.select([self._sock, self._wake_r], [], [], 0.5)
                    if self._wake_r in ready:
                        os.read(self._wake_r, 4096)
                    if self._sock in ready:
                        self._read(ipr, marshal)
                    while self._installs:
                        self._apply(ipr, self._installs.popleft())
                except Exception as e:       # never take the daemon down
                    self.counters["monitor_errors"] += 1
                    LOG.error("neigh error: %s", e)
                    self._stop.wait(0.1)

    def _read(self, ipr, marshal) -> None:
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self._resync(ipr)               # events were lost: dump again
                continue
            for m in marshal.parse(data):
                fields = _message_fields(m)
                if fields is not None:
                    self.on_event(*fields)

    def on_event(self, kind: str, ifindex: int, state: int, address: str | None,
                 mac: str | None) -> None:
        """One neighbour event of this namespace (from the monitor socket)."""
        with self._lock:
            change = self.book.event(kind, ifindex, state, address, mac)
        if change is not None:
            self._changes.append(change)

    def _lookup_legs(self, ipr) -> None:
        self._ifindex = {}
        for leg, ifname in self.leg_names.items():
            found = ipr.link_lookup(ifname=ifname)
            if found:
                self._ifindex[leg] = found[0]
        self.book.legs = {i: leg for leg, i in self._ifindex.items()}

    def _resync(self, ipr, initial: bool = False) -> None:
        dump = []
        for m in ipr.get_neighbours(family=socket.AF_INET):
            dump.append((m["ifindex"], m["state"], m.get_attr("NDA_DST"), m.get_attr("NDA_LLADDR")))
        with self._lock:
            changes = self.book.replace_all(dump)
        if not initial:
            self.counters["resyncs"] += 1
            self._changes.extend(changes)

    def _apply(self, ipr, rec: Neighbour) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        ifindex = self._ifindex.get(rec.leg)
        if ifindex is None:
            self.counters["install_unknown_leg"] += 1
            return
        current = None
        if rec.op == NEIGH_DEL:
            found = [m for m in ipr.get_neighbours(ifindex=ifindex, family=socket.AF_INET)
                     if m.get_attr("NDA_DST") == rec.address]
            current = found[0]["state"] if found else None
        what = plan(rec, self.skip, current)
        try:
            if what == "replace":
                ipr.neigh("replace", dst=rec.address, lladdr=rec.mac, ifindex=ifindex,
                          state=NUD_STALE)
                self.counters["installed"] += 1
            elif what == "delete":
                ipr.neigh("del", dst=rec.address, ifindex=ifindex)
                self.counters["removed"] += 1
            elif what == "skip_own":
                self.counters["install_skipped_own"] += 1
            elif what == "keep_static":
                self.counters["install_kept_static"] += 1
        except NetlinkError as e:
            if e.code == errno.ENODEV:          # the leg was recreated: look it up again
                self._lookup_legs(ipr)
            if not (what == "delete" and e.code == errno.ENOENT):
                self.counters["install_errors"] += 1
                LOG.warning("neigh install failed op=%s leg=%s address=%s error=%s", rec.op,
                            LEG_NAMES[rec.leg], rec.address, e)
