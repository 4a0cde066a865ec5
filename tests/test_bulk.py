"""Bulk sync between two real cores while the live change stream flows.

``a`` is the active core (BulkSender), ``b`` the joining standby (BulkRequester);
messages are handed across in memory, bulk chunks one poll late so that a chunk
read before a live change is delivered after it (what a retransmission does).
"""
from __future__ import annotations

import dataclasses
import gc
import random
import struct

import pytest

from dataplane.core import Core, StateRecord, ip_int
from replication.bulk import (BulkChunk, BulkEnd, BulkRequest, BulkRequester, BulkSender,
                              BulkStart, RequesterState as RS, SenderEvent, SenderState as SS)
from replication.role import Role, RoleEvent as Ev, RoleState as St
from tests.packets import tcp

POOL = ["198.19.255.1", "198.19.255.2", "198.19.255.3", "198.19.255.4"]
INSIDE = ip_int("198.18.0.0")
SERVER = ip_int("198.19.0.1")


class Clock:
    def __init__(self, t: int = 1_000_000):
        self.t = t

    def __call__(self) -> int:
        return self.t


def _csum(h: bytes) -> int:
    s = sum(struct.unpack("!10H", h))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_raw(src: int, dst: int, sport: int, dport: int, payload: bytes = b"bulk") -> bytes:
    """A UDP packet without scapy (100k of them are built here); UDP checksum 0 (none)."""
    ulen = 8 + len(payload)
    h = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + ulen, 0, 0x4000, 64, 17, 0, src, dst)
    h = h[:10] + struct.pack("!H", _csum(h)) + h[12:]
    return h + struct.pack("!HHHH", sport, dport, ulen, 0) + payload


def flow(i: int) -> bytes:
    return udp_raw(INSIDE + 1 + i // 250, SERVER, 10000 + i % 250, 53)


def make_core(creator: int, seed: int) -> Core:
    return Core(pool=POOL, port_range=(1024, 65535), max_states=1 << 18, creator_id=creator,
                journal_size=1 << 16, hash_seed=seed)

def journaled_flows(n: int):
    """Two cores on one clock; ``n`` flows through the first, journaled: (clock, a, b, the
    records its journal drained)."""
    clock = Clock()
    a, b = make_core(1, 11), make_core(2, 22)
    for c in (a, b):
        c.set_clock(clock.t)
    a.set_journal(True)
    for i in range(n):
        assert a.process(flow(i), "inside").accepted
    return clock, a, b, [ch.record for ch in a.drain()]



def seed(a: Core, n: int) -> None:
    """n UDP states on a, not journaled (they were there before the standby came)."""
    a.set_journal(False)
    pkts = [(flow(i), "inside") for i in range(n)]
    for j in range(0, n, 4096):
        assert all(v.accepted for v in a.process_batch(pkts[j:j + 4096]))
    a.set_journal(True)
    assert a.state_count == n


def norm(r: StateRecord) -> StateRecord:
    return dataclasses.replace(r, age_ms=0, expire_in_ms=0, bytes=(0, 0), packets=(0, 0))


def table(c: Core) -> set[StateRecord]:
    return {norm(r) for r in c.export()}


class Pair:
    """The two ends wired together in memory."""

    def __init__(self, a: Core, b: Core, clock: Clock, *, chunk_records=512, chunks_per_poll=4,
                 late_chunks=True, role: Role | None = None, packed_live=False, **kw):
        self.a, self.b, self.clock = a, b, clock
        self.packed_live = packed_live
        self.sender = BulkSender(a, chunk_records=chunk_records, chunks_per_poll=chunks_per_poll,
                                 clock=clock)
        self.req = BulkRequester(b, clock=clock, notify=role.on_bulk if role else None, **kw)
        self.late_chunks = late_chunks
        self.held: list = []
        self.chunks_per_round: list[int] = []
        self.drop_requests = 0

    def live(self) -> int:
        changes = self.a.drain(65536)
        if not self.packed_live:
            for ch in changes:
                self.req.apply_live(ch)
            return len(changes)
        run: list[bytes] = []          # the standby's way: runs of one action in the wire's form
        deletes = False
        for ch in changes + [None]:
            if run and (ch is None or (ch.kind == "delete") != deletes):
                if deletes:
                    self.req.apply_live_deletes_wire(b"".join(run))
                else:
                    self.req.apply_live_wire(b"".join(run))
                run = []
            if ch is None:
                break
            deletes = ch.kind == "delete"
            run.append(struct.pack("!QII", ch.id, ch.creator, 0) if deletes
                       else Core.pack_wire(ch.record))
        return len(changes)

    def round(self, ms: int = 1) -> None:
        self.clock.t += ms
        self.a.set_clock(self.clock.t)
        self.b.set_clock(self.clock.t)
        for m in self.req.poll():
            assert isinstance(m, BulkRequest)
            if self.drop_requests:
                self.drop_requests -= 1
                continue
            self.sender.on_request(m.request)
        self.live()                                  # the live stream first, as the daemon does
        out = self.sender.poll()
        self.chunks_per_round.append(sum(isinstance(m, BulkChunk) for m in out))
        deliver, self.held = (self.held, out) if self.late_chunks else (out, [])
        for m in deliver:
            self.req.on_message(m)

    def flush(self) -> None:
        for m in self.held:
            self.req.on_message(m)
        self.held = []


@pytest.mark.parametrize("packed_live,n", [(False, 100_000), (True, 30_000)],
                         ids=["live-by-record", "live-packed-runs"])
def test_bulk_sync_of_100k_states_with_a_live_stream_converges(packed_live, n):
    clock = Clock()
    a, b = make_core(1, 11), make_core(2, 22)
    a.set_clock(clock.t)
    b.set_clock(clock.t)
    seed(a, n)
    rng = random.Random(4)
    p = Pair(a, b, clock, chunk_records=1000, chunks_per_poll=4, packed_live=packed_live)
    p.req.request()
    assert p.req.state is RS.REQUESTED
    next_new, tcp_flows, rounds, deleted_ahead = n, [], 0, 0
    while p.req.state is not RS.DONE:
        rounds += 1
        assert rounds < 200
        # live activity on the active while the bulk runs: new flows, deletes, updates
        for _ in range(20):
            assert a.process(flow(next_new), "inside").accepted
            next_new += 1
        ids = [r.id for r in b.export(batch=4096)] if rounds == 3 else None
        victims = rng.sample(range(1, n + 1), 30)
        for v in victims:
            try:
                a.delete(1, v)
            except KeyError:
                pass
        if ids is not None:                  # deletes of states the bulk has not delivered yet
            have = set(ids)
            deleted_ahead = sum(1 for v in victims if v not in have)
        c = 1 + rounds % 200
        v = a.process(tcp(f"198.18.200.{c}", "198.19.0.2", 40000 + rounds, 80, "S", seq=1000), "inside")
        assert v.accepted
        tcp_flows.append(v.data)
        if rounds % 2 == 0 and tcp_flows:
            syn = tcp_flows.pop(0)
            src, sport = syn[12:16], struct.unpack("!H", syn[20:22])[0]
            reply = tcp("198.19.0.2", ".".join(map(str, src)), 80, sport, "SA", seq=5000, ack=1001)
            assert a.process(reply, "outside").accepted      # SYN_SENT -> SYN_RECEIVED: an update
        p.round()
        if p.req.state is RS.DONE:
            p.flush()
    p.live()
    assert max(p.chunks_per_round) <= 4                      # bounded per poll
    prog = p.req.progress()
    assert prog["state"] == "DONE" and prog["received"] == p.sender.sent
    assert p.sender.progress()["sent"] == p.sender.sent and abs(p.sender.total - n) < 100
    cnt = p.req.counters
    assert deleted_ahead > 0 and cnt["delete_unknown"] >= deleted_ahead
    assert cnt["skipped_tombstone"] > 0 and cnt["skipped_superseded"] > 0
    assert not any(k.startswith(("bulk_import_", "live_import_")) and k not in
                   ("bulk_import", "live_import") for k in cnt), cnt
    assert b.counters()["import_conflict"] == 0 and b.counters()["import_invalid"] == 0
    assert a.state_count == b.state_count > n - 30 * rounds
    assert table(a) == table(b)
    assert a.mapping_count == b.mapping_count


def test_live_packed_runs_count_each_refused_record_and_import_the_rest():
    clock, a, b, recs = journaled_flows(5)
    good = [Core.pack_wire(r) for r in recs]
    bad_pad = bytearray(good[1])
    bad_pad[15] = 1                                      # the pad after flags
    taken = dataclasses.replace(recs[0], id=999)         # another id, the same keys: a conflict
    req = BulkRequester(b, clock=clock)
    b.import_state(recs[0])
    out = req.apply_live_wire(b"".join([Core.pack_wire(taken), bytes(bad_pad)] + good[2:]))
    assert [e and e.__name__ for e in out] == ["Conflict", "InvalidArgument", None, None, None]
    assert req.counters["live_import"] == 3
    assert req.counters["live_import_conflict"] == 1
    assert req.counters["live_import_invalidargument"] == 1
    assert b.state_count == 4 and b.counters()["import_invalid"] == 1
    # an update of an imported state, as a run of one: applied in place
    newer = dataclasses.replace(recs[2], expire_in_ms=recs[2].expire_in_ms + 1000)
    assert req.apply_live_wire(Core.pack_wire(newer)) == [None]
    assert b.get(1, recs[2].id).expire_in_ms == newer.expire_in_ms


def test_live_packed_deletes_count_unknown_and_malformed_records():
    clock, a, b, recs = journaled_flows(3)
    for r in recs:
        b.import_state(r)
    req = BulkRequester(b, clock=clock)
    recs_wire = [struct.pack("!QII", r.id, 1, 0) for r in recs]
    out = req.apply_live_deletes_wire(b"".join([recs_wire[0], struct.pack("!QII", 777, 1, 0),
                                                struct.pack("!QII", recs[1].id, 1, 5), recs_wire[2]]))
    assert [e and e.__name__ for e in out] == [None, "NotFound", "InvalidArgument", None]
    assert (req.counters["live_delete"], req.counters["delete_unknown"],
            req.counters["live_delete_invalidargument"]) == (2, 1, 1)
    assert {r.id for r in b.export()} == {recs[1].id}
    # during a bulk sync each delete is a tombstone: an older bulk copy is skipped
    req.request()
    req.on_message(BulkStart(req.request_id, 1))
    req.apply_live_deletes_wire(recs_wire[1])
    req.on_message(BulkChunk(req.request_id, Core.pack_wire(recs[1])))
    assert req.counters["skipped_tombstone"] == 1 and b.state_count == 0


def test_chunk_budget_progress_and_end():
    clock = Clock()
    a, b = make_core(1, 1), make_core(2, 2)
    seed(a, 2500)
    p = Pair(a, b, clock, chunk_records=100, chunks_per_poll=3, late_chunks=False)
    p.req.request()
    p.round()
    assert p.sender.state is SS.SENDING and p.sender.sent == 300
    assert p.req.progress()["received"] == 300 and p.req.progress()["total"] == 2500
    assert p.req.progress()["percent"] == 12.0
    while p.req.state is not RS.DONE:
        p.round()
    assert p.chunks_per_round == [3] * 8 + [1]
    assert p.sender.state is SS.DONE and p.sender.counters["completed"] == 1
    assert table(a) == table(b)


def test_timeout_retry_then_give_up_tells_the_role():
    clock = Clock()
    a, b = make_core(1, 1), make_core(2, 2)
    seed(a, 10)
    role = Role(2, clock=clock)
    role.start()
    role.on_peer(St.ACTIVE, 100, 1)
    p = Pair(a, b, clock, role=role, timeout_ms=100, retries=2, late_chunks=False)
    p.drop_requests = 99                             # the active never hears us
    p.req.request()
    for _ in range(1000):
        p.round()
    assert p.req.state is RS.FAILED
    assert p.req.counters["requests"] == 3 and p.req.counters["timeouts"] == 3
    assert role.state is St.STANDBY_COLD             # BULK_FAILED in cold is a self-loop
    # a new request gets through; the role goes BULK_SYNC -> STANDBY_READY
    p.drop_requests = 0
    p.req.request("retry later")
    for _ in range(5):
        p.round()
    assert p.req.state is RS.DONE and role.state is St.STANDBY_READY
    assert table(a) == table(b)


def test_lost_end_or_short_count_retries_and_stale_messages_are_counted():
    clock = Clock()
    a, b = make_core(1, 1), make_core(2, 2)
    seed(a, 50)
    req = BulkRequester(b, clock=clock, timeout_ms=100)
    req.request()
    (r,) = req.poll()
    req.on_message(BulkStart(r.request, 50))
    recs = a.wire_cursor().next(50)                 # the table as the wire carries it
    req.on_message(BulkChunk(r.request, recs[:40 * 104]))
    req.on_message(BulkEnd(r.request, 50))           # 10 lost on the way
    assert req.state is RS.REQUESTED and req.counters["count_mismatch"] == 1
    (r2,) = req.poll()
    assert r2.request == r.request + 1
    req.on_message(BulkChunk(r.request, recs))       # the old request's: ignored
    assert req.counters["stale_message"] == 1
    req.on_message(BulkStart(r2.request, 50))
    req.on_message(BulkChunk(r2.request, recs))
    req.on_message(BulkEnd(r2.request, 50))
    assert req.state is RS.DONE
    assert table(a) == table(b)


def test_sender_abort_and_restart():
    clock = Clock()
    a = make_core(1, 1)
    seed(a, 1000)
    s = BulkSender(a, chunk_records=100, chunks_per_poll=1, clock=clock)
    s.on_request(7)
    assert [type(m) for m in s.poll()] == [BulkStart, BulkChunk]
    s.on_request(8)                                  # the requester retried
    out = s.poll()
    assert out[0] == BulkStart(8, 1000) and out[1].request == 8 and s.sent == 100
    assert s.counters["restarted"] == 1
    assert s.abort("peer silent") == [BulkEnd(8, 100, ok=False)]
    assert s.state is SS.IDLE and s.poll() == []
    assert s.machine.apply(SenderEvent.EXHAUSTED) is None          # not in the table from IDLE
    assert s.machine.refused_total == 1


def test_rejoin_purges_states_the_active_no_longer_has():
    clock = Clock()
    a, b = make_core(1, 1), make_core(2, 2)
    seed(a, 300)
    for r in a.export():                             # b held all of them before its fault
        b.import_state(r)
    for i in range(1, 101):                          # meanwhile the active closed 100
        a.delete(1, i)
    a.drain(65536)
    p = Pair(a, b, clock, late_chunks=False)
    p.req.request("rejoin")
    # the rejoiner's whole table as identities: none an object the cyclic GC walks
    # (a million tracked tuples were a 50 ms gen-2 pause of the replication thread)
    assert len(p.req._stale) == 300 and not any(gc.is_tracked(k) for k in p.req._stale)
    while p.req.state is not RS.DONE:
        p.round()
    assert p.req.counters["purged"] == 100
    assert b.state_count == 200 and table(a) == table(b)


def test_role_rejoin_failed_cold_bulk_ready_with_a_real_bulk():
    clock = Clock()
    a, b = make_core(1, 1), make_core(2, 2)
    seed(a, 5000)
    role = Role(2, clock=clock)
    role.start()
    role.on_peer(St.ACTIVE, 100, 1)
    role.fault("inside leg down")
    role.rejoin()
    assert role.state is St.STANDBY_COLD
    p = Pair(a, b, clock, role=role)
    p.req.request("rejoin")
    p.round()
    p.round()
    assert role.state is St.BULK_SYNC
    assert role.on_detect(Ev.PEER_SILENT) is St.STANDBY_COLD       # not ready: no takeover
    assert role.state is St.STANDBY_COLD and role.counters["takeover_refused_not_ready"] == 1
    p.req.abort("peer silent")
    role.on_peer(St.ACTIVE, 100, 1)
    p.req.request("peer back")
    while p.req.state is not RS.DONE:
        p.round()
    p.flush()
    assert role.state is St.STANDBY_READY
    assert [t.dst for t in role.history][-3:] == [St.STANDBY_COLD, St.BULK_SYNC, St.STANDBY_READY]
    assert table(a) == table(b)
