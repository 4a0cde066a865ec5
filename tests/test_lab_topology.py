"""The lab's described topology (scripts/lab/topology.py), checked as data: no root needed."""
import ipaddress

import pytest

from scripts.lab.topology import FW_A, LAB_RANGE, UNITS, lab


def test_names_and_addresses():
    topo = lab("np-")
    assert topo.ns("fw-a") == "np-fw-a"
    assert all(ns.startswith("np-") for ns in topo.namespaces())
    assert len(topo.namespaces()) == 7
    rng = ipaddress.ip_network(LAB_RANGE)
    cidrs = [c for link in topo.links for c in link.addrs] + [v.addr for v in topo.virtuals]
    assert all(ipaddress.ip_interface(c).ip in rng for c in cidrs)
    assert len({ipaddress.ip_interface(c).ip for c in cidrs}) == len(cidrs)   # no address twice
    for unit in UNITS:                     # both units have the same three legs
        legs = sorted(link.leg for link in topo.links if link.node == unit)
        assert legs == ["fo0", "in0", "out0"]
    assert topo.active == FW_A


def test_failover_leg_is_on_a_switch():
    topo = lab("np-")
    fo = [link for link in topo.links if link.leg == "fo0"]
    assert {link.switch for link in fo} == {"fo-sw"}
    assert topo.node("fo-sw").role == "switch"


@pytest.mark.parametrize("bad", ["", "-np", "a/b", "a b", "x" * 40, ".."])
def test_bad_prefix_refused(bad):
    with pytest.raises(ValueError):
        lab(bad)


def test_extended_adds_nodes_and_is_checked():
    from scripts.lab.topology import IN_SW, Link, Node, Route

    topo = lab("np-")
    more = topo.extended(nodes=(Node("in-srv", "host"), Node("rtr", "router")),
                         links=(Link("in-srv", "eth0", IN_SW, ("198.18.1.20/24",)),
                                Link("rtr", "eth0", IN_SW, ("198.18.1.30/24",))),
                         routes=(Route("in-srv", "default", "198.18.1.1"),))
    assert more.namespaces() == topo.namespaces() + ["np-in-srv", "np-rtr"]
    assert len(topo.namespaces()) == 7                     # the lab itself is unchanged
    with pytest.raises(AssertionError):                    # a leg twice
        topo.extended(links=(Link("in-host", "eth0", IN_SW, ()),))
    with pytest.raises(AssertionError):                    # a role nobody builds
        topo.extended(nodes=(Node("x", "bridge"),))
    with pytest.raises(KeyError):                          # a link to a node not there
        topo.extended(links=(Link("nowhere", "eth0", IN_SW, ()),))


def test_unit_config_is_a_valid_config_with_and_without_batch(tmp_path):
    from dataplane.config import load
    from scripts.lab.unit import unit_config
    topo = lab("npt-")
    for batch, want in ((None, 64), (256, 256)):
        path = tmp_path / "fw-a.toml"
        path.write_text(unit_config(topo, "fw-a", "c", batch=batch))
        cfg = load(str(path))
        assert cfg.feed.kind == "c" and cfg.feed.batch == want
