"""Bulk sync: the whole table from the active to a joining standby, while the live stream flows.

Two state machines (fsm.Machine, pfsync's bulk sync is the model), one per end,
pure logic with an injected clock; the transport (branch ``wire``) carries the
messages below and the live changes (``dataplane.core.Change``). Names used:

- ``BulkSender`` (the active): IDLE -> SENDING -> DONE. ``on_request(request)``
  starts (or restarts) a bulk; ``poll()`` returns the next messages: a
  ``BulkStart``, then at most ``chunks_per_poll`` ``BulkChunk`` of at most
  ``chunk_records`` records (a budget per poll, so the live stream and the
  packet path are never starved), then a ``BulkEnd``. The records come from a
  cursor over the table (``Core.wire_cursor``, slot order), read chunk by chunk at send
  time, already in the wire's 104-byte form (C writes them; no Python per state);
  ``skip_port`` leaves out the TCP states of that service port (HTTP, unless replicated).
- ``BulkRequester`` (the joiner): IDLE -> REQUESTED -> RECEIVING -> DONE, or
  FAILED after ``retries`` timeouts. ``request()``, ``poll()`` (retries),
  ``on_message(msg)`` for the bulk messages, and ``apply_live(change)``: the one
  way live changes reach the standby's core, so that it can see them during a bulk.
  ``notify(RoleEvent, reason)`` tells the role BULK_START / BULK_DONE / BULK_FAILED.
- ``progress()`` on both ends: records sent or received of the total announced.
- Messages: ``BulkRequest(request)``, ``BulkStart(request, total)``,
  ``BulkChunk(request, records)`` (records: bytes of 104-byte wire records, imported by
  ``Core.import_wire``, which checks each before it changes anything),
  ``BulkEnd(request, sent, ok)``. What this
  needs of the wire: the request id in every bulk message, and bulk records kept
  apart from live INSERT/UPDATE records (a BULK flag or section of their own).

Why the result is consistent, with the live stream flowing during the bulk:

1. Every state has an identity (creator, id) that is never reused, and every
   live create/update carries the WHOLE record, not a delta; import is an upsert
   by identity and delete is by identity.
2. The requester tracks, from its request until the bulk is done, every identity
   a live change touched (``live``), and every identity a live delete removed
   (``tombstones``, a subset). A bulk record whose identity is in that set is
   skipped: for a touched state the live stream already delivered a record at
   least as new as the bulk's (any change after a live message makes another
   live message), and a deleted state must not come back. So order between the
   two streams does not matter: a bulk chunk read before or after a live change,
   delivered before or after it, or retransmitted late, gives the same table.
3. A state no live change touched during the bulk did not change after the
   request: the bulk's copy of it is its current state. The cursor walks the
   table's slots once; a state that lives through the whole bulk sits in one
   slot and is read exactly once; a state created during the bulk (in a slot the
   cursor passed or not) is delivered by the live stream (and is then skipped if
   the bulk meets it too).
4. "A delete arrives for a state the bulk has not yet delivered": the import of
   the delete finds nothing (counted ``delete_unknown``), the tombstone stays,
   and the state, if a chunk read before the delete arrives later, is skipped.
5. States the joiner held before the request (a unit rejoining after a fault)
   that neither stream mentions are stale: they are deleted at the end (``purged``).
The tracking sets are freed when the bulk is done; they hold only identities,
bounded by the live change rate times the bulk's duration (``max_tracked``: past
it the bulk fails rather than grow without end). An identity is the record's first
12 bytes (id, creator), a bytes object: the cyclic GC does not track bytes, and a
rejoiner's ``_stale`` holds its whole table (a set of a million tuples cost one
50 ms gen-2 collection, in the replication thread, during the bulk).
"""
from __future__ import annotations

import collections
import enum
import operator
import struct
from typing import Callable, Iterable, NamedTuple, Protocol

from dataplane.core import (WIRE_STATE_SIZE, Change, CoreError, ImportResult, NotFound, StateRecord,
                            WireCursor)
from replication.fsm import LOG, Clock, Machine, monotonic_ms
from replication.role import RoleEvent

Ident = bytes                    # a state's id and creator as the wire writes them (12 bytes)
_ID_CREATOR = struct.Struct("!QI")  # an Ident's fields
_IDENT = struct.Struct("!12s92x")   # a wire state record's Ident
_FIELDS = struct.Struct("!QI92x")   # ... as (id, creator)
_FIRST = operator.itemgetter(0)
_DELETE_REC = struct.Struct("!12s4x")  # a wire DELETE record: id, creator, pad
assert _IDENT.size == _FIELDS.size == WIRE_STATE_SIZE


def ident(creator: int, id_: int) -> Ident:
    return _ID_CREATOR.pack(id_, creator)


def identities(records: bytes) -> Iterable[Ident]:
    """The Ident of each wire record of ``records``."""
    return map(_FIRST, _IDENT.iter_unpack(records))       # 1.7x a generator's speed


# ---- messages (the transport encodes them) ----

class BulkRequest(NamedTuple):
    request: int


class BulkStart(NamedTuple):
    request: int
    total: int                   # states in the sender's table when it started


class BulkChunk(NamedTuple):
    request: int
    records: bytes               # wire records, WIRE_STATE_SIZE bytes each

    @property
    def count(self) -> int:
        return len(self.records) // WIRE_STATE_SIZE


class BulkEnd(NamedTuple):
    request: int
    sent: int
    ok: bool = True              # False: the sender gave the bulk up


class Exporter(Protocol):
    def wire_cursor(self, skip_port: int = ...) -> WireCursor: ...
    @property
    def state_count(self) -> int: ...


class Importer(Protocol):
    def import_state(self, rec: StateRecord) -> None: ...
    def import_wire(self, data: bytes) -> ImportResult: ...
    def import_delete(self, creator: int, id: int) -> None: ...
    def wire_cursor(self, skip_port: int = ...) -> WireCursor: ...


# ---- the sender ----

class SenderState(enum.Enum):
    IDLE = 0
    SENDING = 1
    DONE = 2


class SenderEvent(enum.Enum):
    REQUEST = enum.auto()        # the peer asked for the table (again: restart)
    EXHAUSTED = enum.auto()      # the cursor reached the end of the table
    ABORT = enum.auto()          # the peer is gone, or we are no longer active


SENDER_TABLE = {
    (SenderState.IDLE, SenderEvent.REQUEST): SenderState.SENDING,
    (SenderState.IDLE, SenderEvent.ABORT): SenderState.IDLE,
    (SenderState.SENDING, SenderEvent.REQUEST): SenderState.SENDING,
    (SenderState.SENDING, SenderEvent.EXHAUSTED): SenderState.DONE,
    (SenderState.SENDING, SenderEvent.ABORT): SenderState.IDLE,
    (SenderState.DONE, SenderEvent.REQUEST): SenderState.SENDING,
    (SenderState.DONE, SenderEvent.ABORT): SenderState.DONE,
}


class BulkSender:
    def __init__(self, core: Exporter, *, chunk_records: int = 512, chunks_per_poll: int = 8,
                 skip_port: int = 0, clock: Clock = monotonic_ms, name: str = "bulk-send"):
        if chunk_records < 1 or chunks_per_poll < 1:
            raise ValueError("chunk_records and chunks_per_poll must be at least 1")
        self.core = core
        self.skip_port = skip_port
        self.chunk_records, self.chunks_per_poll = chunk_records, chunks_per_poll
        self.clock = clock
        self.machine: Machine[SenderState, SenderEvent] = Machine(name, SENDER_TABLE, SenderState.IDLE,
                                                                  clock=clock)
        self.request_id = 0
        self.total = self.sent = 0
        self.skipped = 0                # states of skip_port left out of the last bulk
        self.started_ms = self.finished_ms = 0
        self._cursor: WireCursor | None = None
        self._out: list = []
        self.counters: collections.Counter[str] = collections.Counter()

    @property
    def state(self) -> SenderState:
        return self.machine.state

    def on_request(self, request: int) -> None:
        was = self.state
        if self.machine.apply(SenderEvent.REQUEST, f"request={request}") is None:
            return
        if was is SenderState.SENDING:
            self.counters["restarted"] += 1
        self.request_id = request
        self.total, self.sent, self.skipped = self.core.state_count, 0, 0
        self.started_ms, self.finished_ms = self.clock(), 0
        self._cursor = self.core.wire_cursor(self.skip_port)
        self._out = [BulkStart(request, self.total)]
        self.counters["requests"] += 1

    def abort(self, reason: str) -> list:
        """Stop sending (peer gone, role lost); returns a BulkEnd(ok=False) to send if it may help."""
        was = self.state
        self.machine.apply(SenderEvent.ABORT, reason)
        self._cursor, self._out = None, []
        if was is SenderState.SENDING:
            self.counters["aborted"] += 1
            return [BulkEnd(self.request_id, self.sent, ok=False)]
        return []

    def poll(self) -> list:
        """The next bulk messages, at most ``chunks_per_poll`` chunks of the table."""
        out, self._out = self._out, []
        if self.state is not SenderState.SENDING:
            return out
        for _ in range(self.chunks_per_poll):
            cursor = self._cursor
            recs = cursor.next(self.chunk_records)
            if recs:
                self.sent += len(recs) // WIRE_STATE_SIZE
                self.counters["chunks"] += 1
                out.append(BulkChunk(self.request_id, recs))
            if cursor.done:
                self.skipped = cursor.skipped
                self.counters["skipped_port"] += cursor.skipped
                self._cursor = None
                self.finished_ms = self.clock()
                out.append(BulkEnd(self.request_id, self.sent))
                self.counters["completed"] += 1
                self.machine.apply(SenderEvent.EXHAUSTED,
                                   f"sent={self.sent} in {self.finished_ms - self.started_ms} ms")
                break
        return out

    def progress(self) -> dict:
        return {"state": self.state.name, "request": self.request_id, "sent": self.sent,
                "total": self.total, "elapsed_ms": (self.finished_ms or self.clock()) - self.started_ms
                if self.started_ms or self.sent else 0, "counters": dict(self.counters)}


# ---- the requester ----

class RequesterState(enum.Enum):
    IDLE = 0
    REQUESTED = 1
    RECEIVING = 2
    DONE = 3
    FAILED = 4


class RequesterEvent(enum.Enum):
    REQUEST = enum.auto()
    START = enum.auto()          # BulkStart of our request
    END = enum.auto()            # BulkEnd of our request, every record received
    RETRY = enum.auto()          # timeout, bad end or aborted by the sender; attempts left
    GIVE_UP = enum.auto()        # ... no attempt left
    ABORT = enum.auto()          # the role no longer wants it (peer gone, became active)


RS, RE = RequesterState, RequesterEvent
REQUESTER_TABLE = {
    (RS.IDLE, RE.REQUEST): RS.REQUESTED,
    (RS.DONE, RE.REQUEST): RS.REQUESTED,
    (RS.FAILED, RE.REQUEST): RS.REQUESTED,
    (RS.REQUESTED, RE.START): RS.RECEIVING,
    (RS.RECEIVING, RE.START): RS.RECEIVING,      # the sender restarted our request
    (RS.RECEIVING, RE.END): RS.DONE,
    (RS.REQUESTED, RE.RETRY): RS.REQUESTED,
    (RS.RECEIVING, RE.RETRY): RS.REQUESTED,
    (RS.REQUESTED, RE.GIVE_UP): RS.FAILED,
    (RS.RECEIVING, RE.GIVE_UP): RS.FAILED,
    (RS.IDLE, RE.ABORT): RS.IDLE,
    (RS.REQUESTED, RE.ABORT): RS.IDLE,
    (RS.RECEIVING, RE.ABORT): RS.IDLE,
    (RS.DONE, RE.ABORT): RS.DONE,
    (RS.FAILED, RE.ABORT): RS.FAILED,
}
BUSY = frozenset({RS.REQUESTED, RS.RECEIVING})


class BulkRequester:
    def __init__(self, core: Importer, *, timeout_ms: int = 1000, retries: int = 3,
                 max_tracked: int = 1 << 20, clock: Clock = monotonic_ms,
                 notify: Callable[[RoleEvent, str], None] | None = None, name: str = "bulk-recv"):
        self.core = core
        self.timeout_ms, self.retries, self.max_tracked = timeout_ms, retries, max_tracked
        self.clock = clock
        self.notify = notify
        self.machine: Machine[RequesterState, RequesterEvent] = Machine(
            name, REQUESTER_TABLE, RS.IDLE, clock=clock)
        self.request_id = 0
        self.attempts = 0
        self.total = self.received = 0
        self.started_ms = self.finished_ms = 0
        self._deadline = 0
        self.live: set[Ident] = set()           # identities a live change touched during the bulk
        self.tombstones: set[Ident] = set()     # ... and those a live delete removed
        self._stale: set[Ident] = set()         # held before the request, not mentioned since
        self._out: list = []
        self.counters: collections.Counter[str] = collections.Counter()

    @property
    def state(self) -> RequesterState:
        return self.machine.state

    # ---- driving ----

    def request(self, reason: str = "join") -> None:
        if self.machine.apply(RE.REQUEST, reason) is None:
            return
        self.attempts = 0
        self.live.clear()
        self.tombstones.clear()
        self._stale = self._identities_held()
        self.started_ms, self.finished_ms = self.clock(), 0
        self._send_request()

    def abort(self, reason: str) -> None:
        if self.machine.apply(RE.ABORT, reason) is not None and self.state is RS.IDLE:
            self._clear()

    def poll(self) -> list:
        """Messages to send (requests, retries); runs the timeout."""
        if self.state in BUSY and self.clock() >= self._deadline:
            self.counters["timeouts"] += 1
            self._retry(f"no progress for {self.timeout_ms} ms in {self.state.name}")
        out, self._out = self._out, []
        return out

    def on_message(self, msg) -> None:
        if isinstance(msg, BulkChunk):
            self._on_chunk(msg)
        elif isinstance(msg, BulkStart):
            self._on_start(msg)
        elif isinstance(msg, BulkEnd):
            self._on_end(msg)
        else:
            raise TypeError(f"not a bulk message: {msg!r}")

    # ---- live changes: always applied, tracked during a bulk ----

    def apply_live(self, ch: Change) -> None:
        if self.state in BUSY:
            self._track(ident(ch.creator, ch.id), ch.kind == "delete")
        if ch.kind == "delete":
            try:
                self.core.import_delete(ch.creator, ch.id)
                self.counters["live_delete"] += 1
            except NotFound:
                self.counters["delete_unknown"] += 1
        else:
            self._import(ch.record, "live")

    def apply_live_wire(self, records: bytes) -> list:
        """Live INSERT/UPDATE records in the wire's form, imported by the core in one C call,
        with ``apply_live``'s meaning: each tracked during a bulk sync (a bulk record of it
        that comes later is skipped), each refusal counted by its reason. Returns each
        record's outcome (None: imported, else the CoreError subclass)."""
        if self.state in BUSY:
            for ident in identities(records):
                self._track(ident, False)
        res, outcome = self.core.import_wire_each(records)
        self.counters["live_import"] += res.imported
        if res.rejected:
            for (id_, creator), err in zip(_FIELDS.iter_unpack(records), outcome):
                if err is not None:
                    self.counters[f"live_import_{err.__name__.lower()}"] += 1
                    LOG.warning("%s live import of %d/%d refused: %s", self.machine.name,
                                creator, id_, err.__name__)
        return outcome

    def apply_live_deletes_wire(self, records: bytes) -> list:
        """Live DELETE records in the wire's form (16 bytes), applied by the core in one C
        call, with ``apply_live``'s meaning: each a tombstone during a bulk sync, an unknown
        state counted ``delete_unknown``. Returns each record's outcome (None: removed)."""
        outcome = self.core.import_delete_wire(records)
        busy = self.state in BUSY
        for (key,), err in zip(_DELETE_REC.iter_unpack(records), outcome):
            if err is None:
                self.counters["live_delete"] += 1
            elif err is NotFound:
                self.counters["delete_unknown"] += 1
            else:
                self.counters[f"live_delete_{err.__name__.lower()}"] += 1
                continue            # a malformed record names no state
            if busy and self.state in BUSY:
                self._track(key, True)
        return outcome

    # ---- inside ----

    def _send_request(self) -> None:
        self.attempts += 1
        self.request_id += 1
        self.total = self.received = 0
        self._deadline = self.clock() + self.timeout_ms
        self._out.append(BulkRequest(self.request_id))
        self.counters["requests"] += 1

    def _retry(self, reason: str) -> None:
        if self.attempts > self.retries:
            self.machine.apply(RE.GIVE_UP, f"{reason}; {self.attempts} attempts")
            self.finished_ms = self.clock()
            self._clear()
            self.counters["failed"] += 1
            if self.notify:
                self.notify(RoleEvent.BULK_FAILED, reason)
            return
        self.machine.apply(RE.RETRY, f"{reason}; attempt {self.attempts + 1}")
        self._send_request()

    def _clear(self) -> None:
        self.live, self.tombstones, self._stale = set(), set(), set()

    def _ours(self, msg) -> bool:
        if msg.request != self.request_id or self.state not in BUSY:
            self.counters["stale_message"] += 1
            return False
        return True

    def _on_start(self, msg: BulkStart) -> None:
        if not self._ours(msg):
            return
        first = self.state is RS.REQUESTED
        self.machine.apply(RE.START, f"request={msg.request} total={msg.total}")
        self.total, self.received = msg.total, 0
        self._deadline = self.clock() + self.timeout_ms
        if first and self.notify:
            self.notify(RoleEvent.BULK_START, f"total={msg.total}")

    def _on_chunk(self, msg: BulkChunk) -> None:
        if not self._ours(msg):
            return
        if self.state is not RS.RECEIVING:
            self.counters["chunk_before_start"] += 1
            return
        self._deadline = self.clock() + self.timeout_ms
        records = msg.records
        self.received += len(records) // WIRE_STATE_SIZE
        if self._stale:
            self._stale.difference_update(identities(records))
        if self.live:
            records = self._without_live(records)
        if records:
            self._import_wire(records)

    def _on_end(self, msg: BulkEnd) -> None:
        if not self._ours(msg):
            return
        if not msg.ok:
            self.counters["aborted_by_sender"] += 1
            self._retry("the sender aborted the bulk")
        elif self.state is not RS.RECEIVING or msg.sent != self.received:
            self.counters["count_mismatch"] += 1
            self._retry(f"end says {msg.sent} records, {self.received} received")
        else:
            purged = 0
            for key in self._stale:
                id_, creator = _ID_CREATOR.unpack(key)
                try:
                    self.core.import_delete(creator, id_)
                    purged += 1
                except NotFound:
                    pass
            self.counters["purged"] += purged
            self.finished_ms = self.clock()
            self.machine.apply(RE.END, f"received={self.received} purged={purged} "
                                       f"in {self.finished_ms - self.started_ms} ms")
            self._clear()
            self.counters["completed"] += 1
            if self.notify:
                self.notify(RoleEvent.BULK_DONE, f"received={self.received}")

    def _track(self, ident: Ident, deleted: bool) -> None:
        self._stale.discard(ident)
        self.live.add(ident)
        if deleted:
            self.tombstones.add(ident)
        if len(self.live) > self.max_tracked:
            self.counters["tracking_overflow"] += 1
            LOG.warning("%s more than %d states changed during the bulk", self.machine.name,
                        self.max_tracked)
            self.attempts = self.retries + 1      # a retry would overflow as well
            self._retry(f"tracking overflow ({self.max_tracked} identities)")

    def _identities_held(self) -> set[Ident]:
        cursor, held = self.core.wire_cursor(), set()
        while not cursor.done:
            held.update(identities(cursor.next(4096)))
        return held

    def _without_live(self, records: bytes) -> bytes:
        """The records whose state no live change touched during the bulk."""
        keep, live, tomb = [], self.live, self.tombstones
        size = WIRE_STATE_SIZE
        for i, ident in enumerate(identities(records)):
            if ident in tomb:
                self.counters["skipped_tombstone"] += 1
            elif ident in live:
                self.counters["skipped_superseded"] += 1
            else:
                keep.append(i)
        if len(keep) == len(records) // size:
            return records
        view = memoryview(records)
        return b"".join(view[i * size:(i + 1) * size] for i in keep)

    def _import_wire(self, records: bytes) -> None:
        res = self.core.import_wire(records)
        self.counters["bulk_import"] += res.imported
        for reason in ("invalid", "conflict", "full", "other"):
            n = getattr(res, reason)
            if n:
                self.counters[f"bulk_import_{reason}"] += n
        if res.rejected:
            LOG.warning("%s bulk import refused %d of %d records (%s)", self.machine.name,
                        res.rejected, len(records) // WIRE_STATE_SIZE, res)

    def _import(self, rec: StateRecord, where: str) -> None:
        try:
            self.core.import_state(rec)
            self.counters[f"{where}_import"] += 1
        except CoreError as e:
            self.counters[f"{where}_import_{type(e).__name__.lower()}"] += 1
            LOG.warning("%s %s import of %d/%d refused: %s", self.machine.name, where, rec.creator,
                        rec.id, e)

    def progress(self) -> dict:
        end = self.finished_ms or self.clock()
        return {"state": self.state.name, "request": self.request_id, "attempt": self.attempts,
                "received": self.received, "total": self.total,
                "percent": round(100.0 * self.received / self.total, 1) if self.total else
                (100.0 if self.state is RS.DONE else 0.0),
                "elapsed_ms": end - self.started_ms if self.started_ms else 0,
                "tracked": len(self.live), "tombstones": len(self.tombstones),
                "counters": dict(self.counters)}
