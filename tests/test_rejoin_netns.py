"""A killed unit rejoins the pair, and a second failover goes back to it (root; marker
`netns`). Issue 4, sections 7 and 8.

The lab's topology under a unique prefix `npj<hex>-` (always taken down), fw-a and fw-b
started as a pair (scripts/lab/run.start_pair). fw-a is killed like a power cut, brought back
by scripts/lab/run.rejoin (build.power_on: its namespace and legs again, then its daemon),
and must go standby-cold -> bulk-sync -> standby-ready behind fw-b, the bulk sync carrying
the flow's state and the inside host's neighbour entry; then fw-b is killed and fw-a takes the flow back: every byte arrives, one
NAT port from first to last, no reset seen by either end.
"""
import json
import signal
import time

import pytest

from netns_lab import Lab, quiet, unique_prefix
from scripts.lab import run as labrun
from scripts.lab.topology import (FW_A, FW_B, HOST, HOST_ADDR, HOST_LEG, INSIDE_LEG, SERVER,
                                  SERVER_ADDR, lab)
from test_failover_netns import stream, tcp_counter
from test_neighbours_netns import mac_of, neighbours, wait_for

pytestmark = pytest.mark.netns

STREAM_PORT = 9300
SEND_S = 60                     # at most: stopped (SIGINT) once the flow is back on fw-a
AFTER_S = 1.5                   # of the flow through fw-a after the second kill
# not a test of detection speed: timers that no load on a shared 2-core machine trips
TIMERS = {"poll_ms": 20, "hold_ms": 300}


@pytest.fixture
def pair(request):
    lab_ = Lab.up(lab(unique_prefix("j")), request)
    units = labrun.start_pair(lab_.topo, "c", log=quiet, **TIMERS)
    return lab_, units


def test_a_rejoined_unit_is_ready_and_a_second_failover_back_keeps_the_flow(pair):
    lab_, units = pair
    resets = {n: tcp_counter(lab_, n, "EstabResets") for n in (HOST, SERVER)}
    sink = lab_.spawn(SERVER, stream(lab_, SERVER, "sink", "--proto", "tcp", "--bind", SERVER_ADDR,
                                     "--port", STREAM_PORT, "--seconds", SEND_S + 30),
                      cwd=str(labrun.REPO))
    assert sink.stdout.readline().strip() == "ready"
    sender = lab_.spawn(HOST, stream(lab_, HOST, "send", "--proto", "tcp", "--to", SERVER_ADDR,
                                     "--port", STREAM_PORT, "--pps", 1000, "--seconds", SEND_S),
                        cwd=str(labrun.REPO))
    time.sleep(1.0)
    dead, survivor, _ = labrun.kill_active(lab_.topo, log=quiet)
    assert (dead, survivor) == (FW_A, FW_B)

    rejoined = labrun.rejoin(lab_.topo, FW_A, "c", log=quiet, **TIMERS)
    roles = rejoined["roles"]
    assert roles[-1] == "STANDBY_READY", roles
    assert roles.index("STANDBY_COLD") < roles.index("BULK_SYNC") < roles.index("STANDBY_READY")
    assert "ACTIVE" not in roles, roles                 # no preemption, no dual active
    assert rejoined["bulk_records"] >= 1, rejoined      # the stream's state at least
    # the new namespace never heard the inside host: its entry came with fw-b's bulk sync
    host = wait_for(lambda: neighbours(lab_, FW_A, INSIDE_LEG).get(HOST_ADDR))
    assert host and host[0] == mac_of(lab_, HOST, HOST_LEG), host

    assert sender.poll() is None, "the stream ended before the second kill: nothing tested"
    dead, survivor, took_ms = labrun.kill_active(lab_.topo, log=quiet)
    assert (dead, survivor) == (FW_B, FW_A)
    time.sleep(AFTER_S)
    sender.send_signal(signal.SIGINT)

    sent = json.loads(sender.communicate(timeout=30)[0].strip().splitlines()[-1])
    got = json.loads(sink.communicate(timeout=30)[0].strip().splitlines()[-1])
    log = (lab_.rdir / f"{FW_A}.log").read_text(errors="replace")[-3000:]
    assert sent["error"] is None, (sent, log)
    assert not got["reset"] and got["received"] == sent["sent"], (got, sent, log)
    assert got["distinct_ports"] == 1, got              # one NAT port through three units' turns
    assert {n: tcp_counter(lab_, n, "EstabResets") for n in (HOST, SERVER)} == resets
    print(f"\nrejoin: {' -> '.join(roles)}, bulk {rejoined['bulk_records']} states in "
          f"{rejoined['bulk_ms']} ms, ready {rejoined['ready_ms']:.0f} ms after power on; "
          f"back on fw-a {took_ms:.0f} ms after the cut; gaps {got.get('gaps_ms')} ms, "
          f"NAT port {got['ports'][0]}")
