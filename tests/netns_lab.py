"""What the netns tests share: a lab built with the lab builder (scripts/lab/build.py) under a
unique prefix and always taken down, the natpair daemon started in it, and the small programs
the tests run inside its namespaces.

    Lab.up(topo, request)   builds `topo`; the finalizer that takes it down is registered first,
                            so a failing build or test still removes every namespace
    Unit(lab, feed, ...)    fw-a's natpair daemon (scripts/lab/unit.start_unit), its control
                            socket, its log; stop() is a SIGTERM and returns the exit status
    unit_topology(prefix)   the lab (scripts/lab/topology.py) plus the nodes below

Nodes added to the lab for the unit tests (names and addresses written only here):

    in-srv    eth0 198.18.1.20/24 on in-sw, default via 198.18.1.1   target of the port forward
    out-srv2  eth0 198.19.1.11/24 on out-sw                          a second outside server
    out-rtr   eth0 198.19.1.30/24 on out-sw, eth1 198.19.2.1/24 on far-sw
                                                                     a plain router beyond the unit
    far-sw    a switch (br0)
    far-srv   eth0 198.19.2.10/24 on far-sw, default via 198.19.2.1  a server behind that router

and routes on fw-a and fw-b: 198.19.2.0/24 via out-rtr. Traffic only ever goes to these lab
addresses (198.18.0.0/15); rules and sysctls only change in the lab's namespaces.
"""
from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

from pyroute2 import IPRoute

from dataplane.daemon import request as control_request
from scripts.lab import build, nsexec
from scripts.lab.topology import (FW_A, FW_B, HOST_LEG, IN_SW, INSIDE_GW, OUT_SW, Link, Node,
                                  Route, Topology, lab)
from scripts.lab.unit import start_unit

FEEDS = ["c", "netfilterqueue"]

IN_SRV, OUT_SRV2, OUT_RTR, FAR_SW, FAR_SRV = "in-srv", "out-srv2", "out-rtr", "far-sw", "far-srv"
IN_SRV_ADDR = "198.18.1.20"
OUT_SRV2_ADDR = "198.19.1.11"
RTR_OUT_ADDR, RTR_FAR_ADDR = "198.19.1.30", "198.19.2.1"
FAR_NET = "198.19.2.0/24"
FAR_SRV_ADDR = "198.19.2.10"
FW_A_OUT = "198.19.1.2"          # fw-a's own address on out0 (topology.py)


def quiet(*_args) -> None:
    pass


def unique_prefix(letter: str) -> str:
    """`np<letter><6 hex>-`: a run's own namespaces, next to `make lab` (np-) and other runs."""
    return f"np{letter}{secrets.token_hex(3)}-"


def unit_topology(prefix: str) -> Topology:
    return lab(prefix).extended(
        nodes=(Node(IN_SRV, "host"), Node(OUT_SRV2, "host"), Node(OUT_RTR, "router"),
               Node(FAR_SW, "switch"), Node(FAR_SRV, "host")),
        links=(Link(IN_SRV, HOST_LEG, IN_SW, (f"{IN_SRV_ADDR}/24",)),
               Link(OUT_SRV2, HOST_LEG, OUT_SW, (f"{OUT_SRV2_ADDR}/24",)),
               Link(OUT_RTR, "eth0", OUT_SW, (f"{RTR_OUT_ADDR}/24",)),
               Link(OUT_RTR, "eth1", FAR_SW, (f"{RTR_FAR_ADDR}/24",)),
               Link(FAR_SRV, HOST_LEG, FAR_SW, (f"{FAR_SRV_ADDR}/24",))),
        routes=(Route(IN_SRV, "default", INSIDE_GW),
                Route(FAR_SRV, "default", RTR_FAR_ADDR),
                Route(FW_A, FAR_NET, RTR_OUT_ADDR),
                Route(FW_B, FAR_NET, RTR_OUT_ADDR)),
    )


class Lab:
    """A built lab: run programs in its nodes; down() removes it (also what runs in it)."""

    def __init__(self, topo: Topology):
        self.topo = topo
        self.prefix = topo.prefix
        self.rdir = build.run_dir(topo.prefix)
        self.procs: list[subprocess.Popen] = []

    @classmethod
    def up(cls, topo: Topology, request) -> "Lab":
        self = cls(topo)
        request.addfinalizer(self.down)          # before up(): a half-built lab goes too
        build.up(topo, log=quiet)
        self.rdir.mkdir(parents=True, exist_ok=True)
        return self

    def down(self) -> None:
        for p in self.procs:                     # down() kills them; reap them here
            if p.poll() is None:
                p.kill()
        build.down(self.prefix, log=quiet)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.communicate(timeout=5)
        self.procs.clear()

    def ns(self, node: str) -> str:
        return self.topo.ns(node)

    def run(self, node: str, argv: list[str], timeout: float = 30, **kw):
        return nsexec.run(self.ns(node), argv, timeout=timeout, **kw)

    def python(self, node: str, script: str, *args, timeout: float = 30):
        return self.run(node, [sys.executable, "-c", script, *map(str, args)], timeout=timeout)

    def spawn(self, node: str, argv: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("text", True)
        p = nsexec.popen(self.ns(node), argv, stdin=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def spawn_python(self, node: str, script: str, *args, ready: str | None = "ready",
                     **kw) -> subprocess.Popen:
        """A python program in `node`; waits for its first line to be `ready` (if given)."""
        p = self.spawn(node, [sys.executable, "-c", script, *map(str, args)], **kw)
        if ready is not None:
            line = p.stdout.readline().strip()
            assert line == ready, (line, p.stderr.read() if p.poll() is not None else "")
        return p

    def read_proc(self, node: str, *paths: str) -> list[str]:
        """Files of /proc/sys or /proc/net as seen from `node`, one string each."""
        r = self.run(node, ["cat", *paths], timeout=10)
        assert r.returncode == 0, r.stderr
        return r.stdout.split("\n")

    def sysctls(self, node: str, keys: list[str]) -> dict[str, str]:
        out = self.run(node, ["cat", *(f"/proc/sys/{k}" for k in keys)], timeout=10).stdout
        return dict(zip(keys, out.split()))

    def iptables_save(self, node: str, table: str = "raw") -> str:
        r = self.run(node, ["iptables-save", "-t", table], timeout=10)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def iptables_restore(self, node: str, text: str) -> None:
        r = self.run(node, ["iptables-restore"], input=text, timeout=10)
        assert r.returncode == 0, r.stderr

    def add_route(self, node: str, dst: str, gateway: str) -> None:
        with IPRoute(netns=self.ns(node), flags=0) as ipr:
            ipr.route("add", dst=dst, gateway=gateway)

    def del_route(self, node: str, dst: str, gateway: str) -> None:
        with IPRoute(netns=self.ns(node), flags=0) as ipr:
            ipr.route("del", dst=dst, gateway=gateway)

    @contextlib.contextmanager
    def route(self, node: str, dst: str, gateway: str):
        """A route in `node` for the time of a with block."""
        self.add_route(node, dst, gateway)
        try:
            yield
        finally:
            self.del_route(node, dst, gateway)


class Unit:
    """fw-a's natpair daemon in a lab, started by the lab's own start_unit."""

    def __init__(self, lab: Lab, feed: str, extra: str = "", name: str = FW_A, **config):
        self.lab = lab
        started = start_unit(lab.topo, name, feed=feed, log=quiet, extra_config=extra, **config)
        self.name, self.proc = name, started.proc
        self.config, self.log_path, self.sock = started.config, started.log, str(started.socket)

    def ask(self, cmd: str) -> dict:
        reply = control_request(self.sock, cmd)
        assert reply["ok"], reply
        return reply

    def log_text(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM (a clean stop); the exit status."""
        self.proc.terminate()
        return self.proc.wait(timeout=15)


def tcp_in_csum_errors(lab: Lab, node: str) -> int:
    lines = [ln.split() for ln in lab.read_proc(node, "/proc/net/snmp") if ln.startswith("Tcp:")]
    return int(dict(zip(lines[0], lines[1]))["InCsumErrors"])


# ---- programs run inside the namespaces (python -c) ----

# A DNS-like responder: each datagram is answered with itself and the source it came from.
UDP_ECHO = textwrap.dedent("""\
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], int(sys.argv[2])))
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data + f" from {peer[0]}:{peer[1]}".encode(), peer)
    """)

# One socket bound to a fixed port asks each server in turn (3 tries each); a reply a line.
UDP_ASK = textwrap.dedent("""\
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(sys.argv[1])))
    s.settimeout(float(sys.argv[2]))
    query = sys.argv[3].encode()
    for server in sys.argv[4:]:
        host, port = server.split(":")
        for _ in range(3):
            s.sendto(query, (host, int(port)))
            try:
                print(s.recvfrom(2048)[0].decode(), flush=True); break
            except socket.timeout:
                pass
        else:
            print("TIMEOUT", server); sys.exit(1)
    """)

# Listen once on a UDP port for a while: "GOT ..." or "NOTHING".
UDP_LISTEN = textwrap.dedent("""\
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(sys.argv[1])))
    s.settimeout(float(sys.argv[2]))
    print("ready", flush=True)
    try:
        data, peer = s.recvfrom(2048); print(f"GOT {data!r} from {peer}")
    except socket.timeout:
        print("NOTHING")
    """)

UDP_SEND = textwrap.dedent("""\
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for dst in sys.argv[2:]:
        for _ in range(int(sys.argv[1])):
            s.sendto(b"intruder", (dst.split(":")[0], int(dst.split(":")[1])))
    """)

# A connected UDP socket learns ECONNREFUSED only from an ICMP port unreachable whose inner
# header matches its own addresses and ports: "REFUSED" proves the inner header came back
# translated to the socket's original source.
UDP_REFUSED = textwrap.dedent("""\
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(sys.argv[3])))
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.settimeout(1.0)
    for _ in range(3):
        s.send(b"anyone?")
        try:
            s.recv(2048); print("ANSWERED"); break
        except ConnectionRefusedError:
            print("REFUSED"); break
        except socket.timeout:
            pass
    else:
        print("TIMEOUT")
    """)

# traceroute with UDP probes: per TTL, a connected socket with IP_RECVERR sends a probe to
# dst:port+ttl and reads the ICMP error from its error queue: "ttl type code offender
# inner_dst:inner_port errno" or "ttl *". The kernel queues the error on the socket only if
# the error's inner header matches the socket (its source address and port as sent).
TRACE = textwrap.dedent("""\
    import select, socket, struct, sys
    IP_RECVERR, SO_EE_ORIGIN_ICMP = 11, 2
    dst, base = sys.argv[1], int(sys.argv[2])
    for ttl in map(int, sys.argv[3].split(",")):
        line = f"{ttl} *"
        for _ in range(3):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
            s.setsockopt(socket.SOL_IP, socket.IP_TTL, ttl)
            s.connect((dst, base + ttl))
            s.send(b"probe")
            p = select.poll(); p.register(s, select.POLLERR)
            if p.poll(1000):
                _, anc, _, inner = s.recvmsg(512, 512, socket.MSG_ERRQUEUE)
                for level, kind, data in anc:
                    if (level, kind) == (socket.SOL_IP, IP_RECVERR):
                        err, origin, typ, code = struct.unpack_from("=IBBB", data)
                        assert origin == SO_EE_ORIGIN_ICMP, origin
                        offender = socket.inet_ntoa(data[20:24])
                        line = f"{ttl} {typ} {code} {offender} {inner[0]}:{inner[1]} {err}"
                s.close()
                break
            s.close()
        print(line, flush=True)
    """)


LEG_STATE = r"""
import json, socket, sys
from pyroute2 import IPRoute
with IPRoute() as ipr:
    idx = ipr.link_lookup(ifname=sys.argv[1])[0]
    mac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
    addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=socket.AF_INET)]
print(json.dumps({"mac": mac, "addrs": addrs}))
"""


def leg_state(lab: "Lab", node: str, ifname: str) -> dict:
    """An interface of `node` as its kernel has it now: {"mac": ..., "addrs": [IPv4 ...]}."""
    import json
    r = lab.python(node, LEG_STATE, ifname, timeout=20)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)
