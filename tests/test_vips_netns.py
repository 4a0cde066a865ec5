"""The takeover's address move on real interfaces, without daemons (root; marker `netns`):
dataplane.vips.VirtualAddresses with dataplane.vmac.VirtualMacs, run inside fw-b of a lab of
its own (prefix `npv<hex>-`, always taken down), as the daemon runs them (prepare, warm in
the thread that takes over, add, announce).

- the prepared path (dataplane.netlink_batch): the virtual MACs on fw-b's legs, the
  gratuitous ARP moves the inside host's ARP entry of the gateway (held by fw-a before) and
  the inside switch's FDB entry of the virtual MAC to fw-b's port, the neighbour entries the
  MAC change flushed are back (a learned one as it was, a permanent one permanent), the
  virtual addresses are on the legs; no slow path taken;
- a leg deleted and made again after ``warm`` (a new ifindex): the prepared requests fail
  with ENODEV, ``add`` falls back to the pyroute2 path and still moves the MAC and adds the
  address, and prepares again (the next takeover is fast again).
"""
import json
import socket

import pytest
from pyroute2 import IPRoute

from netns_lab import Lab, unique_prefix
from dataplane.config import default_vmac
from scripts.lab.topology import (FW_A, FW_B, HOST, HOST_ADDR, IN_SW, INSIDE_GW, INSIDE_LEG,
                                  NAT_ADDR, OUTSIDE_LEG, lab)

pytestmark = pytest.mark.netns

VMAC_IN, VMAC_OUT = default_vmac(1, "inside"), default_vmac(1, "outside")
STATIC_IP, STATIC_MAC = "198.18.1.99", "02:00:00:00:00:99"

TAKEOVER = """
import json, sys
from dataplane.vips import VirtualAddresses
from dataplane.vmac import VirtualMacs
vin, vout, state, gw, nat = sys.argv[1:6]
macs = VirtualMacs([("in0", vin), ("out0", vout)], state)
v = VirtualAddresses([("in0", gw + "/24"), ("out0", nat + "/24")], macs)
v.prepare()
v.warm()
v.add()
v.announce()
print(json.dumps({"timings": v.add_timings, "vips": dict(v.counters), "vmac": dict(macs.counters)}))
"""

RECREATED = """
import json, sys
from pyroute2 import IPRoute
from dataplane.vips import VirtualAddresses
from dataplane.vmac import VirtualMacs
vmac, state = sys.argv[1:3]
def leg():
    with IPRoute() as ipr:
        for name in ("tv0",):
            for i in ipr.link_lookup(ifname=name):
                ipr.link("del", index=i)
        ipr.link("add", ifname="tv0", kind="veth", peer="tv1")
        for name in ("tv0", "tv1"):
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
        return ipr.link_lookup(ifname="tv0")[0]
first = leg()
macs = VirtualMacs([("tv0", vmac)], state)
v = VirtualAddresses([("tv0", "198.18.77.1/24")], macs)
v.prepare()
v.warm()
second = leg()                     # deleted and made again: a new ifindex
v.add()
with IPRoute() as ipr:
    idx = ipr.link_lookup(ifname="tv0")[0]
    mac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
    held = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=2)]
slow = dict(macs.counters)
v.remove()
v.add()                            # prepared again after the slow path: fast
again = dict(macs.counters)
print(json.dumps({"first": first, "second": second, "mac": mac, "held": held, "slow": slow,
                  "again": again, "vips": dict(v.counters)}))
"""


@pytest.fixture
def net(request):
    return Lab.up(lab(unique_prefix("v")), request)


def _ns_mac(net: Lab, node: str, ifname: str) -> str:
    with IPRoute(netns=net.ns(node), flags=0) as ipr:
        return ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0].get_attr("IFLA_ADDRESS")


def _neigh(net: Lab, node: str, ip: str) -> tuple[str | None, int]:
    with IPRoute(netns=net.ns(node), flags=0) as ipr:
        for n in ipr.get_neighbours(dst=ip, family=socket.AF_INET):
            return n.get_attr("NDA_LLADDR"), n["state"]
    return None, 0


def test_prepared_takeover_moves_mac_arp_fdb_and_keeps_neighbours(net):
    ping = net.run(HOST, ["ping", "-c", "1", "-W", "1", INSIDE_GW], timeout=10)
    assert ping.returncode == 0, ping.stdout
    assert _neigh(net, HOST, INSIDE_GW)[0] == _ns_mac(net, FW_A, INSIDE_LEG)
    ping = net.run(FW_B, ["ping", "-c", "1", "-W", "1", HOST_ADDR], timeout=10)
    assert ping.returncode == 0, ping.stdout
    host_mac = _ns_mac(net, HOST, "eth0")
    assert _neigh(net, FW_B, HOST_ADDR)[0] == host_mac
    with IPRoute(netns=net.ns(FW_B), flags=0) as ipr:
        ipr.neigh("replace", dst=STATIC_IP, lladdr=STATIC_MAC, state=0x80,
                  ifindex=ipr.link_lookup(ifname=INSIDE_LEG)[0])

    r = net.python(FW_B, TAKEOVER, VMAC_IN, VMAC_OUT, net.rdir / "fw-b.mac.json", INSIDE_GW,
                   NAT_ADDR, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["vmac"].get("take_slow_path", 0) == 0, out
    assert out["vmac"]["neigh_restored"] >= 2 and not out["vmac"].get("neigh_restore_errors"), out
    assert out["vips"]["added"] == 2 and out["vips"]["garp_sent"] > 0, out

    assert (_ns_mac(net, FW_B, INSIDE_LEG), _ns_mac(net, FW_B, OUTSIDE_LEG)) == (VMAC_IN, VMAC_OUT)
    assert _neigh(net, FW_B, HOST_ADDR)[0] == host_mac              # restored as it was
    assert _neigh(net, FW_B, STATIC_IP) == (STATIC_MAC, 0x80)       # permanent stays permanent
    with IPRoute(netns=net.ns(FW_B), flags=0) as ipr:
        held = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET)}
    assert {INSIDE_GW, NAT_ADDR} <= held
    # the gratuitous ARP: the host's entry of the gateway now names the virtual MAC, and
    # the inside switch forwards that MAC to fw-b's port
    assert _neigh(net, HOST, INSIDE_GW)[0] == VMAC_IN
    with IPRoute(netns=net.ns(IN_SW), flags=0) as ipr:
        port = ipr.link_lookup(ifname=FW_B)[0]
        fdb = {n.get_attr("NDA_LLADDR"): n["ifindex"]
               for n in ipr.get_neighbours(family=socket.AF_BRIDGE)}
    assert fdb.get(VMAC_IN) == port, fdb


def test_a_leg_made_again_after_warm_takes_the_slow_path_once(net):
    vmac = "02:4e:50:09:00:01"
    r = net.python(FW_B, RECREATED, vmac, net.rdir / "tv.mac.json", timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["first"] != out["second"]
    assert out["mac"] == vmac and "198.18.77.1" in out["held"], out
    assert out["slow"]["take_slow_path"] == 1, out
    assert out["again"]["take_slow_path"] == 1 and out["again"]["taken"] == 2, out
    assert out["vips"]["added"] == 2, out
