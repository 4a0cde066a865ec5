"""Per replicated table: the updates sent and received, and the errors (ASA's "Stateful
Failover Logical Update Statistics").

Owns ``TableStats``, fed by the pair on the replication thread and read by ``natpair show
failover`` and the metrics without a lock (a reader may see a count one behind). Names:

- the tables (``TABLES``): ``hello`` (failover link hellos), ``tcp conn``, ``udp conn``,
  ``icmp conn`` (live INSERT/UPDATE of a state, by protocol), ``xlate`` (those of them that
  carry a NAT translation, counted there too, as ASA counts a translation beside its
  connection), ``delete`` (a state removed: the record names the state, not its protocol),
  ``bulk`` (bulk sync records, markers and requests).
- per table: ``xmit`` (put into the stream), ``xerr`` (could not be: the offer queue was
  full), ``rcv`` (delivered by the stream), ``rerr`` (the import refused it).
"""
from __future__ import annotations

import struct

from replication.wire import (BULK_END, BULK_START, BULK_STATE, DELETE, DELETE_REC, HELLO, INSERT,
                              UPDATE, UPDATE_REQUEST)

TABLES = ("hello", "tcp conn", "udp conn", "icmp conn", "xlate", "delete", "bulk")
FIELDS = ("xmit", "xerr", "rcv", "rerr")
_PROTO_TABLE = {6: "tcp conn", 17: "udp conn", 1: "icmp conn"}
_BULK = frozenset({BULK_START, BULK_STATE, BULK_END, UPDATE_REQUEST})


def translated(rec) -> bool:
    """The state's two keys are not each other's reverse: it carries a NAT translation."""
    a, b = rec.keys
    return (a.src, a.sport, a.dst, a.dport) != (b.dst, b.dport, b.src, b.sport)


def tables_of(action: int, rec) -> tuple[str, ...]:
    if action == HELLO:
        return ("hello",)
    if action in _BULK:
        return ("bulk",)
    if action == DELETE or rec is None:
        return ("delete",)
    if action in (INSERT, UPDATE):
        table = _PROTO_TABLE.get(rec.proto, "delete")
        return (table, "xlate") if translated(rec) else (table,)
    return ()


# a wire state record's protocol and its two keys' addresses and ports (wire.STATE offsets)
_WIRE_KEYS = struct.Struct("!12xB3xIIHH4xIIHH4x56x")
assert _WIRE_KEYS.size == 104

_KIND_ACTION = {"create": INSERT, "update": UPDATE, "delete": DELETE}


class TableStats:
    def __init__(self):
        self.counts = {t: dict.fromkeys(FIELDS, 0) for t in TABLES}

    def _bump(self, action: int, rec, field: str, n: int = 1) -> None:
        for t in tables_of(action, rec):
            self.counts[t][field] += n

    def sent(self, action: int, rec=None, n: int = 1) -> None:
        self._bump(action, rec, "xmit", n)

    def sent_change(self, change) -> None:
        """One journal change (dataplane.core.Change) put into the stream."""
        self._bump(_KIND_ACTION[change.kind], change.record, "xmit")

    def sent_wire(self, batch, field: str = "xmit") -> None:
        """One drain of the journal in wire form (dataplane.core.WireChanges, counted in C)
        put into the stream."""
        counts = self.counts
        for table, n in (("tcp conn", batch.tcp), ("udp conn", batch.udp), ("icmp conn", batch.icmp),
                         ("delete", batch.other), ("xlate", batch.xlate),
                         ("delete", len(batch.deletes) // DELETE_REC.size)):
            counts[table][field] += n

    def refused_wire(self, batch) -> None:
        self.sent_wire(batch, "xerr")

    def refused_changes(self, changes) -> None:
        for ch in changes:
            self._bump(_KIND_ACTION[ch.kind], ch.record, "xerr")

    def received(self, action: int, rec=None, error: bool = False, n: int = 1) -> None:
        self._bump(action, rec, "rcv", n)
        if error:
            self._bump(action, rec, "rerr", n)

    def received_wire(self, records: bytes, refused) -> None:
        """Live INSERT/UPDATE records in the wire's form (104 bytes each), and for each one
        whether its import was refused (a true value)."""
        counts = self.counts
        for (proto, s0, d0, sp0, dp0, s1, d1, sp1, dp1), bad in zip(
                _WIRE_KEYS.iter_unpack(records), refused):
            table = counts[_PROTO_TABLE.get(proto, "delete")]
            table["rcv"] += 1
            xlate = (s0, sp0, d0, dp0) != (d1, dp1, s1, sp1)
            if xlate:
                counts["xlate"]["rcv"] += 1
            if bad:
                table["rerr"] += 1
                if xlate:
                    counts["xlate"]["rerr"] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {t: dict(c) for t, c in self.counts.items()}


# the bulk requester's counters that say a record was applied (or rightly skipped), per action
_APPLIED = {INSERT: ("live_import",), UPDATE: ("live_import",), DELETE: ("live_delete",),
            BULK_STATE: ("bulk_import", "skipped_tombstone", "skipped_superseded")}


def applied(counters, action: int) -> int | None:
    """The requester's count of records of this action applied so far (None: an action that
    imports nothing); a record after which it did not grow was refused. A few lookups: this
    runs for every record of a bulk sync."""
    names = _APPLIED.get(action)
    return None if names is None else sum(counters[n] for n in names)
