"""The reliable transport: batching, coalescing, loss recovery, refusal of bad datagrams.

Two real cores stand for the pair: the active's journal is drained into a transport, the
standby's transport imports every record into its own core (import_state / import_delete),
over a seeded lossy link (tests/lossy_link.py) on a fake millisecond clock. Convergence is
checked by comparing the two cores' exports. One test runs over real UDP on 127.0.0.1.
"""
from __future__ import annotations

import dataclasses
import random

import pytest

from dataplane.core import Change, Core, NotFound
from replication import wire
from replication.transport import FtfwTransport, seq_diff
from replication.udp import UdpLink, now_ms
from replication.wire import (BULK_END, BULK_START, DELETE, HELLO, INSERT, UPDATE, UPDATE_REQUEST,
                              BulkEnd, BulkStart, Codec, Hello, UpdateRequest)
from tests.lossy_link import LossyLink
from tests.packets import SRV_1, SRV_2, udp
from tests.test_state_sync import Tcp, accept, assert_same_states, make_core

KEY = b"the pair's failover key"
A_UNIT, B_UNIT = 1, 2


def apply_to(core: Core, log: list | None = None):
    """The standby's delivery: import every record into its core, as it arrives."""
    def deliver(action, rec):
        if log is not None:
            log.append((action, rec))
        if action in (INSERT, UPDATE):
            core.import_state(rec)
        elif action == DELETE:
            try:
                core.import_delete(rec.creator, rec.id)
            except NotFound:        # created and deleted before it was ever sent
                pass
    return deliver


class Pair:
    """Active and standby transports joined by two lossy links on one fake clock."""

    def __init__(self, seed=1, loss=0.0, dup=0.0, reorder=0.0, a_deliver=None, b_deliver=None, **kw):
        self.now = 0
        rng = random.Random(seed)
        clock = lambda: self.now        # noqa: E731
        self.ab = LossyLink(rng, clock, loss=loss, dup=dup, reorder=reorder)
        self.ba = LossyLink(rng, clock, loss=loss, dup=dup, reorder=reorder)
        self.a = FtfwTransport(Codec(KEY, A_UNIT, epoch=100), self.ab.send,
                               a_deliver or (lambda *x: None), **kw)
        self.b = FtfwTransport(Codec(KEY, B_UNIT, epoch=200), self.ba.send,
                               b_deliver or (lambda *x: None), **kw)

    def tick(self, ms: int = 1):
        for _ in range(ms):
            self.now += 1
            for d in self.ab.due(self.now):
                self.b.on_datagram(d, self.now)
            for d in self.ba.due(self.now):
                self.a.on_datagram(d, self.now)
            self.a.poll(self.now)
            self.b.poll(self.now)

    def settle(self, limit_ms: int = 20_000, extra=lambda: True) -> int:
        start = self.now
        while not (self.a.idle() and self.b.idle() and not len(self.ab) and not len(self.ba) and extra()):
            assert self.now - start < limit_ms, (self.a.counters, self.a.unacked, self.a.pending)
            self.tick()
        return self.now - start


def assert_replica(a: Core, b: Core):
    """b holds a's states: same identity, keys, TCP state and windows, mappings. Counters and
    timers are journaled only when a timer moved by a quarter of its length (the core's
    journal rule), so b's may lag a's: b's timer never runs later than a's."""
    ra, rb = {r.id: r for r in a.export()}, {r.id: r for r in b.export()}
    assert sorted(ra) == sorted(rb)
    strip = dict(age_ms=0, expire_in_ms=0, bytes=(0, 0), packets=(0, 0))
    for i, r in ra.items():
        assert dataclasses.replace(r, **strip) == dataclasses.replace(rb[i], **strip)
        assert rb[i].expire_in_ms <= r.expire_in_ms + 1000
    assert a.mapping_count == b.mapping_count


def udp_change(core: Core, i: int) -> Change:
    accept(core, udp(f"198.18.{1 + i // 250}.{1 + i % 250}", SRV_1, 1024 + i, 53), "inside")
    (ch,) = core.drain()
    return ch


# ------------------------------------------------------------------ batching and coalescing


def test_changes_wait_at_most_the_flush_deadline_and_go_in_one_datagram():
    a = make_core()
    got = []
    p = Pair(b_deliver=lambda act, r: got.append((act, r.id)))
    for i in range(3):
        p.a.submit(udp_change(a, i), p.now)
    assert p.ab.sent == 0
    p.tick()                    # 1 ms: flushed
    assert p.ab.sent == 1
    p.tick()
    assert [x[0] for x in got] == [INSERT] * 3
    assert p.a.counters["tx_records"] == 3


def test_a_full_datagram_leaves_at_once():
    a = make_core()
    p = Pair()
    for i in range(13):
        p.a.submit(udp_change(a, i), p.now)
    assert p.ab.sent == 1       # 12 states fill 1400 bytes; the 13th waits for the deadline
    assert len(p.ab.tap[0]) <= 1400 and p.a.pending == 1
    p.tick()
    assert p.ab.sent == 2 and p.a.pending == 0


def test_repeated_updates_of_one_state_coalesce_into_the_latest():
    a = make_core()
    got = []
    p = Pair(b_deliver=lambda act, r: got.append((act, r)))
    clock = 1_000_000
    a.set_clock(clock)
    first = udp_change(a, 0)
    p.a.submit(first, p.now)
    pkt = udp("198.18.1.1", SRV_1, 1024, 53)
    for _ in range(5):
        clock += 40_000             # a timer refreshed by a quarter or more is journaled
        a.set_clock(clock)
        a.process(pkt, "inside")
        (ch,) = a.drain()
        p.a.submit(ch, p.now)
    other = udp_change(a, 1)
    p.a.submit(other, p.now)
    p.settle()
    assert [(act, r.id) for act, r in got] == [(INSERT, first.id), (INSERT, other.id)]
    assert got[0][1].packets == (6, 0)              # the latest version, still an insert
    assert p.a.counters["tx_coalesced"] == 5
    # an update then a delete before the flush: only the delete goes
    got.clear()
    a.set_clock(clock + 40_000)
    a.process(pkt, "inside")
    p.a.submit(a.drain()[0], p.now)
    a.delete(1, first.id)
    p.a.submit(a.drain()[0], p.now)
    p.settle()
    assert [(act, r.id) for act, r in got] == [(DELETE, first.id)]


def test_other_records_keep_their_order_in_the_stream():
    got = []
    p = Pair(b_deliver=lambda act, r: got.append((act, r)))
    a = make_core()
    p.a.send(BULK_START, BulkStart(1, 2), p.now)
    p.a.submit(udp_change(a, 0), p.now)
    p.a.submit(udp_change(a, 1), p.now)
    p.a.send(BULK_END, BulkEnd(1, 2), p.now)
    p.b.send(UPDATE_REQUEST, UpdateRequest(0, 0, 1), p.now)
    p.settle()
    assert [x[0] for x in got] == [BULK_START, INSERT, INSERT, BULK_END]


def test_hello_is_delivered_outside_the_stream():
    got = []
    p = Pair(b_deliver=lambda act, r: got.append((act, r)))
    h = Hello(1, 2, 0, 100, 300, 5, 0, 0)
    p.a.send_unreliable(HELLO, (h,), p.now)
    p.tick(2)
    assert got == [(HELLO, h)] and p.a.idle()


# ------------------------------------------------------------------ two cores converge


def run_traffic(a: Core, p: Pair, rng: random.Random, steps: int, standby: Core, wire: bool = False):
    """Random flows on the active core; every ms its journal goes into the transport (as
    Change objects, or with ``wire`` drained in C into packed runs: the daemon's way)."""
    udps, tcps, opened = [], [], 0
    clock = 1_000_000
    for step in range(steps):
        r = rng.random()
        if r < 0.25 or not udps:
            i = len(udps)
            pkt = udp(f"198.18.{1 + i // 200}.{1 + i % 200}", SRV_1 if i % 2 else SRV_2, 2000 + i % 50000, 53)
            udps.append(pkt)
            a.process(pkt, "inside")
        elif r < 0.35:
            opened += 1
            t = Tcp(a, f"198.18.9.{1 + opened % 250}", 30000 + opened, SRV_1, 80)
            t.open()
            t.cseq = 1001
            tcps.append(t)
        elif r < 0.65:
            a.process(rng.choice(udps), "inside")
        elif r < 0.85 and tcps:
            t = rng.choice(tcps)
            a.process(t.c2s("PA", t.cseq, 5001, data=b"x" * 100), "inside")
            t.cseq += 100
            a.process(t.s2c("A", 5001, t.cseq), "outside")
        elif r < 0.92 and tcps:
            t = tcps.pop(rng.randrange(len(tcps)))
            a.process(t.c2s("FA", t.cseq, 5001), "inside")
            a.process(t.s2c("FA", 5001, t.cseq + 1), "outside")
        elif r < 0.995:
            states = list(a.export())
            if states:
                a.delete(1, rng.choice(states).id)
        else:
            clock += 150_000            # idle UDP flows (120 s) expire
            a.set_clock(clock)
            a.sweep()
        if wire:
            w = a.drain_wire(rng.choice((1, 4, 1024)))     # small drains: runs merge in pending
            for action, data in ((DELETE, w.deletes), (INSERT, w.inserts), (UPDATE, w.updates)):
                if data:
                    p.a.submit_wire(action, data, p.now)
        else:
            for ch in a.drain():
                p.a.submit(ch, p.now)
        p.tick()
        clock += 1
        a.set_clock(clock)
        standby.set_clock(clock)
    return clock


@pytest.mark.parametrize("loss,dup,reorder", [(0.0, 0.0, 0.0), (0.1, 0.05, 0.2), (0.3, 0.1, 0.3)])
def test_two_cores_converge_under_loss_dup_and_reorder(loss, dup, reorder):
    a, b = make_core(seed=3), make_core(seed=4)
    a.set_clock(1_000_000)
    b.set_clock(1_000_000)
    p = Pair(seed=int(loss * 100) + 7, loss=loss, dup=dup, reorder=reorder, b_deliver=apply_to(b))
    run_traffic(a, p, random.Random(11), 1500, b)
    assert a.journal_pending() == 0
    p.settle()
    assert a.state_count > 40
    assert_replica(a, b)
    cb, ca = b.counters(), p.a.counters
    assert cb["import_conflict"] == 0 and cb["import_invalid"] == 0
    assert p.b.counters["deliver_errors"] == 0 and p.b.counters["rx_skips"] == 0
    if loss:
        assert p.ab.dropped > 20 and ca["tx_retransmits"] > 0 and p.b.counters["tx_nacks"] > 0
        assert p.b.counters["replay"] > 0 or p.ab.duplicated == 0     # the link's duplicates
        assert p.b.counters["rx_out_of_order"] > 0
    else:
        assert ca["tx_retransmits"] == 0
    for t in (p.a, p.b):
        c = t.counters
        assert c["bad_mac"] == c["bad_length"] == c["decode_error"] == 0


@pytest.mark.parametrize("loss,dup,reorder", [(0.0, 0.0, 0.0), (0.3, 0.1, 0.3)])
def test_two_cores_converge_over_packed_runs_drained_in_c(loss, dup, reorder):
    """The live stream as the daemon sends it (Core.drain_wire -> submit_wire): runs are not
    coalesced in flight, a state changed in several drains goes several times, in order, and
    the standby (decoding every C-written record with wire.py) ends at the latest versions."""
    a, b = make_core(seed=3), make_core(seed=4)
    a.set_clock(1_000_000)
    b.set_clock(1_000_000)
    p = Pair(seed=int(loss * 100) + 9, loss=loss, dup=dup, reorder=reorder, b_deliver=apply_to(b))
    clock = run_traffic(a, p, random.Random(11), 1500, b, wire=True)
    while a.journal_pending():          # a drain of 1 may have left some behind
        w = a.drain_wire()
        for action, data in ((DELETE, w.deletes), (INSERT, w.inserts), (UPDATE, w.updates)):
            if data:
                p.a.submit_wire(action, data, p.now)
    p.settle()
    assert a.state_count > 40 and clock > 1_000_000
    assert_replica(a, b)
    cb, ca = b.counters(), p.a.counters
    assert cb["import_conflict"] == 0 and cb["import_invalid"] == 0
    assert p.b.counters["deliver_errors"] == 0 and p.b.counters["rx_skips"] == 0
    assert p.b.counters["bad_record"] == 0 and ca["tx_coalesced"] == 0
    per = (p.a.codec.max_size - wire.OVERHEAD - wire.SECTION.size) // wire.STATE.size
    assert ca["tx_records"] == p.b.counters["rx_records"]
    assert ca["tx_msgs"] - ca["tx_retransmits"] - ca["tx_acks"] - ca["tx_nacks"] < ca["tx_records"]
    assert per == 12


def test_packed_runs_fill_datagrams_keep_order_and_carry_their_offer_times():
    got = []
    p, acked = _lag_pair(b_deliver=lambda action, rec: got.append((action, rec)))
    core = make_core()
    for i in range(30):
        accept(core, udp(f"198.18.{1 + i // 250}.{1 + i % 250}", SRV_1, 1024 + i, 53), "inside")
        w = core.drain_wire()
        assert w.count == 1 and w.udp == 1 and w.xlate == 1
        p.a.submit_wire(INSERT, w.inserts, p.now, offered_ms=float(i // 10))
    p.a.submit_wire(DELETE, wire.DELETE_REC.pack(5, A_UNIT, 0), p.now, offered_ms=3.0)
    with pytest.raises(ValueError):
        p.a.submit_wire(INSERT, b"x" * 100, p.now)          # no whole record
    with pytest.raises(ValueError):
        p.a.submit_wire(BULK_START, b"x" * 8, p.now)        # not a live record
    p.settle()
    # 30 inserts filled whole datagrams of 12 (the first two went when full), then the rest
    assert p.a.counters["tx_records"] == 31 and p.a.counters["tx_coalesced"] == 0
    ids = [r.id for a, r in got if a == INSERT]
    assert ids == list(range(1, 31)) and got[-1] == (DELETE, wire.Delete(A_UNIT, 5))
    times = sorted(t for _, ts in acked for t in ts)
    assert times == sorted([0.0] * 10 + [1.0] * 10 + [2.0] * 10 + [3.0])


def test_lag_without_loss_is_within_the_flush_deadline_plus_the_link():
    a, b = make_core(seed=3), make_core(seed=4)
    p = Pair(b_deliver=apply_to(b))
    for i in range(50):
        ch = udp_change(a, i)
        sent_at = p.now
        p.a.submit(ch, p.now)
        while b.state_count < i + 1:
            p.tick()
        assert p.now - sent_at <= 2          # 1 ms flush + 1 ms link


# ------------------------------------------------------------------ hostile datagrams


def _tamper(good: bytes) -> dict[str, bytes]:
    b = bytearray(good)
    b[60] ^= 0x01
    wrong_version = bytearray(good)
    wrong_version[4] = wire.VERSION + 1
    return {"bad_mac": bytes(b), "short": good[:40], "bad_length": good[:-5],
            "bad_version": bytes(wrong_version)}


def test_forged_replayed_truncated_wrong_version_change_nothing():
    a, b = make_core(seed=3), make_core(seed=4)
    p = Pair(b_deliver=apply_to(b))
    for i in range(20):
        p.a.submit(udp_change(a, i), p.now)
    p.settle()
    assert_same_states(a, b)
    before = list(b.export())
    stream = [d for d in p.ab.tap]
    c = p.b.counters
    for reason, data in {k: v for d in stream for k, v in _tamper(d).items()}.items():
        n = c[reason]
        p.b.on_datagram(data, p.now)
        assert c[reason] == n + 1, reason
    for d in stream:                                     # replayed: all of them
        p.b.on_datagram(d, p.now)
    assert c["replay"] == len(stream)
    forged = Codec(b"not the key", A_UNIT, epoch=10**18).encode
    from replication.wire import F_RELIABLE, Message
    evil = dataclasses.replace(next(iter(b.export())), packets=(99, 99))
    p.b.on_datagram(forged(Message(unit=A_UNIT, epoch=10**18, xmit=1, seq=1, flags=F_RELIABLE,
                                   sections=((UPDATE, (evil,)),))), p.now)
    assert c["bad_mac"] == 2
    p.tick(10)
    assert list(b.export()) == before
    assert c["rx_records"] == 20 and c["deliver_errors"] == 0
    assert b.counters()["import_update"] == 0


# ------------------------------------------------------------------ restarts


def test_a_restarted_standby_is_told_to_resync():
    a, b = make_core(seed=3), make_core(seed=4)
    p = Pair(b_deliver=apply_to(b))
    for i in range(30):
        p.a.submit(udp_change(a, i), p.now)
        p.tick()
    p.settle()
    # the standby restarts: a new epoch, an empty core
    b2 = make_core(seed=5)
    resyncs = []
    p.b = FtfwTransport(Codec(KEY, B_UNIT, epoch=300), p.ba.send, apply_to(b2),
                        on_resync=lambda: resyncs.append(p.now))
    for i in range(30, 33):
        p.a.submit(udp_change(a, i), p.now)
    p.settle()
    assert resyncs and p.b.counters["rx_skips"] == 1 and p.a.counters["tx_skips"] >= 1
    assert b2.state_count == 3                  # the stream from the skip on; a bulk sync does the rest
    for r in a.export():                        # (the bulk sync, by hand here)
        b2.import_state(r)
    assert_same_states(a, b2)


def test_a_restarted_active_starts_a_new_stream():
    a, b = make_core(seed=3), make_core(seed=4)
    p = Pair(b_deliver=apply_to(b))
    for i in range(5):
        p.a.submit(udp_change(a, i), p.now)
    p.settle()
    p.a = FtfwTransport(Codec(KEY, A_UNIT, epoch=150), p.ab.send, lambda *x: None)
    for i in range(5, 8):
        p.a.submit(udp_change(a, i), p.now)
    p.settle()
    assert p.b.counters["rx_peer_restarted"] == 1
    assert_same_states(a, b)


def test_seq_diff_wraps():
    assert seq_diff(1, 0xFFFFFFFF) == 2 and seq_diff(0xFFFFFFFF, 1) == -2 and seq_diff(5, 5) == 0


def test_sequence_numbers_wrap_around():
    a, b = make_core(seed=3), make_core(seed=4)
    p = Pair(loss=0.2, b_deliver=apply_to(b))
    p.a._tx_next = 0xFFFFFFF0           # as if 4 billion messages had gone (both ends)
    p.b.peer_epoch = 100
    p.b._rx_next, p.b._rx_high = 0xFFFFFFF0, 0xFFFFFFEF
    p.b.codec.window.commit(100, 1)
    p.a._xmit = 1
    for i in range(40):
        p.a.submit(udp_change(a, i), p.now)
        p.tick()
    p.settle()
    assert_same_states(a, b)
    assert p.a._tx_next < 0x100                 # it wrapped


# ------------------------------------------------------------------ over real UDP


def test_real_udp_on_loopback():
    a, b = make_core(seed=3), make_core(seed=4)
    la = UdpLink(Codec(KEY, A_UNIT), ("127.0.0.1", 0), None, lambda *x: None)
    lb = UdpLink(Codec(KEY, B_UNIT), ("127.0.0.1", 0), la.address, apply_to(b))
    la.connect(lb.address)
    try:
        for i in range(300):
            accept(a, udp(f"198.18.{1 + i // 250}.{1 + i % 250}", SRV_1, 1024 + i, 53), "inside")
        for ch in a.drain():
            la.transport.submit(ch, now_ms())
        done = lambda: b.state_count == 300 and la.transport.idle()     # noqa: E731
        deadline = now_ms() + 5000
        while not done() and now_ms() < deadline:
            lb.run(lambda: False, 1)            # the standby's loop, a slice of it
            la.run(lambda: False, 1)
        assert done(), (la.transport.counters, lb.transport.counters)
        assert_same_states(a, b)
        assert lb.transport.counters["rx_dropped"] == 0
    finally:
        la.close()
        lb.close()


# ------------------------------------------------------------------ replication lag (lag.py)

def _lag_pair(**kw):
    acked: list[tuple[int, list[float]]] = []
    p = Pair(**kw)
    p.a._on_acked = lambda offers: acked.append((p.now, [t for t, n in offers for _ in range(n)]))
    return p, acked


def test_lag_is_taken_at_the_ack_from_the_offer_time_of_each_change():
    p, acked = _lag_pair()
    p.now = 10
    for i in range(1, 4):
        p.a.submit(Change("delete", A_UNIT, i, None), p.now, offered_ms=7.5)   # offered 2.5 ms ago
    p.a.submit(Change("delete", A_UNIT, 9, None), p.now)                       # no offer time: not measured
    p.settle()
    (at, times), = acked                      # one message, one cumulative ack
    assert sorted(times) == [7.5, 7.5, 7.5]
    # flush after 1 ms, 1 ms on the link, ack after 1 ms, 1 ms back
    assert at - 7.5 == pytest.approx(2.5 + 4, abs=1)


def test_a_coalesced_change_keeps_its_oldest_offer_and_is_measured_once():
    p, acked = _lag_pair()
    p.a.submit(Change("delete", A_UNIT, 1, None), 0, offered_ms=0.0)
    p.a.submit(Change("delete", A_UNIT, 1, None), 0, offered_ms=0.6)
    p.settle()
    assert [t for _, ts in acked for t in ts] == [0.0]
    assert p.a.counters["tx_coalesced"] == 1


def test_a_retransmitted_message_counts_from_the_original_offer():
    p, acked = _lag_pair()
    p.ab.loss = 1.0                                  # the first send is lost
    p.a.submit(Change("delete", A_UNIT, 1, None), 0, offered_ms=0.0)
    p.tick(2)
    assert p.ab.dropped == 1 and not acked
    p.ab.loss = 0.0
    p.settle()
    (at, times), = acked
    assert times == [0.0] and p.a.counters["tx_retransmits"] >= 1
    assert at >= p.a.rto_ms + 2                      # the lag includes the loss and the resend


def test_packed_bulk_records_and_markers_carry_no_offer_time():
    from replication.wire import BULK_STATE, Packed
    got = []
    p, acked = _lag_pair(b_deliver=lambda action, rec: got.append((action, rec)))
    recs = bytes(range(104)) * 3
    p.a.send(BULK_START, BulkStart(1, 3), 0)
    p.a.send(BULK_STATE, Packed(3, recs), 0)
    p.settle()
    assert acked == []
    assert got == [(BULK_START, BulkStart(1, 3)), (BULK_STATE, Packed(3, recs))]   # whole, once
    assert p.a.counters["tx_records"] == 4 and p.b.counters["rx_records"] == 4
    with pytest.raises(ValueError):                  # a run must fit one datagram
        p.a.send(BULK_STATE, Packed(13, bytes(13 * 104)), p.now)


def test_the_retransmission_timeout_follows_the_round_trip():
    """A standby that takes 20 ms to answer (a bulk sync queued at it) is not sent everything
    again every 5 ms: after the first round trips the timeout is above the round trip."""
    p = Pair()
    p.ab.delay_ms = p.ba.delay_ms = 10
    for i in range(300):
        p.a.submit(Change("delete", A_UNIT, i + 1, None), p.now)
        p.tick()
    p.settle()
    assert p.a.rto >= 20                                 # the round trip: 2 x 10 ms + the ack delay
    assert p.a.counters["tx_retransmits"] <= 40   # the first round trips only (a fixed 5 ms: 600)
    fixed = Pair(rto_ms=5)
    fixed.ab.delay_ms = fixed.ba.delay_ms = 1
    for i in range(50):
        fixed.a.submit(Change("delete", A_UNIT, i + 1, None), fixed.now)
        fixed.tick()
    fixed.settle()
    assert fixed.a.rto == 5 and fixed.a.counters["tx_retransmits"] == 0   # a fast link keeps 5 ms
