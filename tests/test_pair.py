"""Two units' replication.pair.Pair over real UDP on the loopback (no root): one starts alone
and becomes active; the other joins, bulk-syncs (states made before it joined) and is ready;
live changes (creates, deletes) then reach it; port-80 states stay home unless
http_replication; when the active goes silent the ready standby takes over with its steps
in order (state first, then addresses); a bad key is refused and counted, never imported.
"""
from __future__ import annotations

import secrets
import threading
import time

import pytest

from dataplane.core import Core
from replication.pair import Pair
from replication.role import RoleState
from tests.packets import POOL_1, SRV_1, tcp, udp

KEY = secrets.token_bytes(32)
INSIDE = "198.18.0.10"


class Steps:
    def __init__(self):
        self.done: list[str] = []

    def __getattr__(self, name):
        if name in ("core_active", "add_addresses", "announce", "remove_addresses", "core_standby"):
            return lambda: self.done.append(name)
        raise AttributeError(name)


class Unit:
    def __init__(self, unit_id: int, port: int, peer_port: int, **kw):
        self.core = Core(pool=[POOL_1], creator_id=unit_id, port_range=(20000, 29999))
        self.core.set_journal(False)
        self.lock = threading.RLock()
        self.steps = Steps()
        self.pair = Pair(self.core, self.lock, unit_id=unit_id, key=kw.pop("key", KEY),
                         local=("127.0.0.1", port), peer=("127.0.0.1", peer_port),
                         actions=self.steps, name=f"u{unit_id}", **kw)
        self.alive = True

    def flow(self, sport: int, dport: int = 53, proto=udp) -> None:
        """A new state on this unit's core, its journal drained to the pair (the feed's job)."""
        with self.lock:
            self.core.set_journal(self.pair.role.is_active)
            v = self.core.process(proto(INSIDE, SRV_1, sport, dport), "inside")
            assert v.accepted, v.reason
            self.pair.drain_journal()

    def step(self):
        if self.alive:
            self.pair.step()

    def close(self):
        self.pair.close()


def free_ports(n: int) -> list[int]:
    import socket
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def units():
    made = []

    def make(**kw):
        pa, pb = free_ports(2)
        a = Unit(1, pa, pb, **kw)
        b = Unit(2, pb, pa, **kw)
        made.extend([a, b])
        return a, b
    yield make
    for u in made:
        u.close()


def run(units, until, timeout_s: float = 5.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for u in units:
            u.step()
        if until():
            return True
        time.sleep(0.001)
    return False


def settled_pair(units):
    """a ACTIVE, b STANDBY_READY (poll 5, hold 500 ms), both transports idle."""
    a, b = units(poll_ms=5, hold_ms=500)
    a.pair.start()
    assert run([a], lambda: a.pair.role.state is RoleState.ACTIVE, 2)
    b.pair.start()
    assert run([a, b], lambda: b.pair.role.state is RoleState.STANDBY_READY)
    assert run([a, b], lambda: a.pair.transport.idle() and b.pair.transport.idle())
    return a, b


def drain(u: Unit) -> None:
    """Drop what waits in a unit's socket (it was not running: a real unit had no socket)."""
    while True:
        try:
            u.pair.link.sock.recvfrom(65535)
        except BlockingIOError:
            return


def ids(core: Core) -> set[tuple[int, int]]:
    return {(r.creator, r.id) for r in core.export()}


def test_join_bulk_live_and_takeover(units):
    a, b = units()
    a.pair.start()
    assert run([a], lambda: a.pair.role.state is RoleState.ACTIVE, 2)
    assert a.steps.done == ["core_active", "add_addresses", "announce"]
    for port in range(40000, 40050):
        a.flow(port)
    a.flow(40100, dport=80, proto=tcp)          # HTTP: not replicated by default
    b.pair.start()
    assert run([a, b], lambda: b.pair.role.state is RoleState.STANDBY_READY), b.pair.status()
    want = ids(a.core) - {(r.creator, r.id) for r in a.core.export() if r.keys[0].dport == 80}
    assert ids(b.core) == want and len(want) == 50
    assert b.pair.counters["skipped_http"] == 0 and a.pair.counters["skipped_http"] == 1
    assert b.steps.done == []
    # live: a create and a delete
    a.flow(41000)
    new = max(ids(a.core) - want)
    assert run([a, b], lambda: new in ids(b.core))
    t = b.pair.tables.snapshot()          # the live run was imported packed, counted per record
    assert t["udp conn"]["rcv"] >= 1 and t["xlate"]["rcv"] >= 1 and t["udp conn"]["rerr"] == 0, t
    assert b.pair.requester.counters["live_import"] >= 1
    with a.lock:
        gone = min(want)
        a.core.delete(*gone)
        a.pair.drain_journal()
    assert run([a, b], lambda: gone not in ids(b.core))
    status = b.pair.status()
    assert status["role"] == "STANDBY_READY" and status["peer"] == "ACTIVE"
    assert status["bulk_recv"]["state"] == "DONE" and status["bulk_recv"]["received"] == 50
    # the active goes silent: the ready standby takes over, state first, then addresses
    a.alive = False
    t0 = time.monotonic()
    assert run([b], lambda: b.pair.role.is_active, 2)
    assert (time.monotonic() - t0) * 1000 < 3 * b.pair.detector.hold_ms
    assert b.steps.done == ["core_active", "add_addresses", "announce"]
    assert b.pair.role.counters["takeovers"] == 1
    http = {(r.creator, r.id) for r in a.core.export() if r.keys[0].dport == 80}
    assert ids(b.core) == ids(a.core) - http


def test_wrong_key_is_refused_and_nothing_imported(units):
    a, b = units()
    b.pair.key = secrets.token_bytes(32)
    b.pair._reset_link("test: another key")
    a.pair.start()
    b.pair.start()
    run([a, b], lambda: False, 0.3)
    assert b.pair.wire_counters["bad_mac"] > 0 and a.pair.wire_counters["bad_mac"] > 0
    assert b.pair.role.peer is None and a.pair.role.peer is None
    assert ids(b.core) == set()


def test_dual_active_ends_with_one_active_that_announces_again(units):
    """Two units that could not hear each other are both active; when the link heals the
    comparison keeps one (same priority: the lower unit id), which sends gratuitous ARP again;
    the other releases (addresses first, then the core) and joins as a standby."""
    a, b = units()
    real_peer = b.pair.link.peer
    b.pair.link.connect(("127.0.0.1", free_ports(1)[0]))       # b hears nobody, a neither
    a.pair.start()
    b.pair.start()
    assert run([a, b], lambda: a.pair.role.is_active and b.pair.role.is_active, 2)
    b.pair.link.connect(real_peer)
    # (b may yield, bulk-sync and be ready on a's stream before a has heard a hello of b:
    # a announces again when it hears b)
    assert run([a, b], lambda: b.pair.role.state is RoleState.STANDBY_READY
               and a.pair.role.peer is not None)
    assert a.pair.role.is_active
    assert a.steps.done == ["core_active", "add_addresses", "announce", "announce"]
    assert b.steps.done == ["core_active", "add_addresses", "announce", "remove_addresses",
                            "core_standby"]
    assert a.pair.counters["reannounced"] == 1         # whichever heard the other first


def test_a_cold_active_of_higher_priority_loses_to_the_unit_with_the_table(units):
    """b holds the flows' table; a (preferred) starts deaf, goes active alone with an empty
    table; when it hears b, b keeps the role, a yields, bulk-syncs and is ready."""
    a, b = units(priority=100)
    a.pair.role.priority = 250
    b.pair.role.live_after_ms = 0        # b has forwarded long enough (the default is seconds)
    b.pair.start()
    assert run([b], lambda: b.pair.role.is_active, 2)
    for port in range(40000, 40020):
        b.flow(port)
    real_peer = a.pair.link.peer
    a.pair.link.connect(("127.0.0.1", free_ports(1)[0]))       # a hears nobody
    a.pair.start()
    assert run([a], lambda: a.pair.role.is_active, 2)
    assert a.pair.role.tenure.name == "COLD"
    a.pair.link.connect(real_peer)
    assert run([a, b], lambda: a.pair.role.state is RoleState.STANDBY_READY), a.pair.status()
    assert b.pair.role.is_active and ids(a.core) == ids(b.core) and len(ids(b.core)) == 20
    lost = [t for t in a.pair.role.history if t.event.name == "NEGOTIATION_LOST"]
    assert lost and "by=tenure ours=COLD peer=LIVE" in lost[0].reason


def test_preemption_hands_the_role_back_in_order(units):
    """preempt on: the preferred unit, once ready, asks (F_WANTS_ACTIVE); the active drains,
    yields, and the preferred unit takes over; the old active stays ready with its table."""
    a, b = units(priority=100, preempt=True)
    a.pair.role.priority = 250
    b.pair.start()
    assert run([b], lambda: b.pair.role.is_active, 2)
    for port in range(40000, 40010):
        b.flow(port)
    drain(a)                             # b's hellos from its negotiation: a was not running
    a.pair.start()
    assert run([a, b], lambda: a.pair.role.is_active and b.pair.role.peer is not None
               and b.pair.role.state is RoleState.STANDBY_READY), (a.pair.status(), b.pair.status())
    path = [(t.src.name, t.event.name, t.dst.name) for t in a.pair.role.history if t.src is not t.dst]
    assert path[-4:] == [("NEGOTIATION", "PEER_HELLO_ACTIVE", "STANDBY_COLD"),
                         ("STANDBY_COLD", "BULK_START", "BULK_SYNC"),
                         ("BULK_SYNC", "BULK_DONE", "STANDBY_READY"),
                         ("STANDBY_READY", "PREEMPT", "ACTIVE")], path
    assert b.pair.switchover.counters["yields"] == 1
    assert a.pair.role.counters["dual_active"] == b.pair.role.counters["dual_active"] == 0
    assert ids(a.core) == ids(b.core) and len(ids(a.core)) == 10


def test_a_standby_bulk_syncs_again_when_the_active_stream_restarts(units):
    """The active resets its link (a new epoch: what was unacked is gone with the old one);
    the standby notices the new epoch and asks for the whole table again."""
    a, b = units()
    a.pair.start()
    assert run([a], lambda: a.pair.role.is_active, 2)
    for port in range(40000, 40010):
        a.flow(port)
    b.pair.start()
    assert run([a, b], lambda: b.pair.role.state is RoleState.STANDBY_READY)
    requests = b.pair.requester.counters["requests"]
    with a.lock:                                    # a change that is lost with the old epoch
        lost = min(ids(a.core))
        a.core.delete(*lost)
        a.core.drain()
    a.pair._reset_link("test")
    assert run([a, b], lambda: b.pair.requester.counters["completed"] == 2)
    assert b.pair.requester.counters["requests"] == requests + 1
    assert ids(b.core) == ids(a.core) and lost not in ids(b.core)
    assert b.pair.role.state is RoleState.STANDBY_READY


def test_lag_of_live_changes_is_taken_at_the_standby_ack_from_their_offer(units):
    t = [100.0]                                     # the lag clock, ms
    a, b = units(lag_clock=lambda: t[0], hold_ms=500)  # no false "peer silent" on a busy machine
    a.pair.start()
    assert run([a], lambda: a.pair.role.state is RoleState.ACTIVE, 2)
    for port in range(40000, 40030):                # bulk-synced: not live, not measured
        a.flow(port)
    b.pair.start()
    assert run([a, b], lambda: b.pair.role.state is RoleState.STANDBY_READY), b.pair.status()
    assert run([a, b], lambda: a.pair.transport.idle())
    assert a.pair.lag.count == 0
    for port in range(42000, 42020):                # offered at t = 100 ms
        a.flow(port)
    t[0] = 104.5                                    # every ack arrives "4.5 ms later"
    assert run([a, b], lambda: a.pair.lag.count == 20 and a.pair.transport.idle())
    lag = a.pair.status()["lag"]
    assert lag["count"] == 20 and lag["max_ms"] == 4.5 and lag["sum_ms"] == 20 * 4.5
    assert lag["p50_ms"] == lag["p99_ms"] == 5      # the bucket (3, 5] ms
    assert b.pair.lag.count == 0                    # only the active measures


def test_failover_link_cut_with_data_hellos_alive_is_a_split_and_the_stream_resumes(units):
    """Hellos on two data paths too (loopback addresses stand in for the legs): the failover
    link goes quiet both ways, the data paths still carry hellos: no takeover on either
    side, the split counted; changes made meanwhile reach the standby once the link is back."""
    from replication.datapath import DataHellos

    pa, pb = free_ports(2)
    hellos = {u: DataHellos(KEY, u, [(leg, (f"127.0.{i}.{u}", pa if u == 1 else pb),
                                          (f"127.0.{i}.{3 - u}", pb if u == 1 else pa))
                                     for i, leg in ((1, "inside"), (2, "outside"))])
              for u in (1, 2)}
    a, b = units(poll_ms=10, hold_ms=60)
    for u, h in ((a, hellos[1]), (b, hellos[2])):      # the fixture's pairs, given data legs
        u.pair.data = h
        u.pair.detector = type(u.pair.detector)(poll_ms=10, hold_ms=60, data_paths=h.names,
                                                name=u.pair.detector.name)
    a.pair.start()
    assert run([a], lambda: a.pair.role.is_active, 2)
    b.pair.start()
    assert run([a, b], lambda: b.pair.role.state is RoleState.STANDBY_READY)
    assert b.pair.detector.counters["hellos_rx_inside"] > 0
    real = (a.pair.link.peer, b.pair.link.peer)
    nowhere = ("127.0.0.1", free_ports(1)[0])
    a.pair.link.connect(nowhere)
    b.pair.link.connect(nowhere)
    a.flow(42000)                                   # made while the link is cut
    new = max(ids(a.core))
    run([a, b], lambda: False, 0.5)
    assert a.pair.role.is_active and b.pair.role.state is RoleState.STANDBY_READY
    assert b.pair.detector.counters["split_link"] == 1 and a.pair.detector.counters["split_link"] == 1
    assert b.pair.role.counters["split_link_no_takeover"] == 1
    assert b.pair.role.counters["takeovers"] == 0 and new not in ids(b.core)
    a.pair.link.connect(real[0])
    b.pair.link.connect(real[1])
    assert run([a, b], lambda: new in ids(b.core))
    assert ids(b.core) == ids(a.core)


def test_an_idle_pair_waits_for_its_timers_and_an_offer_wakes_it_once(units):
    """The replication loop's wait (Pair.next_wake_ms): an idle active waits until its next
    hello (at most IDLE_WAIT_MAX_MS), not 1 ms; an offer from the feed thread writes one byte
    to the wake pipe (the loop's select returns at once), more offers before the loop turns
    write nothing more (one wake per turn), and the turn sends them all at once: no flush
    deadline on the way."""
    import os
    import select

    from replication.pair import IDLE_WAIT_MAX_MS

    a, b = settled_pair(units)
    a.step()
    wait = a.pair.next_wake_ms()
    assert 0 <= wait <= IDLE_WAIT_MAX_MS
    wake_fd = a.pair.filenos()[-1]
    assert select.select([wake_fd], [], [], 0)[0] == []
    a.flow(43000)                                   # the feed thread's offers
    assert select.select([wake_fd], [], [], 0)[0] == [wake_fd]
    a.flow(43001)
    a.flow(43002)
    assert len(os.read(wake_fd, 64)) == 1           # one wake for three offers
    os.write(a.pair._wake_w, b"\0")                 # (put it back for the loop)
    assert a.pair.next_wake_ms() == 0
    a.step()                                        # one turn: all three on the wire now
    assert a.pair.offered_waiting == 0 and a.pair.transport.pending == 0
    assert a.pair.transport.unacked == 1            # in one datagram
    assert a.pair.lag_sent.count == 3
    assert select.select([wake_fd], [], [], 0)[0] == []
    a.flow(43003)                                   # the turn consumed the wake: a new one
    assert select.select([wake_fd], [], [], 0)[0] == [wake_fd]
    assert run([a, b], lambda: b.pair.requester.counters["live_import"] == 4)
    assert a.pair.counters["submitted"] == 4


def test_an_active_alone_is_not_woken_by_offers_nobody_takes(units):
    """Without a standby the drains' offers are dropped (counted) at the loop's next timer:
    a unit alone carrying all the traffic does not turn its loop once per feed batch."""
    import select

    a, _ = units(poll_ms=5, hold_ms=500)
    a.pair.start()
    assert run([a], lambda: a.pair.role.state is RoleState.ACTIVE, 2)
    a.step()
    wake_fd = a.pair.filenos()[-1]
    a.flow(45000)
    assert select.select([wake_fd], [], [], 0)[0] == []
    assert run([a], lambda: a.pair.counters["dropped_no_standby"] == 1)
    assert a.pair.offered_waiting == 0


def test_the_standby_acks_once_per_turn_right_after_importing(units):
    """No delayed ack for live data: the standby's turn that imports received records sends
    the cumulative ack covering them in the same turn, one ack however many datagrams that
    turn read, and the records are live in its core when the ack leaves."""
    import select

    a, b = settled_pair(units)
    before = ids(b.core)
    for k in range(3):                              # three turns of the active: 3 datagrams
        a.flow(44000 + k)
        a.step()
    assert a.pair.transport.unacked == 3
    assert select.select([b.pair.fileno()], [], [], 2)[0]
    time.sleep(0.05)                                # all three wait in b's socket
    tb = b.pair.transport
    acks, imported = tb.counters["tx_acks"], b.pair.requester.counters["live_import"]
    held = b.pair.ack_hold.count
    sent = []
    orig = tb._send_ack
    tb._send_ack = lambda now: (sent.append(len(ids(b.core) - before)), orig(now))
    b.step()
    assert b.pair.requester.counters["live_import"] == imported + 3
    assert tb.counters["tx_acks"] == acks + 1 and sent == [3]   # one ack, after the import
    assert b.pair.ack_hold.count == held + 1
    assert select.select([a.pair.fileno()], [], [], 2)[0]
    a.step()
    assert a.pair.transport.unacked == 0 and a.pair.lag.count == 3


def test_live_records_in_the_wire_form_count_in_the_same_tables_as_decoded_ones():
    from replication.tables import TableStats
    from replication.wire import INSERT
    core = Core(pool=[POOL_1], creator_id=1, port_range=(20000, 29999))
    core.process(udp(INSIDE, SRV_1, 5000, 53), "inside")
    core.process(tcp(INSIDE, SRV_1, 5001, 443, "S"), "inside")
    recs = list(core.export())
    one, packed = TableStats(), TableStats()
    for i, r in enumerate(recs):
        one.received(INSERT, r, error=i == 1)
    packed.received_wire(b"".join(Core.pack_wire(r) for r in recs), [None, Exception])
    assert one.snapshot() == packed.snapshot()
    assert packed.snapshot()["xlate"] == {"xmit": 0, "xerr": 0, "rcv": 2, "rerr": 1}


def _table_sums(tables, field):
    return {t: c[field] for t, c in tables.snapshot().items() if t not in ("hello", "bulk")}


@pytest.mark.parametrize("http", [False, True])
def test_live_wire_stream_keeps_http_rule_and_counts_per_table_on_both_ends(units, http):
    """The active's live stream drained in C (Pair.drain_journal): port-80 states stay home
    unless http_replication (skipped in C, counted skipped_http), every other create, update
    and delete reaches the standby, and the active's xmit per table equals the standby's rcv."""
    a, b = units(hold_ms=500, http_replication=http)
    a.pair.start()
    assert run([a], lambda: a.pair.role.is_active, 2)
    b.pair.start()
    assert run([a, b], lambda: b.pair.role.state is RoleState.STANDBY_READY), b.pair.status()
    assert run([a, b], lambda: a.pair.transport.idle())
    for port in range(44000, 44005):
        a.flow(port)                                # udp, translated
    a.flow(44100, 80, proto=tcp)               # http
    a.flow(44101, 443, proto=tcp)
    with a.lock:
        gone = min(ids(a.core))
        a.core.delete(*gone)
        a.pair.drain_journal()
    assert run([a, b], lambda: a.pair.transport.idle() and b.pair.requester.counters["live_delete"] == 1)
    http_ids = {(r.creator, r.id) for r in a.core.export() if r.keys[0].dport == 80}
    assert len(http_ids) == 1
    assert ids(b.core) == (ids(a.core) if http else ids(a.core) - http_ids)
    assert a.pair.counters["skipped_http"] == (0 if http else 1)
    sent, got = _table_sums(a.pair.tables, "xmit"), _table_sums(b.pair.tables, "rcv")
    assert sent == got, (sent, got)
    assert sent["udp conn"] == 5 and sent["tcp conn"] == (2 if http else 1)
    assert sent["xlate"] == sent["udp conn"] + sent["tcp conn"] and sent["delete"] == 1
    assert _table_sums(b.pair.tables, "rerr") == dict.fromkeys(sent, 0)
