"""The journal drained straight into wire records (np_core_journal_drain_wire, Core.drain_wire).

Checked against the object path (Core.drain, packed by wire.py) on twin cores fed the same
packets; the caller's buffers are never written past their length (guard bytes around
buffers too small for the drain), a change that does not fit stays queued; the HTTP rule;
the per-table counts; a DELETE and a re-creation on the same keys in one drain.
"""
from __future__ import annotations

from dataplane._core import ffi, lib
from dataplane.core import Core
from replication import wire
from replication.tables import tables_of
from tests.packets import SRV_1, udp
from tests.test_state_sync import Tcp, accept, build_table, make_core

GUARD = 0xA5


def wire_of(changes) -> tuple[bytes, bytes, bytes]:
    """What drain_wire should write for these Change objects: deletes, inserts, updates."""
    out = {"delete": [], "create": [], "update": []}
    for ch in changes:
        out[ch.kind].append(wire.DELETE_REC.pack(ch.id, ch.creator, 0) if ch.kind == "delete"
                            else wire.RECORDS[wire.INSERT].pack(ch.record))
    return tuple(b"".join(out[k]) for k in ("delete", "create", "update"))


def twins():
    a, b = make_core(seed=5), make_core(seed=5)
    for c in (a, b):
        c.set_clock(1_000_000)
    return a, b


def test_drain_wire_writes_what_drain_and_wire_py_would():
    a, b = twins()
    build_table(a)
    build_table(b)
    for c in (a, b):                            # updates and a delete after a first drain
        c.set_clock(1_000_500)
    changes = a.drain(65536)
    w = b.drain_wire(65536)
    assert (w.deletes, w.inserts, w.updates) == wire_of(changes)
    assert w.count == len(changes) > 5 and a.journal_pending() == b.journal_pending() == 0
    # the per-table counts of the C drain are tables.py's of the same records
    want: dict[str, int] = {}
    for ch in changes:
        if ch.kind != "delete":
            for t in tables_of(wire.INSERT, ch.record):
                want[t] = want.get(t, 0) + 1
    got = {"tcp conn": w.tcp, "udp conn": w.udp, "icmp conn": w.icmp, "delete": w.other,
           "xlate": w.xlate}
    assert {k: v for k, v in got.items() if v} == want
    for c in (a, b):
        c.delete(1, 1)
    (ch,) = a.drain()
    w = b.drain_wire()
    assert (w.deletes, w.inserts, w.updates) == wire_of([ch]) and w.deletes


def test_http_states_are_drained_and_skipped_but_their_deletes_are_written():
    a, _ = twins()
    t = Tcp(a, "198.18.0.20", 40000, SRV_1, 80)
    t.syn()
    accept(a, udp("198.18.0.20", SRV_1, 40001, 53), "inside")
    w = a.drain_wire(skip_port=80)
    assert (w.skipped, w.count, w.tcp, w.udp) == (1, 1, 0, 1)
    assert a.journal_pending() == 0
    http_id = next(r.id for r in a.export() if r.proto == 6)
    a.delete(1, http_id)
    w = a.drain_wire(skip_port=80)
    assert w.deletes == wire.DELETE_REC.pack(http_id, 1, 0) and w.skipped == 0
    t2 = Tcp(a, "198.18.0.21", 40000, SRV_1, 80)
    t2.syn()
    w = a.drain_wire(skip_port=0)               # http_replication = true
    assert (w.skipped, w.tcp, w.count) == (0, 1, 1)


def _drain_raw(core: Core, ins_cap: int, upd_cap: int, del_cap: int, null: bool = False):
    """np_core_journal_drain_wire with buffers of exactly these sizes, each followed by 64
    guard bytes; returns (struct, [bytes of each buffer incl. guard])."""
    bufs = [ffi.new("uint8_t[]", cap + 64) for cap in (ins_cap, upd_cap, del_cap)]
    for buf, cap in zip(bufs, (ins_cap, upd_cap, del_cap)):
        ffi.memmove(buf, bytes([GUARD]) * (cap + 64), cap + 64)
    d = ffi.new("struct np_wire_drain *")
    d.inserts, d.updates, d.deletes = [ffi.NULL] * 3 if null else bufs
    d.inserts_cap, d.updates_cap, d.deletes_cap = ins_cap, upd_cap, del_cap
    n = lib.np_core_journal_drain_wire(core._c, d)
    assert n == d.n_inserts + d.n_updates + d.n_deletes
    return d, [ffi.buffer(b, cap + 64)[:] for b, cap in zip(bufs, (ins_cap, upd_cap, del_cap))]


def test_the_drain_never_writes_past_the_callers_buffers_and_leaves_the_rest_queued():
    a, _ = twins()
    for i in range(10):
        accept(a, udp(f"198.18.0.{30 + i}", SRV_1, 5000 + i, 53), "inside")
    for cap in (0, 1, 103, 104, 2 * 104 + 103):
        before = a.journal_pending()
        d, raw = _drain_raw(a, cap, cap, 15)
        whole = cap // 104
        assert d.n_inserts == min(whole, before) and d.n_updates == d.n_deletes == 0
        assert raw[0][whole * 104:] == bytes([GUARD]) * (cap + 64 - whole * 104)  # nothing past
        assert raw[1] == bytes([GUARD]) * (cap + 64) and raw[2] == bytes([GUARD]) * (15 + 64)
        assert a.journal_pending() == before - d.n_inserts          # the rest stays queued
    d, _ = _drain_raw(a, 4096, 4096, 4096, null=True)                # no buffers: nothing taken
    assert d.n_inserts == 0 and a.journal_pending() > 0
    rest = a.journal_pending()
    w = a.drain_wire()
    assert w.count == rest and a.journal_pending() == 0
    a.delete(1, 1)
    a.delete(1, 2)
    d, raw = _drain_raw(a, 0, 0, 16 + 15)                              # one DELETE fits
    assert d.n_deletes == 1 and raw[2][16:] == bytes([GUARD]) * (15 + 64)
    assert a.journal_pending() == 1
    assert a.drain_wire().deletes == wire.DELETE_REC.pack(2, 1, 0)


def test_a_delete_and_a_recreation_on_its_keys_in_one_drain_apply_in_order():
    """Deletes go first: the re-created state's keys are free on the standby when it comes."""
    a, b = make_core(seed=5), make_core(seed=6)
    for c in (a, b):
        c.set_clock(1_000_000)
    pkt = udp("198.18.0.40", SRV_1, 6000, 53)
    accept(a, pkt, "inside")
    w = a.drain_wire()
    assert b.import_wire(w.inserts).imported == 1
    old = next(a.export()).id
    a.delete(1, old)
    accept(a, pkt, "inside")                    # the same flow again: a new state, same keys
    w = a.drain_wire()
    assert w.deletes and w.inserts and not w.updates
    assert b.import_delete_wire(w.deletes) == [None]
    res = b.import_wire(w.inserts)
    assert res.imported == 1 and res.conflict == 0
    assert [r.id for r in b.export()] == [r.id for r in a.export()] != [old]


def test_bad_arguments_are_refused():
    import pytest
    from dataplane.core import InvalidArgument
    a, _ = twins()
    for bad in (dict(max_changes=0), dict(max_changes=1 << 21), dict(skip_port=70000)):
        with pytest.raises(InvalidArgument):
            a.drain_wire(**bad)
