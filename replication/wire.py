"""The replication wire format: one authenticated UDP datagram per message.

Owns the layout of a message, one fixed-size packed struct per action (pfsync's way),
encoding (``Codec.encode``) and checked decoding (``Codec.decode``), which drops and
counts anything wrong before it returns anything and never raises. Everything is in
network byte order; sizes are asserted below.

  0                   1                   2                   3
  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 +---------------------------------------------------------------+ -.
 |                         magic "NPSY"                          |  |
 +---------------+---------------+-------------------------------+  |
 |    version    |     flags     |  length (whole datagram)      |  |
 +---------------+---------------+-------------------------------+  |
 |                sender unit id (its creator id)                |  |
 +---------------------------------------------------------------+  |
 |          epoch: the sender's boot id, grows at each start     |  | header,
 |                            (u64)                              |  | 48 bytes
 +---------------------------------------------------------------+  |
 |   peer epoch: the receiver's epoch that "ack" refers to (u64) |  |
 |                                                               |  |
 +---------------------------------------------------------------+  |
 |    xmit: datagram counter of this epoch, anti-replay (u64)    |  |
 |                                                               |  |
 +---------------------------------------------------------------+  |
 |   seq: this message's place in the reliable stream (u32)      |  |
 +---------------------------------------------------------------+  |
 |   ack: the peer's stream received in order up to here (u32)   |  |
 +-------------------------------+-------------------------------+  |
 |        section count          |         reserved (0)          |  |
 +===============+===============+===============================+ -'
 |    action     | reserved (0)  |        record count           |  section
 +---------------+---------------+-------------------------------+  header,
 |   record size (per action)    |         reserved (0)          |  8 bytes
 +-------------------------------+-------------------------------+
 |          count x record, one fixed-size struct per action     |
 ~                                                               ~
 +===============================================================+
 |                ... more sections (section count) ...          |
 +===============================================================+
 |        HMAC-SHA256 over everything above, failover key        |
 ~                          (32 bytes)                           ~
 +---------------------------------------------------------------+

Flags: RELIABLE (seq is a message of the reliable stream; without it seq is the last
stream seq the sender has sent, so a receiver learns of a lost tail), ACK (ack and peer
epoch are valid). Actions and their records (sizes in bytes):

  INSERT, UPDATE  state (104): every field of dataplane.core.StateRecord
  BULK_STATE      state (104): a state of a bulk sync, kept apart from the live INSERT and
                  UPDATE (bulk.py needs to tell them apart); it belongs to the request of
                  the last BULK_START before it in the stream. Its records stay packed
                  (``Packed``): the C core writes them (``Core.wire_cursor``) and checks and
                  imports them (``Core.import_wire``) by runs, so decode checks only the
                  section, not each record (a bad one is refused and counted at import)
                  A Codec made with ``packed={INSERT, UPDATE, DELETE}`` (the standby's, pair.py)
                  keeps live sections packed too: the core applies a run of them in one C call
                  (``Core.import_wire_each``, ``Core.import_delete_wire``), each record checked
                  and counted there
  DELETE          delete (16): id, creator
  BULK_START      bulk_start (8): request id, states in the table
  BULK_END        bulk_end (12): request id, states sent, status
  UPDATE_REQUEST  update_request (16): id, creator, request id; id 0 and creator 0 ask for
                  the whole table (a bulk sync)
  HELLO           hello (20): role, state, flags, poll_ms, hold_ms, table size, bulk progress
  ACK             ack (12): kind, first, last; kind ACK: the sender's stream received up to
                  last; NACK: first..last are missing; SKIP: my stream resumes at first,
                  what is below is gone (the receiver must bulk sync)
  NEIGH (20)      neigh (16): a neighbour (ARP) entry of a data leg (neighbours.py), in the
                  reliable stream, live and after each BULK_START:

                   0               1               2               3
                  +---------------+---------------+-------------------------------+
                  |  op (ADD 0,   |  leg (inside  |         reserved (0)          |
                  |   DEL 1)      |  0, outside 1)|                               |
                  +---------------+---------------+-------------------------------+
                  |                    IPv4 address                               |
                  +---------------------------------------------------------------+
                  |                    MAC address (6 bytes)  ...                 |
                  +-------------------------------+-------------------------------+
                  |   ... MAC address             |         reserved (0)          |
                  +-------------------------------+-------------------------------+

                  refused as bad_record: a reserved field set, an unknown op or leg, an
                  address that is no unicast host (0/8, 127/8, 224/3, 255.255.255.255), an
                  ADD with a zero or group MAC, a DEL with a MAC

Version 2 added NEIGH (a version-1 unit would refuse a datagram holding one as
unknown_action and stall the stream; with the version bumped it refuses every datagram as
bad_version, loudly, and both ends count it).

Names: ``Message`` (a decoded or to-be-encoded datagram), ``Codec`` (key, unit, replay
window, drop counters), ``Packed`` (a section's records as bytes), the record tuples
``Delete``, ``BulkStart``, ``BulkEnd``, ``UpdateRequest``, ``Hello``, ``AckRange``,
``Neighbour``, and ``StateRecord`` from dataplane.core.
Drop reasons, one counter each: short, bad_magic, bad_version, bad_length, bad_mac,
bad_header, own_unit, bad_section_count, unknown_action, bad_record_size, bad_section,
bad_record, stale_epoch, stale, replay (and decode_error for a bug, never expected).
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import struct
import time
from typing import Callable, NamedTuple

from dataplane.core import Key, Peer, StateRecord
from replication.counters import Counters
from replication.replay import ReplayWindow

MAGIC = b"NPSY"
VERSION = 2                     # 2: NEIGH
MAX_DATAGRAM = 1400             # default limit, below a 1500 MTU with IP/UDP (and a VLAN)
MAX_UDP = 65507
IP_UDP_HEADERS = 28


def datagram_size(mtu: int) -> int:
    """The largest datagram that crosses a link of this MTU whole (no IP fragments): a
    jumbo failover link (MTU 9000) carries 85 bulk states per HMAC instead of 12."""
    return MAX_DATAGRAM if mtu <= 1500 else min(mtu - IP_UDP_HEADERS, MAX_UDP)


F_RELIABLE = 0x01
F_ACK = 0x02
KNOWN_FLAGS = F_RELIABLE | F_ACK

# actions
INSERT = 1
UPDATE = 2
DELETE = 3
BULK_START = 4
BULK_END = 5
UPDATE_REQUEST = 6
HELLO = 7
ACK = 8
BULK_STATE = 9
NEIGH = 20                      # apart from the others' numbers: branches add actions
ACTION_NAMES = {NEIGH: "NEIGH", BULK_STATE: "BULK_STATE", INSERT: "INSERT", UPDATE: "UPDATE", DELETE: "DELETE", BULK_START: "BULK_START",
                BULK_END: "BULK_END", UPDATE_REQUEST: "UPDATE_REQUEST", HELLO: "HELLO", ACK: "ACK"}

# ACK record kinds
ACK_CUMULATIVE = 0
ACK_NACK = 1
ACK_SKIP = 2

# NEIGH ops and legs
NEIGH_ADD = 0
NEIGH_DEL = 1
LEG_INSIDE = 0
LEG_OUTSIDE = 1
NO_MAC = "00:00:00:00:00:00"

# BULK_END status
BULK_OK = 0
BULK_ABORTED = 1

HEADER = struct.Struct("!4sBBHIQQQIIHH")
SECTION = struct.Struct("!BBHHH")
MAC_SIZE = hashlib.sha256().digest_size
_KEY = "IIHHBBH"
_PEER = "IIHBB"
STATE = struct.Struct("!QIBBBB" + _KEY * 2 + _PEER * 2 + "II" + "QQ" + "II")
DELETE_REC = struct.Struct("!QII")
BULK_START_REC = struct.Struct("!II")
BULK_END_REC = struct.Struct("!IIBBH")
UPDATE_REQUEST_REC = struct.Struct("!QII")
HELLO_REC = struct.Struct("!BBBBHHIII")
ACK_REC = struct.Struct("!BBHII")
NEIGH_REC = struct.Struct("!BBH4s6sH")

assert HEADER.size == 48 and SECTION.size == 8 and MAC_SIZE == 32
assert STATE.size == 104        # the same as struct np_state_rec, field for field
assert DELETE_REC.size == 16 and BULK_START_REC.size == 8 and BULK_END_REC.size == 12
assert UPDATE_REQUEST_REC.size == 16 and HELLO_REC.size == 20 and ACK_REC.size == 12
assert NEIGH_REC.size == 16


class Packed(NamedTuple):
    """``count`` records of one action already in wire form (``data``: count x size bytes)."""
    count: int
    data: bytes


PACKED_ACTIONS = frozenset({BULK_STATE})     # decoded as Packed, checked at import
PACKABLE = frozenset({BULK_STATE, INSERT, UPDATE, DELETE})   # a Codec may keep these packed too


def records_size(action: int, recs) -> int:
    """Bytes of a section's records (a tuple of records or a Packed)."""
    return len(recs.data) if isinstance(recs, Packed) else len(recs) * RECORDS[action].size


def record_count(recs) -> int:
    return recs.count if isinstance(recs, Packed) else len(recs)


class Delete(NamedTuple):
    creator: int
    id: int


class BulkStart(NamedTuple):
    request: int
    total: int


class BulkEnd(NamedTuple):
    request: int
    sent: int
    status: int = BULK_OK


class UpdateRequest(NamedTuple):
    creator: int = 0            # 0 and id 0: the whole table
    id: int = 0
    request: int = 0


class Hello(NamedTuple):
    role: int
    state: int
    flags: int
    poll_ms: int
    hold_ms: int
    table_size: int
    bulk_done: int
    bulk_total: int


class AckRange(NamedTuple):
    kind: int
    first: int
    last: int


class Neighbour(NamedTuple):
    op: int                     # NEIGH_ADD, NEIGH_DEL
    leg: int                    # LEG_INSIDE, LEG_OUTSIDE
    address: str                # "a.b.c.d"
    mac: str = NO_MAC           # "aa:bb:cc:dd:ee:ff", lower case; NO_MAC for a DEL


@dataclasses.dataclass(frozen=True)
class Message:
    unit: int
    epoch: int
    xmit: int
    seq: int = 0
    ack: int = 0
    peer_epoch: int = 0
    flags: int = 0
    sections: tuple[tuple[int, tuple], ...] = ()
    new_epoch: bool = False     # decode: the first datagram of this peer epoch

    @property
    def reliable(self) -> bool:
        return bool(self.flags & F_RELIABLE)


# ---- records -----------------------------------------------------------------------------

def _pack_state(r: StateRecord) -> bytes:
    k0, k1 = r.keys
    p0, p1 = r.peers
    return STATE.pack(r.id, r.creator, r.proto, r.tcp_state, r.flags, 0,
                      k0.src, k0.dst, k0.sport, k0.dport, k0.proto, k0.side, 0,
                      k1.src, k1.dst, k1.sport, k1.dport, k1.proto, k1.side, 0,
                      p0.seqlo, p0.seqhi, p0.max_win, p0.wscale, p0.flags,
                      p1.seqlo, p1.seqhi, p1.max_win, p1.wscale, p1.flags,
                      r.expire_in_ms, r.age_ms, r.bytes[0], r.bytes[1], r.packets[0], r.packets[1])


def _unpack_state(b: bytes, off: int) -> StateRecord | None:
    v = STATE.unpack_from(b, off)
    if v[5] or v[12] or v[19]:          # the pads
        return None
    return StateRecord(id=v[0], creator=v[1], proto=v[2], tcp_state=v[3], flags=v[4],
                       keys=(Key(*v[6:12]), Key(*v[13:19])),
                       peers=(Peer(*v[20:25]), Peer(*v[25:30])),
                       expire_in_ms=v[30], age_ms=v[31], bytes=(v[32], v[33]), packets=(v[34], v[35]))


def _unpack_delete(b: bytes, off: int) -> Delete | None:
    id_, creator, pad = DELETE_REC.unpack_from(b, off)
    return None if pad else Delete(creator, id_)


def _unpack_bulk_end(b: bytes, off: int) -> BulkEnd | None:
    req, sent, status, pad, pad2 = BULK_END_REC.unpack_from(b, off)
    return None if pad or pad2 or status not in (BULK_OK, BULK_ABORTED) else BulkEnd(req, sent, status)


def _unpack_update_request(b: bytes, off: int) -> UpdateRequest:
    id_, creator, req = UPDATE_REQUEST_REC.unpack_from(b, off)
    return UpdateRequest(creator, id_, req)


def _unpack_hello(b: bytes, off: int) -> Hello | None:
    v = HELLO_REC.unpack_from(b, off)
    return None if v[3] else Hello(v[0], v[1], v[2], *v[4:])


def _unpack_ack(b: bytes, off: int) -> AckRange | None:
    kind, pad, pad2, first, last = ACK_REC.unpack_from(b, off)
    return None if pad or pad2 or kind not in (ACK_CUMULATIVE, ACK_NACK, ACK_SKIP) else AckRange(kind, first, last)


def _pack_neigh(r: Neighbour) -> bytes:
    mac = bytes.fromhex(r.mac.replace(":", ""))
    if len(mac) != 6:
        raise ValueError(f"not a MAC address: {r.mac!r}")
    return NEIGH_REC.pack(r.op, r.leg, 0, ipaddress.IPv4Address(r.address).packed, mac, 0)


def neighbour_ok(address: str) -> bool:
    """A unicast host address a neighbour entry may be for."""
    a = ipaddress.IPv4Address(address)
    return not (a.packed[0] in (0, 127) or a.packed[0] >= 224)


def _unpack_neigh(b: bytes, off: int) -> Neighbour | None:
    op, leg, pad, addr, mac, pad2 = NEIGH_REC.unpack_from(b, off)
    if pad or pad2 or op not in (NEIGH_ADD, NEIGH_DEL) or leg not in (LEG_INSIDE, LEG_OUTSIDE):
        return None
    address = str(ipaddress.IPv4Address(addr))
    if not neighbour_ok(address):
        return None
    if op == NEIGH_ADD and (mac == bytes(6) or mac[0] & 1):
        return None                     # no MAC, or a group MAC: no host's
    if op == NEIGH_DEL and mac != bytes(6):
        return None
    return Neighbour(op, leg, address, mac.hex(":"))


class _Rec(NamedTuple):
    size: int
    pack: Callable[[object], bytes]
    unpack: Callable[[bytes, int], object | None]    # None: a bad record


RECORDS: dict[int, _Rec] = {
    INSERT: _Rec(STATE.size, _pack_state, _unpack_state),
    UPDATE: _Rec(STATE.size, _pack_state, _unpack_state),
    BULK_STATE: _Rec(STATE.size, _pack_state, _unpack_state),
    DELETE: _Rec(DELETE_REC.size, lambda r: DELETE_REC.pack(r.id, r.creator, 0), _unpack_delete),
    BULK_START: _Rec(BULK_START_REC.size, lambda r: BULK_START_REC.pack(r.request, r.total),
                     lambda b, o: BulkStart(*BULK_START_REC.unpack_from(b, o))),
    BULK_END: _Rec(BULK_END_REC.size, lambda r: BULK_END_REC.pack(r.request, r.sent, r.status, 0, 0),
                   _unpack_bulk_end),
    UPDATE_REQUEST: _Rec(UPDATE_REQUEST_REC.size,
                         lambda r: UPDATE_REQUEST_REC.pack(r.id, r.creator, r.request),
                         _unpack_update_request),
    HELLO: _Rec(HELLO_REC.size, lambda r: HELLO_REC.pack(r.role, r.state, r.flags, 0, r.poll_ms,
                                                         r.hold_ms, r.table_size, r.bulk_done,
                                                         r.bulk_total), _unpack_hello),
    ACK: _Rec(ACK_REC.size, lambda r: ACK_REC.pack(r.kind, 0, 0, r.first, r.last), _unpack_ack),
    NEIGH: _Rec(NEIGH_REC.size, _pack_neigh, _unpack_neigh),
}

OVERHEAD = HEADER.size + MAC_SIZE


def message_size(sections) -> int:
    """Bytes of a datagram carrying these sections."""
    return OVERHEAD + sum(SECTION.size + records_size(a, recs) for a, recs in sections)


def new_epoch() -> int:
    """A boot id that grows across restarts: microseconds of the wall clock."""
    return time.time_ns() // 1000


REASONS = ("short", "bad_magic", "bad_version", "bad_length", "bad_mac", "bad_header", "own_unit",
           "bad_section_count", "unknown_action", "bad_record_size", "bad_section", "bad_record",
           "stale_epoch", "stale", "replay", "decode_error")


class _Reject(Exception):
    pass


class Codec:
    """Encodes this unit's messages and checks the peer's, under one failover key.

    ``decode`` returns a ``Message`` only when every check passed (the replay window is
    committed last), else None with ``counters[reason]`` bumped. Received datagrams
    accepted are counted as ``rx_ok``, refused ones also as ``rx_dropped``.
    """

    def __init__(self, key: bytes, unit: int, *, epoch: int | None = None,
                 max_size: int = MAX_DATAGRAM, replay_window: int = 1024,
                 counters: Counters | None = None, packed: frozenset[int] = frozenset()):
        if not key:
            raise ValueError("the failover key must not be empty")
        if not OVERHEAD + SECTION.size + STATE.size <= max_size <= 65507:
            raise ValueError(f"max_size must hold one state record and fit UDP, not {max_size}")
        self._key = bytes(key)
        self.unit = unit
        self.epoch = new_epoch() if epoch is None else epoch
        self.max_size = max_size
        self.packed = PACKED_ACTIONS | packed
        if not self.packed <= PACKABLE:
            raise ValueError(f"only state records stay packed, not {sorted(self.packed - PACKABLE)}")
        self.window = ReplayWindow(replay_window)
        self.counters = counters if counters is not None else Counters(REASONS + ("rx_ok", "rx_dropped"))

    def mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()

    # ---- send ----
    def encode(self, msg: Message) -> bytes:
        """The datagram of ``msg``; ValueError when it cannot be one (a bug of the sender)."""
        if msg.flags & ~KNOWN_FLAGS:
            raise ValueError(f"unknown flags {msg.flags:#x}")
        if len(msg.sections) > 0xFFFF:
            raise ValueError("too many sections")
        size = message_size(msg.sections)
        if size > self.max_size:
            raise ValueError(f"message of {size} bytes exceeds {self.max_size}")
        parts = [HEADER.pack(MAGIC, VERSION, msg.flags, size, msg.unit, msg.epoch, msg.peer_epoch,
                             msg.xmit, msg.seq, msg.ack, len(msg.sections), 0)]
        for action, recs in msg.sections:
            rec = RECORDS.get(action)
            count = record_count(recs)
            if rec is None or not 0 < count <= 0xFFFF:
                raise ValueError(f"bad section {action} x {count}")
            parts.append(SECTION.pack(action, 0, count, rec.size, 0))
            if isinstance(recs, Packed):
                if len(recs.data) != count * rec.size:
                    raise ValueError(f"packed section of {len(recs.data)} bytes for {count} records")
                parts.append(recs.data)
            else:
                parts.extend(rec.pack(r) for r in recs)
        body = b"".join(parts)
        return body + self.mac(body)

    # ---- receive ----
    def decode(self, data: bytes) -> Message | None:
        try:
            msg = self._decode(bytes(data))
        except _Reject as r:
            self.counters.bump(str(r))
            self.counters.bump("rx_dropped")
            return None
        except Exception:               # a bug here must not take the receive path down
            self.counters.bump("decode_error")
            self.counters.bump("rx_dropped")
            return None
        self.counters.bump("rx_ok")
        return msg

    def _decode(self, data: bytes) -> Message:
        n = len(data)
        if n < OVERHEAD:
            raise _Reject("short")
        (magic, version, flags, length, unit, epoch, peer_epoch, xmit, seq, ack, nsec,
         reserved) = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise _Reject("bad_magic")
        if version != VERSION:
            raise _Reject("bad_version")
        if length != n or n > self.max_size:
            raise _Reject("bad_length")
        if not hmac.compare_digest(self.mac(data[:-MAC_SIZE]), data[-MAC_SIZE:]):
            raise _Reject("bad_mac")
        if reserved or flags & ~KNOWN_FLAGS:
            raise _Reject("bad_header")
        if unit == self.unit:
            raise _Reject("own_unit")
        end, off, sections = n - MAC_SIZE, HEADER.size, []
        for _ in range(nsec):
            if off + SECTION.size > end:
                raise _Reject("bad_section_count")
            action, r1, count, size, r2 = SECTION.unpack_from(data, off)
            off += SECTION.size
            rec = RECORDS.get(action)
            if rec is None:
                raise _Reject("unknown_action")
            if size != rec.size:
                raise _Reject("bad_record_size")
            if r1 or r2 or count == 0 or off + count * size > end:
                raise _Reject("bad_section")
            if action in self.packed:
                sections.append((action, Packed(count, data[off:off + count * size])))
                off += count * size
                continue
            recs = []
            for i in range(count):
                r = rec.unpack(data, off + i * size)
                if r is None:
                    raise _Reject("bad_record")
                recs.append(r)
            sections.append((action, tuple(recs)))
            off += count * size
        if off != end:
            raise _Reject("bad_section_count")
        reason = self.window.check(epoch, xmit)
        if reason:
            raise _Reject(reason)
        fresh = self.window.commit(epoch, xmit)          # commit: nothing can fail after this
        return Message(unit=unit, epoch=epoch, xmit=xmit, seq=seq, ack=ack, peer_epoch=peer_epoch,
                       flags=flags, sections=tuple(sections), new_epoch=fresh)
