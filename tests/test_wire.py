"""The replication wire format, checked against an independent decoder.

The scapy layers below (tests only, as VPP describes its HA protocol) are written from the
diagram in replication/wire.py, not from its code: they must decode what the codec encodes,
field by field, and build the very same bytes from the same values.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import random
import struct

import pytest
from scapy.fields import (ByteEnumField, ConditionalField, ByteField, FieldLenField, FlagsField, IntField, IPField,
                          LongField, PacketListField, ShortField, StrFixedLenField)
from scapy.packet import Packet

from dataplane.core import Core, InvalidArgument, Key, Peer, StateRecord, ip_str
from replication import wire
from replication.replay import ReplayWindow
from replication.wire import (ACK, BULK_END, BULK_STATE, BULK_START, DELETE, F_ACK, F_RELIABLE, HELLO, INSERT,
                              UPDATE, UPDATE_REQUEST, AckRange, BulkEnd, BulkStart, Codec, Delete,
                              Hello, Message, UpdateRequest)

KEY = b"failover key of the pair"


# ------------------------------------------------------------------ scapy layers (independent)

class _Rec(Packet):
    def extract_padding(self, s):
        return b"", s


class NpKey(_Rec):
    name = "natpair key"
    fields_desc = [IPField("src", "0.0.0.0"), IPField("dst", "0.0.0.0"), ShortField("sport", 0),
                   ShortField("dport", 0), ByteField("proto", 0), ByteField("side", 0),
                   ShortField("pad", 0)]


class NpPeer(_Rec):
    name = "natpair peer window"
    fields_desc = [IntField("seqlo", 0), IntField("seqhi", 0), ShortField("max_win", 0),
                   ByteField("wscale", 0), ByteField("flags", 0)]


class NpState(_Rec):
    name = "natpair state"
    fields_desc = [LongField("id", 0), IntField("creator", 0), ByteField("proto", 0),
                   ByteField("tcp_state", 0), ByteField("flags", 0), ByteField("pad", 0),
                   PacketListField("keys", [], NpKey, count_from=lambda p: 2),
                   PacketListField("peers", [], NpPeer, count_from=lambda p: 2),
                   IntField("expire_in_ms", 0), IntField("age_ms", 0),
                   LongField("bytes0", 0), LongField("bytes1", 0),
                   IntField("packets0", 0), IntField("packets1", 0)]


class NpDelete(_Rec):
    fields_desc = [LongField("id", 0), IntField("creator", 0), IntField("pad", 0)]


class NpBulkStart(_Rec):
    fields_desc = [IntField("request", 0), IntField("total", 0)]


class NpBulkEnd(_Rec):
    fields_desc = [IntField("request", 0), IntField("sent", 0), ByteField("status", 0),
                   ByteField("pad", 0), ShortField("pad2", 0)]


class NpUpdateRequest(_Rec):
    fields_desc = [LongField("id", 0), IntField("creator", 0), IntField("request", 0)]


class NpHello(_Rec):
    fields_desc = [ByteField("role", 0), ByteField("state", 0), ByteField("flags", 0),
                   ByteField("pad", 0), ShortField("poll_ms", 0), ShortField("hold_ms", 0),
                   IntField("table_size", 0), IntField("bulk_done", 0), IntField("bulk_total", 0)]


class NpAck(_Rec):
    fields_desc = [ByteEnumField("kind", 0, {0: "ACK", 1: "NACK", 2: "SKIP"}), ByteField("pad", 0),
                   ShortField("pad2", 0), IntField("first", 0), IntField("last", 0)]


ACTIONS = {1: "INSERT", 2: "UPDATE", 3: "DELETE", 4: "BULK_START", 5: "BULK_END",
           6: "UPDATE_REQUEST", 7: "HELLO", 8: "ACK", 9: "BULK_STATE"}
LAYER = {1: NpState, 2: NpState, 3: NpDelete, 4: NpBulkStart, 5: NpBulkEnd, 6: NpUpdateRequest,
         7: NpHello, 8: NpAck, 9: NpState}


def _records_of(actions, layer):
    return ConditionalField(PacketListField(layer.__name__, [], layer, count_from=lambda p: p.count),
                            lambda p: p.action in actions)


class NpSection(_Rec):
    name = "natpair section"
    fields_desc = [ByteEnumField("action", 0, ACTIONS), ByteField("reserved", 0),
                   ShortField("count", 0), ShortField("rec_size", 0), ShortField("reserved2", 0),
                   _records_of((1, 2, 9), NpState), _records_of((3,), NpDelete),
                   _records_of((4,), NpBulkStart), _records_of((5,), NpBulkEnd),
                   _records_of((6,), NpUpdateRequest), _records_of((7,), NpHello),
                   _records_of((8,), NpAck)]

    @property
    def records(self):
        return getattr(self, LAYER[self.action].__name__)


class NpSync(Packet):
    name = "natpair sync"
    fields_desc = [StrFixedLenField("magic", b"NPSY", 4), ByteField("version", wire.VERSION),
                   FlagsField("flags", 0, 8, ["RELIABLE", "ACK"]), ShortField("length", 0),
                   IntField("unit", 0), LongField("epoch", 0), LongField("peer_epoch", 0),
                   LongField("xmit", 0), IntField("seq", 0), IntField("ack", 0),
                   FieldLenField("nsections", None, count_of="sections", fmt="!H"),
                   ShortField("reserved", 0),
                   PacketListField("sections", [], NpSection, count_from=lambda p: p.nsections),
                   StrFixedLenField("mac", b"\0" * 32, 32)]


def scapy_record(action, r):
    if action in (INSERT, UPDATE, BULK_STATE):
        return NpState(id=r.id, creator=r.creator, proto=r.proto, tcp_state=r.tcp_state,
                       flags=r.flags,
                       keys=[NpKey(src=ip_str(k.src), dst=ip_str(k.dst), sport=k.sport,
                                   dport=k.dport, proto=k.proto, side=k.side) for k in r.keys],
                       peers=[NpPeer(**p._asdict()) for p in r.peers],
                       expire_in_ms=r.expire_in_ms, age_ms=r.age_ms, bytes0=r.bytes[0],
                       bytes1=r.bytes[1], packets0=r.packets[0], packets1=r.packets[1])
    return LAYER[action](**r._asdict())


def scapy_message(m: Message) -> bytes:
    """The datagram built by scapy alone, MAC computed here."""
    p = NpSync(flags=m.flags, unit=m.unit, epoch=m.epoch, peer_epoch=m.peer_epoch, xmit=m.xmit,
               seq=m.seq, ack=m.ack,
               sections=[NpSection(action=a, count=len(recs), rec_size=len(scapy_record(a, recs[0])),
                                   **{LAYER[a].__name__: [scapy_record(a, r) for r in recs]})
                         for a, recs in m.sections])
    p.length = len(p)
    body = bytes(p)[:-32]
    return body + hmac.new(KEY, body, hashlib.sha256).digest()


# ------------------------------------------------------------------ sample messages


def state(i: int, rng: random.Random | None = None) -> StateRecord:
    rng = rng or random.Random(i)
    u32, u16, u8 = (lambda: rng.getrandbits(32)), (lambda: rng.getrandbits(16)), (lambda: rng.getrandbits(8))
    return StateRecord(
        id=rng.getrandbits(64) or 1, creator=u32(), proto=u8(), tcp_state=u8(), flags=u8(),
        keys=tuple(Key(u32(), u32(), u16(), u16(), u8(), u8()) for _ in range(2)),
        peers=tuple(Peer(u32(), u32(), u16(), u8(), u8()) for _ in range(2)),
        expire_in_ms=u32(), age_ms=u32(), bytes=(rng.getrandbits(64), rng.getrandbits(64)),
        packets=(u32(), u32()))


def every_action(seq: int = 7) -> Message:
    return Message(
        unit=1, epoch=0x0123456789ABCDEF, xmit=42, seq=seq, ack=0xFFFFFFFE,
        peer_epoch=0xFEDCBA9876543210, flags=F_RELIABLE | F_ACK,
        sections=((INSERT, (state(1), state(2))), (UPDATE, (state(3),)), (BULK_STATE, (state(4),)),
                  (DELETE, (Delete(0xAABBCCDD, 2**64 - 1), Delete(1, 2))),
                  (BULK_START, (BulkStart(9, 100_000),)), (BULK_END, (BulkEnd(9, 99_999, 1),)),
                  (UPDATE_REQUEST, (UpdateRequest(), UpdateRequest(2, 77, 3))),
                  (HELLO, (Hello(1, 4, 0x81, 100, 300, 123456, 50, 100),)),
                  (ACK, (AckRange(0, 0, 41), AckRange(1, 10, 12), AckRange(2, 60, 0)))))


def pair(**kw):
    return Codec(KEY, 1, epoch=1000, **kw), Codec(KEY, 2, epoch=2000, **kw)


# ------------------------------------------------------------------ the layout


def test_struct_sizes_match_the_c_record():
    from dataplane._core import ffi
    assert wire.STATE.size == ffi.sizeof("struct np_state_rec") == 104
    assert wire.HEADER.size == 48 and wire.SECTION.size == 8
    assert {a: r.size for a, r in wire.RECORDS.items()} == {
        INSERT: 104, UPDATE: 104, DELETE: 16, BULK_START: 8, BULK_END: 12, UPDATE_REQUEST: 16,
        HELLO: 20, ACK: 12, BULK_STATE: 104, wire.NEIGH: 16}


def test_scapy_decodes_what_the_codec_encodes():
    a, _ = pair()
    m = every_action()
    data = a.encode(m)
    p = NpSync(data)
    assert p.magic == b"NPSY" and p.version == wire.VERSION and p.length == len(data)
    assert (p.unit, p.epoch, p.peer_epoch, p.xmit, p.seq, p.ack) == (
        m.unit, m.epoch, m.peer_epoch, m.xmit, m.seq, m.ack)
    assert int(p.flags) == F_RELIABLE | F_ACK and p.nsections == len(m.sections)
    assert p.mac == hmac.new(KEY, data[:-32], hashlib.sha256).digest()
    for sec, (action, recs) in zip(p.sections, m.sections):
        assert sec.action == action and sec.count == len(recs)
        assert sec.rec_size == wire.RECORDS[action].size
        for got, want in zip(sec.records, recs):
            if action in (INSERT, UPDATE, BULK_STATE):
                assert (got.id, got.creator, got.proto, got.tcp_state, got.flags) == (
                    want.id, want.creator, want.proto, want.tcp_state, want.flags)
                for gk, wk in zip(got.keys, want.keys):
                    assert (gk.src, gk.dst) == (ip_str(wk.src), ip_str(wk.dst))
                    assert (gk.sport, gk.dport, gk.proto, gk.side) == (wk.sport, wk.dport, wk.proto, wk.side)
                assert [Peer(g.seqlo, g.seqhi, g.max_win, g.wscale, g.flags) for g in got.peers] == list(want.peers)
                assert (got.expire_in_ms, got.age_ms, got.bytes0, got.bytes1, got.packets0,
                        got.packets1) == (want.expire_in_ms, want.age_ms, *want.bytes, *want.packets)
            else:
                assert {f: getattr(got, f) for f in want._fields} == want._asdict()


def test_scapy_builds_the_same_bytes():
    a, _ = pair()
    for m in (every_action(), Message(unit=3, epoch=1, xmit=1, sections=((ACK, (AckRange(0, 0, 5),)),)),
              Message(unit=3, epoch=1, xmit=1)):
        assert scapy_message(m) == a.encode(m)


def test_roundtrip_random_states():
    rng = random.Random(4)
    a, b = pair()
    for i in range(50):
        recs = tuple(state(0, rng) for _ in range(rng.randint(1, 12)))
        m = Message(unit=1, epoch=1000, xmit=i + 1, seq=i + 1, flags=F_RELIABLE, sections=((UPDATE, recs),))
        data = a.encode(m)
        assert len(data) <= 1400
        assert scapy_message(m) == data
        got = b.decode(data)
        assert got is not None and got.sections == m.sections and got.seq == i + 1


def test_max_size_is_enforced_and_configurable():
    a, _ = pair()
    twelve = ((INSERT, tuple(state(i) for i in range(12))),)
    assert wire.message_size(twelve) == 48 + 32 + 8 + 12 * 104 <= 1400
    a.encode(Message(unit=1, epoch=1, xmit=1, sections=twelve))
    with pytest.raises(ValueError):
        a.encode(Message(unit=1, epoch=1, xmit=1, sections=((INSERT, tuple(state(i) for i in range(13))),)))
    big, rx = Codec(KEY, 1, max_size=9000), Codec(KEY, 2, max_size=9000)
    data = big.encode(Message(unit=1, epoch=1, xmit=1, sections=((INSERT, tuple(state(i) for i in range(80))),)))
    assert rx.decode(data) is not None
    small = Codec(KEY, 2)
    assert small.decode(data) is None and small.counters["bad_length"] == 1
    with pytest.raises(ValueError):
        Codec(KEY, 1, max_size=100)


# ------------------------------------------------------------------ refusals, one reason each


def _seal(body: bytes) -> bytes:
    return body + hmac.new(KEY, body, hashlib.sha256).digest()


def _reseal(data: bytes) -> bytes:
    return _seal(data[:-32])


def _patch(data: bytes, off: int, fmt: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, off, value)
    return _reseal(bytes(b))


def bad_datagrams(good: bytes) -> dict[str, bytes]:
    sec = 48                                    # first section header
    rec = sec + 8                               # its first record (an INSERT)
    last_sec = len(good) - 32 - 12 * 3 - 8      # the ACK section of every_action()
    return {
        "short": good[:79],
        "bad_magic": _patch(good, 0, "!4s", b"PFSY"),
        "bad_version": _patch(good, 4, "!B", wire.VERSION - 1),
        "bad_length": _patch(good, 6, "!H", len(good) + 1),
        "bad_length ": _seal(good[:-32] + b"\0" * 8),                    # longer than it says
        "bad_mac": good[:-1] + bytes([good[-1] ^ 1]),
        "bad_mac ": good[:-32] + hmac.new(b"another key", good[:-32], hashlib.sha256).digest(),
        "bad_mac  ": good[:60] + bytes([good[60] ^ 0x80]) + good[61:],     # a flipped bit
        "bad_header": _patch(good, 5, "!B", 0x80),
        "bad_header ": _patch(good, 46, "!H", 1),
        "own_unit": _patch(good, 8, "!I", 2),
        "bad_section_count": _patch(good, 44, "!H", len(every_action().sections) + 1),
        "bad_section_count ": _patch(good, 44, "!H", len(every_action().sections) - 1),
        "unknown_action": _patch(good, sec, "!B", 99),
        "unknown_action ": _patch(good, sec, "!B", 0),
        "bad_record_size": _patch(good, sec + 4, "!H", 100),
        "bad_section": _patch(good, sec + 2, "!H", 200),
        "bad_section ": _patch(good, sec + 2, "!H", 0),
        "bad_section  ": _patch(good, sec + 1, "!B", 1),
        "bad_record": _patch(good, rec + 15, "!B", 1),                   # the state's pad
        "bad_record ": _patch(good, last_sec + 8, "!B", 7),               # ACK kind 7
    }


def test_every_bad_datagram_is_refused_with_its_reason():
    a, _ = pair()
    good = a.encode(every_action())
    for name, data in bad_datagrams(good).items():
        reason = name.strip()
        b = Codec(KEY, 2)
        assert b.decode(data) is None, name
        c = b.counters.nonzero()
        assert c == {reason: 1, "rx_dropped": 1}, (name, c)
        # nothing was committed: the genuine datagram still goes through
        assert b.decode(good) is not None, name


def test_garbage_never_raises():
    rng = random.Random(1)
    a, b = pair()
    good = a.encode(every_action())
    for _ in range(3000):
        n = rng.randint(0, len(good) + 20)
        data = bytes(rng.getrandbits(8) for _ in range(n)) if rng.random() < 0.3 else bytearray(good)
        if isinstance(data, bytearray):
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            if rng.random() < 0.5:
                data = _reseal(bytes(data))          # forged by someone with the key: structure
        b.decode(bytes(data))
    c = b.counters
    assert c["decode_error"] == 0
    assert c["rx_ok"] + c["rx_dropped"] == 3000


def test_truncated_at_every_length_is_refused():
    a, _ = pair()
    good = a.encode(every_action())
    b = Codec(KEY, 2)
    for n in range(len(good)):
        assert b.decode(good[:n]) is None
    c = b.counters.nonzero()
    assert c["rx_dropped"] == len(good) and "rx_ok" not in c
    assert set(c) <= {"short", "bad_length", "bad_magic", "rx_dropped"}


# ------------------------------------------------------------------ replays and epochs


def _msg(xmit: int, epoch: int = 1000) -> Message:
    return Message(unit=1, epoch=epoch, xmit=xmit, sections=((HELLO, (Hello(1, 1, 0, 10, 30, 0, 0, 0),)),))


def test_replay_and_stale_are_refused():
    a, b = pair(replay_window=64)
    d = {x: a.encode(_msg(x)) for x in (1, 2, 3, 100, 37, 36, 35)}
    assert b.decode(d[1]).new_epoch
    assert b.decode(d[3]) and b.decode(d[2])            # reordered within the window: fine
    assert b.decode(d[2]) is None and b.counters["replay"] == 1
    assert b.decode(d[100])
    assert b.decode(d[37])                              # 63 back: still in the window
    assert b.decode(d[37]) is None and b.counters["replay"] == 2
    assert b.decode(d[36]) is None and b.counters["stale"] == 1     # 64 back: out
    assert b.decode(d[1]) is None and b.counters["stale"] == 2


def test_new_epoch_is_a_restart_and_old_epochs_are_stale():
    a, b = pair()
    old = [a.encode(_msg(x, epoch=1000)) for x in (1, 2)]
    assert b.decode(old[0]).new_epoch
    restarted = a.encode(_msg(1, epoch=5000))
    m = b.decode(restarted)
    assert m is not None and m.new_epoch
    assert b.decode(old[1]) is None and b.counters["stale_epoch"] == 1
    assert b.decode(restarted) is None and b.counters["replay"] == 1
    assert not b.decode(a.encode(_msg(2, epoch=5000))).new_epoch


def test_replay_window_unit():
    w = ReplayWindow(8)
    assert w.check(1, 0) == "stale"
    assert w.commit(1, 5)
    for x in (6, 4, 12):
        assert w.check(1, x) is None
        assert not w.commit(1, x)
    assert w.check(1, 5) == "replay" and w.check(1, 12) == "replay"
    assert w.check(1, 4) == "stale"             # 8 back from 12
    assert w.check(1, 11) is None and w.check(1, 200) is None
    w.commit(1, 200)
    assert w.check(1, 12) == "stale" and w.check(1, 199) is None
    assert w.check(0, 300) == "stale_epoch" and w.check(2, 1) is None


def test_message_records_are_dataclass_equal_after_decode():
    a, b = pair()
    m = every_action()
    got = b.decode(a.encode(m))
    # BULK_STATE stays packed (the core checks and imports it by runs): its bytes, which
    # the C core reads back as the very record
    (action, packed), = [sec for sec in got.sections if sec[0] == BULK_STATE]
    assert packed == wire.Packed(1, wire.STATE.pack(*_state_fields(state(4))))
    assert Core.unpack_wire(packed.data) == state(4)
    want = tuple((a, packed if a == BULK_STATE else r) for a, r in m.sections)
    assert dataclasses.replace(got, new_epoch=False) == dataclasses.replace(m, sections=want)


def _state_fields(r):
    return wire.STATE.unpack(wire._pack_state(r))


def test_the_c_core_packs_and_unpacks_the_wire_state_record_as_wire_py_does():
    rng = random.Random(11)
    for i in range(300):
        r = state(i, rng)
        assert Core.pack_wire(r) == wire._pack_state(r)
        assert Core.unpack_wire(wire._pack_state(r)) == r
    bad = bytearray(wire._pack_state(state(1, rng)))
    for pad in (15, 30, 31, 46, 47):
        b = bytearray(bad)
        b[pad] = 1
        with pytest.raises(InvalidArgument):
            Core.unpack_wire(bytes(b))


def test_a_packed_section_goes_through_whole_and_a_wrong_length_is_refused():
    a, b = pair(max_size=9000)
    recs = b"".join(wire._pack_state(state(i)) for i in range(85))
    m = Message(unit=1, epoch=1000, xmit=1, seq=1, flags=F_RELIABLE,
                sections=((BULK_START, (BulkStart(1, 85),)), (BULK_STATE, wire.Packed(85, recs))))
    data = a.encode(m)
    assert len(data) == wire.message_size(m.sections) <= 9000
    got = b.decode(data)
    assert got.sections[1] == (BULK_STATE, wire.Packed(85, recs))
    with pytest.raises(ValueError):
        a.encode(dataclasses.replace(m, sections=((BULK_STATE, wire.Packed(85, recs[:-1])),)))
    assert wire.datagram_size(1500) == 1400 and wire.datagram_size(9000) == 8972
    assert (wire.datagram_size(9000) - wire.OVERHEAD - wire.SECTION.size) // 104 == 85


def test_a_codec_may_keep_live_state_records_packed_for_the_core():
    a, _ = pair()
    b = Codec(KEY, 2, epoch=2000, packed=frozenset({INSERT, UPDATE}))
    recs = (state(1), state(2))
    m = wire.Message(unit=1, epoch=1000, xmit=1, seq=1, flags=F_RELIABLE,
                     sections=((INSERT, recs), (DELETE, (Delete(1, 5),))))
    got = b.decode(a.encode(m))
    (act, packed), (dact, dels) = got.sections
    assert act == INSERT and isinstance(packed, wire.Packed) and packed.count == 2
    assert [Core.unpack_wire(packed.data[i * 104:(i + 1) * 104]) for i in range(2)] == list(recs)
    assert dact == DELETE and dels == (Delete(1, 5),)
    with pytest.raises(ValueError):
        Codec(KEY, 2, packed=frozenset({HELLO}))
