"""The reliable, batched replication transport (conntrack-tools' FTFW is the model).

Owns the ``Transport`` interface and ``FtfwTransport``, its implementation over any
datagram service: it is driven by ``poll(now_ms)`` and ``on_datagram(data, now_ms)`` and
sends through an ``output(bytes)`` callable, so tests run it on a fake clock and a lossy
channel, and replication/udp.py puts it on a socket. Names used:

- the *stream*: the messages flagged RELIABLE, numbered seq = 1, 2, ... per sender epoch;
- *pending*: changes not yet sent, one entry per state (creator, id): a state changed again
  before it left is sent once, in its latest version (coalescing); other records (bulk
  markers, update requests, a bulk sync's ``Packed`` runs of states, each its own section)
  keep their place in the queue;
- *unacked*: sent stream messages kept (as sections) until the peer's cumulative ack;
- sender: flushes pending when a datagram is full or ``flush_ms`` (<= 1 ms) after the oldest
  pending change; retransmits what a NACK names and, after the retransmission timeout
  without an ack, what is still unacked (backing off up to 8x). The timeout adapts to
  the round trip as TCP's does (RFC 6298: srtt + 4 x rttvar, samples only from messages
  sent once, doubled by a timeout until the next sample, at least ``rto_ms``, at most
  ``RTO_MAX_MS``): a bulk sync queues messages at
  a busy standby for longer than the idle link's few ms, and resending them then only
  doubles its work; at most ``window`` messages in flight; a NACK of
  seqs it no longer holds gets a SKIP (the receiver must bulk sync, ``on_resync``);
- receiver: delivers records in stream order to ``deliver(action, record)``, keeps
  out-of-order messages (up to ``window``), acks cumulatively within ``ack_delay_ms`` or at
  once when the caller says what it was handed is applied (``ack_now``: pair.py, after
  importing what one wake of its loop received: one ack per received batch), and NACKs
  missing ranges at most every ``nack_ms``. Records of unreliable messages (HELLO) are
  delivered at once (a ``Packed`` section in one call). ACK sections are the transport's
  own and never delivered.
- *live runs* (``submit_wire``): live INSERT/UPDATE/DELETE records already in wire form
  (the journal drained in C, ``Core.drain_wire``), queued as ``Packed`` sections that fill
  datagrams: a run is appended to the last pending run of its action while that one has
  room in a datagram, else queued as new runs of at most a datagram's records. They are not
  coalesced with each other: a state changed again in a later drain goes again, later in
  the stream, so the peer (which applies the stream in order) ends at its latest version;
  the journal already sends a state changed many times between two drains once.
- lag: a change submitted with ``offered_ms`` (when the active's pair received it) keeps
  that time through coalescing (the oldest change a record carries) and retransmissions;
  when the peer's cumulative ack covers its message, ``on_acked(offers)`` gets the
  (offer time, changes) pairs of what that message carried (replication/lag.py).

Counters (``counters``): tx_* and rx_* outcomes; the wire's drop reasons are in the same
object (the codec shares it).
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Protocol

from dataplane.core import Change
from replication.counters import Counters
from replication.wire import (ACK, ACK_CUMULATIVE, ACK_NACK, ACK_SKIP, DELETE, F_ACK, F_RELIABLE,
                              INSERT, OVERHEAD, RECORDS, REASONS, SECTION, UPDATE, AckRange, Codec,
                              Delete, Message, Packed, record_count)

M32 = 0xFFFFFFFF
TRANSPORT_COUNTERS = (
    "tx_msgs", "tx_bytes", "tx_records", "tx_coalesced", "tx_retransmits", "tx_window_full",
    "tx_acks", "tx_nacks", "tx_skips", "tx_errors", "rx_records", "rx_duplicates", "rx_out_of_order",
    "rx_out_of_window", "rx_nacks", "rx_skips", "rx_bad_ack", "rx_peer_restarted",
    "deliver_errors")


RTO_MAX_MS = 200


def seq_diff(a: int, b: int) -> int:
    """a - b in serial number arithmetic (RFC 1982) on 32 bits."""
    return ((a - b + 0x80000000) & M32) - 0x80000000


class Transport(Protocol):
    """What the replication layer needs from a transport."""

    def submit(self, change: Change, now_ms: int, offered_ms: float | None = None) -> None:
        """Queue one journal change (coalesced with an unsent change of the same state);
        ``offered_ms``: when it was offered, for the lag measured at the peer's ack."""

    def submit_wire(self, action: int, data: bytes, now_ms: int,
                    offered_ms: float | None = None) -> None:
        """Queue live INSERT/UPDATE/DELETE records already in wire form (one drain's run of
        one action), not coalesced, in order; ``offered_ms`` as for ``submit``."""

    def send(self, action: int, record: Any, now_ms: int) -> None:
        """Queue one other record in the reliable stream (bulk markers, update requests), or
        a ``Packed`` run of records (a section of its own; it must fit one datagram)."""

    def send_unreliable(self, action: int, records: tuple, now_ms: int) -> None:
        """Send records now, outside the stream (HELLO)."""

    def poll(self, now_ms: int) -> None:
        """Run the timers: flush, retransmit, ack, nack."""

    def on_datagram(self, data: bytes, now_ms: int) -> None:
        """Take one received datagram; never raises."""

    def idle(self) -> bool:
        """Nothing pending, nothing unacked."""


LIVE_RUNS = frozenset({INSERT, UPDATE, DELETE})


class _Sent:
    __slots__ = ("sections", "last_ms", "sends", "offers")

    def __init__(self, sections, now_ms: int, offers: list[tuple[float, int]] | None = None):
        self.sections, self.last_ms, self.sends = sections, now_ms, 1
        self.offers = offers            # (offer time, changes) of what it carries (lag)


def _size(action: int, rec) -> int:
    """Bytes a queued item takes in a datagram (a Packed run brings its section header)."""
    return SECTION.size + len(rec.data) if isinstance(rec, Packed) else RECORDS[action].size


_ACTION_OF = {"create": INSERT, "update": UPDATE, "delete": DELETE}


class FtfwTransport:
    def __init__(self, codec: Codec, output: Callable[[bytes], None],
                 deliver: Callable[[int, Any], None], *, flush_ms: int = 1, rto_ms: int = 5,
                 nack_ms: int = 2, ack_delay_ms: int = 1, window: int = 2048, burst: int = 64,
                 on_resync: Callable[[], None] | None = None,
                 on_acked: Callable[[list[tuple[float, int]]], None] | None = None):
        if not 0 <= flush_ms <= 1:
            raise ValueError("flush_ms must be 0 or 1")
        self.codec, self._out, self._deliver, self._on_resync = codec, output, deliver, on_resync
        self._on_acked = on_acked
        self.flush_ms, self.rto_ms, self.nack_ms, self.ack_delay_ms = flush_ms, rto_ms, nack_ms, ack_delay_ms
        self.window, self.burst = window, burst
        self.rto = float(rto_ms)        # the current retransmission timeout
        self._srtt: float | None = None
        self._rttvar = 0.0
        self.counters = codec.counters
        for name in TRANSPORT_COUNTERS:
            self.counters.bump(name, 0)
        self._xmit = 0
        self._taken_offers: list[tuple[float, int]] | None = None
        # sender
        self._pending: collections.OrderedDict[Any, tuple[int, Any]] = collections.OrderedDict()
        self._pending_bytes = 0
        self._pending_since: int | None = None
        self._offer_ms: dict[Any, float] = {}     # pending key -> offer time of its oldest change
        self._run_offers: dict[Any, list[tuple[float, int]]] = {}   # live run key -> (time, records)
        self._other = 0                 # keys of non-state records
        self._tx_next = 1
        self._unacked: collections.OrderedDict[int, _Sent] = collections.OrderedDict()
        # receiver
        self.peer_epoch: int | None = None
        self._rx_next = 1
        self._rx_high = 0               # highest seq known to exist (rx_next - 1 when none)
        self._rx_buf: dict[int, tuple] = {}
        self._ack_due_since: int | None = None
        self._last_nack_ms: int | None = None

    # ---------------------------------------------------------------- sender
    def submit(self, change: Change, now_ms: int, offered_ms: float | None = None) -> None:
        key = (change.creator, change.id)
        if offered_ms is not None and key not in self._offer_ms:
            self._offer_ms[key] = offered_ms    # coalesced: the oldest change's time stays
        action = _ACTION_OF[change.kind]
        rec = Delete(change.creator, change.id) if action == DELETE else change.record
        old = self._pending.get(key)
        if old is not None:
            self.counters.bump("tx_coalesced")
            if old[0] == INSERT and action == UPDATE:
                action = INSERT         # still unknown to the peer: keep it an insert
            self._pending_bytes += RECORDS[action].size - RECORDS[old[0]].size
            self._pending[key] = (action, rec)      # keeps its place in the queue
        else:
            self._queue(key, action, rec, now_ms)
        self._flush(now_ms, full_only=True)

    def submit_wire(self, action: int, data: bytes, now_ms: int,
                    offered_ms: float | None = None) -> None:
        if action not in LIVE_RUNS:
            raise ValueError(f"not a live record action: {action}")
        size = RECORDS[action].size
        total = len(data) // size
        if len(data) % size:
            raise ValueError(f"{len(data)} bytes are no whole {size}-byte records")
        per = (self.codec.max_size - OVERHEAD - SECTION.size) // size
        done = 0
        if self._pending and total:
            key = next(reversed(self._pending))
            last_action, last = self._pending[key]
            if key[0] == "live" and last_action == action and last.count < per:
                take = min(per - last.count, total)
                self._pending[key] = (action, Packed(last.count + take, last.data + data[:take * size]))
                self._pending_bytes += take * size
                if offered_ms is not None:
                    self._run_offers.setdefault(key, []).append((offered_ms, take))
                done = take
        while done < total:
            take = min(per, total - done)
            self._other += 1
            key = ("live", self._other)
            self._queue(key, action, Packed(take, data[done * size:(done + take) * size]), now_ms)
            if offered_ms is not None:
                self._run_offers[key] = [(offered_ms, take)]
            done += take
        self._flush(now_ms, full_only=True)

    def send(self, action: int, record: Any, now_ms: int) -> None:
        if action not in RECORDS or action == ACK:
            raise ValueError(f"not a stream action: {action}")
        if isinstance(record, Packed) and \
                OVERHEAD + _size(action, record) > self.codec.max_size:
            raise ValueError(f"a packed run of {record.count} records does not fit a datagram")
        self._other += 1
        self._queue(("other", self._other), action, record, now_ms)
        self._flush(now_ms, full_only=True)

    def send_unreliable(self, action: int, records: tuple, now_ms: int) -> None:
        self._emit(0, ((action, tuple(records)),), now_ms)

    def _queue(self, key, action, rec, now_ms) -> None:
        self._pending[key] = (action, rec)
        self._pending_bytes += _size(action, rec)
        if self._pending_since is None:
            self._pending_since = now_ms

    def _take_datagram(self, full_only: bool):
        """Sections for one datagram from the head of pending; None when full_only and the
        rest would not fill one."""
        room = self.codec.max_size - OVERHEAD
        sections: list[tuple[int, Any]] = []
        keys = []
        for key, (action, rec) in self._pending.items():
            if isinstance(rec, Packed):
                need = _size(action, rec)
                if need > room:
                    break
                room -= need
                sections.append((action, rec))
                keys.append(key)
                continue
            size = RECORDS[action].size
            new_section = (not sections or sections[-1][0] != action or isinstance(sections[-1][1], Packed)
                           or len(sections[-1][1]) == 0xFFFF)
            need = size + (SECTION.size if new_section else 0)
            if need > room:
                break
            room -= need
            if new_section:
                sections.append((action, []))
            sections[-1][1].append(rec)
            keys.append(key)
        else:
            if full_only:
                return None
        if not keys:
            return None
        offers: list[tuple[float, int]] = []
        for key in keys:
            action, rec = self._pending.pop(key)
            self._pending_bytes -= _size(action, rec)
            if self._offer_ms:
                t = self._offer_ms.pop(key, None)
                if t is not None:
                    offers.append((t, 1))
            if self._run_offers:
                runs = self._run_offers.pop(key, None)
                if runs is not None:
                    offers.extend(runs)
        if not self._pending:
            self._pending_since = None
        self._taken_offers = offers or None
        sections = tuple((a, r if isinstance(r, Packed) else tuple(r)) for a, r in sections)
        self.counters.bump("tx_records", sum(record_count(r) for _, r in sections))
        return sections

    def _flush(self, now_ms: int, full_only: bool) -> None:
        if full_only and OVERHEAD + SECTION.size + self._pending_bytes < self.codec.max_size:
            return
        while self._pending:
            if len(self._unacked) >= self.window:
                self.counters.bump("tx_window_full")
                return
            sections = self._take_datagram(full_only)
            if sections is None:
                return
            seq = self._tx_next
            self._tx_next = (seq + 1) & M32
            self._unacked[seq] = _Sent(sections, now_ms, self._taken_offers)
            self._emit(F_RELIABLE, sections, now_ms, seq)
        if self._pending_since is not None and not self._pending:
            self._pending_since = None

    def _emit(self, flags: int, sections, now_ms: int, seq: int | None = None) -> None:
        self._xmit += 1
        ack = 0
        if self.peer_epoch is not None:
            flags |= F_ACK
            ack = (self._rx_next - 1) & M32
            self._ack_due_since = None
        msg = Message(unit=self.codec.unit, epoch=self.codec.epoch, xmit=self._xmit,
                      seq=seq if seq is not None else (self._tx_next - 1) & M32, ack=ack,
                      peer_epoch=self.peer_epoch or 0, flags=flags, sections=sections)
        data = self.codec.encode(msg)
        self.counters.bump("tx_msgs")
        self.counters.bump("tx_bytes", len(data))
        try:
            self._out(data)
        except OSError:
            self.counters.bump("tx_errors")     # lost like on the wire: retransmitted later

    def _resend(self, seq: int, ent: _Sent, now_ms: int) -> None:
        ent.last_ms, ent.sends = now_ms, ent.sends + 1
        self.counters.bump("tx_retransmits")
        self._emit(F_RELIABLE, ent.sections, now_ms, seq)

    def _on_ack(self, upto: int, now_ms: int) -> None:
        if seq_diff(upto, self._tx_next) >= 0:
            self.counters.bump("rx_bad_ack")        # acks what was never sent
            return
        offers: list[tuple[float, int]] = []
        sample = None
        while self._unacked:
            seq = next(iter(self._unacked))
            if seq_diff(seq, upto) > 0:
                break
            ent = self._unacked.pop(seq)
            if ent.sends == 1:
                sample = now_ms - ent.last_ms       # the newest message acked: its round trip
            if ent.offers:
                offers.extend(ent.offers)
        if sample is not None:
            self._rtt_sample(sample)
        if offers and self._on_acked is not None:
            self._on_acked(offers)

    def _rtt_sample(self, rtt: float) -> None:
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        self.rto = min(max(float(self.rto_ms), self._srtt + 4 * self._rttvar), RTO_MAX_MS)

    def _on_nack(self, first: int, last: int, now_ms: int) -> None:
        self.counters.bump("rx_nacks")
        n = seq_diff(last, first)
        if n < 0 or n > self.window or seq_diff(last, self._tx_next) >= 0:
            self.counters.bump("rx_bad_ack")
            return
        base = next(iter(self._unacked)) if self._unacked else self._tx_next
        for i in range(n + 1):
            seq = (first + i) & M32
            ent = self._unacked.get(seq)
            if ent is not None and now_ms - ent.last_ms >= 1:     # not twice in one ms
                self._resend(seq, ent, now_ms)
        if seq_diff(first, base) < 0:
            # the peer misses what it acked before (it restarted): it must bulk sync
            self.counters.bump("tx_skips")
            self._emit(0, ((ACK, (AckRange(ACK_SKIP, base, base),)),), now_ms)

    # ---------------------------------------------------------------- receiver
    def on_datagram(self, data: bytes, now_ms: int) -> None:
        msg = self.codec.decode(data)
        if msg is None:
            return
        if msg.new_epoch or msg.epoch != self.peer_epoch:
            if self.peer_epoch is not None:
                self.counters.bump("rx_peer_restarted")
            self.peer_epoch, self._rx_next, self._rx_high = msg.epoch, 1, 0
            self._rx_buf.clear()
            self._last_nack_ms = None
        mine = msg.peer_epoch == self.codec.epoch
        if msg.flags & F_ACK and mine:
            self._on_ack(msg.ack, now_ms)
        for action, recs in msg.sections:
            if action != ACK:
                continue
            for r in recs:
                if r.kind == ACK_SKIP:
                    self._on_skip(r.first, now_ms)
                elif not mine:
                    continue
                elif r.kind == ACK_CUMULATIVE:
                    self._on_ack(r.last, now_ms)
                else:
                    self._on_nack(r.first, r.last, now_ms)
        if msg.reliable:
            self._on_stream(msg.seq, msg.sections, now_ms)
        else:
            if seq_diff(msg.seq, self._rx_high) > 0 and seq_diff(msg.seq, self._rx_next) < self.window:
                self._rx_high = msg.seq             # a lost tail: nack it
            self._hand_over(msg.sections)
        if self._ack_due_since is not None and now_ms - self._ack_due_since >= self.ack_delay_ms:
            self._send_ack(now_ms)
        if self._gap() and self._nack_allowed(now_ms):
            self._send_nack(now_ms)

    def _on_stream(self, seq: int, sections, now_ms: int) -> None:
        d = seq_diff(seq, self._rx_next)
        if d < 0 or seq in self._rx_buf:
            self.counters.bump("rx_duplicates")
            self._ack_due(now_ms)
            return
        if d >= self.window:
            # far ahead (we restarted, or lost a whole window): ask for the first missing one;
            # the sender resends it or answers SKIP
            self.counters.bump("rx_out_of_window")
            if self._nack_allowed(now_ms):
                self._last_nack_ms = now_ms
                self.counters.bump("tx_nacks")
                self._emit(0, ((ACK, (AckRange(ACK_NACK, self._rx_next, self._rx_next),)),), now_ms)
            return
        if seq_diff(seq, self._rx_high) > 0:
            self._rx_high = seq
        if d > 0:
            self.counters.bump("rx_out_of_order")
            self._rx_buf[seq] = sections
            return
        self._advance(sections, now_ms)

    def _advance(self, sections, now_ms: int) -> None:
        while True:
            self._hand_over(sections)
            self._rx_next = (self._rx_next + 1) & M32
            sections = self._rx_buf.pop(self._rx_next, None)
            if sections is None:
                break
        if seq_diff(self._rx_high, self._rx_next) < 0:
            self._rx_high = (self._rx_next - 1) & M32
        self._ack_due(now_ms)

    def _hand_over(self, sections) -> None:
        for action, recs in sections:
            if action == ACK:
                continue
            if isinstance(recs, Packed):
                self.counters.bump("rx_records", recs.count)
                try:
                    self._deliver(action, recs)
                except Exception:
                    self.counters.bump("deliver_errors")
                continue
            for r in recs:
                self.counters.bump("rx_records")
                try:
                    self._deliver(action, r)
                except Exception:
                    self.counters.bump("deliver_errors")

    def _on_skip(self, first: int, now_ms: int) -> None:
        """The peer no longer has what we miss: its stream resumes at ``first``."""
        if seq_diff(first, self._rx_next) <= 0:
            return                      # nothing we need is gone (an old SKIP)
        self.counters.bump("rx_skips")
        for seq in sorted(self._rx_buf, key=lambda s: seq_diff(s, first)):
            if seq_diff(seq, first) < 0:
                del self._rx_buf[seq]
        self._rx_next = first
        if seq_diff(self._rx_high, first) < 0:
            self._rx_high = (first - 1) & M32
        buffered = self._rx_buf.pop(first, None)
        if buffered is not None:
            self._advance(buffered, now_ms)
        if self._on_resync is not None:
            self._on_resync()

    def _ack_due(self, now_ms: int) -> None:
        if self._ack_due_since is None:
            self._ack_due_since = now_ms

    def _gap(self) -> bool:
        return seq_diff(self._rx_high, self._rx_next) >= 0

    def _nack_allowed(self, now_ms: int) -> bool:
        return self._last_nack_ms is None or now_ms - self._last_nack_ms >= self.nack_ms

    def _missing(self, limit: int = 32) -> list[AckRange]:
        out, seq, start = [], self._rx_next, None
        for _ in range(min(seq_diff(self._rx_high, self._rx_next) + 1, self.window)):
            if seq in self._rx_buf:
                if start is not None:
                    out.append(AckRange(ACK_NACK, start, (seq - 1) & M32))
                    start = None
                    if len(out) == limit:
                        return out
            elif start is None:
                start = seq
            seq = (seq + 1) & M32
        if start is not None:
            out.append(AckRange(ACK_NACK, start, (seq - 1) & M32))
        return out

    def _send_ack(self, now_ms: int) -> None:
        self.counters.bump("tx_acks")
        self._emit(0, ((ACK, (AckRange(ACK_CUMULATIVE, 0, (self._rx_next - 1) & M32),)),), now_ms)

    def ack_now(self, now_ms: int) -> bool:
        """The cumulative ack now, if one is due (the caller applied what was delivered: the
        peer's lag ends here, not ``ack_delay_ms`` later); True when one was sent."""
        if self.peer_epoch is None or self._ack_due_since is None:
            return False
        self._send_ack(now_ms)
        return True

    def _send_nack(self, now_ms: int) -> None:
        ranges = self._missing()
        if not ranges:
            return
        self._last_nack_ms = now_ms
        self.counters.bump("tx_nacks")
        self._emit(0, ((ACK, tuple(ranges)),), now_ms)

    # ---------------------------------------------------------------- timers
    def next_deadline(self, now_ms: int) -> int | None:
        """When ``poll`` has work next (None: nothing to do until a datagram or a submit).
        Anything unacked or missing keeps the caller at ``now + 1``: cheap and never late."""
        d = []
        if self._pending:
            d.append((self._pending_since if self._pending_since is not None else now_ms) + self.flush_ms)
        if self._unacked:
            d.append(now_ms + 1)
        if self.peer_epoch is not None:
            if self._ack_due_since is not None:
                d.append(self._ack_due_since + self.ack_delay_ms)
            if self._gap():
                d.append(now_ms + 1)
        return min(d) if d else None

    def poll(self, now_ms: int) -> None:
        if self._pending and (self._pending_since is None or now_ms - self._pending_since >= self.flush_ms):
            self._flush(now_ms, full_only=False)
        sent = 0
        for seq, ent in list(self._unacked.items()):
            if sent >= self.burst:
                break
            if now_ms - ent.last_ms >= self.rto * min(1 << (ent.sends - 1), 8):
                self._resend(seq, ent, now_ms)
                sent += 1
        if sent:        # back off until a message sent once is acked (Karn, RFC 6298 5.5)
            self.rto = min(self.rto * 2, RTO_MAX_MS)
        if self.peer_epoch is not None:
            if self._ack_due_since is not None and now_ms - self._ack_due_since >= self.ack_delay_ms:
                self._send_ack(now_ms)
            if self._gap() and self._nack_allowed(now_ms):
                self._send_nack(now_ms)

    def flush(self, now_ms: int) -> None:
        """Send what is pending now, not waiting for its flush deadline (the caller held it
        back that long already: pair.py's offer queue)."""
        self._flush(now_ms, full_only=False)

    def idle(self) -> bool:
        return not self._pending and not self._unacked

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    @property
    def pending(self) -> int:
        return len(self._pending)


__all__ = ["Transport", "FtfwTransport", "seq_diff", "TRANSPORT_COUNTERS", "REASONS"]
