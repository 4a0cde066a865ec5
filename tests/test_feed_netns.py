"""The fast feed (cext/np_feed.c) on real traffic, in network namespaces.

Topology (names carry a random prefix ``npf<hex>-`` so runs can coexist):

    client                 fw                          server
    c0 198.18.1.2/24 ---- f0 198.18.1.1/24
                           f1 198.19.1.1/24 ---------- s0 198.19.1.2/24
    default via .1.1       forwarding on, rp_filter 0  198.19.2.0/24 via 198.19.1.1

The NAT pool is 198.19.2.1: an address of NO interface, routed to the unit
by its upstream (the server here), as a provider routes a NAT pool. So no ARP
trick is needed, and a translated source is never one of fw's own addresses
(which the kernel would drop as a martian unless accept_local is set). The
unit has no route back to the pool, which is why fw's rp_filter is off: the
reverse-path check of a packet whose source the core has just rewritten
would otherwise fail.

Rules, in fw only: raw PREROUTING, on f0 and f1: NOTRACK, then NFQUEUE.
"""
import json
import os
import secrets
import signal
import subprocess
import sys
import time

import pytest
from pyroute2 import NetNS, netns

pytestmark = pytest.mark.netns

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUEUE = 7
CLIENT, FW_IN, FW_OUT, SERVER = "198.18.1.2", "198.18.1.1", "198.19.1.1", "198.19.1.2"
POOL = "198.19.2.1"
IPERF_SECONDS = 3
RULES = f"""*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -i f0 -j NOTRACK
-A PREROUTING -i f1 -j NOTRACK
-A PREROUTING -i f0 -j NFQUEUE --queue-num {QUEUE}
-A PREROUTING -i f1 -j NFQUEUE --queue-num {QUEUE}
COMMIT
"""
NO_RULES = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
"""


def _enter(name):
    return lambda: netns.setns(name, flags=0)


def ns_run(name, argv, *, input=None, timeout=30):
    """Run a command inside namespace ``name`` (never ``ip``: pyroute2 does links)."""
    return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_enter(name))


class Lab:
    def __init__(self):
        prefix = f"npf{secrets.token_hex(3)}-"
        self.client, self.fw, self.server = (prefix + n for n in ("client", "fw", "server"))
        self.procs: list[subprocess.Popen] = []

    def popen(self, name, argv, **kw):
        p = subprocess.Popen(argv, preexec_fn=_enter(name), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, **kw)
        self.procs.append(p)
        return p

    def build(self):
        for n in (self.client, self.fw, self.server):
            netns.create(n)
        with NetNS(self.fw) as fw:
            fw.link("add", ifname="f0", kind="veth", peer={"ifname": "c0", "net_ns_fd": self.client})
            fw.link("add", ifname="f1", kind="veth", peer={"ifname": "s0", "net_ns_fd": self.server})
            for ifname, addr in (("f0", FW_IN), ("f1", FW_OUT)):
                idx = fw.link_lookup(ifname=ifname)[0]
                fw.addr("add", index=idx, address=addr, prefixlen=24)
                fw.link("set", index=idx, state="up")
            fw.link("set", index=fw.link_lookup(ifname="lo")[0], state="up")
        for name, ifname, addr, routes in (
                (self.client, "c0", CLIENT, [dict(dst="0.0.0.0/0", gateway=FW_IN)]),
                (self.server, "s0", SERVER, [dict(dst="198.19.2.0/24", gateway=FW_OUT)])):
            with NetNS(name) as ns:
                idx = ns.link_lookup(ifname=ifname)[0]
                ns.addr("add", index=idx, address=addr, prefixlen=24)
                ns.link("set", index=idx, state="up")
                ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
                for r in routes:
                    ns.route("add", **r)
        sysctl = ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                  "net.ipv4.conf.default.rp_filter=0", "net.ipv4.conf.f0.rp_filter=0",
                  "net.ipv4.conf.f1.rp_filter=0"]
        r = ns_run(self.fw, sysctl)
        assert r.returncode == 0, r.stderr

    def server_route(self, dst, add):
        with NetNS(self.server) as ns:
            ns.route("add" if add else "del", dst=dst, gateway=FW_OUT)

    def rules(self, text):
        r = ns_run(self.fw, ["iptables-restore"], input=text)
        assert r.returncode == 0, r.stderr

    def kill_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            try:
                p.communicate(timeout=5)
            except Exception:
                pass
        self.procs.clear()

    def destroy(self):
        self.kill_all()
        for n in (self.client, self.fw, self.server):
            if n in netns.listnetns():
                netns.remove(n)


@pytest.fixture(scope="module")
def lab(request):
    lab = Lab()
    request.addfinalizer(lab.destroy)
    lab.build()
    return lab


class Feed:
    """The driver process in fw: starts bound, stops with its counters."""

    def __init__(self, lab, drain_us: int = 0):
        self.lab = lab
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.proc = lab.popen(lab.fw, [sys.executable, os.path.join(ROOT, "tests", "feed_driver.py"),
                                       "--queue", str(QUEUE), "--pool", POOL,
                                       "--inside", "f0", "--outside", "f1",
                                       "--drain-us", str(drain_us)], env=env)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", (line, self.proc.stderr.read() if self.proc.poll() is not None else "")

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=10)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(params=[0, 2000], ids=["batch", "drain2ms"])
def feed(lab, request):
    """The driver, one batch per call (drain_us 0) or draining the queue for up to 2 ms."""
    f = Feed(lab, request.param)
    lab.rules(RULES)

    def fin():
        lab.rules(NO_RULES)
        lab.kill_all()
    request.addfinalizer(fin)
    return f


def tcp_in_csum_errors(lab, name) -> int:
    text = ns_run(name, ["cat", "/proc/net/snmp"]).stdout
    lines = [line.split() for line in text.splitlines() if line.startswith("Tcp:")]
    return int(dict(zip(lines[0], lines[1]))["InCsumErrors"])


def _listening(lab, name, port) -> bool:
    text = ns_run(name, ["cat", "/proc/net/tcp", "/proc/net/tcp6"]).stdout
    return any(f":{port:04X} " in line and line.split()[3] == "0A" for line in text.splitlines()[1:])


def iperf3(lab, seconds=IPERF_SECONDS) -> tuple[dict, dict]:
    """One TCP stream client -> server; returns (client report, server report)."""
    srv = lab.popen(lab.server, ["iperf3", "-s", "-1", "-J", "-B", SERVER])
    deadline = time.monotonic() + 5
    while not _listening(lab, lab.server, 5201):
        assert time.monotonic() < deadline, "iperf3 server did not start"
        time.sleep(0.05)
    cli = ns_run(lab.client, ["iperf3", "-c", SERVER, "-t", str(seconds), "-J"], timeout=seconds + 20)
    out, _ = srv.communicate(timeout=10)
    client, server = json.loads(cli.stdout), json.loads(out)
    assert "error" not in client, client["error"]
    assert "error" not in server, server["error"]
    return client, server


def test_ping_through_feed(lab, feed):
    r = ns_run(lab.client, ["ping", "-c", "3", "-i", "0.2", "-W", "2", SERVER])
    assert r.returncode == 0, r.stdout + r.stderr
    c = feed.stop()
    assert c["feed"]["received"] >= 6 and c["feed"]["modified"] >= 6
    assert c["core"]["state_created"] == 1


def test_unsolicited_inbound_is_dropped(lab, feed):
    r = ns_run(lab.server, ["ping", "-c", "40", "-i", "0.005", "-W", "1", POOL])
    assert r.returncode != 0, "an unsolicited echo to the pool got an answer"
    c = feed.stop()
    f = c["feed"]
    assert f["received"] >= 40 and f["dropped"] == f["received"] and f["accepted"] == 0
    print("\ncore drops:", {k: v for k, v in c["core"].items() if k.startswith("drop") and v})
    assert c["core"]["drop_policy"] >= 40     # outside -> inside: no static, no state
    assert f["verdict_msgs"] <= f["received"]


def test_fails_closed_when_the_feed_dies(lab, feed):
    r = ns_run(lab.client, ["ping", "-c", "1", "-W", "2", SERVER])
    assert r.returncode == 0, r.stdout + r.stderr
    feed.proc.send_signal(signal.SIGKILL)
    feed.proc.wait(timeout=5)
    r = ns_run(lab.client, ["ping", "-c", "3", "-i", "0.2", "-W", "1", SERVER])
    assert r.returncode != 0, "traffic passed with no reader on the queue"


def test_tcp_through_feed_is_translated_and_intact(lab, feed):
    csum_before = tcp_in_csum_errors(lab, lab.server)
    client, server = iperf3(lab)
    gbits = client["end"]["sum_received"]["bits_per_second"] / 1e9
    print(f"\niperf3 TCP 1 stream through the C feed: {gbits:.2f} Gbit/s")
    # NAT happened: the server saw the pool address, not the client
    assert server["start"]["connected"][0]["remote_host"].endswith(POOL)
    assert gbits > 0.1
    assert client["end"]["sum_sent"]["bytes"] > 0
    assert tcp_in_csum_errors(lab, lab.server) == csum_before
    c = feed.stop()
    f = c["feed"]
    print("feed counters:", {k: v for k, v in f.items() if v})
    assert f["gso"] > 0, "no GSO packet came up: NFQA_CFG_F_GSO not in effect"
    assert f["modified"] > 0
    for bad in ("verdict_errors", "send_errors", "recv_errors", "unknown_ifindex", "truncated",
                "malformed"):
        assert f[bad] == 0, (bad, f)
    assert f["kernel_user_dropped"] == 0 and f["kernel_queue_dropped"] == 0
    assert f["verdict_sends"] < f["received"]


def test_throughput_feed_vs_kernel_forwarding(lab):
    """Same topology, same run: plain forwarding (no rules, routed back), then the feed."""
    lab.server_route("198.18.1.0/24", add=True)
    try:
        kernel, _ = iperf3(lab)
    finally:
        lab.server_route("198.18.1.0/24", add=False)
    f = Feed(lab)
    lab.rules(RULES)
    try:
        fast, server = iperf3(lab)
        assert server["start"]["connected"][0]["remote_host"].endswith(POOL)
    finally:
        lab.rules(NO_RULES)
        lab.kill_all()
    k = kernel["end"]["sum_received"]["bits_per_second"] / 1e9
    q = fast["end"]["sum_received"]["bits_per_second"] / 1e9
    print(f"\niperf3 TCP 1 stream, {IPERF_SECONDS} s: kernel forwarding {k:.2f} Gbit/s, "
          f"C feed with NAT {q:.2f} Gbit/s, ratio {q / k:.2f}")
    assert q > 0.1
