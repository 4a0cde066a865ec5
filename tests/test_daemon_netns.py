"""`natpair run` as a real unit in network namespaces (root; marker `netns`): its control
socket and counters CLI, a port range from its config, a bad config refused before anything
changes, and a stop (clean, or a crash then a restart) that leaves no rule or sysctl behind.

The lab (scripts/lab/) is built with the lab builder under a unique prefix `npd<hex>-` and
always taken down (tests/netns_lab.py); the daemon is fw-a's, started by the lab's start_unit
with the NAT port range 20000-29999. The traffic tests through a unit (both feeds) are
tests/test_unit_netns.py's. Rules and sysctls only ever change in the lab's namespaces.
"""
import json
import re
import subprocess
import sys

import pytest

from netns_lab import FEEDS, UDP_ASK, UDP_ECHO, Lab, Unit, unique_prefix
from scripts.lab import nsexec
from scripts.lab.topology import FW_A, FW_B, HOST, NAT_ADDR, SERVER, SERVER_ADDR, lab
from scripts.lab.unit import REPO, socket_path, unit_config

pytestmark = pytest.mark.netns

PORTS = (20000, 29999)
SYSCTLS = ["net/ipv4/ip_forward", "net/ipv4/conf/all/rp_filter", "net/ipv4/conf/in0/rp_filter",
           "net/ipv4/conf/out0/rp_filter", "net/ipv4/conf/in0/accept_local",
           "net/ipv4/conf/out0/accept_local"]
from dataplane.logline import LINE as LOG_LINE      # noqa: E402  (the shape of every line)


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dataplane.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30)


def _ping(net: Lab, unit: Unit, count: int = 2) -> None:
    r = net.run(HOST, ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", SERVER_ADDR],
                timeout=15)
    assert r.returncode == 0, r.stdout + r.stderr + unit.log_text()


@pytest.fixture(scope="module")
def net(request):
    net = Lab.up(lab(unique_prefix("d")), request)
    net.spawn_python(SERVER, UDP_ECHO, SERVER_ADDR, 5353)
    return net


@pytest.fixture(scope="module", params=FEEDS)
def unit(request, net):
    u = Unit(net, request.param, ports=PORTS)
    yield u
    if u.proc.poll() is None:
        assert u.stop() == 0, u.log_text()


def test_udp_source_port_from_the_configured_range(net, unit):
    r = net.python(HOST, UDP_ASK, 40001, 1.0, "query", f"{SERVER_ADDR}:5353")
    assert r.returncode == 0, r.stdout + r.stderr + unit.log_text()
    # the server saw the NAT address, and a port from the range (port preservation would
    # keep 40001, outside the configured 20000-29999)
    m = re.fullmatch(r"query from (\S+):(\d+)\n", r.stdout)
    assert m, r.stdout
    assert m[1] == NAT_ADDR and PORTS[0] <= int(m[2]) <= PORTS[1]
    s = unit.ask("status")
    assert s["states"] >= 1 and s["mappings"] >= 1


def test_counters_command_prints_core_and_feed(net, unit):
    _ping(net, unit)
    r = _cli("counters", "--socket", unit.sock)
    assert r.returncode == 0, r.stderr
    lines = dict(ln.split(" ", 1) for ln in r.stdout.splitlines())
    assert int(lines["feed.received"]) > 0
    assert "core.drop_no_state" in lines or "core.drop_policy" in lines
    r = _cli("status", "--socket", unit.sock, "--json")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["name"] == FW_A and status["uptime_s"] > 0
    assert status["feed"] == unit.ask("status")["feed"]


def test_bad_config_refused_before_anything_changes(net):
    """fw-b (built, idle) is given a config with a UDP timeout below RFC 4787's minimum."""
    before = net.sysctls(FW_B, SYSCTLS)
    cfg = net.rdir / "fw-b-bad.toml"
    cfg.write_text(unit_config(net.topo, FW_B, "netfilterqueue", "[timeouts]\nudp = 30\n"))
    r = _cli("run", "--config", str(cfg))
    assert r.returncode == 2
    line = cfg.read_text().splitlines().index("udp = 30") + 1
    assert f"{cfg}:{line}: timeouts.udp: 30 s is below 120 s" in r.stderr
    assert not socket_path(net.topo, FW_B).exists()
    assert net.sysctls(FW_B, SYSCTLS) == before
    assert "NATPAIR" not in net.iptables_save(FW_B)


@pytest.mark.parametrize("feed", FEEDS)
def test_stop_and_crash_restart_leave_nothing_behind(request, feed):
    """SIGKILL leaves rules and sysctls; the next start removes and recovers them;
    SIGTERM then removes exactly ours and restores the sysctls of before the first start."""
    net = Lab.up(lab(unique_prefix("d")), request)         # a lab of its own
    assert "NATPAIR" not in net.iptables_save(FW_A)
    nsexec.sysctl(net.ns(FW_A), "net.ipv4.ip_forward", 0)  # the lab turns it on: a unit off
    original = net.sysctls(FW_A, SYSCTLS)
    assert original["net/ipv4/ip_forward"] == "0"
    # a foreign rule in raw PREROUTING that must survive us
    r = net.run(FW_A, ["iptables", "-t", "raw", "-A", "PREROUTING", "-i", "lo", "-j", "ACCEPT"])
    assert r.returncode == 0, r.stderr

    crashed = Unit(net, feed)
    crashed.proc.kill()
    crashed.proc.wait(timeout=10)
    assert "NATPAIR_PRE" in net.iptables_save(FW_A)
    assert net.sysctls(FW_A, SYSCTLS)["net/ipv4/ip_forward"] == "1"

    u = Unit(net, feed)
    assert net.iptables_save(FW_A).count("-j NATPAIR_PRE") == 2    # one jump per leg, no duplicates
    _ping(net, u)
    assert u.stop() == 0, u.log_text()

    rules = net.iptables_save(FW_A)
    assert "NATPAIR" not in rules, rules
    assert "-A PREROUTING -i lo -j ACCEPT" in rules
    assert net.sysctls(FW_A, SYSCTLS) == original
    assert not socket_path(net.topo, FW_A).exists()
    assert not list(net.rdir.glob("*.sysctl.json"))
    log = u.log_text().splitlines()
    for ln in log:
        assert LOG_LINE.match(ln), ln
    events = [LOG_LINE.match(ln).group(3) for ln in log]
    assert events.count("start") == 2 and events.count("stop") == 1 and "recover" in events
