"""The Python face of the C connection/NAT core (cext/).

This is the only module that touches the cffi ``lib``: it owns the core's
life cycle, turns the C error codes into exceptions, and converts between
C records and Python values. Names used:

- ``Core``: one connection/NAT table (``struct np_core``).
- ``Verdict``: what the core decided for one packet, with its bytes.
- ``Key`` / ``Peer`` / ``StateRecord``: a state as exported for a bulk sync
  and imported on the standby (addresses are ints, host order).
- ``Change``: one journal entry (create, update, delete) for replication.
- ``WireChanges``: one drain of the journal as replication wire records (``drain_wire``),
  written in C: the active's live stream.
- ``WireCursor`` / ``ImportResult``: a bulk sync's states in the replication wire's
  104-byte form (``replication.wire.STATE``), exported and imported by runs in C.
- ``NfQueue``: the C NFQUEUE reader (``struct np_feed``) bound to one queue,
  feeding one ``Core``; ``dataplane.feed`` drives it.
"""
from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
from typing import Iterable, Iterator, NamedTuple

from dataplane._core import ffi, lib

SIDES = {"inside": lib.NP_SIDE_INSIDE, "outside": lib.NP_SIDE_OUTSIDE, "any": lib.NP_SIDE_ANY}
SIDE_NAMES = {v: k for k, v in SIDES.items()}
PROTOS = {"tcp": 6, "udp": 17, "icmp": 1}
TIMEOUTS = {
    "tcp_embryonic": lib.NP_TMO_TCP_EMBRYONIC,
    "tcp_established": lib.NP_TMO_TCP_ESTABLISHED,
    "tcp_closing": lib.NP_TMO_TCP_CLOSING,
    "tcp_time_wait": lib.NP_TMO_TCP_TIME_WAIT,
    "tcp_closed": lib.NP_TMO_TCP_CLOSED,
    "udp": lib.NP_TMO_UDP,
    "icmp": lib.NP_TMO_ICMP,
}
CHANGE_KINDS = {lib.NP_EV_CREATE: "create", lib.NP_EV_UPDATE: "update", lib.NP_EV_DELETE: "delete"}
TCP_STATES = [ffi.string(lib.np_tcp_state_name(i)).decode() for i in range(lib.NP_TCPS_COUNT)]
COUNTER_NAMES = [ffi.string(lib.np_counter_name(i)).decode().lower()
                 for i in range(lib.np_counter_count())]
FEED_COUNTER_NAMES = [ffi.string(lib.np_feed_counter_name(i)).decode().lower()
                      for i in range(lib.np_feed_counter_count())]


class CoreError(Exception):
    """A core call failed; ``code`` is the NP_E* value."""

    def __init__(self, message: str, code: int = lib.NP_EINVAL):
        super().__init__(message)
        self.code = code


class InvalidArgument(CoreError, ValueError):
    pass


class OutOfMemory(CoreError, MemoryError):
    pass


class AlreadyExists(CoreError):
    pass


class NotFound(CoreError, KeyError):
    pass


class TableFull(CoreError):
    pass


class Conflict(CoreError):
    pass


class SystemCallFailed(CoreError, OSError):
    """NP_ESYS: a system call of the feed failed; ``errno`` says which error."""


_ERRORS = {
    lib.NP_EINVAL: InvalidArgument,
    lib.NP_ENOMEM: OutOfMemory,
    lib.NP_EEXIST: AlreadyExists,
    lib.NP_ENOENT: NotFound,
    lib.NP_EFULL: TableFull,
    lib.NP_ECONFLICT: Conflict,
    lib.NP_ESYS: SystemCallFailed,
}


def _check(rc: int, what: str) -> None:
    if rc != lib.NP_OK:
        if rc == lib.NP_ESYS:
            err = ffi.errno
            exc = SystemCallFailed(f"{what}: {os.strerror(err)} (errno {err})", rc)
            exc.errno = err
            raise exc
        raise _ERRORS.get(rc, CoreError)(f"{what}: {_ERRORS.get(rc, CoreError).__name__} ({rc})", rc)


def ip_int(addr: str | int | ipaddress.IPv4Address) -> int:
    return int(ipaddress.IPv4Address(addr))


def ip_str(addr: int) -> str:
    return str(ipaddress.IPv4Address(addr))


def _side(side: str | int) -> int:
    if isinstance(side, int):
        return side
    try:
        return SIDES[side]
    except KeyError:
        raise InvalidArgument(f"side must be one of {sorted(SIDES)}, not {side!r}") from None


def _proto(proto: str | int | None) -> int:
    if proto is None:
        return 0
    if isinstance(proto, int):
        return proto
    try:
        return PROTOS[proto]
    except KeyError:
        raise InvalidArgument(f"protocol must be one of {sorted(PROTOS)}, not {proto!r}") from None


class Verdict(NamedTuple):
    accepted: bool
    data: bytes
    modified: bool
    dir: int              # 0 = the initiator's direction, 1 = the responder's
    reason: str | None    # the drop counter's name


class Key(NamedTuple):
    src: int
    dst: int
    sport: int
    dport: int
    proto: int
    side: int

    def __str__(self) -> str:
        return (f"{SIDE_NAMES.get(self.side, self.side)} {self.proto} "
                f"{ip_str(self.src)}:{self.sport} -> {ip_str(self.dst)}:{self.dport}")


class Peer(NamedTuple):
    seqlo: int
    seqhi: int
    max_win: int
    wscale: int
    flags: int


@dataclasses.dataclass(frozen=True)
class StateRecord:
    id: int
    creator: int
    proto: int
    tcp_state: int
    flags: int
    keys: tuple[Key, Key]
    peers: tuple[Peer, Peer]
    expire_in_ms: int
    age_ms: int
    bytes: tuple[int, int]
    packets: tuple[int, int]

    @property
    def tcp_state_name(self) -> str:
        return TCP_STATES[self.tcp_state]

    @property
    def outside(self) -> tuple[str, int]:
        """The outside endpoint of the initiator (its NAT mapping)."""
        return ip_str(self.keys[1].dst), self.keys[1].dport

    @classmethod
    def from_c(cls, r) -> "StateRecord":
        return cls(
            id=r.id, creator=r.creator, proto=r.proto, tcp_state=r.tcp_state, flags=r.flags,
            keys=tuple(Key(k.src, k.dst, k.sport, k.dport, k.proto, k.side) for k in r.key),
            peers=tuple(Peer(p.seqlo, p.seqhi, p.max_win, p.wscale, p.flags) for p in r.peer),
            expire_in_ms=r.expire_in_ms, age_ms=r.age_ms,
            bytes=(r.bytes[0], r.bytes[1]), packets=(r.packets[0], r.packets[1]))

    def to_c(self, r=None):
        r = r if r is not None else ffi.new("struct np_state_rec *")
        r.id, r.creator, r.proto = self.id, self.creator, self.proto
        r.tcp_state, r.flags = self.tcp_state, self.flags
        for d in range(2):
            k, p = self.keys[d], self.peers[d]
            r.key[d].src, r.key[d].dst = k.src, k.dst
            r.key[d].sport, r.key[d].dport = k.sport, k.dport
            r.key[d].proto, r.key[d].side = k.proto, k.side
            r.peer[d].seqlo, r.peer[d].seqhi = p.seqlo, p.seqhi
            r.peer[d].max_win, r.peer[d].wscale, r.peer[d].flags = p.max_win, p.wscale, p.flags
            r.bytes[d], r.packets[d] = self.bytes[d], self.packets[d]
        r.expire_in_ms, r.age_ms = self.expire_in_ms, self.age_ms
        return r


class ImportResult(NamedTuple):
    """What ``Core.import_wire`` did with each record of a buffer."""
    imported: int
    invalid: int                     # a pad not zero, or a field the core refuses
    conflict: int                    # a key or NAT mapping held by another state
    full: int                        # no free state
    other: int

    @property
    def rejected(self) -> int:
        return self.invalid + self.conflict + self.full + self.other


WIRE_STATE_SIZE = lib.NP_WIRE_STATE_SIZE


class WireCursor:
    """A walk over a core's states (slot order), each run returned as wire records.

    ``next(max_records)`` gives the bytes of up to that many records (fewer at the end,
    and b"" once ``done``); TCP states whose service port is ``skip_port`` are left out
    and counted in ``skipped``. Hold the core's lock around each call."""

    def __init__(self, core: "Core", skip_port: int = 0):
        self._core, self._skip_port = core, skip_port
        self._cursor = ffi.new("uint32_t *", 0)
        self._skipped = ffi.new("uint32_t *", 0)
        self._buf = ffi.new("uint8_t[]", 0)
        self._cap = 0

    @property
    def done(self) -> bool:
        return self._cursor[0] == lib.NP_CURSOR_END

    @property
    def skipped(self) -> int:
        return self._skipped[0]

    def next(self, max_records: int) -> bytes:
        if max_records > self._cap:
            self._buf, self._cap = ffi.new("uint8_t[]", max_records * WIRE_STATE_SIZE), max_records
        n = lib.np_core_export_wire(self._core._c, self._cursor, self._buf, max_records,
                                    self._skip_port, self._skipped)
        return ffi.buffer(self._buf, n * WIRE_STATE_SIZE)[:]


class WireChanges(NamedTuple):
    """One drain of the journal in the replication wire's form (``Core.drain_wire``): the
    records of the deleted, created and updated states (replication.wire DELETE_REC, STATE;
    sent in this order), the TCP states of the skipped service port left out, and the
    written INSERT/UPDATE records counted by protocol and translation."""
    deletes: bytes
    inserts: bytes
    updates: bytes
    skipped: int = 0
    tcp: int = 0
    udp: int = 0
    icmp: int = 0
    other: int = 0
    xlate: int = 0

    @property
    def count(self) -> int:
        """The records it carries."""
        return (len(self.deletes) // WIRE_DELETE_SIZE
                + (len(self.inserts) + len(self.updates)) // WIRE_STATE_SIZE)


WIRE_DELETE_SIZE = lib.NP_WIRE_DELETE_SIZE


class _WireDrain:
    """The buffers np_core_journal_drain_wire writes into, kept with the core (resized to
    the largest drain asked for)."""

    def __init__(self):
        self.d = ffi.new("struct np_wire_drain *")
        self.cap = 0
        self._keep = ()

    def ready(self, n: int):
        if n > self.cap:
            ins = ffi.new("uint8_t[]", n * WIRE_STATE_SIZE)
            upd = ffi.new("uint8_t[]", n * WIRE_STATE_SIZE)
            dele = ffi.new("uint8_t[]", n * WIRE_DELETE_SIZE)
            self._keep, self.cap = (ins, upd, dele), n
        ins, upd, dele = self._keep
        d = self.d
        d.inserts, d.updates, d.deletes = ins, upd, dele
        d.inserts_cap = d.updates_cap = n * WIRE_STATE_SIZE
        d.deletes_cap = n * WIRE_DELETE_SIZE
        return d


class Change(NamedTuple):
    kind: str                        # create / update / delete
    creator: int
    id: int
    record: StateRecord | None       # None for delete


class Core:
    """One connection/NAT table in C. Not thread-safe: one caller at a time."""

    def __init__(self, *, max_states: int = 65536, creator_id: int = 1,
                 pool: Iterable[str | int] = (), port_range: tuple[int, int] = (1024, 65535),
                 timeouts_ms: dict[str, int] | None = None, tcp_loose: bool = False,
                 journal: bool = True, journal_size: int = 65536, hash_seed: int | None = None):
        cfg = ffi.new("struct np_config *")
        cfg.max_states = max_states
        cfg.creator_id = creator_id
        cfg.flags = (lib.NP_CFG_TCP_LOOSE if tcp_loose else 0) | (0 if journal else lib.NP_CFG_NO_JOURNAL)
        cfg.journal_size = journal_size
        pool = [ip_int(a) for a in pool]
        if len(pool) > lib.NP_POOL_MAX:
            raise InvalidArgument(f"at most {lib.NP_POOL_MAX} pool addresses, got {len(pool)}")
        cfg.pool_count = len(pool)
        for i, a in enumerate(pool):
            cfg.pool[i] = a
        cfg.port_lo, cfg.port_hi = port_range
        for name, ms in (timeouts_ms or {}).items():
            if name not in TIMEOUTS:
                raise InvalidArgument(f"unknown timeout {name!r}; known: {sorted(TIMEOUTS)}")
            cfg.timeout_ms[TIMEOUTS[name]] = ms
        cfg.hash_seed = hash_seed if hash_seed is not None else int.from_bytes(os.urandom(8), "little")
        err = ffi.new("int *")
        core = lib.np_core_create(cfg, err)
        if core == ffi.NULL:
            _check(err[0], "np_core_create")
        self._c = ffi.gc(core, lib.np_core_destroy)
        self.creator_id = creator_id
        self._pkt = ffi.new("struct np_pkt *")
        self._counters = ffi.new("uint64_t[]", len(COUNTER_NAMES))
        self._rec = ffi.new("struct np_state_rec *")
        self._wire_drain = _WireDrain()

    # ---- configuration ----
    def set_clock(self, now_ms: int) -> None:
        lib.np_core_set_clock(self._c, now_ms)

    def add_static(self, inside: str, outside: str, proto: str | int | None = None,
                   inside_port: int = 0, outside_port: int = 0) -> None:
        s = ffi.new("struct np_static *")
        s.proto = _proto(proto)
        s.inside_addr, s.outside_addr = ip_int(inside), ip_int(outside)
        s.inside_port, s.outside_port = inside_port, outside_port
        _check(lib.np_core_add_static(self._c, s), f"static {inside} <-> {outside}")

    def add_rule(self, action: str, *, side: str = "any", proto: str | int | None = None,
                 src: str = "0.0.0.0/0", dst: str = "0.0.0.0/0",
                 dport: tuple[int, int] = (0, 65535)) -> None:
        if action not in ("allow", "deny"):
            raise InvalidArgument(f"action must be allow or deny, not {action!r}")
        r = ffi.new("struct np_rule *")
        r.side, r.proto = _side(side), _proto(proto)
        r.action = lib.NP_RULE_ALLOW if action == "allow" else lib.NP_RULE_DENY
        s, d = ipaddress.IPv4Network(src, strict=False), ipaddress.IPv4Network(dst, strict=False)
        r.src, r.src_len = int(s.network_address), s.prefixlen
        r.dst, r.dst_len = int(d.network_address), d.prefixlen
        r.dport_lo, r.dport_hi = dport
        _check(lib.np_core_add_rule(self._c, r), f"rule {action} {src} -> {dst}")

    def clear_rules(self) -> None:
        lib.np_core_clear_rules(self._c)

    def set_journal(self, on: bool) -> None:
        lib.np_core_set_journal(self._c, 1 if on else 0)

    def set_tcp_grace(self, ms: int) -> None:
        """For ``ms`` from the core's clock, accept TCP segments outside the windows and learn
        from them (a takeover: the replicated windows may be a few packets old)."""
        lib.np_core_set_tcp_grace(self._c, ms)

    # ---- packets ----
    def process(self, data: bytes, side: str | int = "inside", *, csum_notready: bool = False,
                gso: bool = False) -> Verdict:
        buf = ffi.new("uint8_t[]", bytes(data)) if data else ffi.NULL
        p = self._pkt
        p.data, p.len = buf, len(data)
        p.flags = (lib.NP_PKT_CSUM_NOTREADY if csum_notready else 0) | (lib.NP_PKT_GSO if gso else 0)
        p.side = _side(side)
        lib.np_core_process(self._c, p)
        out = bytes(ffi.buffer(buf, len(data))) if data else b""
        return Verdict(p.verdict == lib.NP_ACCEPT, out, bool(p.modified), p.dir,
                       COUNTER_NAMES[p.reason] if p.reason else None)

    def process_buffer(self, buf: bytearray, side: str | int = "inside", flags: int = 0) -> Verdict:
        """Process a packet in place (no copy): the feed's per-packet call."""
        p = self._pkt
        p.data, p.len = ffi.from_buffer("uint8_t[]", buf), len(buf)
        p.flags, p.side = flags, _side(side)
        lib.np_core_process(self._c, p)
        return Verdict(p.verdict == lib.NP_ACCEPT, b"", bool(p.modified), p.dir,
                       COUNTER_NAMES[p.reason] if p.reason else None)

    def batch(self, buffers: list[bytearray], sides: list[str | int]) -> "Batch":
        """An array of packets over caller-owned buffers, processed by one C call per run()."""
        return Batch(self, buffers, sides)

    def process_batch(self, packets: list[tuple[bytes, str]]) -> list[Verdict]:
        n = len(packets)
        pk = ffi.new("struct np_pkt[]", n)
        bufs = []
        for i, (data, side) in enumerate(packets):
            b = ffi.new("uint8_t[]", bytes(data))
            bufs.append(b)
            pk[i].data, pk[i].len, pk[i].side, pk[i].flags = b, len(data), _side(side), 0
        lib.np_core_process_batch(self._c, pk, n)
        return [Verdict(pk[i].verdict == lib.NP_ACCEPT, bytes(ffi.buffer(bufs[i], len(packets[i][0]))),
                        bool(pk[i].modified), pk[i].dir,
                        COUNTER_NAMES[pk[i].reason] if pk[i].reason else None) for i in range(n)]

    def sweep(self, max_states: int = 0) -> int:
        return lib.np_core_sweep(self._c, max_states)

    # ---- states ----
    def export(self, batch: int = 4096) -> Iterator[StateRecord]:
        cursor = ffi.new("uint32_t *", 0)
        out = ffi.new("struct np_state_rec[]", batch)
        while True:
            n = lib.np_core_export(self._c, cursor, out, batch)
            for i in range(n):
                yield StateRecord.from_c(out[i])
            if n < batch:
                return

    def export_page(self, cursor: int, max_states: int = 1024) -> tuple[list[StateRecord], int]:
        """Up to ``max_states`` states from ``cursor`` on, and the cursor to go on from (None when
        done): a caller can let go of the core between pages (a show command on a busy unit)."""
        cur = ffi.new("uint32_t *", cursor)
        out = ffi.new("struct np_state_rec[]", max_states)
        n = lib.np_core_export(self._c, cur, out, max_states)
        return [StateRecord.from_c(out[i]) for i in range(n)], (cur[0] if n == max_states else None)

    def get(self, creator: int, id: int) -> StateRecord:
        _check(lib.np_core_get(self._c, creator, id, self._rec), f"state {creator}/{id}")
        return StateRecord.from_c(self._rec)

    def import_state(self, rec: StateRecord) -> None:
        _check(lib.np_core_import(self._c, rec.to_c(self._rec)), f"import of state {rec.creator}/{rec.id}")

    def import_delete(self, creator: int, id: int) -> None:
        _check(lib.np_core_import_delete(self._c, creator, id), f"delete of state {creator}/{id}")

    def delete(self, creator: int, id: int) -> None:
        _check(lib.np_core_delete(self._c, creator, id), f"delete of state {creator}/{id}")

    def wire_cursor(self, skip_port: int = 0) -> WireCursor:
        """A cursor exporting the table as wire records (a bulk sync's sender)."""
        return WireCursor(self, skip_port)

    def import_wire(self, data: bytes | bytearray | memoryview) -> ImportResult:
        """Import every 104-byte wire record of ``data``; each is checked before it changes
        anything, a bad one is refused (counted in the core's import_* counters)."""
        res = ffi.new("struct np_import_result *")
        lib.np_core_import_wire(self._c, ffi.from_buffer(data), len(data), res)
        return ImportResult(res.imported, res.invalid, res.conflict, res.full, res.other)

    def import_wire_each(self, data: bytes | bytearray | memoryview) -> tuple[ImportResult, list]:
        """``import_wire``, and each whole record's outcome: None when imported, else the
        CoreError subclass that ``import_state`` would have raised for it (the standby's live
        INSERT/UPDATE runs count and name each refusal)."""
        res = ffi.new("struct np_import_result *")
        n = len(data) // WIRE_STATE_SIZE
        rcs = ffi.new("int8_t[]", max(n, 1))
        lib.np_core_import_wire_each(self._c, ffi.from_buffer(data), len(data), res, rcs)
        outcome = [None if rc == lib.NP_OK else _ERRORS.get(rc, CoreError)
                   for rc in ffi.unpack(rcs, n)]
        return ImportResult(res.imported, res.invalid, res.conflict, res.full, res.other), outcome

    def import_delete_wire(self, data: bytes | bytearray | memoryview) -> list:
        """Wire DELETE records (16 bytes: id, creator, pad), each applied as ``import_delete``;
        each one's outcome: None when removed, else the CoreError subclass (NotFound for an
        unknown state, InvalidArgument for a pad not zero)."""
        n = len(data) // lib.NP_WIRE_DELETE_SIZE
        rcs = ffi.new("int8_t[]", max(n, 1))
        lib.np_core_import_delete_wire(self._c, ffi.from_buffer(data), len(data), rcs)
        return [None if rc == lib.NP_OK else _ERRORS.get(rc, CoreError) for rc in ffi.unpack(rcs, n)]

    @staticmethod
    def pack_wire(rec: StateRecord) -> bytes:
        """One record in the wire's form, packed by the C core (tests cross-check wire.py)."""
        out = ffi.new("uint8_t[]", WIRE_STATE_SIZE)
        lib.np_wire_state_pack(rec.to_c(), out)
        return ffi.buffer(out)[:]

    @staticmethod
    def unpack_wire(data: bytes) -> StateRecord:
        if len(data) != WIRE_STATE_SIZE:
            raise InvalidArgument(f"a wire state record is {WIRE_STATE_SIZE} bytes, not {len(data)}")
        r = ffi.new("struct np_state_rec *")
        _check(lib.np_wire_state_unpack(data, r), "wire state record")
        return StateRecord.from_c(r)

    def drain(self, max_changes: int = 1024) -> list[Change]:
        out = ffi.new("struct np_change[]", max_changes)
        n = lib.np_core_journal_drain(self._c, out, max_changes)
        changes = []
        for i in range(n):
            c = out[i]
            kind = CHANGE_KINDS[c.kind]
            rec = None if c.kind == lib.NP_EV_DELETE else StateRecord.from_c(c.rec)
            changes.append(Change(kind, c.rec.creator, c.rec.id, rec))
        return changes

    def drain_wire(self, max_changes: int = 1024, skip_port: int = 0) -> WireChanges:
        """Up to ``max_changes`` records of each kind drained from the journal straight into
        the replication wire's form, in C (the active's live stream): one ``WireChanges`` per
        call, no object per change. TCP states of service port ``skip_port`` (0: none) are
        drained, not written, and counted in ``skipped``."""
        if not 0 < max_changes <= 1 << 20 or not 0 <= skip_port <= 0xFFFF:
            raise InvalidArgument(f"drain of {max_changes} changes, skip port {skip_port}")
        d = self._wire_drain.ready(max_changes)
        d.skip_port = skip_port
        lib.np_core_journal_drain_wire(self._c, d)
        return WireChanges(ffi.buffer(d.deletes, d.n_deletes * WIRE_DELETE_SIZE)[:],
                           ffi.buffer(d.inserts, d.n_inserts * WIRE_STATE_SIZE)[:],
                           ffi.buffer(d.updates, d.n_updates * WIRE_STATE_SIZE)[:],
                           d.skipped, d.tcp, d.udp, d.icmp, d.other, d.xlate)

    def journal_pending(self) -> int:
        return lib.np_core_journal_pending(self._c)

    def resend_scan(self, max_states: int = 1 << 30) -> int:
        return lib.np_core_resend_scan(self._c, max_states)

    # ---- figures ----
    def counters(self) -> dict[str, int]:
        lib.np_core_counters(self._c, self._counters)
        return {name: self._counters[i] for i, name in enumerate(COUNTER_NAMES) if name != "none"}

    @property
    def state_count(self) -> int:
        return lib.np_core_state_count(self._c)

    @property
    def mapping_count(self) -> int:
        return lib.np_core_mapping_count(self._c)

    @property
    def memory(self) -> int:
        return lib.np_core_memory(self._c)


class Batch:
    """Packets processed in place by np_core_process_batch: the loop runs in C."""

    def __init__(self, core: Core, buffers: list[bytearray], sides: list[str | int]):
        self._core = core
        self._views = [ffi.from_buffer("uint8_t[]", b) for b in buffers]
        self._pkts = ffi.new("struct np_pkt[]", len(buffers))
        for i, (view, side) in enumerate(zip(self._views, sides)):
            self._pkts[i].data, self._pkts[i].len = view, len(buffers[i])
            self._pkts[i].side, self._pkts[i].flags = _side(side), 0
        self.size = len(buffers)

    def run(self, start: int = 0, count: int | None = None) -> None:
        count = self.size - start if count is None else count
        lib.np_core_process_batch(self._core._c, self._pkts + start, count)

    def accepted(self) -> int:
        return sum(1 for i in range(self.size) if self._pkts[i].verdict == lib.NP_ACCEPT)


class NfQueue:
    """The C NFQUEUE reader bound to one queue, feeding ``core``.

    Fail closed: while the queue is bound and nobody reads, the kernel drops;
    ``fail_open=True`` lets it accept untranslated packets instead (a leak).
    Not thread-safe: one thread calls ``run`` (and uses the core) at a time;
    ``run`` releases the GIL while it waits and works.
    """

    def __init__(self, core: Core, queue_num: int, *, batch: int = 64, queue_maxlen: int = 0,
                 rcvbuf: int = 0, fail_open: bool = False):
        if not 0 <= queue_num <= 65535:
            raise InvalidArgument(f"queue number must be 0..65535, not {queue_num}")
        cfg = ffi.new("struct np_feed_config *")
        cfg.queue, cfg.batch, cfg.queue_maxlen, cfg.rcvbuf = queue_num, batch, queue_maxlen, rcvbuf
        cfg.flags = lib.NP_FEED_FAIL_OPEN if fail_open else 0
        err = ffi.new("int *")
        f = lib.np_feed_open(cfg, err)
        if f == ffi.NULL:
            # the kernel answers EPERM when another socket holds the queue
            _check(err[0], f"NFQUEUE {queue_num} (bound by another reader, or no CAP_NET_ADMIN?)"
                   if ffi.errno == errno.EPERM else f"NFQUEUE {queue_num}")
        self._f = ffi.gc(f, lib.np_feed_close)
        self.core = core                 # kept alive as long as the feed
        self.queue_num = queue_num
        self.batch = batch
        self._counters = ffi.new("uint64_t[]", len(FEED_COUNTER_NAMES))

    def set_side(self, ifindex: int, side: str | int) -> None:
        _check(lib.np_feed_set_side(self._f, ifindex, _side(side)), f"interface {ifindex} side {side}")

    def run(self, max_pkts: int, timeout_ms: int) -> int:
        """Handle up to ``max_pkts`` queued packets; 0 on timeout."""
        n = lib.np_feed_run(self._f, self.core._c, max_pkts, timeout_ms)
        if n < 0:
            _check(n, f"NFQUEUE {self.queue_num}")
        return n

    def drain(self, max_pkts: int, timeout_ms: int, budget_us: int) -> int:
        """``run``, then more batches without waiting while packets are queued, for up to
        ``budget_us`` microseconds; the packets handled over all batches."""
        if not 0 <= budget_us <= 0xFFFFFFFF:
            raise InvalidArgument(f"budget_us must be 0..2**32-1, not {budget_us}")
        n = lib.np_feed_drain(self._f, self.core._c, max_pkts, timeout_ms, budget_us)
        if n < 0:
            _check(n, f"NFQUEUE {self.queue_num}")
        return n

    def fileno(self) -> int:
        return lib.np_feed_fd(self._f)

    def counters(self) -> dict[str, int]:
        lib.np_feed_counters(self._f, self._counters)
        return {name: self._counters[i] for i, name in enumerate(FEED_COUNTER_NAMES)}

    def close(self) -> None:
        """Unbind (the kernel drops what is still queued) and close the socket."""
        if self._f is not None:
            f, self._f = self._f, None
            ffi.release(f)
