"""The lab (scripts/lab/), built for real: every namespace, leg, bridge port, address and route
is there as topology.py describes it; in-host reaches out-srv through fw-a's natpair daemon
(unit.start_unit); down()
removes exactly the lab's namespaces, kills what runs in them, and a second down() does nothing.

Each test builds the lab under its own prefix `npl<random>-`, so it coexists with a running
`make lab` (np-) and with other tests, and always takes it down. Traffic only goes to the lab's
own addresses (198.18.0.0/15).
"""
import ipaddress
import signal

import pytest
from pyroute2 import IPRoute, netns

from netns_lab import quiet, unique_prefix
from scripts.lab import build, nsexec, topology
from scripts.lab.topology import (BRIDGE, FW_A, HOST, INSIDE_GW, SERVER, SERVER_ADDR,
                                  lab)
from scripts.lab.unit import start_unit

pytestmark = pytest.mark.netns

IFF_UP = 0x1
LAB_RANGE = ipaddress.ip_network(topology.LAB_RANGE)


@pytest.fixture
def prefix(request):
    p = unique_prefix("l")
    request.addfinalizer(lambda: build.down(p, log=quiet))     # even if up() or a test fails
    return p


@pytest.fixture
def built(prefix):
    topo = lab(prefix)
    build.up(topo, log=quiet)
    return topo


def _links(ns):
    with IPRoute(netns=ns, flags=0) as ipr:
        return {ln.get("ifname"): ln for ln in ipr.get_links()}


def _addrs(ns, ifname):
    with IPRoute(netns=ns, flags=0) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        return {f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=index)}


def _routes(ns):
    with IPRoute(netns=ns, flags=0) as ipr:
        return [(r.get("RTA_DST") or "default", r["dst_len"], r.get("RTA_GATEWAY"))
                for r in ipr.get_routes(table=254)]


def test_built_as_described(built):
    topo = built
    assert set(topo.namespaces()) <= build.existing_namespaces()
    for sw in topo.of_role("switch"):
        links = _links(topo.ns(sw.name))
        bridge = links[BRIDGE]
        assert bridge["flags"] & IFF_UP
        ports = {ln.port for ln in topo.links if ln.switch == sw.name}
        assert ports <= set(links)
        for port in ports:
            assert links[port].get("IFLA_MASTER") == bridge["index"], (sw.name, port)
            assert links[port]["flags"] & IFF_UP, (sw.name, port)
    for link in topo.links:
        ns = topo.ns(link.node)
        leg = _links(ns)[link.leg]
        assert leg["flags"] & IFF_UP, (ns, link.leg)
        got = _addrs(ns, link.leg)
        assert set(link.addrs) <= got, (ns, link.leg, got)
        for cidr in got:
            assert ipaddress.ip_interface(cidr).ip in LAB_RANGE, cidr
    for v in topo.virtuals:                    # on the active unit only, for now fw-a
        assert v.addr in _addrs(topo.ns(topo.active), v.leg)
        assert v.addr not in _addrs(topo.ns(topology.FW_B), v.leg)
    assert ("default", 0, INSIDE_GW) in _routes(topo.ns(HOST))
    # The server knows its own /24 only: without NAT it could not answer the inside.
    assert [(d, n) for d, n, _ in _routes(topo.ns(SERVER))] == [("198.19.1.0", 24)]
    for unit in topo.of_role("unit"):
        r = nsexec.run(topo.ns(unit.name), ["cat", "/proc/sys/net/ipv4/ip_forward"], timeout=5)
        assert r.stdout.strip() == "1"


def test_in_host_pings_out_srv_through_fw_a(built):
    topo = built
    start_unit(topo, FW_A, log=quiet)
    r = nsexec.run(topo.ns(HOST), ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", SERVER_ADDR],
                   timeout=15)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0% packet loss" in r.stdout


def test_down_removes_exactly_the_lab(built, request):
    topo = built
    # Decoys: a namespace under the same prefix that is not a lab node, and a lab node's name
    # under a neighbouring prefix. down() must leave both alone.
    decoys = [topo.prefix + "extra", topo.prefix[:-1] + "x-" + HOST]
    for d in decoys:
        netns.create(d)
        request.addfinalizer(lambda d=d: netns.remove(d) if d in netns.listnetns() else None)
    sleeper = nsexec.popen(topo.ns(SERVER), ["sleep", "60"])
    assert sleeper.pid in build.pids_in(topo.ns(SERVER))

    removed = build.down(topo.prefix, log=quiet)

    assert sorted(removed) == sorted(topo.namespaces())
    left = build.existing_namespaces()
    assert not set(topo.namespaces()) & left
    assert set(decoys) <= left
    assert sleeper.wait(timeout=5) == -signal.SIGKILL
    assert not build.state_file(topo.prefix).exists()
    assert not build.run_dir(topo.prefix).exists()
    assert build.down(topo.prefix, log=quiet) == []          # idempotent


def test_down_after_a_crash_without_record(built):
    """A lab whose record is lost (crash while building) is still removed by its names."""
    topo = built
    build.state_file(topo.prefix).unlink()
    assert sorted(build.down(topo.prefix, log=quiet)) == sorted(topo.namespaces())
    assert not set(topo.namespaces()) & build.existing_namespaces()


def test_up_refuses_a_lab_that_is_there(built):
    with pytest.raises(build.LabError):
        build.up(lab(built.prefix), log=quiet)
    assert set(built.namespaces()) <= build.existing_namespaces()
