"""The neighbour (ARP) table of the data legs is replicated to the standby (root; marker
`netns`). Issue 4, section 3.

The lab's topology under a unique prefix `npn<hex>-` (always taken down). fw-a starts alone
(active) and learns the inside host and the outside server by a ping through it; fw-b then
joins: its bulk sync carries those entries, installed on fw-b's legs with the same MACs as
NUD_STALE (usable at a takeover, revalidated by the kernel). Then live: an entry appearing on
fw-a's inside leg, its MAC changing, and its deletion are followed on fw-b; an entry for
fw-b's own address is not installed there.
"""
import socket
import time

import pytest
from pyroute2 import IPRoute

from netns_lab import Lab, quiet, unique_prefix
from replication import neighbours as nb
from scripts.lab.topology import (FW_A, FW_B, HOST, HOST_ADDR, HOST_LEG, INSIDE_GW, INSIDE_LEG,
                                  OUTSIDE_LEG, SERVER, SERVER_ADDR, lab)
from scripts.lab.unit import start_unit, wait_role
from dataplane.daemon import request as control_request

pytestmark = pytest.mark.netns

FAKE = "198.18.1.77"                     # no such host: fw-b can only have it from fw-a
FAKE_MAC, FAKE_MAC2 = "02:00:5e:10:01:77", "02:00:5e:10:02:77"
FW_B_INSIDE = "198.18.1.3"
TIMERS = {"poll_ms": 20, "hold_ms": 300}     # not about detection: no false failover under load


def neighbours(lab_: Lab, node: str, leg: str) -> dict[str, tuple[str, int]]:
    with IPRoute(netns=lab_.ns(node), flags=0) as ipr:
        index = ipr.link_lookup(ifname=leg)[0]
        return {m.get_attr("NDA_DST"): (m.get_attr("NDA_LLADDR"), m["state"])
                for m in ipr.get_neighbours(ifindex=index, family=socket.AF_INET)}


def mac_of(lab_: Lab, node: str, leg: str) -> str:
    with IPRoute(netns=lab_.ns(node), flags=0) as ipr:
        return ipr.get_links(ipr.link_lookup(ifname=leg)[0])[0].get_attr("IFLA_ADDRESS")


def neigh(lab_: Lab, node: str, leg: str, op: str, address: str, mac: str | None = None) -> None:
    with IPRoute(netns=lab_.ns(node), flags=0) as ipr:
        index = ipr.link_lookup(ifname=leg)[0]
        if op == "del":
            ipr.neigh("del", dst=address, ifindex=index)
        else:
            ipr.neigh(op, dst=address, lladdr=mac, ifindex=index, state=nb.NUD_REACHABLE)


def wait_for(what, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while True:
        got = what()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def test_the_standby_gets_the_active_s_neighbours_with_the_same_macs(request):
    lab_ = Lab.up(lab(unique_prefix("n")), request)
    topo = lab_.topo
    a = start_unit(topo, FW_A, log=quiet, failover=True, **TIMERS)
    wait_role(topo, FW_A, ("ACTIVE",))
    r = lab_.run(HOST, ["ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", SERVER_ADDR], timeout=10)
    assert r.returncode == 0, r.stdout + r.stderr
    host_mac, server_mac = mac_of(lab_, HOST, HOST_LEG), mac_of(lab_, SERVER, HOST_LEG)
    assert neighbours(lab_, FW_A, INSIDE_LEG)[HOST_ADDR][0] == host_mac
    assert neighbours(lab_, FW_A, OUTSIDE_LEG)[SERVER_ADDR][0] == server_mac
    assert HOST_ADDR not in neighbours(lab_, FW_B, INSIDE_LEG)

    # the bulk sync of a joining standby carries them
    start_unit(topo, FW_B, log=quiet, failover=True, **TIMERS)
    wait_role(topo, FW_B, ("STANDBY_READY",))
    inside = wait_for(lambda: neighbours(lab_, FW_B, INSIDE_LEG).get(HOST_ADDR))
    outside = wait_for(lambda: neighbours(lab_, FW_B, OUTSIDE_LEG).get(SERVER_ADDR))
    assert inside == (host_mac, nb.NUD_STALE), inside
    assert outside == (server_mac, nb.NUD_STALE), outside

    # live: a new entry, its MAC moving, its deletion; fw-b's own address stays out
    neigh(lab_, FW_A, INSIDE_LEG, "add", FAKE, FAKE_MAC)
    # fw-b's own address (fw-a already knows it: its data-path hellos go there)
    neigh(lab_, FW_A, INSIDE_LEG, "replace", FW_B_INSIDE, mac_of(lab_, FW_B, INSIDE_LEG))
    assert wait_for(lambda: neighbours(lab_, FW_B, INSIDE_LEG).get(FAKE)) == (FAKE_MAC, nb.NUD_STALE)
    neigh(lab_, FW_A, INSIDE_LEG, "replace", FAKE, FAKE_MAC2)
    assert wait_for(lambda: neighbours(lab_, FW_B, INSIDE_LEG).get(FAKE, ("",))[0] == FAKE_MAC2)
    neigh(lab_, FW_A, INSIDE_LEG, "del", FAKE)
    assert wait_for(lambda: FAKE not in neighbours(lab_, FW_B, INSIDE_LEG))
    b_counters = control_request(str(lab_.rdir / f"{FW_B}.sock"), "counters")["replication"]
    a_counters = control_request(str(a.socket), "counters")["replication"]
    assert FW_B_INSIDE not in neighbours(lab_, FW_B, INSIDE_LEG)
    assert b_counters["neigh_install_skipped_own"] >= 1, b_counters
    assert INSIDE_GW not in neighbours(lab_, FW_B, INSIDE_LEG)
    assert b_counters["neigh_installed"] >= 4 and b_counters["neigh_removed"] >= 1, b_counters
    assert a_counters["neigh_sent"] >= 3 and b_counters["bad_record"] == 0, a_counters
    status = control_request(str(a.socket), "status")
    # in-host, out-srv, and fw-b's own address on each leg (the data-path hellos go there;
    # only fw-b knows it is its own)
    assert status["neighbours"] == {"inside": 2, "outside": 2}, status
