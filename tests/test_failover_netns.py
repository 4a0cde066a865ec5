"""Failover between two natpair daemons in namespaces (root; marker `netns`). Issue 4, section 8.

Each test gets its own lab (the lab's topology under a unique prefix `npo<hex>-`, always taken
down), fw-a and fw-b started as a pair by scripts/lab/run.start_pair (fw-a active, fw-b
standby-ready), and kills the active unit like a power cut (scripts/lab/run.kill_active:
SIGSTOP, SIGKILL, links down, namespace deleted).

- a TCP connection streaming through the pair survives the kill: every byte arrives, the
  server sees one source port (the NAT mapping) from first to last, and nobody sees a reset;
- a UDP state created 10 ms before the kill is on the standby: the server's late answer to
  the mapped port reaches the inside socket through the survivor (unsolicited inbound
  traffic is dropped, so only a replicated state lets it through).
"""
import json
import sys
import textwrap
import time

import pytest

from netns_lab import Lab, leg_state, quiet, unique_prefix
from scripts.lab import run as labrun
from scripts.lab.topology import FW_A, FW_B, HOST, NAT_ADDR, SERVER, SERVER_ADDR, lab

pytestmark = pytest.mark.netns

STREAM_PORT = 9100
LATE_PORT = 9200


@pytest.fixture
def pair(request):
    lab_ = Lab.up(lab(unique_prefix("o")), request)
    units = labrun.start_pair(lab_.topo, "c", log=quiet)
    return lab_, units


def tcp_counter(lab_: Lab, node: str, name: str) -> int:
    lines = [ln.split() for ln in lab_.read_proc(node, "/proc/net/snmp") if ln.startswith("Tcp:")]
    return int(dict(zip(lines[0], lines[1]))[name])


def stream(lab_: Lab, node: str, *args) -> list[str]:
    return [sys.executable, "-m", "scripts.lab.stream", *map(str, args)]


def test_tcp_flow_survives_the_kill_with_its_nat_port_and_no_reset(pair):
    lab_, units = pair
    resets = {n: tcp_counter(lab_, n, "EstabResets") for n in (HOST, SERVER)}
    sink = lab_.spawn(SERVER, stream(lab_, SERVER, "sink", "--proto", "tcp", "--bind", SERVER_ADDR,
                                     "--port", STREAM_PORT, "--seconds", 15), cwd=str(labrun.REPO))
    assert sink.stdout.readline().strip() == "ready"
    sender = lab_.spawn(HOST, stream(lab_, HOST, "send", "--proto", "tcp", "--to", SERVER_ADDR,
                                     "--port", STREAM_PORT, "--pps", 1000, "--seconds", 4),
                        cwd=str(labrun.REPO))
    time.sleep(1.5)
    dead, survivor, took_ms = labrun.kill_active(lab_.topo, log=quiet)
    assert (dead, survivor) == (FW_A, FW_B)
    sent = json.loads(sender.communicate(timeout=30)[0].strip().splitlines()[-1])
    got = json.loads(sink.communicate(timeout=30)[0].strip().splitlines()[-1])
    log = units[FW_B].log.read_text(errors="replace")[-3000:]
    assert sent["error"] is None, (sent, log)
    assert not got["reset"] and got["received"] == sent["sent"], (got, sent, log)
    assert got["distinct_ports"] == 1, got            # one NAT port, before and after
    assert {n: tcp_counter(lab_, n, "EstabResets") for n in (HOST, SERVER)} == resets
    print(f"\ntcp: {sent['sent']} records, largest gap {got['max_gap_ms']} ms, survivor active "
          f"{took_ms:.0f} ms after the cut began, NAT port {got['ports'][0]}")


LATE_ECHO = textwrap.dedent("""\
    import socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], int(sys.argv[2])))
    print("ready", flush=True)
    data, peer = s.recvfrom(2048)
    print(f"got {peer[0]}:{peer[1]}", flush=True)
    time.sleep(float(sys.argv[3]))
    s.sendto(b"late " + data, peer)
    """)

ASK_ONCE = textwrap.dedent("""\
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(sys.argv[3])))
    s.settimeout(float(sys.argv[4]))
    s.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recvfrom(2048)[0].decode(), flush=True)
    except socket.timeout:
        print("TIMEOUT", flush=True)
    """)


def test_a_state_created_10_ms_before_the_kill_is_on_the_standby(pair):
    lab_, units = pair
    echo = lab_.spawn_python(SERVER, LATE_ECHO, SERVER_ADDR, LATE_PORT, 1.0)
    ask = lab_.spawn_python(HOST, ASK_ONCE, SERVER_ADDR, LATE_PORT, 41234, 5, ready=None)
    line = echo.stdout.readline().strip()           # the datagram is through fw-a
    time.sleep(0.010)
    dead, survivor, _ = labrun.kill_active(lab_.topo, log=quiet)
    assert line.startswith(f"got {NAT_ADDR}:"), line
    out = ask.communicate(timeout=15)[0].strip()
    assert out == "late hello", (out, units[FW_B].log.read_text(errors="replace")[-3000:])


def test_a_sigkilled_active_daemon_leaves_no_virtual_address_or_mac_behind(pair):
    """Not a power cut: only the daemon dies, its namespace and links stay up. Its beat gives
    the virtual MAC and addresses back (dataplane.release), the standby takes over, and the
    dead unit no longer answers for the gateway."""
    import signal
    from scripts.lab.topology import INSIDE_GW, INSIDE_LEG

    lab_, units = pair

    def leg():
        return leg_state(lab_, FW_A, INSIDE_LEG)
    held = leg()
    assert held["mac"].startswith("02:4e:50:") and INSIDE_GW in held["addrs"], held
    units[FW_A].proc.send_signal(signal.SIGKILL)
    units[FW_A].proc.wait(timeout=10)
    labrun.wait_role(lab_.topo, FW_B, ("ACTIVE",))
    end = time.monotonic() + 10
    while (got := leg())["mac"] == held["mac"] or INSIDE_GW in got["addrs"]:
        assert time.monotonic() < end, (held, got, units[FW_A].log.read_text(errors="replace")[-2000:])
        time.sleep(0.1)
    assert "the daemon died" in units[FW_A].log.read_text(errors="replace")
