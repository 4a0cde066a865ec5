"""Detection over every path, split links and virtual MACs, with two natpair daemons in
namespaces (root; marker `netns`). Issue 4, sections 5 and 6.

Each test gets its own lab (prefix `npd<hex>-`, always taken down) and fw-a active, fw-b
standby-ready (scripts/lab/run.start_pair), with hellos on the failover link and on both
data legs. The failover link is cut at fw-b's port on the failover switch: set down (fw-b's
fo0 loses carrier) or deleted (fw-b's fo0 vanishes with it); fw-a's fo0 stays up and only
hears silence there.

- a cut failover link while both units live (both ways of cutting): exactly one active at
  every sample, the split counted on both, no takeover, the virtual MAC only on fw-a;
  after the port is back (re-created, for a deleted one) fw-b is standby-ready again and
  replication works: a UDP state made through fw-a DURING the cut is on fw-b (the
  server's late answer reaches the inside through fw-b after fw-a is killed);
- the failover leg gone and the peer dead: fw-b takes over after a couple of polls, long
  before the hold time (netlink link watch + data-path silence). Deleted, not set down:
  the kernel reports a carrier loss through linkwatch, which runs at most once a second
  machine-wide for non-urgent events (a veth whose ifindex equals its peer's, a physical
  NIC), so a carrier-down event may come up to 1 s late; a deleted link is reported at once;
- the virtual MAC is on the active's data legs only, moves at the takeover, and the
  inside host's neighbour entry for the gateway keeps the same MAC across the kill;
- a crashed (SIGKILLed) active restarts with its own MAC and no virtual address, and joins
  as a ready standby.
"""
import json
import os
import signal
import time

import pytest
from pyroute2 import IPRoute

from netns_lab import Lab, quiet, unique_prefix
from scripts.lab import run as labrun
from scripts.lab.topology import (BRIDGE, FAILOVER_LEG, FO_SW, FW_A, FW_B, HOST, INSIDE_GW,
                                  INSIDE_LEG, NAT_ADDR, OUTSIDE_LEG, SERVER, SERVER_ADDR, lab)
from scripts.lab.unit import socket_path, start_unit
from dataplane.config import default_vmac
from dataplane.daemon import request
from test_failover_netns import ASK_ONCE, LATE_ECHO

pytestmark = pytest.mark.netns

SPLIT_PORT = 9300
POLL_MS, HOLD_MS = 10, 200          # generous: these tests are not about the hold time
VMAC_IN, VMAC_OUT = default_vmac(1, "inside"), default_vmac(1, "outside")


@pytest.fixture
def pair(request):
    lab_ = Lab.up(lab(unique_prefix("d")), request)
    units = labrun.start_pair(lab_.topo, "c", log=quiet, poll_ms=POLL_MS, hold_ms=HOLD_MS)
    return lab_, units


def ask(lab_: Lab, unit: str, cmd: str = "status") -> dict:
    return request(str(socket_path(lab_.topo, unit)), cmd, timeout=2.0)


def set_port(lab_: Lab, switch: str, port: str, up: bool) -> None:
    with IPRoute(netns=lab_.ns(switch), flags=0) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=port)[0], state="up" if up else "down")


def mac_of(lab_: Lab, node: str, ifname: str) -> str:
    with IPRoute(netns=lab_.ns(node), flags=0) as ipr:
        return ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0].get_attr("IFLA_ADDRESS")


def neighbour(lab_: Lab, node: str, ip: str) -> str | None:
    with IPRoute(netns=lab_.ns(node), flags=0) as ipr:
        for n in ipr.get_neighbours(dst=ip):
            return n.get_attr("NDA_LLADDR")
    return None


def cut(lab_: Lab, how: str) -> None:
    with IPRoute(netns=lab_.ns(FO_SW), flags=0) as ipr:
        port = ipr.link_lookup(ifname=FW_B)[0]
        if how == "down":
            ipr.link("set", index=port, state="down")
        else:
            ipr.link("del", index=port)         # the veth pair goes: fw-b's fo0 with it


def restore(lab_: Lab, how: str) -> None:
    if how == "down":
        set_port(lab_, FO_SW, FW_B, up=True)
        return
    link = lab_.topo.link(FW_B, FAILOVER_LEG)
    with IPRoute(netns=lab_.ns(FO_SW), flags=0) as ipr:
        ipr.link("add", ifname=FW_B, kind="veth",
                 peer={"ifname": FAILOVER_LEG, "net_ns_fd": lab_.ns(FW_B)})
        port = ipr.link_lookup(ifname=FW_B)[0]
        ipr.link("set", index=port, master=ipr.link_lookup(ifname=BRIDGE)[0])
        ipr.link("set", index=port, state="up")
    with IPRoute(netns=lab_.ns(FW_B), flags=0) as ipr:
        leg = ipr.link_lookup(ifname=FAILOVER_LEG)[0]
        addr, plen = link.addrs[0].split("/")
        ipr.addr("add", index=leg, address=addr, prefixlen=int(plen))
        ipr.link("set", index=leg, state="up")


def roles(lab_: Lab) -> dict[str, str]:
    out = {}
    for u in (FW_A, FW_B):
        reply = ask(lab_, u)
        assert "role" in reply, (u, reply)
        out[u] = reply["role"]
    return out


@pytest.mark.parametrize("how", ["down", "delete"])
def test_cut_failover_link_keeps_one_active_and_replication_resumes(pair, how):
    lab_, units = pair
    for u in (FW_A, FW_B):
        c = ask(lab_, u, "counters")["replication"]
        assert c.get("beat_rx_inside", 0) > 0 and c.get("beat_rx_outside", 0) > 0, c
    cut(lab_, how)
    seen = []
    echo = ask_ = None
    t_end = time.monotonic() + 4 * HOLD_MS / 1000 + 0.5
    while time.monotonic() < t_end:
        seen.append((roles(lab_), mac_of(lab_, FW_B, INSIDE_LEG) == VMAC_IN))
        if echo is None and time.monotonic() > t_end - 1.0:
            # a state made through fw-a while the link is cut (only fw-a knows it now)
            echo = lab_.spawn_python(SERVER, LATE_ECHO, SERVER_ADDR, SPLIT_PORT, 5.0)
            ask_ = lab_.spawn_python(HOST, ASK_ONCE, SERVER_ADDR, SPLIT_PORT, 41300, 12, ready=None)
            assert echo.stdout.readline().strip().startswith(f"got {NAT_ADDR}:")
        time.sleep(0.02)
    # one active, and only it holds the virtual MAC
    assert all(s == ({FW_A: "ACTIVE", FW_B: "STANDBY_READY"}, False) for s in seen), seen
    a, b = ask(lab_, FW_A, "counters")["replication"], ask(lab_, FW_B, "counters")["replication"]
    assert b["detect_split_link"] >= 1 and b["role_split_link_no_takeover"] >= 1, b
    # a carrier loss may reach us up to 1 s late (linkwatch, see above); a deletion at once
    assert b.get("carrier_changes_down", 0) <= 1 and (how == "down" or b["carrier_changes_down"] == 1), b
    assert a["detect_split_link"] >= 1 and a.get("role_takeovers", 0) == 0, a
    assert "split link, no takeover" in units[FW_B].log.read_text()

    restore(lab_, how)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        sa, sb = ask(lab_, FW_A), ask(lab_, FW_B)
        if sb["role"] == "STANDBY_READY" and sb["states"] >= sa["states"] >= 1:
            break
        time.sleep(0.05)
    assert sb["role"] == "STANDBY_READY" and sb["states"] >= sa["states"], (sa, sb)
    c = ask(lab_, FW_B, "counters")["replication"]
    assert c.get("carrier_changes_up", 0) == c.get("carrier_changes_down", 0), c
    assert ask(lab_, FW_B)["uptime_s"] > 1             # the same daemon, it survived
    dead, survivor, _ = labrun.kill_active(lab_.topo, log=quiet)
    assert (dead, survivor) == (FW_A, FW_B)
    out = ask_.communicate(timeout=20)[0].strip()
    assert out == "late hello", (out, units[FW_B].log.read_text(errors="replace")[-3000:])


def test_failover_link_gone_and_a_dead_peer_take_over_faster_than_hold(pair):
    lab_, units = pair
    with IPRoute(netns=lab_.ns(FO_SW), flags=0) as ipr:    # opening one takes a while: first
        port = ipr.link_lookup(ifname=FW_B)[0]
        os.kill(units[FW_A].proc.pid, signal.SIGSTOP)    # fw-a freezes: dead on every path
        t0 = time.monotonic()
        ipr.link("del", index=port)                      # ... and fw-b's fo0 vanishes
    labrun.wait_role(lab_.topo, FW_B, ("ACTIVE",), timeout_s=5)
    took_ms = (time.monotonic() - t0) * 1000
    log = units[FW_B].log.read_text()
    assert "failover carrier lost and no hello on inside/outside" in log, log[-2000:]
    c = ask(lab_, FW_B, "counters")["replication"]
    assert c["detect_silent_carrier"] == 1 and c.get("detect_silent_hold", 0) == 0, c
    # the detector decided within confirm_polls (2) x poll after the carrier event; the
    # status poll adds up to 50 ms on top, well below the hold time either way
    assert took_ms < HOLD_MS, took_ms
    print(f"\ncarrier + silent data legs: fw-b ACTIVE {took_ms:.0f} ms after the cut "
          f"(hold {HOLD_MS} ms, poll {POLL_MS} ms)")


def test_virtual_mac_is_on_the_active_and_moves_with_the_takeover(pair):
    lab_, units = pair
    assert (mac_of(lab_, FW_A, INSIDE_LEG), mac_of(lab_, FW_A, OUTSIDE_LEG)) == (VMAC_IN, VMAC_OUT)
    own_b = mac_of(lab_, FW_B, INSIDE_LEG)
    assert own_b != VMAC_IN and mac_of(lab_, FW_B, OUTSIDE_LEG) != VMAC_OUT
    ping = lab_.run(HOST, ["ping", "-c", "3", "-i", "0.05", "-W", "1", SERVER_ADDR], timeout=10)
    assert ping.returncode == 0, ping.stdout
    assert neighbour(lab_, HOST, INSIDE_GW) == VMAC_IN
    assert ask(lab_, FW_A)["failover"] and ask(lab_, FW_A)["virtual_macs"] == {
        INSIDE_LEG: VMAC_IN, OUTSIDE_LEG: VMAC_OUT}

    dead, survivor, _ = labrun.kill_active(lab_.topo, log=quiet)
    assert (dead, survivor) == (FW_A, FW_B)
    assert (mac_of(lab_, FW_B, INSIDE_LEG), mac_of(lab_, FW_B, OUTSIDE_LEG)) == (VMAC_IN, VMAC_OUT)
    # through fw-b: its rules (-i in0/out0) still match and translate (out-srv has no route
    # to the inside, it answers 198.19.1.1 only); the host never re-learned the gateway
    ping = lab_.run(HOST, ["ping", "-c", "3", "-i", "0.05", "-W", "1", SERVER_ADDR], timeout=10)
    assert ping.returncode == 0, (ping.stdout, units[FW_B].log.read_text()[-2000:])
    assert neighbour(lab_, HOST, INSIDE_GW) == VMAC_IN
    assert ask(lab_, FW_B, "counters")["vips"]["vmac_taken"] == 1


def test_a_crashed_active_restarts_with_its_own_mac_and_joins_as_standby(pair):
    """SIGKILL to the daemon and its beat at once (its process group: what the beat would
    give back on the daemon's death stays, test_failover_netns has the daemon alone), not a
    power cut: fw-a's kernel keeps the virtual MAC and addresses it held. fw-b takes over;
    the restarted fw-a gives them back first (its own MAC from <socket>.mac.json), joins as
    a standby and is ready; the virtual MAC is on fw-b only."""
    lab_, units = pair
    mac_file = socket_path(lab_.topo, FW_A).with_suffix(".mac.json")
    own_a = json.loads(mac_file.read_text())[INSIDE_LEG]
    assert own_a != VMAC_IN
    os.killpg(units[FW_A].proc.pid, signal.SIGKILL)            # the daemon's session: it and its beat
    units[FW_A].proc.wait(timeout=5)
    labrun.wait_role(lab_.topo, FW_B, ("ACTIVE",), timeout_s=5)
    assert mac_of(lab_, FW_A, INSIDE_LEG) == VMAC_IN            # left behind by the crash
    start_unit(lab_.topo, FW_A, feed="c", log=quiet, failover=True, poll_ms=POLL_MS,
               hold_ms=HOLD_MS)
    labrun.wait_role(lab_.topo, FW_A, ("STANDBY_READY",), timeout_s=15)
    assert mac_of(lab_, FW_A, INSIDE_LEG) == own_a
    assert mac_of(lab_, FW_B, INSIDE_LEG) == VMAC_IN
    assert ask(lab_, FW_B)["role"] == "ACTIVE"
    with IPRoute(netns=lab_.ns(FW_A), flags=0) as ipr:
        held = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2)]
    assert INSIDE_GW not in held and NAT_ADDR not in held, held
    ping = lab_.run(HOST, ["ping", "-c", "3", "-i", "0.05", "-W", "1", SERVER_ADDR], timeout=10)
    assert ping.returncode == 0, ping.stdout
