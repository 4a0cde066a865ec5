"""`natpair run` as a real unit in network namespaces (root; marker `netns`).

Topology, built with pyroute2 in namespaces named ``npd<random>-client``,
``-fw`` and ``-server`` (unique per run, always removed, even on failure)::

    client c0 198.18.1.2/24 --- in0 198.18.1.1/24  [fw]  out0 198.19.1.1/24 --- s0 198.19.1.2/24 server
                                                         out0 198.19.1.100/24 (the NAT pool)

The pool address is a second address of fw's outside leg, so the server
reaches it on-link (fw answers ARP) and the daemon must set accept_local and
rp_filter for the translated packets. The client's default route is fw; the
server routes 198.18.0.0/15 via fw only so that unsolicited inbound packets
reach fw and can be seen to be dropped. Rules and sysctls only ever change in
these namespaces.
"""
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pyroute2 import NetNS, netns

from dataplane.daemon import request

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[1]
CLIENT, FW_IN, FW_OUT, SERVER, POOL = "198.18.1.2", "198.18.1.1", "198.19.1.1", "198.19.1.2", "198.19.1.100"
FEEDS = ["c", "netfilterqueue"]
SYSCTLS = ["net/ipv4/ip_forward", "net/ipv4/conf/all/rp_filter", "net/ipv4/conf/in0/rp_filter",
           "net/ipv4/conf/out0/rp_filter", "net/ipv4/conf/in0/accept_local", "net/ipv4/conf/out0/accept_local"]
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} (INFO|WARNING|ERROR) natpair\[(\S+)\] (\w+)( \w+=\S+)*$")

UDP_ECHO = textwrap.dedent("""\
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(sys.argv[1])))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data + f" from {peer[0]}:{peer[1]}".encode(), peer)
    """)
UDP_ASK = textwrap.dedent("""\
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(sys.argv[3])))
    s.settimeout(float(sys.argv[4]))
    for _ in range(3):
        s.sendto(b"query", (sys.argv[1], int(sys.argv[2])))
        try:
            print(s.recvfrom(2048)[0].decode()); break
        except socket.timeout:
            pass
    else:
        print("TIMEOUT"); sys.exit(1)
    """)
UDP_LISTEN = textwrap.dedent("""\
    import socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(sys.argv[1])))
    s.settimeout(float(sys.argv[2]))
    print("ready", flush=True)
    try:
        data, peer = s.recvfrom(2048); print(f"GOT {data!r} from {peer}")
    except socket.timeout:
        print("NOTHING")
    """)


class Lab:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.client, self.fw, self.server = (f"{prefix}{n}" for n in ("client", "fw", "server"))
        self.procs: list[subprocess.Popen] = []

    def exec(self, ns, argv, **kw):
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                              timeout=kw.pop("timeout", 30), **kw)

    def spawn(self, ns, argv, **kw):
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], text=True, **kw)
        self.procs.append(p)
        return p

    def sysctls(self) -> dict[str, str]:
        out = self.exec(self.fw, ["cat", *(f"/proc/sys/{k}" for k in SYSCTLS)]).stdout.split()
        return dict(zip(SYSCTLS, out))

    def raw_rules(self) -> str:
        r = self.exec(self.fw, ["iptables-save", "-t", "raw"])
        assert r.returncode == 0, r.stderr
        return r.stdout

    def build(self):
        for ns in (self.client, self.fw, self.server):
            netns.create(ns)
        with NetNS(self.client) as ns:
            ns.link("add", ifname="c0", kind="veth", peer={"ifname": "in0", "net_ns_fd": self.fw})
        with NetNS(self.fw) as ns:
            ns.link("add", ifname="out0", kind="veth", peer={"ifname": "s0", "net_ns_fd": self.server})
        plan = {
            self.client: [("c0", CLIENT)],
            self.fw: [("in0", FW_IN), ("out0", FW_OUT), ("out0", POOL)],
            self.server: [("s0", SERVER)],
        }
        for name, addrs in plan.items():
            with NetNS(name) as ns:
                for ifname in {i for i, _ in addrs} | {"lo"}:
                    ns.link("set", index=ns.link_lookup(ifname=ifname)[0], state="up")
                for ifname, addr in addrs:
                    ns.addr("add", index=ns.link_lookup(ifname=ifname)[0], address=addr, prefixlen=24)
        with NetNS(self.client) as ns:
            ns.route("add", dst="0.0.0.0/0", gateway=FW_IN)
        with NetNS(self.server) as ns:
            ns.route("add", dst="198.18.0.0/15", gateway=FW_OUT)

    def destroy(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        ours = {self.client, self.fw, self.server}
        for ns_name, pids in _ns_pids().items():
            if ns_name in ours:
                for pid in pids:                 # only processes inside the namespaces we made
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for ns in ours:
            try:
                netns.remove(ns)
            except OSError:
                pass


def _ns_pids() -> dict[str, list[int]]:
    try:
        return netns.ns_pids()
    except Exception:
        return {}


def _lab():
    lab = Lab(f"npd{secrets.token_hex(3)}-")
    try:
        lab.build()
        lab.spawn(lab.server, [sys.executable, "-c", UDP_ECHO, "5353"])
        yield lab
    finally:
        lab.destroy()


lab = pytest.fixture(scope="module")(_lab)
fresh_lab = pytest.fixture(scope="function")(_lab)     # for tests that start and stop their own unit


def unit_config(lab, tmp: Path, feed: str, **extra) -> Path:
    text = textwrap.dedent(f"""\
        [unit]
        name = "{lab.prefix}fw"
        netns = "{lab.fw}"

        [interfaces]
        inside = "in0"
        outside = "out0"

        [nat]
        pool = ["{POOL}"]
        ports = [20000, 29999]

        [timeouts]
        udp = {extra.get("udp", 120)}

        [feed]
        kind = "{feed}"
        queue = 3

        [control]
        socket = "{tmp}/unit.sock"
        """)
    path = tmp / "unit.toml"
    path.write_text(text)
    return path


class Unit:
    """One `natpair run` process, its log in a file."""

    def __init__(self, lab, cfg: Path):
        self.sock = str(cfg.parent / "unit.sock")
        self.log_path = cfg.parent / "natpair.log"
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "dataplane.cli", "run", "--config", str(cfg)],
                                     cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        lab.procs.append(self.proc)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"natpair run exited {self.proc.returncode}: {self.log_text()}"
            try:                 # a socket file may be a stale one of a killed run
                if request(self.sock, "status", timeout=1.0)["ok"]:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"natpair run did not come up: {self.log_text()}")

    def ask(self, cmd):
        r = subprocess.run([sys.executable, "-m", "dataplane.cli", cmd, "--socket", self.sock, "--json"],
                           cwd=ROOT, capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)


@pytest.fixture(scope="module", params=FEEDS)
def unit(request, lab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"unit-{request.param}")
    u = Unit(lab, unit_config(lab, tmp, request.param))
    yield u
    if u.proc.poll() is None:
        assert u.terminate() == 0, u.log_text()


def test_ping_through(lab, unit):
    r = lab.exec(lab.client, ["ping", "-c", "3", "-i", "0.2", "-W", "2", SERVER])
    assert r.returncode == 0, r.stdout + r.stderr + unit.log_text()
    assert "3 received" in r.stdout
    c = unit.ask("counters")
    assert c["feed"]["accepted"] >= 6 and c["feed"]["modified"] >= 6


def test_udp_request_response_is_translated(lab, unit):
    r = lab.exec(lab.client, [sys.executable, "-c", UDP_ASK, SERVER, "5353", "40001", "1.0"])
    assert r.returncode == 0, r.stdout + r.stderr + unit.log_text()
    # the server saw the pool address, and the port kept (port preservation would be
    # outside the configured range 20000-29999, so a port from the range)
    m = re.fullmatch(r"query from (\S+):(\d+)\n", r.stdout)
    assert m, r.stdout
    assert m.group(1) == POOL and 20000 <= int(m.group(2)) <= 29999
    s = unit.ask("status")
    assert s["states"] >= 1 and s["mappings"] >= 1


def test_unsolicited_inbound_is_blocked(lab, unit):
    before = unit.ask("counters")["feed"]["dropped"]
    listener = lab.spawn(lab.client, [sys.executable, "-c", UDP_LISTEN, "9999", "2.0"], stdout=subprocess.PIPE)
    assert listener.stdout.readline().strip() == "ready"
    for dst in (CLIENT, POOL):        # straight at the inside host, and at the pool address
        r = lab.exec(lab.server, [sys.executable, "-c",
                                  f"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                                  f"[s.sendto(b'intruder', ('{dst}', 9999)) for _ in range(3)]"])
        assert r.returncode == 0, r.stderr
    out, _ = listener.communicate(timeout=10)
    assert out.strip() == "NOTHING"
    assert unit.ask("counters")["feed"]["dropped"] >= before + 6


def test_counters_command_prints_core_and_feed(lab, unit):
    r = subprocess.run([sys.executable, "-m", "dataplane.cli", "counters", "--socket", unit.sock],
                       cwd=ROOT, capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    lines = dict(ln.split(" ", 1) for ln in r.stdout.splitlines())
    assert int(lines["feed.received"]) > 0
    assert "core.drop_no_state" in lines or "core.drop_policy" in lines
    status = unit.ask("status")
    assert status["name"] == f"{lab.prefix}fw" and status["uptime_s"] > 0


def test_bad_config_refused_before_anything_changes(lab, tmp_path):
    before = lab.sysctls()
    cfg = unit_config(lab, tmp_path, "netfilterqueue", udp=30)
    r = subprocess.run([sys.executable, "-m", "dataplane.cli", "run", "--config", str(cfg)],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    line = cfg.read_text().splitlines().index("udp = 30") + 1
    assert f"{cfg}:{line}: timeouts.udp: 30 s is below 120 s" in r.stderr
    assert not os.path.exists(tmp_path / "unit.sock")
    assert lab.sysctls() == before


@pytest.mark.parametrize("feed", FEEDS)
def test_stop_and_crash_restart_leave_nothing_behind(fresh_lab, tmp_path, feed):
    """SIGKILL leaves rules and sysctls; the next start removes and recovers them;
    SIGTERM then removes exactly ours and restores the sysctls of before the first start."""
    lab = fresh_lab
    assert "NATPAIR" not in lab.raw_rules()
    original = lab.sysctls()
    assert original["net/ipv4/ip_forward"] == "0"
    # a foreign rule in raw PREROUTING that must survive us
    r = lab.exec(lab.fw, ["iptables", "-t", "raw", "-A", "PREROUTING", "-i", "lo", "-j", "ACCEPT"])
    assert r.returncode == 0, r.stderr
    cfg = unit_config(lab, tmp_path, feed)

    crashed = Unit(lab, cfg)
    crashed.proc.kill()
    crashed.proc.wait(timeout=10)
    assert "NATPAIR_PRE" in lab.raw_rules()
    assert lab.sysctls()["net/ipv4/ip_forward"] == "1"

    u = Unit(lab, cfg)
    assert lab.raw_rules().count("-j NATPAIR_PRE") == 2        # one jump per leg, no duplicates
    r = lab.exec(lab.client, ["ping", "-c", "2", "-i", "0.2", "-W", "2", SERVER])
    assert r.returncode == 0, r.stdout + u.log_text()
    assert u.terminate() == 0, u.log_text()

    rules = lab.raw_rules()
    assert "NATPAIR" not in rules, rules
    assert "-A PREROUTING -i lo -j ACCEPT" in rules
    assert lab.sysctls() == original
    assert not os.path.exists(u.sock)
    assert not list(tmp_path.glob("*.sysctl.json"))
    log = u.log_text().splitlines()
    for ln in log:
        assert LOG_LINE.match(ln), ln
    events = [LOG_LINE.match(ln).group(3) for ln in log]
    assert events.count("start") == 2 and events.count("stop") == 1 and "recover" in events
