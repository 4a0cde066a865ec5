"""The shared-memory block between the daemon and its hello process (replication.beat).

Owns the block's fixed layout and its seqlocked records, over any writable buffer (an
mmap of a memfd the daemon passes to the beat process). Little-endian, no padding (the
u64s fall on 8-byte boundaries):

  offset  size  what
       0     8  magic "NPBT", layout VERSION (u32)
       8     8  alive_ns (u64): the daemon's replication thread last stepped (CLOCK_MONOTONIC);
                the beat falls silent when it is older than ``STALE_MS`` (a hung daemon
                must not look alive to the peer)
      16    24  ours (daemon -> beat): seq (u32) + what our hello says (``OURS``)
      40  3x48  heard, one slot per path in ``PATHS`` (beat -> daemon): seq (u32),
                count (u32: valid hellos so far), heard_ns (u64), the peer's unit id and
                its last hello's fields (``HEARD``)
     184  8xN   counters (u64, beat -> daemon, one writer each): ``COUNTERS``; the *_max_ms
                ones are the largest seen: rx_gap_max_ms_<path>, between two valid hellos
                heard on the path (the peer's lateness plus the network's plus ours), and
                tx_late_max_ms, how late the beat's main thread sent a hello after it was
                due (ours); tx_gap_max_ms, the longest time between two rounds of our
                hellos (either thread); tx_backup, rounds the backup thread sent because
                the main one was late; pauses and pause_max_ms, the main thread's own
                stalls (below); rx_late_max_ms, the longest a hello waited in its socket
   184+8N   32  watch (beat -> daemon): seq (u32), pad, then (``WATCH``) looked_ns (the beat
                last came back from waiting and read its sockets), wake_by_ns (the latest
                time it asked to be woken by, as it went to wait), paused_ns (the total of
                its pauses), resumed_ns (the end of its last pause). A pause: the beat woke
                more than ``pause_ms(poll)`` after it asked, or took that long from its
                wake to the end of its reading (it was not running: the CPU was
                held by a kernel path that does not preempt, or the VM was stopped); while
                it is paused nobody listens, so the daemon's detector must not count that
                time as the peer's silence (replication.detect ``Detector.paused``)

Every record is a seqlock: the writer makes seq odd, writes, makes it even again; a
reader retries while seq is odd or changed under it, so neither side uses a torn
record. There is one writer per record (ours: the replication thread; heard and
counters: the beat process). x86 and arm64 keep the 4-byte seq stores in order with
the data around them as far as these small memcpy'd records go (stores are not
reordered with stores on x86; the reader re-reads seq after the data).
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from replication import wire

MAGIC = b"NPBT"
VERSION = 2
PATHS = ("failover", "inside", "outside")
STALE_MS = 1000                 # > the 500 ms stalls of the replication thread measured under load

HEAD = struct.Struct("<4sI")
ALIVE = struct.Struct("<Q")
SEQ = struct.Struct("<I")
OURS = struct.Struct("<BBBxHHIII")           # role, priority, flags, poll, hold, table, done, total
HEARD = struct.Struct("<IQIBBBxHHIII")       # count, heard_ns, unit, then a hello's fields
OFF_ALIVE = 8
OFF_OURS = 16
OFF_HEARD = 40
SLOT = 48
_PER_PATH = ("tx", "tx_errors", "rx", "rx_rejected", "rx_wrong_source", "rx_not_hello",
             "rx_socket_errors", "rx_gap_max_ms")
COUNTERS = (tuple(f"{k}_{p}" for p in PATHS for k in _PER_PATH)
            + ("held_daemon_stuck", "held_daemon_stopped", "tx_late_max_ms", "pauses", "pause_max_ms",
               "rx_late_max_ms", "tx_backup", "tx_gap_max_ms")
            + tuple(f"wire_{r}" for r in wire.REASONS))
OFF_COUNTERS = OFF_HEARD + SLOT * len(PATHS)
COUNTER = struct.Struct("<Q")
OFF_WATCH = OFF_COUNTERS + COUNTER.size * len(COUNTERS)
WATCH = struct.Struct("<4xQQQQ")             # after the u32 seq: pad, looked, wake_by, paused, resumed
SIZE = OFF_WATCH + SEQ.size + WATCH.size
RETRIES = 10000

assert SEQ.size + OURS.size <= OFF_HEARD - OFF_OURS and SEQ.size + HEARD.size <= SLOT
assert OFF_HEARD == 40 and OFF_COUNTERS == 184


class Watch(NamedTuple):
    looked_ns: int          # the beat last read its sockets (CLOCK_MONOTONIC)
    wake_by_ns: int         # it went to wait asking to be woken by then
    paused_ns: int          # the total of its pauses so far
    resumed_ns: int         # the end of its last pause (0: none yet)


def pause_ms(poll_ms: int) -> int:
    """How late a wake must be to be a pause of the beat: a whole poll (it missed a hello
    of its own), at least 2 ms (below that, the timer's and the scheduler's own jitter)."""
    return max(2, poll_ms)


class Heard(NamedTuple):
    count: int              # valid hellos heard on this path so far
    heard_ns: int           # CLOCK_MONOTONIC when the last one arrived
    unit: int               # the peer's unit id
    hello: wire.Hello


class Torn(RuntimeError):
    """A record changed under the reader RETRIES times running (its writer is stuck mid-write)."""


def _write(buf, off: int, st: struct.Struct, values) -> None:
    seq = SEQ.unpack_from(buf, off)[0]
    SEQ.pack_into(buf, off, (seq + 1) & 0xFFFFFFFF)            # odd: writing
    st.pack_into(buf, off + SEQ.size, *values)
    SEQ.pack_into(buf, off, (seq + 2) & 0xFFFFFFFF)            # even: done


def _read(buf, off: int, st: struct.Struct) -> tuple[int, tuple]:
    for _ in range(RETRIES):
        s1 = SEQ.unpack_from(buf, off)[0]
        if s1 & 1:
            continue
        values = st.unpack_from(buf, off + SEQ.size)
        if SEQ.unpack_from(buf, off)[0] == s1:
            return s1, values
    raise Torn(f"record at {off} kept changing")


class Block:
    """One view of the block (either side); ``init()`` once by its creator."""

    def __init__(self, buf):
        if len(buf) < SIZE:
            raise ValueError(f"the beat block needs {SIZE} bytes, not {len(buf)}")
        self.buf = buf

    def init(self) -> None:
        self.buf[:SIZE] = bytes(SIZE)
        HEAD.pack_into(self.buf, 0, MAGIC, VERSION)

    def check(self) -> None:
        magic, version = HEAD.unpack_from(self.buf, 0)
        if (magic, version) != (MAGIC, VERSION):
            raise ValueError(f"not a beat block of version {VERSION}: {magic!r} {version}")

    # ---- the daemon's side of the story ----

    def set_alive(self, ns: int) -> None:
        ALIVE.pack_into(self.buf, OFF_ALIVE, ns)

    def alive(self) -> int:
        return ALIVE.unpack_from(self.buf, OFF_ALIVE)[0]

    def set_ours(self, hello: wire.Hello) -> None:
        _write(self.buf, OFF_OURS, OURS, hello)

    def ours(self) -> wire.Hello | None:
        """Our hello as the daemon last wrote it; None before the first."""
        seq, v = _read(self.buf, OFF_OURS, OURS)
        return None if seq == 0 else wire.Hello(*v)

    # ---- the beat's side ----

    def set_heard(self, path: str, heard: Heard) -> None:
        _write(self.buf, OFF_HEARD + SLOT * PATHS.index(path), HEARD,
               (heard.count, heard.heard_ns, heard.unit, *heard.hello))

    def heard(self, path: str) -> Heard | None:
        seq, v = _read(self.buf, OFF_HEARD + SLOT * PATHS.index(path), HEARD)
        return None if seq == 0 else Heard(v[0], v[1], v[2], wire.Hello(*v[3:]))

    def set_watch(self, watch: Watch) -> None:
        _write(self.buf, OFF_WATCH, WATCH, watch)

    def watch(self) -> Watch:
        return Watch(*_read(self.buf, OFF_WATCH, WATCH)[1])

    def bump(self, name: str, n: int = 1) -> None:
        off = OFF_COUNTERS + COUNTER.size * COUNTERS.index(name)
        COUNTER.pack_into(self.buf, off, COUNTER.unpack_from(self.buf, off)[0] + n)

    def set_max(self, name: str, v: int) -> None:
        off = OFF_COUNTERS + COUNTER.size * COUNTERS.index(name)
        if v > COUNTER.unpack_from(self.buf, off)[0]:
            COUNTER.pack_into(self.buf, off, v)

    def counters(self) -> dict[str, int]:
        return dict(zip(COUNTERS, struct.unpack_from(f"<{len(COUNTERS)}Q", self.buf, OFF_COUNTERS)))
