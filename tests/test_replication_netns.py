"""Replication between two running natpair daemons in namespaces (root; marker `netns`).
Issue 4, section 8: the bulk sync, a lossy failover link, hostile datagrams.

Each test gets its own lab (the lab's topology under a unique prefix `npr<hex>-`, always
taken down) and starts fw-a and fw-b as a pair (scripts/lab/unit.start_unit). The tables of
the two units are compared through the control socket's `export` (every state as the
replication wire carries it).

- 100k states made by real traffic (UDP datagrams from the inside host to 100k ports of the
  outside server, each a new state through fw-a's C feed and core; a round is re-sent if the
  queue dropped some, which only refreshes the states already made) are bulk-synced to fw-b
  when it joins: complete and identical, every field (the two relative timers to 2 s).
  Real packets rather than a test hook: at ~100k datagrams a second this costs seconds.
- with 10% and then 30% random loss both ways on fw-b's failover leg (iptables statistic in
  fw-b's namespace), new states keep coming; fw-b converges to fw-a's table; then fw-b is
  restarted under 30% loss and its bulk sync completes to the same table.
- forged (bad MAC), replayed, truncated, short and wrong-version datagrams sent to fw-b's
  failover port from fw-a's address and port are each refused and counted under their
  reason (`natpair counters`), and fw-b's table does not change.
"""
from __future__ import annotations

import base64
import sys
import json
import socket
import textwrap
import time

import pytest

from netns_lab import Lab, quiet, unique_prefix
from scripts.bench_bulk import compare
from scripts.lab import run as labrun
from scripts.lab.topology import FAILOVER_LEG, FW_A, FW_B, HOST, SERVER_ADDR, lab
from scripts.lab.unit import FAILOVER_PORT, start_unit, wait_role

pytestmark = pytest.mark.netns

BIG = "[core]\nmax_states = 262144\n"
# timing is not what these tests are about: a loaded machine must not fake a failover
POLL_MS, HOLD_MS = 10, 1500


def export(unit) -> bytes:
    """The unit's table as wire records (the control socket's export)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(unit.socket))
        s.sendall(b'{"cmd": "export"}\n')
        s.shutdown(socket.SHUT_WR)
        parts = []
        while chunk := s.recv(1 << 20):
            parts.append(chunk)
    reply = json.loads(b"".join(parts))
    assert reply["ok"], reply
    data = base64.b64decode(reply["records"])
    assert len(data) == reply["states"] * 104
    return data


def ask(unit, cmd: str) -> dict:
    return labrun.request(str(unit.socket), cmd, timeout=5.0)


def start(lab_: Lab, name: str, extra: str = "") -> object:
    return start_unit(lab_.topo, name, feed="c", log=quiet, failover=True, extra_config=extra,
                      poll_ms=POLL_MS, hold_ms=HOLD_MS)


# UDP datagrams from the inside host: socket k (port base + k) to ports 1..per of the
# server, in bursts; each (socket, port) is one state on the active.
# A round goes in a random order: what the kernel queue dropped in one round (it drops the
# tail of a burst the feed has not taken yet) is somewhere else in the next.
FLOWS = textwrap.dedent("""\
    import random, socket, sys, time
    dst, base, nsocks, per, burst, pause = sys.argv[1], *map(int, sys.argv[2:6]), float(sys.argv[6])
    socks = []
    for k in range(nsocks):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", base + k))
        socks.append(s)
    flows = [(s, port) for s in socks for port in range(1, per + 1)]
    random.shuffle(flows)
    for n, (s, port) in enumerate(flows, 1):
        s.sendto(b"state", (dst, port))
        if n % burst == 0:
            time.sleep(pause)
    print(len(flows))
    """)


def make_flows(lab_: Lab, active, base: int, nsocks: int, per: int, *, burst: int = 64,
               pause: float = 0.002, rounds: int = 5) -> int:
    """nsocks x per new states on the active, by real datagrams; the states it holds. A round
    sends every flow again (slower each time) until the active holds them all."""
    want = ask(active, "status")["states"] + nsocks * per
    for i in range(rounds):
        r = lab_.python(HOST, FLOWS, SERVER_ADDR, base, nsocks, per, burst, pause * (i + 1),
                        timeout=120)
        assert r.returncode == 0, r.stderr
        time.sleep(0.3)
        have = ask(active, "status")["states"]
        if have >= want:
            return have
    c = ask(active, "counters")
    raise AssertionError(f"{have} states on the active, {want} wanted; core {c['core']}, "
                         f"feed {c['feed']}")


def converged(a, b, timeout_s: float, counters: bool = False) -> str | None:
    """None once b's table equals a's (compare()), else the last difference."""
    end = time.monotonic() + timeout_s
    while True:
        diff = compare(export(a), export(b), counters=counters)
        if diff is None or time.monotonic() > end:
            return diff
        time.sleep(0.5)


def test_a_bulk_sync_of_100k_states_is_complete_and_identical(request):
    lab_ = Lab.up(lab(unique_prefix("r")), request)
    a = start(lab_, FW_A, BIG)
    wait_role(lab_.topo, FW_A, ("ACTIVE",))
    have = make_flows(lab_, a, 20000, 2, 50_000)
    assert have >= 100_000
    b = start(lab_, FW_B, BIG)
    st = wait_role(lab_.topo, FW_B, ("STANDBY_READY",), timeout_s=60)
    bulk = st["failover"]["bulk_recv"]
    assert bulk["state"] == "DONE" and bulk["received"] == have, bulk
    print(f"bulk sync of {have} states: {bulk['elapsed_ms']} ms")
    ta, tb = export(a), export(b)
    assert len(ta) == len(tb) == have * 104
    assert compare(ta, tb) is None          # every field; the timers to 2 s
    c = ask(b, "counters")["core"]
    assert c["import_insert"] >= have and c["import_invalid"] == 0 and c["import_conflict"] == 0


LOSS = textwrap.dedent("""\
    *filter
    :INPUT ACCEPT [0:0]
    :OUTPUT ACCEPT [0:0]
    -A INPUT -i {leg} -p udp --dport {port} -m statistic --mode random --probability {p} -j DROP
    -A OUTPUT -o {leg} -p udp --dport {port} -m statistic --mode random --probability {p} -j DROP
    COMMIT
    """)


def dropped(lab_: Lab) -> int:
    r = lab_.run(FW_B, ["iptables", "-t", "filter", "-L", "-v", "-x", "-n"], timeout=10)
    return sum(int(ln.split()[0]) for ln in r.stdout.splitlines() if "statistic" in ln)


def test_the_standby_converges_over_a_lossy_failover_link(request):
    lab_ = Lab.up(lab(unique_prefix("r")), request)
    a = start(lab_, FW_A)
    wait_role(lab_.topo, FW_A, ("ACTIVE",))
    make_flows(lab_, a, 20000, 1, 500)
    b = start(lab_, FW_B)
    wait_role(lab_.topo, FW_B, ("STANDBY_READY",), timeout_s=30)
    base = 21000
    for p in (0.1, 0.3):
        lab_.iptables_restore(FW_B, LOSS.format(leg=FAILOVER_LEG, port=FAILOVER_PORT, p=p))
        before = dropped(lab_)
        # live changes through the loss: new states, 1000 a second for 3 s
        make_flows(lab_, a, base, 3, 1000, burst=50, pause=0.05)
        base += 10
        assert converged(a, b, 30) is None, f"not converged at {p:.0%} loss"
        assert dropped(lab_) > before, "the loss rule dropped nothing"
        assert ask(b, "status")["role"] == "STANDBY_READY"
    rc = ask(a, "counters")["replication"]
    assert rc["tx_retransmits"] > 0 and rc["rx_nacks"] > 0
    # a rejoin under 30% loss: the whole table again, in a bulk sync
    b.proc.terminate()
    assert b.proc.wait(timeout=15) == 0
    b = start(lab_, FW_B)
    st = wait_role(lab_.topo, FW_B, ("STANDBY_READY",), timeout_s=60)
    assert st["failover"]["bulk_recv"]["received"] == ask(a, "status")["states"]
    assert converged(a, b, 30, counters=True) is None


# Run in fw-a's namespace: capture what fw-a sends to fw-b's failover ports for a while (the
# stream's, and the beat's hellos on port + 1, replication/beat.py), then send each from
# fw-a's address and its port to the port it went to: the captured datagrams again (replayed), cut
# short (truncated: the length field no longer matches), cut below the header (short), with
# the next version, with one byte of the body flipped (the MAC no longer matches), and an INSERT
# of a made-up state sealed under another key (forged). One JSON line: what was sent.
HOSTILE = textwrap.dedent("""\
    import json, sys, time
    from scapy.all import IP, UDP, Raw, conf, sniff
    from dataplane.core import Key, Peer, StateRecord
    from replication import wire
    src, dst, port, unit = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    got = sniff(iface=sys.argv[5], timeout=1.0,
                lfilter=lambda p: UDP in p and p[IP].src == src and p[IP].dst == dst)
    data = [(bytes(p[UDP].payload), p[UDP].dport) for p in got][-20:]
    l3 = conf.L3socket()
    def out(payload, to=port):
        l3.send(IP(src=src, dst=dst) / UDP(sport=to, dport=to) / Raw(payload))
    for d, to in data:
        out(d, to)
    for d, to in data[:5]:
        out(d[:-1], to)
        out(d[:30], to)
        out(bytes(d[:4]) + bytes([wire.VERSION + 1]) + bytes(d[5:]), to)
        b = bytearray(d); b[50] ^= 1; out(bytes(b), to)
    forged = StateRecord(id=4242, creator=unit, proto=17, tcp_state=0, flags=0,
                         keys=(Key(0xC6120164, 0xC613010A, 4242, 53, 17, 0),
                               Key(0xC613010A, 0xC6130101, 53, 4242, 17, 1)),
                         peers=(Peer(0, 0, 0, 0, 0),) * 2, expire_in_ms=60000, age_ms=0,
                         bytes=(0, 0), packets=(0, 0))
    codec = wire.Codec(b"not the failover key, not at all", unit, epoch=wire.new_epoch())
    out(codec.encode(wire.Message(unit=unit, epoch=codec.epoch, xmit=1, seq=1,
                                  flags=wire.F_RELIABLE, sections=((wire.INSERT, (forged,)),))))
    print(json.dumps({"replayed": len(data), "cut": min(5, len(data))}))
    """)

REASONS = ("replay", "stale", "bad_length", "short", "bad_version", "bad_mac")


def test_forged_replayed_truncated_and_wrong_version_datagrams_are_refused_and_counted(request):
    lab_ = Lab.up(lab(unique_prefix("r")), request)
    a = start(lab_, FW_A)
    wait_role(lab_.topo, FW_A, ("ACTIVE",))
    make_flows(lab_, a, 20000, 1, 200)
    b = start(lab_, FW_B)
    wait_role(lab_.topo, FW_B, ("STANDBY_READY",), timeout_s=30)
    fw_a_fo = lab_.topo.link(FW_A, FAILOVER_LEG).addrs[0].split("/")[0]
    fw_b_fo = lab_.topo.link(FW_B, FAILOVER_LEG).addrs[0].split("/")[0]
    table = export(b)
    before = ask(b, "counters")["replication"]
    argv = [sys.executable, "-c", HOSTILE, fw_a_fo, fw_b_fo, FAILOVER_PORT,
            ask(a, "status")["creator_id"], FAILOVER_LEG]
    r = lab_.run(FW_A, [str(x) for x in argv], timeout=60, cwd=str(labrun.REPO))
    assert r.returncode == 0, r.stderr
    sent = json.loads(r.stdout.strip().splitlines()[-1])
    assert sent["replayed"] >= 10, sent
    time.sleep(0.5)
    after = ask(b, "counters")["replication"]
    # the stream's codec and the beat's (beat_wire_*) between them refused every one
    d = {k: after.get(k, 0) - before.get(k, 0) + after.get(f"beat_wire_{k}", 0)
         - before.get(f"beat_wire_{k}", 0) for k in REASONS}
    assert d["replay"] + d["stale"] == sent["replayed"], d
    assert d["bad_length"] == d["short"] == d["bad_version"] == sent["cut"], d
    assert d["bad_mac"] == sent["cut"] + 1, d           # the flipped bytes and the forged INSERT
    assert (after["rx_dropped"] - before["rx_dropped"] + after["beat_rx_rejected_failover"]
            - before["beat_rx_rejected_failover"]) == sum(d.values())
    # no table changed: fw-b holds what it held, not the forged state; the pair is intact
    assert compare(table, export(b), counters=False) is None
    assert (4242, ask(a, "status")["creator_id"]) not in {
        (int.from_bytes(r[:8], "big"), int.from_bytes(r[8:12], "big"))
        for r in (table[i:i + 104] for i in range(0, len(table), 104))}
    assert ask(b, "status")["role"] == "STANDBY_READY" and ask(a, "status")["role"] == "ACTIVE"
    assert ask(b, "counters")["daemon"]["loop_errors"] == 0
