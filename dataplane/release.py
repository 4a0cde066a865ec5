"""What a dead daemon leaves behind, given back: the virtual addresses and MACs of its legs.

Owns the release plan (``plan``: which leg gets which own MAC back, which virtual addresses
come off) and ``release``, run by the daemon's beat process (replication.beat) when the
daemon died without stopping (SIGKILL, a crash): the peer takes over after its hold time,
and a dead unit that still held the virtual MAC and addresses would answer ARP for them and
draw the switch's traffic into NFQUEUE rules nobody reads. A clean stop gives them back
itself (dataplane.daemon); a power cut takes them down with the links. pyroute2 is imported
only when a release runs (never on the beat's start-up or its loop).
"""
from __future__ import annotations

import errno


def plan(vips) -> dict | None:
    """The release plan of a dataplane.vips.VirtualAddresses (after ``prepare``), as JSON."""
    macs = vips.macs
    legs = {} if macs is None else {ifname: [macs.own[ifname], vmac]
                                    for ifname, vmac in macs.macs.items() if ifname in macs.own}
    if not vips.vips and not legs:
        return None
    return {"vips": [[ifname, cidr] for ifname, cidr in vips.vips], "macs": legs}


def release(p: dict) -> list[str]:
    """The virtual addresses off, then each leg's own MAC back; what was done, as lines."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    done = []
    with IPRoute() as ipr:
        for ifname, cidr in p.get("vips", ()):
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                continue
            addr, plen = cidr.split("/")
            try:
                ipr.addr("del", index=found[0], address=addr, prefixlen=int(plen))
                done.append(f"removed {cidr} from {ifname}")
            except NetlinkError as e:
                if e.code not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                    raise
        for ifname, (mac, vmac) in p.get("macs", {}).items():
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                continue
            link = ipr.get_links(found[0])[0]
            if link.get_attr("IFLA_ADDRESS") == vmac:     # only the virtual one is ours to undo
                ipr.link("set", index=found[0], address=mac)
                done.append(f"{ifname} back to its own MAC {mac}")
    return done
