"""The fast feed (cext/np_feed.c) on real traffic, in network namespaces (root; marker `netns`).

The lab (scripts/lab/) is built with the lab builder under a unique prefix `npf<hex>-` and
always taken down (tests/netns_lab.py). fw-a runs no daemon here: tests/feed_driver.py (one
Core, one FastFeed, a loop) is the unit, and the test installs its rules itself.

    in-host 198.18.1.10 --- in0 [fw-a] out0 --- 198.19.1.10 out-srv
                                               198.19.9.1/32 via 198.19.1.2 (fw-a's out0)

The NAT pool is 198.19.9.1: an address of NO interface, routed to the unit by its upstream
(out-srv here), as a provider routes a NAT pool. So a translated source is never one of fw-a's
own addresses (which the kernel would drop as a martian unless accept_local is set; the daemon
tests cover that case with the lab's NAT address). fw-a has no route back to the pool, which is
why its rp_filter is off: the reverse-path check of a packet whose source the core has just
rewritten would otherwise fail.

Rules, in fw-a only: raw PREROUTING, on in0 and out0: NOTRACK, then NFQUEUE.
"""
import json
import os
import signal
import sys
import time

import pytest

from netns_lab import FW_A_OUT, Lab, tcp_in_csum_errors, unique_prefix
from scripts.lab.topology import (FW_A, HOST, INSIDE_LEG, INSIDE_NET, OUTSIDE_LEG, SERVER,
                                  SERVER_ADDR, lab)
from scripts.lab.unit import REPO

pytestmark = pytest.mark.netns

QUEUE = 7
POOL = "198.19.9.1"
IPERF_SECONDS = 3
RULES = f"""*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -i {INSIDE_LEG} -j NOTRACK
-A PREROUTING -i {OUTSIDE_LEG} -j NOTRACK
-A PREROUTING -i {INSIDE_LEG} -j NFQUEUE --queue-num {QUEUE}
-A PREROUTING -i {OUTSIDE_LEG} -j NFQUEUE --queue-num {QUEUE}
COMMIT
"""
NO_RULES = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
"""


@pytest.fixture(scope="module")
def net(request):
    net = Lab.up(lab(unique_prefix("f")), request)
    net.add_route(SERVER, f"{POOL}/32", FW_A_OUT)
    r = net.run(FW_A, ["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0",
                       "net.ipv4.conf.default.rp_filter=0", f"net.ipv4.conf.{INSIDE_LEG}.rp_filter=0",
                       f"net.ipv4.conf.{OUTSIDE_LEG}.rp_filter=0"])
    assert r.returncode == 0, r.stderr
    return net


class Feed:
    """The driver process in fw-a: starts bound, stops with its counters."""

    def __init__(self, net: Lab, drain_us: int = 0):
        self.proc = net.spawn(FW_A, [sys.executable, str(REPO / "tests" / "feed_driver.py"),
                                     "--queue", str(QUEUE), "--pool", POOL,
                                     "--inside", INSIDE_LEG, "--outside", OUTSIDE_LEG,
                                     "--drain-us", str(drain_us)],
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", (line, self.proc.stderr.read() if self.proc.poll() is not None else "")

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=10)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=5)


@pytest.fixture(params=[0, 2000], ids=["batch", "drain2ms"])
def feed(net, request):
    """The driver, one batch per call (drain_us 0) or draining the queue for up to 2 ms."""
    f = Feed(net, request.param)
    net.iptables_restore(FW_A, RULES)

    def fin():
        net.iptables_restore(FW_A, NO_RULES)
        f.kill()
    request.addfinalizer(fin)
    return f


def _listening(net: Lab, node: str, port: int) -> bool:
    lines = net.read_proc(node, "/proc/net/tcp", "/proc/net/tcp6")
    return any(f":{port:04X} " in ln and ln.split()[3] == "0A" for ln in lines)


def iperf3(net: Lab, seconds: int = IPERF_SECONDS) -> tuple[dict, dict]:
    """One TCP stream in-host -> out-srv; returns (client report, server report)."""
    srv = net.spawn(SERVER, ["iperf3", "-s", "-1", "-J", "-B", SERVER_ADDR])
    deadline = time.monotonic() + 5
    while not _listening(net, SERVER, 5201):
        assert time.monotonic() < deadline, "iperf3 server did not start"
        time.sleep(0.05)
    cli = net.run(HOST, ["iperf3", "-c", SERVER_ADDR, "-t", str(seconds), "-J"],
                  timeout=seconds + 20)
    out, _ = srv.communicate(timeout=10)
    client, server = json.loads(cli.stdout), json.loads(out)
    assert "error" not in client, client["error"]
    assert "error" not in server, server["error"]
    return client, server


def _ping(net: Lab, count: int, interval: str = "0.2", src: str = HOST, dst: str = SERVER_ADDR):
    return net.run(src, ["ping", "-n", "-c", str(count), "-i", interval, "-W", "1", dst],
                   timeout=count + 10)


def test_ping_through_feed(net, feed):
    r = _ping(net, 3)
    assert r.returncode == 0, r.stdout + r.stderr
    c = feed.stop()
    assert c["feed"]["received"] >= 6 and c["feed"]["modified"] >= 6
    assert c["core"]["state_created"] == 1


def test_unsolicited_inbound_is_dropped(net, feed):
    r = _ping(net, 40, "0.005", src=SERVER, dst=POOL)
    assert r.returncode != 0, "an unsolicited echo to the pool got an answer"
    c = feed.stop()
    f = c["feed"]
    assert f["received"] >= 40 and f["dropped"] == f["received"] and f["accepted"] == 0
    print("\ncore drops:", {k: v for k, v in c["core"].items() if k.startswith("drop") and v})
    assert c["core"]["drop_policy"] >= 40     # outside -> inside: no static, no state
    assert f["verdict_msgs"] <= f["received"]


def test_fails_closed_when_the_feed_dies(net, feed):
    r = _ping(net, 1)
    assert r.returncode == 0, r.stdout + r.stderr
    feed.proc.send_signal(signal.SIGKILL)
    feed.proc.wait(timeout=5)
    r = _ping(net, 3)
    assert r.returncode != 0, "traffic passed with no reader on the queue"


def test_tcp_through_feed_is_translated_and_intact(net, feed):
    csum_before = tcp_in_csum_errors(net, SERVER)
    client, server = iperf3(net)
    gbits = client["end"]["sum_received"]["bits_per_second"] / 1e9
    print(f"\niperf3 TCP 1 stream through the C feed: {gbits:.2f} Gbit/s")
    # NAT happened: the server saw the pool address, not the client
    assert server["start"]["connected"][0]["remote_host"].endswith(POOL)
    assert gbits > 0.1
    assert client["end"]["sum_sent"]["bytes"] > 0
    assert tcp_in_csum_errors(net, SERVER) == csum_before
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


def test_throughput_feed_vs_kernel_forwarding(net):
    """Same lab, same run: plain forwarding (no rules, routed back), then the feed."""
    with net.route(SERVER, INSIDE_NET, FW_A_OUT):
        kernel, _ = iperf3(net)
    f = Feed(net)
    net.iptables_restore(FW_A, RULES)
    try:
        fast, server = iperf3(net)
        assert server["start"]["connected"][0]["remote_host"].endswith(POOL)
    finally:
        net.iptables_restore(FW_A, NO_RULES)
        f.kill()
    k = kernel["end"]["sum_received"]["bits_per_second"] / 1e9
    q = fast["end"]["sum_received"]["bits_per_second"] / 1e9
    print(f"\niperf3 TCP 1 stream, {IPERF_SECONDS} s: kernel forwarding {k:.2f} Gbit/s, "
          f"C feed with NAT {q:.2f} Gbit/s, ratio {q / k:.2f}")
    assert q > 0.1
