"""Neighbour (ARP) table replication without root: the NEIGH record on the wire (checked by an
independent scapy decoder written from the diagram in replication/wire.py), malformed records
refused and counted, the book's changes (only a new entry, a new MAC or a forgotten entry is
one), the standby's plan, and two Pairs over the loopback carrying a table in the bulk sync
and live (the kernel side, Neighbours' thread, is not started here: tests/test_neighbours_netns.py
runs it in namespaces).
"""
from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from scapy.fields import ByteField, IPField, MACField, ShortField
from scapy.packet import Packet

from replication import neighbours as nb
from replication import wire
from replication.neighbours import NeighbourBook, Neighbours, plan
from replication.role import RoleState
from replication.wire import (F_RELIABLE, LEG_INSIDE, LEG_OUTSIDE, NEIGH, NEIGH_ADD, NEIGH_DEL,
                              Codec, Message, Neighbour)
from tests.test_pair import run, units  # noqa: F401  (the fixture)

KEY = b"failover key of the pair"
HOST_MAC = "02:42:c6:12:01:0a"


class NpNeigh(Packet):
    name = "natpair neighbour"
    fields_desc = [ByteField("op", 0), ByteField("leg", 0), ShortField("reserved", 0),
                   IPField("address", "0.0.0.0"), MACField("mac", "00:00:00:00:00:00"),
                   ShortField("reserved2", 0)]


def message(*recs: Neighbour) -> Message:
    return Message(unit=1, epoch=7, xmit=1, seq=1, flags=F_RELIABLE, sections=((NEIGH, recs),))


def test_neigh_record_on_the_wire_is_what_the_diagram_says():
    recs = (Neighbour(NEIGH_ADD, LEG_INSIDE, "198.18.1.10", HOST_MAC),
            Neighbour(NEIGH_DEL, LEG_OUTSIDE, "198.19.1.10"))
    data = Codec(KEY, 1).encode(message(*recs))
    assert wire.RECORDS[NEIGH].size == 16 and NEIGH == 20 and wire.VERSION == 2
    sec = wire.HEADER.size
    action, _, count, size, _ = struct.unpack_from("!BBHHH", data, sec)
    assert (action, count, size) == (NEIGH, 2, 16)
    for i, want in enumerate(recs):
        got = NpNeigh(data[sec + 8 + 16 * i: sec + 8 + 16 * (i + 1)])
        assert (got.op, got.leg, got.address, got.mac, got.reserved, got.reserved2) == (
            want.op, want.leg, want.address, want.mac, 0, 0)
        assert bytes(NpNeigh(op=want.op, leg=want.leg, address=want.address, mac=want.mac)) == \
            data[sec + 8 + 16 * i: sec + 8 + 16 * (i + 1)]
    got = Codec(KEY, 2).decode(data)
    assert got is not None and got.sections == ((NEIGH, recs),)


def _sealed(rec: bytes) -> bytes:
    """A datagram with one NEIGH record of these 16 bytes, correctly authenticated."""
    good = Codec(KEY, 1).encode(message(Neighbour(NEIGH_ADD, LEG_INSIDE, "198.18.1.10", HOST_MAC)))
    body = good[:wire.HEADER.size + 8] + rec
    return body + hmac.new(KEY, body, hashlib.sha256).digest()


def _rec(op=NEIGH_ADD, leg=LEG_INSIDE, address="198.18.1.10", mac=HOST_MAC, pad=0, pad2=0):
    return bytes(NpNeigh(op=op, leg=leg, address=address, mac=mac, reserved=pad, reserved2=pad2))


@pytest.mark.parametrize("bad", [
    dict(pad=1), dict(pad2=0x100), dict(op=2), dict(leg=2), dict(address="0.0.0.0"),
    dict(address="127.0.0.1"), dict(address="224.0.0.5"), dict(address="255.255.255.255"),
    dict(mac="00:00:00:00:00:00"), dict(mac="01:00:5e:00:00:05"), dict(mac="ff:ff:ff:ff:ff:ff"),
    dict(op=NEIGH_DEL, mac=HOST_MAC),
])
def test_a_malformed_neighbour_record_is_refused_and_counted(bad):
    rx = Codec(KEY, 2)
    assert rx.decode(_sealed(_rec())) is not None            # the same datagram, well formed
    rx = Codec(KEY, 2)
    assert rx.decode(_sealed(_rec(**bad))) is None
    assert rx.counters["bad_record"] == 1 and rx.counters["rx_dropped"] == 1


def test_a_neighbour_record_with_a_bad_size_is_refused():
    data = bytearray(_sealed(_rec()))
    struct.pack_into("!H", data, wire.HEADER.size + 4, 12)
    body = bytes(data[:-32])
    rx = Codec(KEY, 2)
    assert rx.decode(body + hmac.new(KEY, body, hashlib.sha256).digest()) is None
    assert rx.counters["bad_record_size"] == 1


IN, OUT, FO = 4, 5, 6                   # ifindexes


def book() -> NeighbourBook:
    return NeighbourBook({IN: LEG_INSIDE, OUT: LEG_OUTSIDE}, skip={"198.18.1.2", "198.18.1.1"})


def test_the_book_tells_only_new_entries_new_macs_and_forgotten_ones():
    b = book()
    add = Neighbour(NEIGH_ADD, LEG_INSIDE, "198.18.1.10", HOST_MAC)
    assert b.event(nb.NEW, IN, nb.NUD_REACHABLE, "198.18.1.10", HOST_MAC.upper()) == add
    for state in (nb.NUD_STALE, nb.NUD_DELAY, nb.NUD_PROBE, nb.NUD_REACHABLE):
        assert b.event(nb.NEW, IN, state, "198.18.1.10", HOST_MAC) is None
    moved = "02:42:c6:12:01:0b"
    assert b.event(nb.NEW, IN, nb.NUD_STALE, "198.18.1.10", moved) == add._replace(mac=moved)
    assert b.event(nb.NEW, IN, nb.NUD_FAILED, "198.18.1.10", None) == Neighbour(
        NEIGH_DEL, LEG_INSIDE, "198.18.1.10")
    assert b.event(nb.DEL, IN, nb.NUD_FAILED, "198.18.1.10", None) is None   # already gone
    assert b.event(nb.NEW, IN, nb.NUD_INCOMPLETE, "198.18.1.10", None) is None
    assert b.counters["learned"] == 1 and b.counters["moved"] == 1 and b.counters["forgotten"] == 1
    # not ours: the failover leg, our own or virtual addresses, no host address
    assert b.event(nb.NEW, FO, nb.NUD_REACHABLE, "198.18.255.2", HOST_MAC) is None
    assert b.event(nb.NEW, IN, nb.NUD_REACHABLE, "198.18.1.1", HOST_MAC) is None
    assert b.event(nb.NEW, IN, nb.NUD_REACHABLE, "198.18.1.2", HOST_MAC) is None
    assert b.event(nb.NEW, IN, nb.NUD_NOARP, "224.0.0.22", "01:00:5e:00:00:16") is None
    assert b.counters["skipped_leg"] == 1 and b.counters["skipped_own"] == 3
    # an entry an admin makes permanent is configuration, not state: forgotten
    b.event(nb.NEW, OUT, nb.NUD_REACHABLE, "198.19.1.10", HOST_MAC)
    assert b.event(nb.NEW, OUT, nb.NUD_PERMANENT, "198.19.1.10", HOST_MAC).op == NEIGH_DEL
    assert b.entries == {}


def test_a_dump_replaces_the_book_and_tells_the_difference():
    b = book()
    b.event(nb.NEW, IN, nb.NUD_REACHABLE, "198.18.1.10", HOST_MAC)
    b.event(nb.NEW, IN, nb.NUD_REACHABLE, "198.18.1.11", HOST_MAC)
    changes = b.replace_all([(IN, nb.NUD_STALE, "198.18.1.10", HOST_MAC),
                             (OUT, nb.NUD_DELAY, "198.19.1.10", "02:00:00:00:00:01"),
                             (IN, nb.NUD_FAILED, "198.18.1.12", None)])
    assert changes == [Neighbour(NEIGH_ADD, LEG_OUTSIDE, "198.19.1.10", "02:00:00:00:00:01"),
                       Neighbour(NEIGH_DEL, LEG_INSIDE, "198.18.1.11")]
    assert b.snapshot() == [Neighbour(NEIGH_ADD, LEG_INSIDE, "198.18.1.10", HOST_MAC),
                            Neighbour(NEIGH_ADD, LEG_OUTSIDE, "198.19.1.10", "02:00:00:00:00:01")]


def test_the_standby_installs_stale_and_never_removes_its_own_static_entries():
    add = Neighbour(NEIGH_ADD, LEG_INSIDE, "198.18.1.10", HOST_MAC)
    dele = Neighbour(NEIGH_DEL, LEG_INSIDE, "198.18.1.10")
    own = {"198.18.1.3"}
    assert plan(add, own, None) == "replace" and plan(add, own, nb.NUD_REACHABLE) == "replace"
    assert plan(add._replace(address="198.18.1.3"), own, None) == "skip_own"
    assert plan(dele, own, nb.NUD_STALE) == "delete" and plan(dele, own, nb.NUD_FAILED) == "delete"
    assert plan(dele, own, nb.NUD_PERMANENT) == "keep_static"
    assert plan(dele, own, nb.NUD_NOARP) == "keep_static"
    assert plan(dele, own, None) == "absent"


def test_outgoing_drops_without_a_standby_and_refreshes_the_whole_book():
    n = Neighbours({LEG_INSIDE: "in0"})
    n.book.legs = {IN: LEG_INSIDE}
    n.on_event(nb.NEW, IN, nb.NUD_REACHABLE, "198.18.1.10", HOST_MAC)
    assert n.outgoing(0, replicating=False) == [] and n.counters["dropped_no_standby"] == 1
    n.on_event(nb.NEW, IN, nb.NUD_REACHABLE, "198.18.1.11", HOST_MAC)
    assert [r.address for r in n.outgoing(1, replicating=True)] == ["198.18.1.11"]
    assert n.outgoing(2, replicating=True) == []
    assert [r.address for r in n.outgoing(nb.REFRESH_MS, replicating=True)] == [
        "198.18.1.10", "198.18.1.11"]
    assert n.counters["refreshes"] == 1


def test_a_pair_carries_the_table_in_the_bulk_sync_and_then_live(units):  # noqa: F811
    a, b = units()
    na, nbr = (Neighbours({LEG_INSIDE: "in0", LEG_OUTSIDE: "out0"}) for _ in range(2))
    na.book.legs = {IN: LEG_INSIDE, OUT: LEG_OUTSIDE}
    a.pair.neighbours, b.pair.neighbours = na, nbr
    a.pair.start()
    assert run([a], lambda: a.pair.role.is_active, 2)
    na.on_event(nb.NEW, IN, nb.NUD_REACHABLE, "198.18.1.10", HOST_MAC)     # before the join
    b.pair.start()
    assert run([a, b], lambda: b.pair.role.state is RoleState.STANDBY_READY)
    assert run([a, b], lambda: len(nbr._installs) == 1)
    assert list(nbr._installs) == [Neighbour(NEIGH_ADD, LEG_INSIDE, "198.18.1.10", HOST_MAC)]
    na.on_event(nb.NEW, OUT, nb.NUD_REACHABLE, "198.19.1.10", "02:00:00:00:00:01")   # live
    na.on_event(nb.DEL, IN, nb.NUD_FAILED, "198.18.1.10", None)
    assert run([a, b], lambda: len(nbr._installs) == 3)
    assert list(nbr._installs)[1:] == [
        Neighbour(NEIGH_ADD, LEG_OUTSIDE, "198.19.1.10", "02:00:00:00:00:01"),
        Neighbour(NEIGH_DEL, LEG_INSIDE, "198.18.1.10")]
    counters = b.pair.replication_counters()
    assert counters["neigh_received"] == 3 and a.pair.replication_counters()["neigh_sent"] >= 2
