"""The lab's topology, described: which nodes exist, which leg of a node goes to which switch,
and which addresses and routes it has. Pure data, no side effects: build.py builds it.

Picture (every node is a network namespace; every line is a veth pair from a node's leg to a
port of the bridge br0 in a switch namespace):

    in-host:eth0 --- in-sw ---+--- in0:fw-a:out0 ---+--- out-sw --- eth0:out-srv
                              |         fo0         |
                              |          |          |
                              |        fo-sw        |
                              |          |          |
                              +--- in0:fw-b:out0 ---+
                                        fo0

Names (fixed; this is the only place they are written):

    namespace     <prefix><node>, prefix "np-" for `make lab`: np-in-host, np-fw-a, ...
                  (a test run uses its own prefix, so a lab and a test run coexist)
    nodes         in-host (inside host)   in-sw (inside switch)    fw-a, fw-b (the units)
                  fo-sw (failover switch) out-sw (outside switch)  out-srv (outside server)
    bridge        br0 in every switch namespace
    unit legs     in0 (inside), out0 (outside), fo0 (failover), the same in fw-a and fw-b
    host legs     eth0 in in-host and in out-srv
    switch ports  named after the node at the other end: np-in-sw holds in-host, fw-a, fw-b

Why a failover switch and not one veth pair between the units: deleting the dead unit's
namespace would delete the pair's other end, the survivor's failover leg, too (design.md).

Addresses, from 198.18.0.0/15 only (RFC 2544 benchmarking range, never the machine's own):

    inside net    198.18.1.0/24    in-host eth0 .10    fw-a in0 .2     fw-b in0 .3
                                   .1  virtual: the inside gateway, held by the active unit
    outside net   198.19.1.0/24    out-srv eth0 .10    fw-a out0 .2    fw-b out0 .3
                                   .1  virtual: the NAT pool address, held by the active unit
    failover net  198.18.255.0/29  fw-a fo0 .1         fw-b fo0 .2
                  MTU 9000 (jumbo) on the failover legs and their switch ports: the
                  replication fills a datagram up to the failover leg's MTU, so a bulk
                  sync carries 85 states per datagram (and per HMAC) instead of 12 and
                  never relies on IP fragments. Every other link: MTU 1500.

Roles: "host", "switch", "unit" (a natpair unit), "router" (a plain forwarding node, no firewall:
not in the lab itself; tests add one with `Topology.extended` to have a hop beyond the unit).

Routes: in-host has a default route via 198.18.1.1. out-srv has its /24 only and no route to
the inside: with NAT it only ever talks to 198.19.1.1. The units have their connected nets.
The virtual addresses start on `Topology.active` (fw-a); failover moves them.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

DEFAULT_PREFIX = "np-"

INSIDE_NET = "198.18.1.0/24"
OUTSIDE_NET = "198.19.1.0/24"
FAILOVER_NET = "198.18.255.0/29"
FAILOVER_MTU = 9000
LAB_RANGE = "198.18.0.0/15"

INSIDE_GW = "198.18.1.1"        # virtual, on the active unit's in0
NAT_ADDR = "198.19.1.1"         # virtual, on the active unit's out0: the NAT pool
HOST_ADDR = "198.18.1.10"       # in-host eth0
SERVER_ADDR = "198.19.1.10"     # out-srv eth0

BRIDGE = "br0"
HOST, SERVER = "in-host", "out-srv"
IN_SW, FO_SW, OUT_SW = "in-sw", "fo-sw", "out-sw"
FW_A, FW_B = "fw-a", "fw-b"
UNITS = (FW_A, FW_B)
INSIDE_LEG, OUTSIDE_LEG, FAILOVER_LEG = "in0", "out0", "fo0"
HOST_LEG = "eth0"
ROLES = ("host", "switch", "unit", "router")
FORWARDING_ROLES = ("unit", "router")

_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
IFNAMSIZ = 15


@dataclass(frozen=True)
class Node:
    name: str
    role: str                   # "host", "switch", "unit" or "router"


@dataclass(frozen=True)
class Link:
    """A veth pair: `leg` in namespace `node`, its peer `port` in `switch`, enslaved to br0."""
    node: str
    leg: str
    switch: str
    addrs: tuple[str, ...]      # "a.b.c.d/len" on the leg
    mtu: int = 1500             # both ends of the veth pair

    @property
    def port(self) -> str:
        return self.node


@dataclass(frozen=True)
class Route:
    node: str
    dst: str                    # "default" or "a.b.c.d/len"
    gateway: str


@dataclass(frozen=True)
class Virtual:
    """An address held by whichever unit is active, on that unit's `leg`."""
    leg: str
    addr: str


@dataclass(frozen=True)
class Topology:
    prefix: str
    nodes: tuple[Node, ...]
    links: tuple[Link, ...]
    routes: tuple[Route, ...]
    virtuals: tuple[Virtual, ...]
    active: str                 # the unit that holds the virtual addresses when built

    def extended(self, nodes: tuple[Node, ...] = (), links: tuple[Link, ...] = (),
                 routes: tuple[Route, ...] = ()) -> "Topology":
        """This topology with more nodes, links and routes (a test's extra hosts or a router
        beyond the unit), checked as lab() checks its own."""
        topo = dataclasses.replace(self, nodes=self.nodes + tuple(nodes),
                                   links=self.links + tuple(links),
                                   routes=self.routes + tuple(routes))
        _check(topo)
        return topo

    def ns(self, node: str) -> str:
        """The namespace of a node: <prefix><node>."""
        self.node(node)
        return self.prefix + node

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} in the lab")

    def namespaces(self) -> list[str]:
        return [self.prefix + n.name for n in self.nodes]

    def of_role(self, role: str) -> list[Node]:
        return [n for n in self.nodes if n.role == role]

    def links_of(self, node: str) -> list[Link]:
        return [link for link in self.links if link.node == node or link.switch == node]

    def link(self, node: str, leg: str) -> Link:
        for link in self.links:
            if link.node == node and link.leg == leg:
                return link
        raise KeyError(f"no leg {leg!r} on {node!r}")


def _check_prefix(prefix: str) -> None:
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"lab prefix {prefix!r}: 1-32 characters of [A-Za-z0-9_.-], "
                         "starting with a letter or digit")


def lab(prefix: str = DEFAULT_PREFIX) -> Topology:
    """The natpair lab as described in this module's docstring, under `prefix`."""
    _check_prefix(prefix)
    nodes = (
        Node(HOST, "host"), Node(IN_SW, "switch"),
        Node(FW_A, "unit"), Node(FW_B, "unit"), Node(FO_SW, "switch"),
        Node(OUT_SW, "switch"), Node(SERVER, "host"),
    )
    links = (
        Link(HOST, HOST_LEG, IN_SW, (f"{HOST_ADDR}/24",)),
        Link(FW_A, INSIDE_LEG, IN_SW, ("198.18.1.2/24",)),
        Link(FW_B, INSIDE_LEG, IN_SW, ("198.18.1.3/24",)),
        Link(FW_A, OUTSIDE_LEG, OUT_SW, ("198.19.1.2/24",)),
        Link(FW_B, OUTSIDE_LEG, OUT_SW, ("198.19.1.3/24",)),
        Link(FW_A, FAILOVER_LEG, FO_SW, ("198.18.255.1/29",), FAILOVER_MTU),
        Link(FW_B, FAILOVER_LEG, FO_SW, ("198.18.255.2/29",), FAILOVER_MTU),
        Link(SERVER, HOST_LEG, OUT_SW, (f"{SERVER_ADDR}/24",)),
    )
    routes = (Route(HOST, "default", INSIDE_GW),)
    virtuals = (Virtual(INSIDE_LEG, f"{INSIDE_GW}/24"), Virtual(OUTSIDE_LEG, f"{NAT_ADDR}/24"))
    topo = Topology(prefix, nodes, links, routes, virtuals, active=FW_A)
    _check(topo)
    return topo


def _check(topo: Topology) -> None:
    """The description is consistent: names fit, every link joins a node to a switch."""
    names = [n.name for n in topo.nodes]
    assert len(set(names)) == len(names), names
    assert all(n.role in ROLES for n in topo.nodes), topo.nodes
    for link in topo.links:
        assert topo.node(link.switch).role == "switch", link
        assert topo.node(link.node).role != "switch", link
        assert len(link.leg) <= IFNAMSIZ and len(link.port) <= IFNAMSIZ, link
    legs = [(link.node, link.leg) for link in topo.links]
    assert len(set(legs)) == len(legs), legs
    ports = [(link.switch, link.port) for link in topo.links]
    assert len(set(ports)) == len(ports), ports
    for route in topo.routes:
        topo.node(route.node)
    assert topo.node(topo.active).role == "unit"
