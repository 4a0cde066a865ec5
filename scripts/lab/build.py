"""Builds a described Topology (topology.py) with pyroute2, and removes it again.

    up(topo)          namespaces, bridges, veth pairs, addresses, routes, sysctls
    up_node(topo, n)  power_on after the old switch ports are gone (the bench-failover rejoin)
    down(prefix)      removes exactly the lab's namespaces under that prefix, idempotently,
                      also after a crash; returns the names it removed
    power_cut(names)  what down does to namespaces, usable on one unit (a failover kill):
                      SIGSTOP every process in them, SIGKILL them, set every link down,
                      delete the namespaces. In that order: a namespace being deleted keeps
                      forwarding for 20-40 ms after its rules are gone (design.md), and a
                      process that is only sent SIGTERM may say a graceful goodbye.
    power_on(topo, unit)
                      a unit cut by power_cut back as up built it (namespace, legs to the
                      switches, addresses, routes, ip_forward), to start its daemon again

What the lab made is recorded in /run/natpair-lab/<prefix>.json as it is made; files that belong
to a running lab (unit configs, logs, served files) live in /run/natpair-lab/<prefix>/. down()
removes the recorded namespaces and the ones the topology names under that prefix (so a crash
before the record was written is covered), and nothing else. No `ip` is ever run.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

from pyroute2 import IPRoute, netns

from . import nsexec
from .topology import BRIDGE, FORWARDING_ROLES, Topology, lab

STATE_DIR = Path("/run/natpair-lab")
NETNS_DIR = Path("/run/netns")


class LabError(RuntimeError):
    pass


def state_file(prefix: str) -> Path:
    return STATE_DIR / f"{prefix}.json"


def run_dir(prefix: str) -> Path:
    """Where a running lab keeps its files (configs, logs, served files)."""
    return STATE_DIR / prefix


def _record(prefix: str, made: list[str]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = state_file(prefix).with_suffix(".tmp")
    tmp.write_text(json.dumps({"prefix": prefix, "namespaces": made}, indent=1) + "\n")
    tmp.replace(state_file(prefix))


def _recorded(prefix: str) -> list[str]:
    try:
        data = json.loads(state_file(prefix).read_text())
    except FileNotFoundError:
        return []
    except ValueError:
        return []                         # a torn record: the topology's names still cover it
    return [n for n in data.get("namespaces", []) if isinstance(n, str) and n.startswith(prefix)]


def existing_namespaces() -> set[str]:
    return set(netns.listnetns())


# ---- up ------------------------------------------------------------------------------------

def up(topo: Topology, log=print) -> None:
    """Build `topo`. Refuses if any of its namespaces exists; on failure removes what it made."""
    there = sorted(set(topo.namespaces()) & existing_namespaces())
    if there:
        raise LabError(f"namespaces already there: {', '.join(there)} (take that lab down first)")
    made: list[str] = []
    try:
        for node in topo.nodes:
            _make_namespace(topo.ns(node.name))
            made.append(topo.ns(node.name))
            _record(topo.prefix, made)
        for sw in topo.of_role("switch"):
            with IPRoute(netns=topo.ns(sw.name), flags=0) as ipr:
                ipr.link("add", ifname=BRIDGE, kind="bridge")
                ipr.link("set", index=ipr.link_lookup(ifname=BRIDGE)[0], state="up")
        for link in topo.links:
            _make_link(topo, link)
        with IPRoute(netns=topo.ns(topo.active), flags=0) as ipr:
            for v in topo.virtuals:
                _addr_add(ipr, ipr.link_lookup(ifname=v.leg)[0], v.addr)
        for r in topo.routes:
            _make_route(topo, r)
        for node in topo.nodes:
            if node.role in FORWARDING_ROLES:
                nsexec.sysctl(topo.ns(node.name), "net.ipv4.ip_forward", 1)
    except BaseException:
        log(f"lab: building {topo.prefix}* failed; removing what was made")
        down(topo.prefix, log=log)
        raise
    log(f"lab: built {len(made)} namespaces: {' '.join(made)}")


def power_on(topo: Topology, name: str, log=print) -> None:
    """Bring unit `name` back after a power_cut, as `up` built it: its namespace, its legs
    (veth pairs to the switches: their switch ports went with the namespace), addresses,
    routes and ip_forward. Not the virtual addresses: the daemon takes them when it becomes
    active. Refuses if the namespace is there; on failure removes what it made of it."""
    node = topo.node(name)
    if node.role != "unit":
        raise LabError(f"{name!r} is not a unit")
    ns = topo.ns(name)
    if ns in existing_namespaces():
        raise LabError(f"{ns} is there: power_cut it first")
    t0 = time.monotonic()
    _make_namespace(ns)
    recorded = _recorded(topo.prefix)
    if ns not in recorded:
        _record(topo.prefix, recorded + [ns])
    try:
        for link in topo.links:
            if link.node == name:
                _make_link(topo, link)
        for r in topo.routes:
            if r.node == name:
                _make_route(topo, r)
        nsexec.sysctl(ns, "net.ipv4.ip_forward", 1)
    except BaseException:
        log(f"lab: powering {ns} on failed; cutting it again")
        power_cut([ns], log=log)
        raise
    log(f"lab: {ns} powered on again in {(time.monotonic() - t0) * 1000:.0f} ms: "
        f"{' '.join(link.leg for link in topo.links if link.node == name)}")


def _make_namespace(name: str) -> None:
    netns.create(name)
    # An IPv4 lab: no IPv6 addresses, router solicitations or DAD on any leg.
    nsexec.sysctl(name, "net.ipv6.conf.default.disable_ipv6", 1)
    nsexec.sysctl(name, "net.ipv6.conf.all.disable_ipv6", 1)
    with IPRoute(netns=name, flags=0) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def _make_link(topo: Topology, link) -> None:
    """The veth pair of `link`: its port on the switch's bridge, its leg with its addresses."""
    with IPRoute(netns=topo.ns(link.switch), flags=0) as ipr:
        stale = ipr.link_lookup(ifname=link.port)
        if stale:                         # a port left over (its peer went another way)
            ipr.link("del", index=stale[0])
        ipr.link("add", ifname=link.port, kind="veth",
                 peer={"ifname": link.leg, "net_ns_fd": topo.ns(link.node)})
        port = ipr.link_lookup(ifname=link.port)[0]
        ipr.link("set", index=port, mtu=link.mtu)
        ipr.link("set", index=port, master=ipr.link_lookup(ifname=BRIDGE)[0])
        ipr.link("set", index=port, state="up")
    with IPRoute(netns=topo.ns(link.node), flags=0) as ipr:
        leg = ipr.link_lookup(ifname=link.leg)[0]
        ipr.link("set", index=leg, mtu=link.mtu)
        for cidr in link.addrs:
            _addr_add(ipr, leg, cidr)
        ipr.link("set", index=leg, state="up")


def _make_route(topo: Topology, r) -> None:
    with IPRoute(netns=topo.ns(r.node), flags=0) as ipr:
        ipr.route("add", dst="0.0.0.0/0" if r.dst == "default" else r.dst, gateway=r.gateway)


def _wait_ports_gone(topo: Topology, node: str, wait_s: float) -> None:
    """A deleted namespace's veth ends go with it, later: its cleanup runs in the kernel's
    background (seconds with a big conntrack table). Wait until the switch ports are gone."""
    deadline = time.monotonic() + wait_s
    for link in topo.links:
        if link.node != node:
            continue
        with IPRoute(netns=topo.ns(link.switch), flags=0) as ipr:
            while ipr.link_lookup(ifname=link.port):
                if time.monotonic() > deadline:
                    raise LabError(f"{topo.ns(link.switch)}: port {link.port} still there "
                                   f"{wait_s:g} s after {topo.ns(node)} was deleted")
                time.sleep(0.05)


def up_node(topo: Topology, node: str, log=print, wait_s: float = 60.0) -> None:
    """power_on, after waiting (up to `wait_s`) for the old namespace's switch ports to go
    (the bench's big tables make the kernel's cleanup slow)."""
    name = topo.ns(node)
    if name in existing_namespaces():
        raise LabError(f"namespace {name} is still there")
    _wait_ports_gone(topo, node, wait_s)
    power_on(topo, node, log=log)


def _addr_add(ipr: IPRoute, index: int, cidr: str) -> None:
    address, prefixlen = cidr.split("/")
    ipr.addr("add", index=index, address=address, prefixlen=int(prefixlen))


# ---- down ----------------------------------------------------------------------------------

def pids_in(name: str) -> list[int]:
    """Every process with at least one thread in namespace `name` (same nsfs inode as
    /run/netns/<name>), except this one."""
    try:
        st = os.stat(NETNS_DIR / name)
    except FileNotFoundError:
        return []
    key = (st.st_dev, st.st_ino)
    me, found = os.getpid(), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            tids = os.listdir(f"/proc/{entry.name}/task")
        except OSError:
            continue                      # gone meanwhile
        for tid in tids:
            try:
                t = os.stat(f"/proc/{entry.name}/task/{tid}/ns/net")
            except OSError:
                continue                  # gone, or a zombie (no namespaces any more)
            if (t.st_dev, t.st_ino) == key:
                found.append(int(entry.name))
                break
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _links_down(name: str, ipr: IPRoute | None, log) -> None:
    try:
        if ipr is None:
            with IPRoute(netns=name, flags=0) as own:
                _links_down(name, own, log)
            return
        for link in ipr.get_links():
            ipr.link("set", index=link["index"], state="down")
    except OSError as e:
        log(f"lab: {name}: could not set its links down: {e}")


def power_cut(names: list[str], log=print, wait_s: float = 5.0,
              links_first: bool = False) -> None:
    """Stop, kill, unplug and delete the namespaces `names` (those that exist).
    `links_first`: unplug right after the SIGSTOP, before the SIGKILL: the kernel's own
    forwarding (a kernel NAT, not natpair, whose data path is its stopped process) stops
    then too, and not only after every process is reaped, as with a real power cut."""
    names = [n for n in names if (NETNS_DIR / n).exists()]
    iprs = {}
    if links_first:                       # opened beforehand: it forks a helper in the namespace
        for n in names:
            try:
                iprs[n] = IPRoute(netns=n, flags=0)
            except OSError as e:
                log(f"lab: {n}: no netlink socket: {e}")
    stopped: set[int] = set()
    try:
        for _ in range(10):               # stop until no new process appears (forks in flight)
            new = {p for n in names for p in pids_in(n)} - stopped
            if not new:
                break
            _signal_all(sorted(new), signal.SIGSTOP)
            stopped |= new
            while iprs:
                n, ipr = iprs.popitem()
                _links_down(n, ipr, log)
                ipr.close()
    finally:
        for ipr in iprs.values():
            ipr.close()                   # it would keep the namespace alive
    _signal_all(sorted(stopped), signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    while True:
        left = {p for n in names for p in pids_in(n)}
        if not left:
            break
        if time.monotonic() > deadline:
            log(f"lab: processes still in the namespaces after SIGKILL: {sorted(left)}")
            break
        _signal_all(sorted(left), signal.SIGKILL)
        time.sleep(0.02)
    if stopped:
        log(f"lab: killed {len(stopped)} processes: {' '.join(map(str, sorted(stopped)))}")
    if not links_first:
        for name in names:
            _links_down(name, None, log)
    for name in names:
        try:
            netns.remove(name)
        except FileNotFoundError:
            pass


def _removal_order(topo: Topology, names: set[str]) -> list[str]:
    # Units first (they are what a power cut is about), then hosts and routers, then switches; a
    # recorded name that lab() does not know (an older layout, a test's extra node) comes first too.
    rank = {"unit": 0, "host": 1, "router": 1, "switch": 2}
    known = {topo.ns(n.name): rank[n.role] for n in topo.nodes}
    return sorted(names, key=lambda n: (known.get(n, 0), n))


def down(prefix: str, log=print) -> list[str]:
    """Remove the lab under `prefix`: its namespaces (power cut), its record and its files.
    A second call finds nothing and does nothing. Returns the namespaces removed."""
    topo = lab(prefix)                    # also validates the prefix
    ours = (set(_recorded(prefix)) | set(topo.namespaces())) & existing_namespaces()
    order = _removal_order(topo, ours)
    if order:
        power_cut(order, log=log)
        log(f"lab: removed {len(order)} namespaces: {' '.join(order)}")
    state_file(prefix).unlink(missing_ok=True)
    shutil.rmtree(run_dir(prefix), ignore_errors=True)
    return order
