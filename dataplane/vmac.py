"""The virtual MACs of a pair: the data legs' hardware address while the unit is active.

Owns ``VirtualMacs``: for each data leg a virtual MAC (config ``[failover]`` virtual_mac,
mac_inside / mac_outside, default 02:4e:50:<group>:00:<leg>) that the active unit puts on
the leg itself (``take``) and gives back (``give_back``: the leg's own MAC again), with
pyroute2. The leg keeps its name and ifindex, so the unit's rules (raw PREROUTING
``-i <leg>``) and the feed's ifindex -> side map still match; hosts keep the gateway's
MAC in their ARP caches across a failover, and the gratuitous ARP only moves the
switches' tables.

- own MAC: read at ``prepare`` and remembered in ``state_file`` (JSON), so that a unit
  restarted after a crash while it held the virtual MAC gets its own back, not the
  virtual one; ``prepare`` gives a held virtual MAC back at once (not ours until active).
- a MAC change flushes the leg's neighbour table (NETDEV_CHANGEADDR, measured: every
  entry, permanent ones too): ``take``/``give_back`` read the entries before the change
  and return them; ``restore`` writes them back (as STALE, permanent ones as PERMANENT),
  so the replicated neighbour entries stay and the first packets out need no ARP answer
  (which the switch might still deliver to the dead unit's port).
- ``ipr``: an IPRoute the caller keeps open (opening one costs ~1 ms); ifindexes are
  looked up once and again only when the leg was recreated.
- the takeover's fast path (``prepare_batch``, then ``take``/``restore`` with ``batch``, a
  dataplane.netlink_batch.NetlinkBatch): the MAC changes encoded at start, the neighbour
  entries read in one dump, the MACs set and the entries written back in one burst each
  (measured on the lab: the take went from 3-19 ms to well under 1 ms; while it ran, the
  feed thread waited for this GIL and the first packets sat in the queue). A leg
  recreated since (ENODEV) takes the pyroute2 path.
- never two units with one MAC: the standby takes the virtual MAC only when its peer was
  silent on every path for the hold time (replication.detect); a unit leaving ACTIVE gives
  it back before anything else (role.RELEASE_STEPS), and a starting unit before it
  negotiates.

Counters: taken, given_back, neigh_restored, neigh_restore_errors, take_slow_path.
"""
from __future__ import annotations

import collections
import errno
import json
import os
import socket
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

NUD_PERMANENT, NUD_STALE, NUD_NOARP = 0x80, 0x04, 0x40
NUD_KEEP = 0x02 | 0x04 | 0x08 | 0x10 | NUD_PERMANENT   # reachable, stale, delay, probe, permanent


class VirtualMacs:
    def __init__(self, macs: list[tuple[str, str]], state_file: str | Path):
        """``macs``: (interface name, virtual MAC)."""
        self.macs = dict(macs)
        self.state_file = Path(state_file)
        self.own: dict[str, str] = {}
        self._idx: dict[str, int | None] = {}
        self._batch_take: dict[str, tuple[int, tuple[int, bytes]]] = {}   # ifname -> (idx, request)
        self.counters: collections.Counter[str] = collections.Counter()

    def prepare(self) -> None:
        """Learn each leg's own MAC (from the state file when the leg holds the virtual one)."""
        saved: dict[str, str] = {}
        try:
            saved = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            pass
        with IPRoute() as ipr:
            for ifname, vmac in self.macs.items():
                cur = _mac_of(ipr, ifname)
                if cur != vmac:
                    self.own[ifname] = cur
                elif saved.get(ifname) and saved[ifname] != vmac:
                    self.own[ifname] = saved[ifname]
                else:                           # nothing remembered: a locally administered one
                    self.own[ifname] = "02:" + ":".join(f"{b:02x}" for b in os.urandom(5))
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.own))
        os.replace(tmp, self.state_file)

    def mac(self, ifname: str, active: bool) -> str:
        """The MAC the leg has when the unit is (not) active."""
        return self.macs[ifname] if active else self.own[ifname]

    def prepare_batch(self, ipr: IPRoute, batch) -> None:
        """Encode the takeover's MAC changes for ``batch`` (from the thread that takes over)."""
        self._batch_take = {}
        for ifname, vmac in self.macs.items():
            idx = self._index(ipr, ifname, fresh=True)
            if idx is not None:
                self._batch_take[ifname] = (idx, batch.link_address(idx, vmac))

    def take(self, ipr: IPRoute, batch=None) -> list:
        """The virtual MACs on the legs; returns the neighbour entries to ``restore``."""
        self.counters["taken"] += 1
        prepared = self._batch_take
        if batch is None or not prepared or set(prepared) != set(self.macs):
            return self._set(ipr, active=True)
        idxs = {idx: ifname for ifname, (idx, _) in prepared.items()}
        neigh = [(idx, dst, lladdr, state) for idx, dst, lladdr, state in batch.neighbours(idxs)
                 if state & NUD_KEEP]
        errs = batch.send([req for _, req in prepared.values()])
        stale = []
        for ifname, err in zip(prepared, errs):
            if err in (errno.ENODEV, errno.ENOENT):
                stale.append(ifname)            # recreated under a new index: the slow path
            elif err:
                raise NetlinkError(err)
        if stale:
            self.counters["take_slow_path"] += 1
            lost = {prepared[i][0] for i in stale}
            neigh = [n for n in neigh if n[0] not in lost]
            neigh += self._set(ipr, active=True, only=stale)
            self.prepare_batch(ipr, batch)      # the new indexes, for the next takeover
        return neigh

    def give_back(self, ipr: IPRoute) -> list:
        self.counters["given_back"] += 1
        return self._set(ipr, active=False)

    def restore(self, ipr: IPRoute, neigh: list, batch=None) -> None:
        if batch is not None and neigh:
            reqs = [batch.neigh_replace(idx, dst, lladdr,
                                        NUD_PERMANENT if state & NUD_PERMANENT else NUD_STALE)
                    for idx, dst, lladdr, state in neigh]
            for err in batch.send(reqs):
                self.counters["neigh_restore_errors" if err else "neigh_restored"] += 1
            return
        for idx, dst, lladdr, state in neigh:
            try:
                ipr.neigh("replace", dst=dst, lladdr=lladdr, ifindex=idx,
                          state=NUD_PERMANENT if state & NUD_PERMANENT else NUD_STALE)
                self.counters["neigh_restored"] += 1
            except NetlinkError:
                self.counters["neigh_restore_errors"] += 1

    def held(self) -> list[str]:
        """The legs that hold their virtual MAC now."""
        with IPRoute() as ipr:
            return [i for i, m in self.macs.items() if _mac_of(ipr, i, missing=None) == m]

    def _index(self, ipr: IPRoute, ifname: str, fresh: bool = False) -> int | None:
        idx = None if fresh else self._idx.get(ifname)
        if idx is None:
            found = ipr.link_lookup(ifname=ifname)
            idx = self._idx[ifname] = found[0] if found else None
        return idx

    def _set(self, ipr: IPRoute, active: bool, only: list[str] | None = None) -> list:
        out = []
        for ifname in (self.macs if only is None else only):
            want = self.mac(ifname, active)
            for fresh in (False, True):
                idx = self._index(ipr, ifname, fresh)
                if idx is None:
                    break                       # the leg vanished: nothing to hold
                try:
                    neigh = [(idx, n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR"), n["state"])
                             for n in ipr.get_neighbours(ifindex=idx, family=socket.AF_INET)
                             if n["state"] & NUD_KEEP and n.get_attr("NDA_LLADDR")]
                    ipr.link("set", index=idx, address=want)
                except NetlinkError as e:
                    if fresh or e.code not in (errno.ENODEV, errno.ENOENT):
                        raise
                    continue                    # recreated under a new index: look it up again
                out += neigh
                break
        return out

    def close(self) -> None:
        """A clean stop: the state file goes (the legs have their own MACs again)."""
        self.state_file.unlink(missing_ok=True)


def _mac_of(ipr: IPRoute, ifname: str, missing: str | None | type = RuntimeError):
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        if missing is RuntimeError:
            raise RuntimeError(f"interface {ifname!r} not found")
        return missing
    return ipr.get_links(found[0])[0].get_attr("IFLA_ADDRESS")
