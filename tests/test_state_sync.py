"""State sync, the basis of failover: export/import, the change journal, import validation.

Two cores with the same configuration stand for the active and the standby unit. Whatever the
active core knows is moved to the standby (a bulk export, or the journal replayed), and from then
on both cores must treat the next packet of every flow byte for byte the same.
"""
from __future__ import annotations

import dataclasses
import random

import pytest
from scapy.layers.inet import IP, TCP

from dataplane.core import (Conflict, Core, InvalidArgument, Key, NotFound, Peer, StateRecord,
                            TableFull, ip_int, ip_str)
from tests.packets import (IN_A, IN_B, IN_C, POOL_1, POOL_2, POOL_3, POOL_4, ROUTER, SRV_1, SRV_2,
                           SRV_3, addrs, echo, icmp_error, ports, quote, udp)

PF_INSIDE = "198.18.0.50"       # static port forward POOL_3:8080 -> PF_INSIDE:80
ONE_TO_ONE = "198.18.0.51"      # static 1:1 ONE_TO_ONE <-> POOL_4
PORT_RANGE = (20000, 29999)


def tcp_bytes(src, dst, sport, dport, flags, seq=0, ack=0, win=65535, wscale=None, data=b""):
    opts = [("MSS", 1460)] + ([("WScale", wscale)] if wscale is not None else [])
    return bytes(IP(src=src, dst=dst) /
                 TCP(sport=sport, dport=dport, flags=flags, seq=seq % 2**32, ack=ack % 2**32,
                     window=win, options=opts if "S" in flags else []) / data)


def make_core(seed: int = 1, **kw) -> Core:
    """The one configuration both units share (only the hash seed differs, as on real units)."""
    kw.setdefault("port_range", PORT_RANGE)
    core = Core(pool=[POOL_1, POOL_2], hash_seed=seed, **kw)
    core.add_static(PF_INSIDE, POOL_3, "tcp", inside_port=80, outside_port=8080)
    core.add_static(ONE_TO_ONE, POOL_4)
    return core


def accept(core: Core, pkt: bytes, side: str):
    v = core.process(pkt, side)
    assert v.accepted, v.reason
    return v


def out_of(v) -> tuple[str, int]:
    """The translated source endpoint of an accepted packet."""
    return addrs(v.data)[0], ports(v.data)[0]


def both(a: Core, b: Core, pkt: bytes, side: str, accepted: bool = True):
    va, vb = a.process(pkt, side), b.process(pkt, side)
    assert va == vb, (va, vb)
    assert va.accepted is accepted, va.reason
    return va


def norm(r: StateRecord) -> StateRecord:
    return dataclasses.replace(r, age_ms=0, expire_in_ms=0)


def assert_same_states(a: Core, b: Core, counters: bool = True):
    ra = {r.id: r for r in a.export()}
    rb = {r.id: r for r in b.export()}
    assert sorted(ra) == sorted(rb)
    for i, r in ra.items():
        x, y = norm(r), norm(rb[i])
        if not counters:
            x = dataclasses.replace(x, bytes=(0, 0), packets=(0, 0))
            y = dataclasses.replace(y, bytes=(0, 0), packets=(0, 0))
        assert x == y
        assert abs(r.expire_in_ms - rb[i].expire_in_ms) <= 1000, (r, rb[i])
        assert abs(r.age_ms - rb[i].age_ms) <= 1000, (r, rb[i])
    assert a.mapping_count == b.mapping_count


def replay(changes, replica: Core) -> int:
    """Apply a change stream as the standby would; returns the deletes of unknown states."""
    unknown = 0
    for ch in changes:
        if ch.kind == "delete":
            assert ch.record is None
            try:
                replica.import_delete(ch.creator, ch.id)
            except NotFound:
                unknown += 1
        else:
            assert ch.record.id == ch.id and ch.record.creator == ch.creator
            replica.import_state(ch.record)
    return unknown


def sync(a: Core, b: Core):
    for r in a.export():
        b.import_state(r)


# ------------------------------------------------------------------ a table of every kind


class Tcp:
    def __init__(self, core, client, cport, server, sport):
        self.client, self.cport, self.server, self.sport = client, cport, server, sport
        self.out = None
        self.core = core

    def c2s(self, flags, seq, ack=0, **kw):
        return tcp_bytes(self.client, self.server, self.cport, self.sport, flags, seq, ack, **kw)

    def s2c(self, flags, seq, ack=0, **kw):
        return tcp_bytes(self.server, self.out[0], self.sport, self.out[1], flags, seq, ack, **kw)

    def syn(self, **kw):
        v = accept(self.core, self.c2s("S", 1000, **kw), "inside")
        self.out = out_of(v)
        return v

    def open(self, cw=None, sw=None, win=65535):
        self.syn(wscale=cw, win=win)
        accept(self.core, self.s2c("SA", 5000, 1001, wscale=sw, win=win), "outside")
        accept(self.core, self.c2s("A", 1001, 5001, win=win), "inside")


def build_table(a: Core) -> dict:
    """Flows of every kind on the active core; returns what the next packets need."""
    f = {}
    # TCP established, windows moved both ways, window scaling on
    t = f["est"] = Tcp(a, IN_A, 40000, SRV_1, 80)
    t.open(cw=7, sw=7, win=1024)
    accept(a, t.c2s("PA", 1001, 5001, data=b"q" * 1000, win=1024), "inside")
    accept(a, t.s2c("PA", 5001, 2001, data=b"r" * 3000, win=1024), "outside")
    accept(a, t.c2s("A", 2001, 8001, win=1024), "inside")
    # TCP in syn-sent, syn-received, fin-wait, close-wait
    t = f["syn_sent"] = Tcp(a, IN_A, 40001, SRV_1, 80)
    t.syn()
    t = f["syn_recv"] = Tcp(a, IN_A, 40002, SRV_1, 80)
    t.syn()
    accept(a, t.s2c("SA", 5000, 1001), "outside")
    t = f["fin_wait"] = Tcp(a, IN_B, 40003, SRV_2, 443)
    t.open()
    accept(a, t.c2s("FA", 1001, 5001), "inside")
    t = f["close_wait"] = Tcp(a, IN_B, 40004, SRV_2, 443)
    t.open()
    accept(a, t.s2c("FA", 5001, 1001), "outside")
    accept(a, t.c2s("A", 1001, 5002), "inside")
    # UDP
    v = accept(a, udp(IN_A, SRV_2, 5353, 53), "inside")
    f["udp"] = out_of(v)
    accept(a, udp(SRV_2, f["udp"][0], 53, f["udp"][1]), "outside")
    # ICMP echo
    v = accept(a, echo(IN_B, SRV_3, 777), "inside")
    f["icmp"] = out_of(v)
    accept(a, echo(SRV_3, f["icmp"][0], f["icmp"][1], reply=True), "outside")
    # static port forward, opened from the outside
    t = f["pf"] = Tcp(a, SRV_3, 6000, POOL_3, 8080)
    v = accept(a, t.c2s("S", 1000), "outside")
    assert addrs(v.data) == (SRV_3, PF_INSIDE) and ports(v.data) == (6000, 80)
    accept(a, tcp_bytes(PF_INSIDE, SRV_3, 80, 6000, "SA", 5000, 1001), "inside")
    accept(a, t.c2s("A", 1001, 5001), "outside")
    # hairpin: IN_C to the outside endpoint of the UDP flow
    v = accept(a, udp(IN_C, f["udp"][0], 7000, f["udp"][1]), "inside")
    assert addrs(v.data)[1] == IN_A and ports(v.data)[1] == 5353
    f["hairpin"] = out_of(v)
    assert f["hairpin"][0] in (POOL_1, POOL_2)
    # static 1:1, outbound
    t = f["one"] = Tcp(a, ONE_TO_ONE, 1234, SRV_1, 80)
    t.open()
    assert t.out == (POOL_4, 1234)
    assert a.state_count == 10
    return f


def next_packets(f: dict) -> list[tuple[bytes, str, bool]]:
    """The next packet(s) of every flow, with whether they are to be accepted."""
    est, ss, sr = f["est"], f["syn_sent"], f["syn_recv"]
    fw, cw, pf, one = f["fin_wait"], f["close_wait"], f["pf"], f["one"]
    est_out = est.c2s("PA", 2001, 8001, data=b"n" * 500, win=1024)
    quoted = IP(est_out)
    quoted.src, quoted.sport = est.out[0], est.out[1]
    del quoted.chksum
    del quoted[TCP].chksum
    return [
        (est_out, "inside", True),
        (est.s2c("PA", 8001, 2501, data=b"m" * 700, win=1024), "outside", True),
        # far beyond the scaled window (1024 << 7 = 131072 past the last ack): strict drop
        (est.c2s("PA", 2501 + 200000, 8701, data=b"x" * 10), "inside", False),
        (est.s2c("PA", 8701 + 300000, 2501, data=b"y" * 10), "outside", False),
        # an ICMP error about the established flow, from a router outside
        (icmp_error(ROUTER, est.out[0], quote(bytes(quoted), 8), type=3, code=4), "outside", True),
        (ss.s2c("SA", 5000, 1001), "outside", True),
        (ss.c2s("A", 1001, 5001), "inside", True),
        (sr.c2s("A", 1001, 5001), "inside", True),
        (fw.s2c("A", 5001, 1002), "outside", True),
        (fw.s2c("FA", 5001, 1002), "outside", True),
        (fw.c2s("A", 1002, 5002), "inside", True),
        (cw.c2s("FA", 1001, 5002), "inside", True),
        (cw.s2c("A", 5002, 1002), "outside", True),
        (udp(SRV_2, f["udp"][0], 53, f["udp"][1], payload=b"answer"), "outside", True),
        (udp(IN_A, SRV_2, 5353, 53, payload=b"again"), "inside", True),
        (echo(SRV_3, f["icmp"][0], f["icmp"][1], reply=True, seq=1), "outside", True),
        (echo(IN_B, SRV_3, 777, seq=2), "inside", True),
        (pf.c2s("PA", 1001, 5001, data=b"GET /"), "outside", True),
        (tcp_bytes(PF_INSIDE, SRV_3, 80, 6000, "PA", 5001, 1006, data=b"200 OK"), "inside", True),
        (udp(IN_C, f["udp"][0], 7000, f["udp"][1], payload=b"hair"), "inside", True),
        (udp(IN_A, f["hairpin"][0], 5353, f["hairpin"][1], payload=b"pin"), "inside", True),
        (one.c2s("PA", 1001, 5001, data=b"one"), "inside", True),
        (one.s2c("PA", 5001, 1004, data=b"two"), "outside", True),
    ]


def test_bulk_export_import_every_flow_continues_identically():
    a, b = make_core(seed=11), make_core(seed=22)
    a.set_clock(5_000_000)
    b.set_clock(9_000_000)
    f = build_table(a)
    recs = list(a.export())
    assert len(recs) == 10
    assert {r.tcp_state_name for r in recs if r.proto == 6} == {
        "established", "syn-sent", "syn-received", "fin-wait", "close-wait"}
    for r in recs:
        b.import_state(r)
    cb = b.counters()
    assert cb["import_insert"] == 10 and cb["import_invalid"] == 0 and cb["import_conflict"] == 0
    assert b.state_count == 10 and b.mapping_count == a.mapping_count
    assert b.journal_pending() == 0         # the standby does not echo what it was given
    assert_same_states(a, b)
    for pkt, side, ok in next_packets(f):
        v = both(a, b, pkt, side, ok)
        if not ok:
            assert v.reason == "drop_tcp_window"
    states = {(r.keys[0].sport, r.proto): r.tcp_state_name for r in b.export()}
    assert states[(40001, 6)] == "established"
    assert states[(40002, 6)] == "established"
    assert states[(40003, 6)] == "time-wait"
    assert states[(40004, 6)] == "time-wait"
    assert_same_states(a, b)
    ca, cb = a.counters(), b.counters()
    assert ca["drop_tcp_window"] == 2 and cb["drop_tcp_window"] == 2
    assert ca["pkt_drop"] == 2 and cb["pkt_drop"] == 2


def test_import_keeps_endpoint_independent_mapping_and_no_overloading():
    a, b = make_core(seed=3), make_core(seed=4)
    v = accept(a, udp(IN_A, SRV_1, 5000, 53), "inside")
    mapped = out_of(v)
    sync(a, b)
    # a new flow of the same inside endpoint on the standby: the same outside endpoint
    v = accept(b, udp(IN_A, SRV_3, 5000, 123), "inside")
    assert out_of(v) == mapped
    assert b.mapping_count == 1
    # other inside endpoints with the same port never get that outside endpoint
    for host in ("198.18.1.1", "198.18.1.2", "198.18.1.3", "198.18.1.4", "198.18.1.5"):
        v = accept(b, udp(host, SRV_1, mapped[1], 53), "inside")
        assert out_of(v) != mapped
    assert b.mapping_count == 6


def _established(core, cport=40000, client=IN_A, server=SRV_1):
    t = Tcp(core, client, cport, server, 80)
    t.open()
    return t


def test_strict_window_after_import_in_both_directions():
    a, b = make_core(seed=5), make_core(seed=6)
    t = _established(a)
    accept(a, t.c2s("PA", 1001, 5001, data=b"a" * 30000), "inside")
    accept(a, t.s2c("A", 5001, 31001, win=40000), "outside")
    sync(a, b)
    # the client may send 40000 bytes past 31001 (windows never shrink, as in pf)
    both(a, b, t.c2s("PA", 31001, 5001, data=b"b" * 20000), "inside")
    both(a, b, t.c2s("PA", 51001, 5001, data=b"b" * 20000), "inside")
    v = both(a, b, t.c2s("PA", 71001, 5001, data=b"c"), "inside", accepted=False)
    assert v.reason == "drop_tcp_window"
    # and the server may send what the client's window allows
    v = both(a, b, t.s2c("PA", 5001 + 70000, 71001, data=b"d"), "outside", accepted=False)
    assert v.reason == "drop_tcp_window"
    both(a, b, t.s2c("PA", 5001, 71001, data=b"d" * 1000), "outside")
    # an old retransmission within the max window still passes, an older one does not
    both(a, b, t.c2s("PA", 31001, 5001, data=b"b" * 1000), "inside")
    v = both(a, b, t.c2s("PA", 1001, 5001, data=b"a" * 1000), "inside", accepted=False)
    assert v.reason == "drop_tcp_window"
    assert_same_states(a, b)


# ------------------------------------------------------------------ the journal


def test_journal_create_update_delete():
    a = make_core()
    a.set_clock(1_000_000)
    v = accept(a, udp(IN_A, SRV_1, 5000, 53), "inside")
    ch = a.drain()
    assert [c.kind for c in ch] == ["create"]
    rec = ch[0].record
    assert rec == a.get(1, rec.id)
    assert rec.proto == 17 and rec.keys[0] == Key(ip_int(IN_A), ip_int(SRV_1), 5000, 53, 17, 0)
    assert rec.outside == out_of(v)
    assert a.drain() == []
    t = _established(a)
    ch = a.drain()
    assert [c.kind for c in ch] == ["create"]          # the handshake coalesced into the create
    assert ch[0].record.tcp_state_name == "established"
    accept(a, t.c2s("PA", 1001, 5001, data=b"z" * 10), "inside")
    ch = a.drain()
    assert [c.kind for c in ch] == ["update"]
    assert ch[0].record.peers[0].seqlo == 1011
    tid = ch[0].id
    a.delete(1, rec.id)
    ch = a.drain()
    assert ch == [type(ch[0])("delete", 1, rec.id, None)]
    # an expiry is a delete too
    a.set_clock(1_000_000 + 3700_000)
    assert a.sweep() == 1
    ch = a.drain()
    assert [(c.kind, c.id) for c in ch] == [("delete", tid)]
    c = a.counters()
    assert c["journal_events"] == 5 and c["journal_overflow"] == 0


def test_journal_coalesces_window_moves_into_latest_update():
    a = make_core()
    t = _established(a)
    a.drain()
    seq = 1001
    for i in range(6):
        accept(a, t.c2s("PA", seq, 5001 + 100 * i, data=b"d" * 200), "inside")
        seq += 200
        accept(a, t.s2c("PA", 5001 + 100 * i, seq, data=b"e" * 100), "outside")
    assert a.journal_pending() == 1
    ch = a.drain()
    assert len(ch) == 1 and ch[0].kind == "update"
    cur = next(iter(a.export()))
    assert ch[0].record == cur
    assert cur.peers[0].seqlo == 1001 + 1200 and cur.peers[1].seqlo == 5001 + 600
    assert a.drain() == []


def test_journal_pure_duplicate_ack_is_not_news():
    a = make_core()
    t = _established(a)
    a.drain()
    accept(a, t.c2s("A", 1001, 5001), "inside")     # nothing moved
    assert a.drain() == []


def test_journal_idle_timer_refresh_replicates_after_a_quarter():
    a = make_core()
    a.set_clock(1_000_000)
    v = accept(a, udp(IN_A, SRV_1, 5000, 53), "inside")
    out = out_of(v)
    a.drain()
    a.set_clock(1_010_000)          # 10 s later: not worth a message
    accept(a, udp(SRV_1, out[0], 53, out[1]), "outside")
    assert a.drain() == []
    a.set_clock(1_040_000)          # 40 s after the journaled expire: a quarter of 120 s passed
    accept(a, udp(SRV_1, out[0], 53, out[1]), "outside")
    ch = a.drain()
    assert [c.kind for c in ch] == ["update"]
    assert 120_000 <= ch[0].record.expire_in_ms <= 121_000


def _mixed_activity(a: Core, replica: Core, rng: random.Random) -> int:
    """Creates, updates and deletes of many kinds, drained at random moments."""
    unknown = 0
    flows = []
    for i in range(60):
        kind = rng.choice(("tcp", "udp", "icmp"))
        host = f"198.18.2.{rng.randrange(1, 40)}"
        if kind == "tcp":
            t = Tcp(a, host, 30000 + i, rng.choice((SRV_1, SRV_2)), 80)
            t.syn()
            flows.append(("tcp", t))
        elif kind == "udp":
            accept(a, udp(host, SRV_3, 30000 + i, 53), "inside")
            flows.append(("udp", (host, 30000 + i)))
        else:
            accept(a, echo(host, SRV_1, 30000 + i), "inside")
            flows.append(("icmp", None))
        if rng.random() < 0.2:
            unknown += replay(a.drain(), replica)
    for kind, t in flows:
        if kind != "tcp":
            continue
        step = rng.randrange(5)
        if step >= 1:
            accept(a, t.s2c("SA", 5000, 1001), "outside")
        if step >= 2:
            accept(a, t.c2s("PA", 1001, 5001, data=b"p" * rng.randrange(1, 900)), "inside")
        if step >= 3:
            accept(a, t.s2c("RA", 5001, 0), "outside")
        if rng.random() < 0.3:
            unknown += replay(a.drain(), replica)
    ids = [r.id for r in a.export()]
    for i in rng.sample(ids, 10):
        a.delete(1, i)
        if rng.random() < 0.3:
            unknown += replay(a.drain(), replica)
    a.set_clock(2_000_000 + 31_500)
    assert a.sweep() > 0            # the embryonic and closed TCP states expire
    unknown += replay(a.drain(), replica)
    return unknown


def test_journal_replay_converges():
    a, replica = make_core(seed=31), make_core(seed=32)
    a.set_clock(2_000_000)
    replica.set_clock(2_000_000)
    unknown = _mixed_activity(a, replica, random.Random(1234))
    replica.set_clock(2_000_000 + 31_500)
    assert unknown == 0
    assert replica.counters()["import_invalid"] == 0 and replica.counters()["import_conflict"] == 0
    assert len(list(a.export())) > 10
    assert_same_states(a, replica, counters=False)


def test_journal_overflow_resend_scan_delivers_everything():
    a, replica = make_core(journal_size=64), make_core(seed=2)
    for i in range(200):
        accept(a, udp(f"198.18.3.{i % 200 + 1}", SRV_1, 10000 + i, 53), "inside")
    c = a.counters()
    assert c["journal_overflow"] == 136 and c["journal_events"] == 64
    assert a.journal_pending() == 64
    ch = a.drain()
    assert len(ch) == 64 and {x.kind for x in ch} == {"create"}
    replay(ch, replica)
    rounds, resent = 0, 0
    while True:
        n = a.resend_scan()
        if n == 0:
            break
        resent += n
        ch = a.drain()
        assert len(ch) == n and {x.kind for x in ch} == {"update"}
        replay(ch, replica)
        rounds += 1
        assert rounds < 10
    assert resent == 136 and rounds == 3
    assert a.counters()["journal_resent"] == 136
    assert replica.state_count == 200
    assert_same_states(a, replica)
    assert a.resend_scan() == 0 and a.drain() == []


def test_journal_overflow_of_updates_is_resent():
    a, replica = make_core(journal_size=64), make_core(seed=2)
    flows = [_established(a, cport=41000 + i, client=f"198.18.4.{i + 1}") for i in range(20)]
    replay(a.drain(), replica)
    assert_same_states(a, replica)
    # fill the ring with other creates, then move every window
    for i in range(64):
        accept(a, udp(IN_A, SRV_2, 12000 + i, 53), "inside")
    for t in flows:
        accept(a, t.c2s("PA", 1001, 5001, data=b"w" * 321), "inside")
    assert a.counters()["journal_overflow"] == 20
    replay(a.drain(), replica)
    assert a.resend_scan() == 20
    replay(a.drain(), replica)
    assert_same_states(a, replica)
    assert {r.peers[0].seqlo for r in replica.export() if r.proto == 6} == {1322}


def test_journal_deletes_with_full_ring_are_not_lost():
    a, replica = make_core(journal_size=64), make_core(seed=2)
    a.set_clock(1_000_000)
    replica.set_clock(1_000_000)
    for i in range(30):
        accept(a, udp(IN_B, SRV_1, 14000 + i, 53), "inside")
    syns = []
    for i in range(10):
        t = Tcp(a, IN_C, 15000 + i, SRV_2, 80)
        t.syn()
        syns.append(t)
    assert replay(a.drain(), replica) == 0
    assert replica.state_count == 40
    a.set_clock(1_020_000)
    for i in range(64):             # exactly fills the ring
        accept(a, udp(IN_A, SRV_3, 16000 + i, 53), "inside")
    assert a.journal_pending() == 64 and a.counters()["journal_overflow"] == 0
    victims = [r.id for r in a.export() if r.proto == 17 and ip_str(r.keys[0].src) == IN_B][:5]
    for i in victims:
        a.delete(1, i)
    a.set_clock(1_032_000)          # the 10 embryonic TCP states expire
    assert a.sweep() == 10
    c = a.counters()
    assert c["journal_overflow"] == 15
    assert len(list(a.export())) == 40 + 64 - 15
    assert a.mapping_count == 40 + 64 - 15         # one mapping per inside endpoint
    ch = a.drain()
    assert len(ch) == 64 and {x.kind for x in ch} == {"create"}
    replica.set_clock(1_032_000)
    replay(ch, replica)
    assert a.resend_scan() == 15
    ch = a.drain()
    assert sorted(x.id for x in ch if x.kind == "delete") == sorted(
        victims + [r.id for r in replica.export() if r.proto == 6])
    assert replay(ch, replica) == 0
    assert a.state_count == 89 and replica.state_count == 89
    assert_same_states(a, replica)


def test_journal_reused_keys_after_a_lost_delete_converge():
    """A delete lost to a full ring, then a new state on the same keys: the standby must get the
    delete before the new state, or the new state conflicts with the old one there."""
    a, replica = make_core(journal_size=64), make_core(seed=2)
    x = udp(IN_A, SRV_1, 5000, 53)
    accept(a, x, "inside")
    replay(a.drain(), replica)
    (old,) = list(a.export())
    for i in range(64):
        accept(a, udp(IN_B, SRV_2, 16000 + i, 53), "inside")
    a.delete(1, old.id)                     # ring full: a zombie
    replay(a.drain(), replica)
    accept(a, x, "inside")                  # the same flow starts again
    (new,) = [r for r in a.export() if r.keys[0] == old.keys[0]]
    assert new.id != old.id
    replay(a.drain(), replica)
    while a.resend_scan():
        replay(a.drain(), replica)
    replay(a.drain(), replica)
    assert replica.counters()["import_conflict"] == 0
    assert_same_states(a, replica)
    assert replica.get(1, new.id).keys == new.keys
    with pytest.raises(NotFound):
        replica.get(1, old.id)


def test_journal_time_wait_reuse_under_full_ring_converges():
    a, replica = make_core(journal_size=64), make_core(seed=2)
    # a flow that will free a low slot, and a TCP connection in time-wait above it
    accept(a, udp(IN_C, SRV_3, 9999, 53), "inside")
    t = Tcp(a, IN_A, 40000, SRV_1, 80)
    t.open()
    accept(a, t.c2s("FA", 1001, 5001), "inside")
    accept(a, t.s2c("FA", 5001, 1002), "outside")
    accept(a, t.c2s("A", 1002, 5002), "inside")
    others = [_established(a, cport=42000 + i, client=IN_B) for i in range(64)]
    replay(a.drain(), replica)
    tw = next(r for r in a.export() if r.proto == 6 and r.keys[0].sport == 40000)
    assert tw.tcp_state_name == "time-wait"
    a.delete(1, next(r.id for r in a.export() if r.proto == 17))    # frees the lowest slot
    for o in others[:63]:                   # fill the ring with updates
        accept(a, o.c2s("PA", 1001, 5001, data=b"u"), "inside")
    assert a.journal_pending() == 64
    # a new connection on the time-wait ports: the old state is deleted (lost), the new created
    accept(a, t.c2s("S", 777777), "inside")
    assert a.counters()["state_reused"] == 1 and a.counters()["journal_overflow"] >= 2
    replay(a.drain(), replica)
    while a.resend_scan():
        replay(a.drain(), replica)
    replay(a.drain(), replica)
    assert replica.counters()["import_conflict"] == 0
    assert_same_states(a, replica)
    new = next(r for r in replica.export() if r.proto == 6 and r.keys[0].sport == 40000)
    assert new.tcp_state_name == "syn-sent" and new.id != tw.id


# ------------------------------------------------------------------ import validation


def _sample_record() -> tuple[Core, StateRecord]:
    a = make_core()
    t = _established(a)
    accept(a, t.c2s("PA", 1001, 5001, data=b"v" * 10), "inside")
    return a, next(iter(a.export()))


def _bad_records(r: StateRecord) -> dict[str, StateRecord]:
    rep = dataclasses.replace
    k0, k1 = r.keys
    p0, p1 = r.peers
    return {
        "proto 47": rep(r, proto=47, keys=(k0._replace(proto=47), k1._replace(proto=47))),
        "proto 0": rep(r, proto=0, keys=(k0._replace(proto=0), k1._replace(proto=0))),
        "tcp_state 10": rep(r, tcp_state=10),
        "tcp_state 0": rep(r, tcp_state=0),
        "tcp_state 255": rep(r, tcp_state=255),
        "key proto mismatch": rep(r, keys=(k0, k1._replace(proto=17))),
        "both keys udp": rep(r, keys=(k0._replace(proto=17), k1._replace(proto=17))),
        "wscale 15": rep(r, peers=(p0._replace(wscale=0x8F), p1)),
        "wscale bits": rep(r, peers=(p0, p1._replace(wscale=0x40))),
        "id 0": rep(r, id=0),
        "unknown flags": rep(r, flags=0x80),
        "peer flags": rep(r, peers=(p0._replace(flags=8), p1)),
        "side 2": rep(r, keys=(k0._replace(side=2), k1)),
        "land key": rep(r, keys=(k0._replace(dst=k0.src), k1)),
        "same keys": rep(r, keys=(k0, k0)),
        "expire > 7 days": rep(r, expire_in_ms=8 * 24 * 3600 * 1000),
    }


def test_import_invalid_records_change_nothing():
    a, r = _sample_record()
    b = make_core(seed=9)
    # a valid UDP record, for the non-TCP rules
    v = accept(a, udp(IN_B, SRV_1, 7777, 53), "inside")
    u = next(x for x in a.export() if x.proto == 17)
    bad = _bad_records(r)
    bad["udp with tcp_state"] = dataclasses.replace(u, tcp_state=4)
    bad["udp with a window"] = dataclasses.replace(u, peers=(Peer(1, 2, 3, 0, 0), u.peers[1]))
    e = accept(a, echo(IN_B, SRV_1, 99), "inside")
    i = next(x for x in a.export() if x.proto == 1)
    bad["icmp with two ids"] = dataclasses.replace(i, keys=(i.keys[0]._replace(sport=1), i.keys[1]))
    assert v and e
    # something already in b, to see it untouched
    b.import_state(u)
    before, maps = list(b.export()), b.mapping_count
    for n, (name, rec) in enumerate(bad.items(), 1):
        with pytest.raises(InvalidArgument):
            b.import_state(rec)
        assert b.counters()["import_invalid"] == n, name
        assert list(b.export()) == before, name
        assert b.mapping_count == maps, name
    c = b.counters()
    assert c["import_insert"] == 1 and c["import_update"] == 0 and c["import_conflict"] == 0
    # the valid ones still go in
    b.import_state(r)
    b.import_state(i)
    assert b.state_count == 3


def test_import_conflicting_keys_refused():
    a, r = _sample_record()
    b = make_core(seed=9)
    b.import_state(r)
    before, maps = list(b.export()), b.mapping_count
    k0, k1 = r.keys
    rep = dataclasses.replace
    other_map_port = 20000 if r.keys[1].dport != 20000 else 20001
    conflicts = {
        # another id with the very same keys
        "same keys": rep(r, id=r.id + 100),
        # another creator, same keys
        "other creator": rep(r, creator=2),
        # only the initiator's key is taken
        "key 0": rep(r, id=r.id + 101, keys=(k0, k1._replace(src=ip_int(SRV_3)))),
        # only the responder's key is taken
        "key 1": rep(r, id=r.id + 102, keys=(k0._replace(dst=ip_int(SRV_3)), k1)),
        # the inside endpoint already maps elsewhere
        "mapping inside": rep(r, id=r.id + 103, keys=(
            k0._replace(dst=ip_int(SRV_2)),
            k1._replace(src=ip_int(SRV_2), dport=other_map_port))),
        # the outside endpoint belongs to another inside endpoint
        "mapping outside": rep(r, id=r.id + 104, keys=(
            k0._replace(src=ip_int(IN_C)), k1._replace(src=ip_int(SRV_2)))),
    }
    for n, (name, rec) in enumerate(conflicts.items(), 1):
        with pytest.raises(Conflict):
            b.import_state(rec)
        assert b.counters()["import_conflict"] == n, name
        assert list(b.export()) == before, name
        assert b.mapping_count == maps, name
    c = b.counters()
    assert c["import_insert"] == 1 and c["import_invalid"] == 0


def test_import_same_id_again_updates():
    a, r = _sample_record()
    b = make_core(seed=9)
    b.import_state(r)
    moved = dataclasses.replace(r, tcp_state=5, peers=(r.peers[0]._replace(seqlo=r.peers[0].seqlo + 77,
                                                                            flags=5), r.peers[1]),
                                packets=(9, 9))
    b.import_state(moved)
    c = b.counters()
    assert c["import_insert"] == 1 and c["import_update"] == 1
    assert b.state_count == 1 and b.mapping_count == 1
    got = b.get(r.creator, r.id)
    assert got.tcp_state_name == "fin-wait" and got.peers == moved.peers and got.packets == (9, 9)
    assert abs(got.expire_in_ms - moved.expire_in_ms) <= 1000
    # the mapping's references stayed right: one delete frees it
    b.import_delete(r.creator, r.id)
    assert b.state_count == 0 and b.mapping_count == 0
    c = b.counters()
    assert c["import_delete"] == 1 and c["mapping_created"] == 1 and c["mapping_freed"] == 1


def test_import_same_id_with_new_keys_replaces():
    a, r = _sample_record()
    b = make_core(seed=9)
    b.import_state(r)
    k0, k1 = r.keys
    moved = dataclasses.replace(r, keys=(k0._replace(dst=ip_int(SRV_3)), k1._replace(src=ip_int(SRV_3))))
    b.import_state(moved)
    assert b.state_count == 1 and b.mapping_count == 1
    assert b.get(r.creator, r.id).keys == moved.keys
    assert b.counters()["import_update"] == 1 and b.counters()["import_insert"] == 1
    # the old keys are free: the original record may come back under another id
    b.import_state(dataclasses.replace(r, id=r.id + 1))
    assert b.state_count == 2 and b.mapping_count == 1
    b.import_delete(r.creator, r.id)
    b.import_delete(r.creator, r.id + 1)
    assert b.mapping_count == 0 and b.state_count == 0


def test_import_delete_unknown_counts_not_found():
    b = make_core()
    with pytest.raises(NotFound):
        b.import_delete(1, 12345)
    with pytest.raises(NotFound):
        b.import_delete(7, 1)
    c = b.counters()
    assert c["import_not_found"] == 2 and c["import_delete"] == 0


def test_import_into_full_table_raises_table_full():
    a = make_core()
    for i in range(4):
        accept(a, udp(IN_A, SRV_1, 9000 + i, 53), "inside")
    recs = list(a.export())
    b = make_core(seed=5, max_states=3)
    for r in recs[:3]:
        b.import_state(r)
    with pytest.raises(TableFull):
        b.import_state(recs[3])
    c = b.counters()
    assert c["import_table_full"] == 1 and c["import_insert"] == 3
    assert b.state_count == 3 and b.mapping_count == 3
    # an update of a present state still works in a full table
    b.import_state(dataclasses.replace(recs[0], packets=(5, 5)))
    assert b.get(1, recs[0].id).packets == (5, 5)
    # and a packet that would create a state is refused as table full
    v = b.process(udp(IN_C, SRV_1, 1, 53), "inside")
    assert v.reason == "drop_table_full"


def test_imported_timer_runs_on_the_receivers_clock():
    a = make_core()
    a.set_clock(1_000_000)
    accept(a, udp(IN_A, SRV_1, 5000, 53), "inside")
    a.set_clock(1_030_000)
    (r,) = list(a.export())
    assert 90_000 <= r.expire_in_ms <= 91_000
    assert 30_000 <= r.age_ms <= 31_000
    b = make_core(seed=2)
    b0 = 77_000_000
    b.set_clock(b0)
    b.import_state(r)
    got = b.get(1, r.id)
    assert abs(got.expire_in_ms - r.expire_in_ms) <= 1000
    assert abs(got.age_ms - r.age_ms) <= 1000
    b.set_clock(b0 + r.expire_in_ms - 1)
    b.sweep()
    assert b.state_count == 1
    b.set_clock(b0 + r.expire_in_ms + 1000)
    b.sweep()
    assert b.state_count == 0 and b.mapping_count == 0
    assert b.counters()["state_expired"] == 1
    # a's clock is not b's: the state still lives on a
    a.set_clock(1_030_000 + r.expire_in_ms - 1)
    a.sweep()
    assert a.state_count == 1


def test_imported_timer_on_a_clock_behind_the_senders():
    a = make_core()
    a.set_clock(50_000_000)
    t = _established(a)
    assert t
    (r,) = list(a.export())
    b = make_core(seed=2)
    b.set_clock(1_000)
    b.import_state(r)
    b.set_clock(1_000 + 3_599_000)
    b.sweep()
    assert b.state_count == 1
    b.set_clock(1_000 + 3_602_000)
    b.sweep()
    assert b.state_count == 0


def test_mapping_shared_by_two_imported_states():
    a = make_core()
    v1 = accept(a, udp(IN_A, SRV_1, 5000, 53), "inside")
    v2 = accept(a, udp(IN_A, SRV_2, 5000, 53), "inside")
    assert out_of(v1) == out_of(v2) and a.mapping_count == 1
    r1, r2 = list(a.export())
    b = make_core(seed=2)
    b.import_state(r1)
    b.import_state(r2)
    assert b.state_count == 2 and b.mapping_count == 1
    assert b.counters()["mapping_created"] == 1
    b.import_delete(1, r1.id)
    assert b.mapping_count == 1
    # still held: a third flow of the endpoint gets it
    v3 = accept(b, udp(IN_A, SRV_3, 5000, 53), "inside")
    assert out_of(v3) == out_of(v1)
    b.import_delete(1, r2.id)
    assert b.mapping_count == 1
    b.delete(1, next(iter(b.export())).id)
    assert b.mapping_count == 0 and b.state_count == 0
    c = b.counters()
    assert c["mapping_created"] == 1 and c["mapping_freed"] == 1
    # the outside port is free again: a record of another endpoint may take it
    other = dataclasses.replace(r1, id=99, keys=(r1.keys[0]._replace(src=ip_int(IN_B)), r1.keys[1]))
    b.import_state(other)
    assert b.mapping_count == 1


def test_export_of_a_big_table_in_batches():
    a = make_core()
    for i in range(300):
        accept(a, udp(f"198.18.5.{i % 250 + 1}", SRV_1, 20000 + i, 53), "inside")
    recs = list(a.export(batch=64))
    assert len(recs) == 300 and len({r.id for r in recs}) == 300
    b = make_core(seed=8)
    for r in recs:
        b.import_state(r)
    assert_same_states(a, b)
