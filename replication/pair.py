"""One unit's side of the active/standby pair: the replication modules put together.

Owns ``Pair``, which holds the failover link (udp.UdpLink with its FtfwTransport), the
failure detector (detect.Detector), the role (role.Role) and both bulk sync ends
(bulk.BulkSender over ``core.wire_cursor``, bulk.BulkRequester into ``core.import_wire``
and ``core.import_*``), and ``step(now_ms)``, one turn of the replication loop (the
daemon's replication thread calls it when a datagram arrives, when woken, or when a timer is due: ``next_wake_ms``). Names
used:

- ``core_lock``: the daemon's lock around the core (an RLock: a role action may run while
  the loop holds it). Every core call here holds it; the transport and the machines are
  only used from the replication thread.
- ``drain_journal()``: the core's journal drained in C straight into wire records
  (``Core.drain_wire``, one ``WireChanges`` per drain) by the thread that holds the core
  (the feed thread between batches, the replication thread when the feed is idle, the
  switchover's last drain) and offered into a queue; ``step`` submits each drain to the
  transport as packed runs (``submit_wire``: DELETEs, INSERTs, UPDATEs) while the peer is a
  standby (any other time they are dropped: a joining standby bulk-syncs). ``offer(changes)``
  takes ``Change`` objects (``Core.drain``) instead, one by one, coalesced in the
  transport: the older, slower path (tests, scripts/bench_live.py's comparison). An offer
  wakes the loop unless a wake is already pending (``_wake_pending``: one pipe write per
  turn of the loop, however many drains come meanwhile) or nobody takes it (not
  ``replicating``: dropped at the next timer's turn), and the loop sends what was
  offered at once: no flush deadline (it was 1 ms, plus the ms clock's rounding, on every
  change's lag); what the drains of one loop turn offered shares its datagrams. States of
  destination port 80 are not replicated unless ``http_replication`` (in C on the wire
  path: ``skip_port``).
- the hello: ``wire.Hello`` with role = our ``RoleState`` value, state = our priority,
  flags bit 0 = yielding, bit 1 = wants the active role (switchover.py, or preemption:
  ``Role.wants_active``), bits 2-3 = the tenure of our active role (``role.Tenure``, 0 when
  not active; a unit from before tenures sends 0 and ignores them), our poll/hold, table
  size and bulk progress. Hellos go over the
  failover link (in the transport, unreliable) and, with ``data_hellos``
  (replication.datapath.DataHellos), on each data leg to the peer's own address there; a
  hello on any path feeds the detector (that path) and the role. Without data hellos the
  detector has no data path, and a cut failover link looks like a dead peer.
- ``beat`` (optional, replication.beat.Beat; the daemon's choice): the hellos of every path
  are sent and heard by the beat process instead, outside this interpreter's GIL. Each
  step publishes our hello to it (and that the loop is alive) and reads what it heard:
  the detector hears each path at the time the beat received the hello, the role judges
  its content as above. ``send_hello`` asks the beat for a hello at once. Without a beat
  (the unit tests' pairs over loopback) the hellos go as described above.
- ``carrier(up)``: the failover leg's carrier (replication.carrier.CarrierWatch, netlink):
  a drop is confirmed over the data paths within a couple of polls (detect.py).
- split link (DATA_LINK_PEER_ALIVE: the failover link is down or silent, the peer answers
  on a data leg): no takeover, counted (``detect_split_link``, and
  ``role_split_link_no_takeover`` on a standby); the link is left as it is, so the
  stream resumes when it is back (the transport keeps what is unacked; a gap it cannot
  fill ends in a SKIP and a bulk sync).
- bulk on the wire: BulkRequest = UPDATE_REQUEST(0, 0, request); BulkStart = BULK_START;
  a BulkChunk = one BULK_STATE section of packed records (``wire.Packed``, as many as fill
  a datagram: 12 at the default 1400 bytes, 85 on a jumbo failover link, ``max_datagram``
  = ``wire.datagram_size(mtu)``), written and imported by the core in C; it belongs to the
  request of the last BULK_START; BulkEnd = BULK_END (sent = the records that went on
  the wire). The sender reads the table while fewer than ``BULK_INFLIGHT`` messages wait
  for the standby's ack, so a bulk never floods the standby's socket.
- lag: ``offer`` stamps each change (each drain: all its records, stamped before the C
  drain) with ``lag_clock()`` (ms, monotonic); the transport keeps those times per sent message and, when the
  standby's cumulative ack covers one, ``lag`` observes now - offer time of each of its
  changes (retransmissions count from the offer; a coalesced record from its oldest
  change). Where it goes: ``lag_sent`` (active: drained -> its datagram sent) and
  ``ack_hold`` (standby: its loop woke with stream datagrams -> the ack of what it imported
  sent); the rest is the two trips over the link and the active's wake on the ack. The
  standby acks once per turn of its loop, right after importing (``ack_now``): not the
  transport's delayed ack (1 ms), and never before the records it covers are live.
- ``neighbours`` (optional, replication/neighbours.py): the active sends its data legs'
  neighbour changes as NEIGH records while the peer is a standby, and its whole neighbour
  table after each BULK_START; the standby hands received ones to ``neighbours.install``.
- the standby imports: live INSERT/UPDATE and DELETE runs as packed wire records
  (``LIVE_PACKED``: one C call per run through ``BulkRequester.apply_live_wire`` /
  ``apply_live_deletes_wire``; always, so a bulk in progress sees them), bulk records
  through ``on_message``.
- a silent peer resets the link (a new epoch, nothing unacked kept for a peer that will
  come back as a new one and bulk-sync); a standby that sees the active's stream start
  again (a new epoch) asks for a bulk sync, so nothing lost with the old epoch stays lost.

Counters (``counters``, next to the transport's): offered, submitted, dropped_no_standby,
skipped_http, rx_ignored_active, bad_hello, bulk_requests_ignored, link_resets, reannounced
(gratuitous ARP again when the active hears a peer after silence, or wins a dual-active
comparison: while we did not hear it, it may have been active and moved the hosts).
"""
from __future__ import annotations

import collections
import itertools
import os
import threading
import time
from typing import Callable

from dataplane.core import Change, StateRecord, WireChanges
from replication import bulk, wire
from replication.bulk import BulkRequester, BulkSender
from replication.counters import Counters
from replication.datapath import DataHellos
from replication.detect import FAILOVER, Detector
from replication.fsm import LOG, monotonic_ms
from replication.lag import LagHistogram
from replication.role import STANDBY_STATES, Actions, Role, RoleState
from replication.switchover import F_WANTS_ACTIVE, Switchover
from replication.tables import TableStats, applied
from replication.transport import FtfwTransport
from replication.udp import UdpLink
from replication.wire import (BULK_END, BULK_START, BULK_STATE, DELETE, HELLO, INSERT, NEIGH,
                              OVERHEAD, SECTION, STATE, UPDATE, UPDATE_REQUEST, Codec, Packed)

HTTP_PORT = 80
LIVE_PACKED = frozenset({INSERT, UPDATE, DELETE})   # live records stay packed: applied in C by runs
TCP = 6
F_YIELDING = 0x01
TENURE_SHIFT, TENURE_MASK = 2, 0x0C     # hello flags bits 2-3: role.Tenure
BULK_PENDING_MAX = 64           # items queued in the transport before the bulk sender waits
BULK_INFLIGHT = 32             # unacked messages before the bulk sender waits (~290 KB jumbo)
BULK_CHUNKS_PER_STEP = 16       # datagrams of bulk records read per step
OFFER_MAX = 1 << 20             # journal changes waiting for the loop (then: dropped, counted)
JOURNAL_DRAIN = 1024            # journal records of each kind per drain call
JOURNAL_DRAIN_ROUNDS = 64       # drain calls per drain_journal at most (the core is held)
IDLE_WAIT_MAX_MS = 5            # the longest wait of an idle loop (the detector's timers are nearer)
REQUEST_AGAIN_MS = 1000         # a failed bulk sync is asked for again after this long
NEGOTIATION_GRACE_MS = 250      # at start, listen this much beyond hold_ms before going active alone
BEAT_TX_EVERY_MS = 100          # the beat's sent-hello counts are copied into ours this often


def monotonic_ms_float() -> float:
    return time.monotonic_ns() / 1e6


def is_http(rec: StateRecord) -> bool:
    """A TCP state of a connection to port 80 (before or after a destination NAT)."""
    return rec.proto == TCP and (rec.keys[0].dport == HTTP_PORT or rec.keys[1].sport == HTTP_PORT)


class _PeerCodec(Codec):
    """A Codec that remembers the unit id of the last datagram it accepted."""

    last_unit = 0

    def decode(self, data: bytes):
        msg = super().decode(data)
        if msg is not None:
            self.last_unit = msg.unit
        return msg


class Pair:
    def __init__(self, core, core_lock: threading.RLock, *, unit_id: int, key: bytes,
                 local: tuple[str, int], peer: tuple[str, int], priority: int = 100,
                 poll_ms: int = 10, hold_ms: int = 50, preempt: bool = False,
                 http_replication: bool = False, actions: Actions | None = None,
                 max_datagram: int = wire.MAX_DATAGRAM, data_hellos: DataHellos | None = None,
                 clock: Callable[[], int] = monotonic_ms,
                 lag_clock: Callable[[], float] = monotonic_ms_float, name: str = "pair",
                 neighbours=None, beat=None):
        self.core, self.lock = core, core_lock
        self.unit_id, self.key, self.http = unit_id, bytes(key), http_replication
        self.max_datagram = max_datagram
        self.clock, self.lag_clock = clock, lag_clock
        self.counters: collections.Counter[str] = collections.Counter()
        self.wire_counters = Counters(wire.REASONS + ("rx_ok", "rx_dropped"))  # kept across link resets
        self._offered: collections.deque[tuple[float, Change | WireChanges]] = collections.deque()
        self.offered_waiting = 0        # changes in _offered (a WireChanges holds many)
        self._offer_lock = threading.Lock()  # _offered and its counts: the feed thread adds
        self._wake_pending = False      # a byte is in the wake pipe, or about to be
        self._inbox: list[tuple[int, object]] = []
        self._bulk_rx_request = 0
        self._bulk_tx_sent = 0
        self._next_request = 0
        self.role = Role(unit_id, priority=priority, preempt=preempt, actions=actions, clock=clock,
                         name=f"{name}-role")
        self.role.machine.subscribe(self._on_role)
        if beat is not None and data_hellos is not None:
            raise ValueError("the beat process owns the data legs' hellos: not both")
        self.data, self.beat = data_hellos, beat
        self._beat_tx: collections.Counter[str] = collections.Counter()
        self._beat_tx_due = 0
        data_paths = (beat.data_paths if beat is not None
                      else () if data_hellos is None else data_hellos.names)
        self.detector = Detector(poll_ms=poll_ms, hold_ms=hold_ms, clock=clock, name=f"{name}-detect",
                                 data_paths=data_paths)
        per_datagram = (max_datagram - OVERHEAD - SECTION.size) // STATE.size
        self._per_datagram = per_datagram
        self.sender = BulkSender(core, chunk_records=per_datagram, chunks_per_poll=BULK_CHUNKS_PER_STEP,
                                 skip_port=0 if http_replication else HTTP_PORT, clock=clock,
                                 name=f"{name}-bulk-send")
        self.requester = BulkRequester(core, clock=clock, notify=self._on_bulk_event,
                                       name=f"{name}-bulk-recv")
        self.lag = LagHistogram()      # filled on the active as the standby acks (see lag.py)
        self.lag_sent = LagHistogram()  # active: drained -> datagram sent (a part of lag)
        self.ack_hold = LagHistogram()  # standby: loop woke -> ack of the imported sent
        self.link = UdpLink(self._codec(), local, peer, self._deliver, on_acked=self._on_acked)
        self._set_transport()
        self.table_size = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.tables = TableStats()     # per replicated table: sent, received, errors
        self.switchover = Switchover(self)   # natpair failover active|standby
        self.neighbours = neighbours   # replication.neighbours.Neighbours, or None

    # ---- the link ----

    def _codec(self) -> _PeerCodec:
        return _PeerCodec(self.key, self.unit_id, max_size=self.max_datagram,
                          counters=self.wire_counters, packed=LIVE_PACKED)

    def _set_transport(self, codec: _PeerCodec | None = None) -> None:
        if codec is not None:
            self.link.transport = FtfwTransport(codec, self.link._send, self._deliver,
                                                on_resync=self._on_resync, on_acked=self._on_acked)
        else:
            self.link.transport._on_resync = self._on_resync

    @property
    def transport(self) -> FtfwTransport:
        return self.link.transport

    def _reset_link(self, reason: str) -> None:
        self.counters["link_resets"] += 1
        LOG.info("pair link reset reason=%s", reason.replace(" ", "_"))
        self._set_transport(self._codec())

    def fileno(self) -> int:
        return self.link.fileno()

    def filenos(self) -> list[int]:
        """Every fd the loop waits on: the failover link's socket, the data legs', and the
        wake pipe (another thread gave the loop work: offered changes, a switchover)."""
        return ([self.link.fileno()] + ([] if self.data is None else self.data.filenos())
                + [self._wake_r])

    def wake(self) -> None:
        """From any thread: the loop's wait ends now (a byte in the wake pipe)."""
        self._wake_pending = True
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass                                # full: a wake is pending anyway

    def _drain_wake(self) -> None:
        self._wake_pending = False      # before reading: a wake from now on writes again
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def next_wake_ms(self, now: int | None = None) -> int:
        """How long the loop may wait for a datagram before ``step`` has work of its own:
        0 with received records to import or offered changes to send, 1 ms while a bulk
        sync runs, else until the transport's or the detector's next timer, at most
        ``IDLE_WAIT_MAX_MS`` (an idle pair does not spin every millisecond; offers and
        switchovers wake it through the wake pipe)."""
        now = self.clock() if now is None else now
        if self._inbox or (self._offered and self.replicating()):
            return 0                            # (offers nobody takes wait for a timer)
        d = [now + IDLE_WAIT_MAX_MS, self.detector.next_deadline(sending=self.beat is None)]
        if self.sender.state is bulk.SenderState.SENDING:
            d.append(now + 1)                   # waits for acks: turn every ms, never spin
        t = self.transport.next_deadline(now)
        if t is not None:
            d.append(t)
        if self.requester.state in bulk.BUSY or self.switchover.busy:
            d.append(now + 1)
        return max(0, min(d) - now)

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.link.close()
        if self.data is not None:
            self.data.close()
        if self.beat is not None:
            self.beat.close()

    def carrier(self, up: bool) -> None:
        """The failover leg's carrier (from netlink): a drop is confirmed over the data legs."""
        self.detector.carrier(up)

    # ---- inputs from other threads ----

    def drain_journal(self) -> int:
        """The core's journal into the offer queue as wire records (one C call per drain),
        from the thread that holds the core; returns the records offered."""
        core, skip = self.core, 0 if self.http else HTTP_PORT
        offered = 0
        if not core.journal_pending():
            return 0                    # a batch that changed nothing: no buffers copied
        for _ in range(JOURNAL_DRAIN_ROUNDS):
            t = self.lag_clock()            # the lag counts from the drain, not after it
            batch = core.drain_wire(JOURNAL_DRAIN, skip)
            if batch.count or batch.skipped:
                self.offer_wire(batch, t)
                offered += batch.count
            if not core.journal_pending():
                break
        return offered

    def offer_wire(self, batch: WireChanges, drained_at: float | None = None) -> None:
        """One drain of the journal in wire form (``Core.drain_wire``), from the thread that
        holds the core; ``drained_at``: ``lag_clock()`` when the drain began (default now)."""
        n = batch.count
        if self.offered_waiting + n > OFFER_MAX:      # read unlocked: a bound, not a count
            self.counters["offer_overflow"] += n
            self.tables.refused_wire(batch)
            return
        if n or batch.skipped:
            self._offered_queue((self.lag_clock() if drained_at is None else drained_at, batch),
                                n=n)

    def _offered_queue(self, *items, n: int) -> None:
        with self._offer_lock:
            self._offered.extend(items)
            self.offered_waiting += n
            self.counters["offered"] += n
        # the loop sends it at its next turn: make that now (no standby: it is dropped at the
        # next timer's turn; a unit alone must not turn once per feed batch for that)
        if not self._wake_pending and self.replicating():
            self.wake()

    def offer(self, changes: list[Change]) -> None:
        """Journal changes as objects (``Core.drain``), from the thread that holds the core."""
        if self.offered_waiting + len(changes) > OFFER_MAX:
            self.counters["offer_overflow"] += len(changes)
            self.tables.refused_changes(changes)
            return
        if changes:
            t = self.lag_clock()
            self._offered_queue(*((t, ch) for ch in changes), n=len(changes))

    # ---- the loop ----

    def start(self) -> None:
        self.detector.start(NEGOTIATION_GRACE_MS)   # a rejoining unit must hear the active first
        self.role.start()
        if self.beat is not None:
            self.beat.alive()
            self.beat.publish(self._hello())

    def replicating(self) -> bool:
        peer = self.role.peer
        return self.role.is_active and peer is not None and peer.state in STANDBY_STATES

    def step(self, now: int | None = None) -> None:
        woke = self.lag_clock()
        now = self.clock() if now is None else now
        self._drain_wake()
        self.switchover.step(now)
        self._submit(now)
        restarted = self.transport.counters["rx_peer_restarted"]
        self.link.pump(now)                     # receive (hellos act at once), then timers
        if self.transport.counters["rx_peer_restarted"] != restarted:
            # the active's stream started again (it restarted, or reset its link after a
            # silence of ours): what it had not yet delivered is gone, a bulk sync fills it
            self._on_resync()
        live = self._import() if self._inbox else ()
        if self.transport.ack_now(now):        # what this turn received is live: say so now
            self.ack_hold.observe(self.lag_clock() - woke)
        for action, rec, refused in live:       # then counted: not on the lag's path
            self._count_live(action, rec, refused)
        if self.data is not None:
            self.data.pump(self._on_hello)
        looked = None
        if self.beat is not None:
            # silence is judged as of now, when we look at what the beat heard: should this
            # thread lose the GIL before the detector decides, the wait is not a silence;
            # nor is the time the beat itself was not running (it listens for us): as of
            # when it last listened, its pauses left out (detect.Detector.paused)
            looked, pauses = self.beat.watched()
            looked = min(self.clock(), looked)
            for start, end in pauses:
                self.detector.paused(start, end)
            self.beat.alive()
            for path, at, unit, rec in self.beat.heard():
                self._on_hello(path, unit, rec, at=at)
            if now >= self._beat_tx_due:
                self._beat_tx_due = now + BEAT_TX_EVERY_MS
                self._count_beat_tx()
        due = self.detector.hellos_due() if self.beat is None else ()
        if due:
            hello = self._hello()
            for path in due:
                if path == FAILOVER:
                    self.transport.send_unreliable(HELLO, (hello,), now)
                    self.tables.sent(HELLO)
                elif self.data is not None:
                    self.data.send(path, hello)
        for event, reason in self.detector.poll(looked):
            if event.name == "PEER_SILENT":
                self.sender.abort("peer silent")
                self._reset_link("peer silent")
            self.role.on_detect(event, reason)
        self._bulk(now)
        if self.neighbours is not None:
            for rec in self.neighbours.outgoing(now, self.replicating()):
                self.transport.send(NEIGH, rec, now)
        self.transport.poll(now)
        if self.beat is not None:
            self.beat.publish(self._hello())    # what the beat's next hellos say

    def _count_beat_tx(self) -> None:
        """The beat's sent hellos into the detector's and the tables' counts, as if sent here."""
        c = self.beat.counters()
        for path in self.beat.paths:
            n = c.get(f"tx_{path}", 0) - self._beat_tx[path]
            if n > 0:
                self._beat_tx[path] += n
                self.detector.counters[f"hellos_tx_{path}"] += n
                if path == FAILOVER:
                    self.tables.sent(HELLO, n=n)

    def send_hello(self, now: int) -> None:
        if self.beat is not None:
            self.beat.publish(self._hello())
            self.beat.send_now()
            return
        self.transport.send_unreliable(HELLO, (self._hello(),), now)
        self.tables.sent(HELLO)

    def submit_offered(self, now: int) -> None:
        """The offered journal changes into the stream now (the switchover's last drain)."""
        self._submit(now)

    def _submit(self, now: int) -> None:
        tr = self.transport
        if not self._offered:
            return
        with self._offer_lock:
            offered, n = list(self._offered), self.offered_waiting
            self._offered.clear()
            self.offered_waiting = 0
        if not self.replicating():
            self.counters["dropped_no_standby"] += n
            return
        for t, ch in offered:
            if isinstance(ch, WireChanges):
                self._submit_wire(ch, t, now)
                continue
            if not self.http and ch.record is not None and is_http(ch.record):
                self.counters["skipped_http"] += 1
                continue
            tr.submit(ch, now, t)
            self.counters["submitted"] += 1
            self.tables.sent_change(ch)
        tr.flush(now)                   # no flush deadline: what waited for this turn goes now
        sent, lag_sent = self.lag_clock(), self.lag_sent
        for t, ch in offered:
            lag_sent.observe(sent - t, ch.count if isinstance(ch, WireChanges) else 1)

    def _submit_wire(self, batch: WireChanges, t: float, now: int) -> None:
        """One drain's runs into the stream: DELETEs first (np_core_journal_drain_wire says
        why that order is safe), then INSERTs, then UPDATEs."""
        tr = self.transport
        if batch.skipped:
            self.counters["skipped_http"] += batch.skipped
        for action, data in ((DELETE, batch.deletes), (INSERT, batch.inserts), (UPDATE, batch.updates)):
            if data:
                tr.submit_wire(action, data, now, t)
        self.counters["submitted"] += batch.count
        self.tables.sent_wire(batch)

    def _hello(self) -> wire.Hello:
        if self.role.is_active:
            p = self.sender.progress()
            done, total = p["sent"], p["total"]
        else:
            p = self.requester.progress()
            done, total = p["received"], p["total"]
        flags = ((F_YIELDING if self.role.yielding else 0)
                 | (F_WANTS_ACTIVE if self.switchover.wanting or self.role.wants_active else 0)
                 | (self.role.tenure << TENURE_SHIFT))
        return wire.Hello(self.role.state.value, self.role.priority, flags, self.detector.poll_ms,
                          self.detector.hold_ms, self.table_size & 0xFFFFFFFF,
                          done & 0xFFFFFFFF, total & 0xFFFFFFFF)

    def _deliver(self, action: int, rec) -> None:
        """From the transport, in stream order; hellos at once, the rest imported in step()."""
        if action == HELLO:
            self._on_hello(FAILOVER, self.transport.codec.last_unit, rec)
            return
        self._inbox.append((action, rec))

    def _on_hello(self, path: str, unit: int, rec: wire.Hello, at: int | None = None) -> None:
        """A hello of the peer on ``path`` (heard ``at``, default now): the detector hears it
        there, the role judges it."""
        try:
            state = RoleState(rec.role)
        except ValueError:
            self.counters["bad_hello"] += 1
            return
        self.detector.hello(path, at=at)
        self.tables.received(HELLO)
        new_peer = self.role.peer is None
        self.role.on_peer(state, rec.state, unit, bool(rec.flags & F_YIELDING),
                          (rec.flags & TENURE_MASK) >> TENURE_SHIFT,
                          bool(rec.flags & F_WANTS_ACTIVE), reason=f"hello/{path}")
        if new_peer and self.role.is_active and state is not RoleState.ACTIVE:
            self._reannounce("peer heard again")
        if rec.flags & F_WANTS_ACTIVE:
            self.switchover.peer_wants_active(self.clock())

    def _import(self) -> list[tuple[int, Packed, object]]:
        """What the link delivered, into the core (one hold of the core lock); returns the
        live runs applied, with their outcomes, for ``_count_live`` (after the ack, outside
        the lock: the tables' per-record counts cost about half the import in C)."""
        inbox, self._inbox = self._inbox, []
        live = []
        with self.lock:
            self.core.set_clock(self.clock())
            rc = self.requester.counters
            for action, rec in inbox:
                before = applied(rc, action)
                if isinstance(rec, Packed) and action in LIVE_PACKED:
                    live.append((action, rec, self._import_live(action, rec)))
                    continue
                self._import_one(action, rec)
                if isinstance(rec, Packed):     # a bulk chunk: count its records, not its errors
                    self.tables.received(action, None, n=rec.count)
                    continue
                self.tables.received(action, rec, before is not None and applied(rc, action) == before
                                     and not self.role.is_active)
            self.table_size = self.core.state_count
        return live

    def _import_live(self, action: int, rec: Packed):
        """A run of live INSERT/UPDATE or DELETE records, applied in one C call (bulk.py
        ``apply_live_wire``, ``apply_live_deletes_wire``); each record's outcome (None:
        applied)."""
        if self.role.is_active:
            self.counters["rx_ignored_active"] += rec.count
            return itertools.repeat(None)
        if action == DELETE:
            return self.requester.apply_live_deletes_wire(rec.data)
        return self.requester.apply_live_wire(rec.data)

    def _count_live(self, action: int, rec: Packed, refused) -> None:
        """A live run's records in the per-table counts (``tables``)."""
        if action == DELETE:
            refused = list(itertools.islice(refused, rec.count))
            self.tables.received(DELETE, None, n=rec.count)
            bad = sum(1 for e in refused if e is not None)
            if bad:
                self.tables.counts["delete"]["rerr"] += bad
        else:
            self.tables.received_wire(rec.data, refused)

    def _import_one(self, action: int, rec) -> None:
        if action == UPDATE_REQUEST:
            if (rec.creator, rec.id) != (0, 0) or not self.role.is_active:
                self.counters["bulk_requests_ignored"] += 1
                return
            self.sender.on_request(rec.request)
            return
        if self.role.is_active:
            self.counters["rx_ignored_active"] += 1
            return
        r = self.requester
        if action == NEIGH:
            if self.neighbours is not None:
                self.neighbours.install(rec)
            return
        if action in (INSERT, UPDATE):
            r.apply_live(Change("update", rec.creator, rec.id, rec))
        elif action == DELETE:
            r.apply_live(Change("delete", rec.creator, rec.id, None))
        elif action == BULK_START:
            self._bulk_rx_request = rec.request
            r.on_message(bulk.BulkStart(rec.request, rec.total))
        elif action == BULK_STATE:
            r.on_message(bulk.BulkChunk(self._bulk_rx_request, rec.data))
        elif action == BULK_END:
            r.on_message(bulk.BulkEnd(rec.request, rec.sent, rec.status == wire.BULK_OK))

    # ---- bulk sync ----

    def _bulk(self, now: int) -> None:
        role, r = self.role, self.requester
        if (role.state is RoleState.STANDBY_COLD and role.peer is not None
                and role.peer.state is RoleState.ACTIVE and r.state not in bulk.BUSY
                and now >= self._next_request):
            self._next_request = now + REQUEST_AGAIN_MS
            with self.lock:
                r.request("joining an active peer")
        for msg in r.poll():
            self.tables.sent(UPDATE_REQUEST)
            self.transport.send(UPDATE_REQUEST, wire.UpdateRequest(0, 0, msg.request), now)
        tr = self.transport
        if (self.sender.state is bulk.SenderState.SENDING and tr.pending < BULK_PENDING_MAX
                and tr.unacked < BULK_INFLIGHT):
            with self.lock:
                self.core.set_clock(self.clock())   # the records' timers are relative to it
                msgs = self.sender.poll()
                self.table_size = self.core.state_count
            for msg in msgs:
                self._send_bulk(msg, now)

    def _send_bulk(self, msg, now: int) -> None:
        tr = self.transport
        if isinstance(msg, bulk.BulkStart):
            self._bulk_tx_sent = 0
            self.tables.sent(BULK_START)
            tr.send(BULK_START, wire.BulkStart(msg.request, msg.total), now)
            for rec in self.neighbours.snapshot() if self.neighbours is not None else ():
                tr.send(NEIGH, rec, now)
        elif isinstance(msg, bulk.BulkChunk):
            tr.send(BULK_STATE, Packed(msg.count, msg.records), now)
            self._bulk_tx_sent += msg.count
            self.tables.sent(BULK_STATE, n=msg.count)
        elif isinstance(msg, bulk.BulkEnd):
            self.tables.sent(BULK_END)
            if msg.ok:
                self.counters["skipped_http"] += self.sender.skipped
            tr.send(BULK_END, wire.BulkEnd(msg.request, self._bulk_tx_sent,
                                           wire.BULK_OK if msg.ok else wire.BULK_ABORTED), now)

    def _reannounce(self, why: str) -> None:
        """Gratuitous ARP again: a peer that was (or may have been) active while we did not
        hear it may have moved the hosts to itself."""
        if self.role.actions is None:
            return
        self.counters["reannounced"] += 1
        LOG.info("pair announce again reason=%s", why.replace(" ", "_"))
        try:
            self.role.actions.announce()
        except Exception as e:
            LOG.error("pair announce failed: %s", e)

    def _on_acked(self, offered: list[tuple[float, int]]) -> None:
        """The standby acked messages carrying (offer time, changes) pairs."""
        now, lag = self.lag_clock(), self.lag
        for t, n in offered:
            lag.observe(now - t, n)

    def _on_bulk_event(self, event, reason: str) -> None:
        self.role.on_bulk(event, reason)

    def _on_resync(self) -> None:
        """The active no longer holds what we missed: a bulk sync fills the hole."""
        self.counters["resyncs"] += 1
        if not self.role.is_active and self.requester.state not in bulk.BUSY:
            with self.lock:
                self.requester.request("stream skipped")

    def _on_role(self, t) -> None:
        if t.src is t.dst:
            if t.dst is RoleState.ACTIVE and t.event.name == "NEGOTIATION_WON":
                self._reannounce("dual active, won")
            return
        if t.dst is RoleState.ACTIVE:
            with self.lock:
                self.requester.abort("became active")
        if t.src is RoleState.ACTIVE:
            for msg in self.sender.abort("no longer active"):
                self._send_bulk(msg, self.clock())

    # ---- figures ----

    def status(self) -> dict:
        tr = self.transport
        return {"role": self.role.state.name, "peer": None if self.role.peer is None
                else self.role.peer.state.name, "role_detail": self.role.status(),
                "detect": self.detector.status(),
                "bulk_send": self.sender.progress(), "bulk_recv": self.requester.progress(),
                "transport": {"pending": tr.pending, "unacked": tr.unacked},
                "lag": self.lag.snapshot(),
                "lag_stages": {"sent": self.lag_sent.snapshot(), "ack_hold": self.ack_hold.snapshot()},
                "counters": self.replication_counters()}

    def replication_counters(self) -> dict[str, int]:
        out = dict(self.transport.counters.as_dict())
        out.update({f"pair_{k}": v for k, v in self.counters.items()})
        out.update({f"role_{k}": v for k, v in self.role.counters.items()})
        out.update({f"detect_{k}": v for k, v in self.detector.counters.items()})
        if self.neighbours is not None:
            out.update({f"neigh_{k}": v for k, v in self.neighbours.counters.items()})
        if self.data is not None:
            out.update({f"data_{k}": v for k, v in self.data.counters.items()})
            out.update({f"data_wire_{k}": v for k, v in self.data.wire_counters.as_dict().items() if v})
        if self.beat is not None:
            out.update({f"beat_{k}": v for k, v in self.beat.counters().items()})
        return out
