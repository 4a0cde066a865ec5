"""Benchmark of the bulk sync (``make bench``, after the core's): C runs against the old Python path.

Owns two figures, each at 100k and 1M states (``BENCH_BULK_SIZES``):

1. export + import of the whole table, in one process, two cores: the old path (``Core.export``
   into StateRecords, ``wire`` packing and unpacking in Python, ``Core.import_state`` per
   record) beside the C runs (``Core.wire_cursor`` -> wire records -> ``Core.import_wire``),
   and the ratio;
2. a whole bulk sync between two ``replication.pair.Pair`` over UDP on 127.0.0.1, one process
   each (as two daemons): the active holds the states, the standby starts empty, joins,
   requests the table and is timed from its request to BULK_END imported (the figure its
   status shows as bulk_recv.elapsed_ms), at 1400-byte datagrams (a 1500 MTU failover link)
   and 8972 (MTU 9000). The standby's table is then checked against the active's: every
   field of every state, the two relative timers within 2 s. Also printed: the CPU seconds
   of each side's replication thread (on a loaded machine the wall clock says more about
   the other jobs; the larger CPU figure is about what the bulk takes on idle cores).

The states are made by real packets through the active's core: UDP flows from 250 ports of
4000 inside hosts to one server, source-NATed over 32 pool addresses. Run from the repository
root with the venv python; ``--quick``: 100k only and no Python path at 1M.
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import select
import socket
import struct
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dataplane.core import WIRE_STATE_SIZE, Core, ip_int  # noqa: E402
from replication import wire  # noqa: E402
from replication.fsm import monotonic_ms  # noqa: E402
from replication.pair import Pair  # noqa: E402

QUICK = "--quick" in sys.argv[1:]
SIZES = tuple(int(x) for x in os.environ.get(
    "BENCH_BULK_SIZES", "100000" if QUICK else "100000,1000000").split(","))
PY_MAX = 100_000 if QUICK else 1_000_000      # the old path above this size is skipped
POOL = [f"198.19.255.{i}" for i in range(1, 33)]
INSIDE, SERVER = ip_int("198.18.0.0"), ip_int("198.19.0.1")
KEY = os.urandom(32)
DATAGRAMS = (wire.MAX_DATAGRAM, wire.datagram_size(9000))


def make_core(creator: int, n: int) -> Core:
    size = 1 << max(17, (n * 5 // 4).bit_length())
    core = Core(pool=POOL, port_range=(1024, 65535), max_states=size, creator_id=creator,
                journal=False, hash_seed=creator, timeouts_ms={"udp": 3_600_000})
    core.set_clock(monotonic_ms())          # the Pair's clock
    return core


def _csum(h: bytes) -> int:
    s = sum(struct.unpack("!10H", h))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp(src: int, sport: int) -> bytes:
    h = struct.pack("!BBHHHBBHII", 0x45, 0, 32, 0, 0x4000, 64, 17, 0, src, SERVER)
    h = h[:10] + struct.pack("!H", _csum(h)) + h[12:]
    return h + struct.pack("!HHHH", sport, 53, 12, 0) + b"bulk"


def seed(core: Core, n: int) -> None:
    for j in range(0, n, 4096):
        pkts = [(udp(INSIDE + 1 + i // 250, 10000 + i % 250), "inside") for i in range(j, min(n, j + 4096))]
        assert all(v.accepted for v in core.process_batch(pkts))
    assert core.state_count == n, core.state_count


def wire_table(core: Core) -> bytes:
    cur, parts = core.wire_cursor(), []
    while not cur.done:
        parts.append(cur.next(65536))
    return b"".join(parts)


TIMERS = struct.Struct("!72xII24x")         # expire_in_ms, age_ms of a wire record


def compare(a: bytes, b: bytes, counters: bool = True) -> str | None:
    """None when both tables (wire records) hold the same states, every field equal (the two
    relative timers within 2 s); ``counters=False``: identity, keys, TCP state and windows
    only (a live standby's byte/packet counters and timers lag by design: the core journals
    them when a timer moved by a quarter of its length)."""
    def index(t: bytes) -> dict:
        return {t[i:i + 12]: i for i in range(0, len(t), WIRE_STATE_SIZE)}
    ia, ib = index(a), index(b)
    if ia.keys() != ib.keys():
        return f"{len(ia.keys() - ib.keys())} states missing, {len(ib.keys() - ia.keys())} extra"
    for ident, i in ia.items():
        j = ib[ident]
        ra, rb = a[i:i + WIRE_STATE_SIZE], b[j:j + WIRE_STATE_SIZE]
        if ra[:72] != rb[:72]:
            return f"state {ident.hex()} differs"
        if not counters:
            continue
        if ra[80:] != rb[80:]:
            return f"state {ident.hex()} counters differ"
        (ea, aa), (eb, ab) = TIMERS.unpack(ra), TIMERS.unpack(rb)
        if abs(ea - eb) > 2000 or abs(aa - ab) > 2000:     # timers are kept in seconds
            return f"state {ident.hex()} timers differ: {ea}/{aa} vs {eb}/{ab}"
    return None


# ---- 1. export + import in one process ----

def python_path(a: Core, b: Core) -> float:
    t = time.perf_counter()
    data = b"".join(wire._pack_state(r) for r in a.export())
    for off in range(0, len(data), WIRE_STATE_SIZE):
        b.import_state(wire._unpack_state(data, off))
    return time.perf_counter() - t


def c_path(a: Core, b: Core, per_datagram: int) -> float:
    t = time.perf_counter()
    cur = a.wire_cursor()
    while not cur.done:
        res = b.import_wire(cur.next(per_datagram))
        assert not res.rejected, res
    return time.perf_counter() - t


def bench_core(n: int) -> None:
    a = make_core(1, n)
    seed(a, n)
    per = (DATAGRAMS[1] - wire.OVERHEAD - wire.SECTION.size) // WIRE_STATE_SIZE
    gc.disable()
    b = make_core(2, n)
    c_s = c_path(a, b, per)
    assert b.state_count == n and compare(wire_table(a), wire_table(b)) is None
    line = f"  {n:>9,} states  C runs of {per}: {c_s * 1000:8.0f} ms"
    if n <= PY_MAX:
        b = make_core(3, n)
        py_s = python_path(a, b)
        assert b.state_count == n
        line += f"   old Python path: {py_s * 1000:8.0f} ms   ratio {py_s / c_s:5.0f}x"
    gc.enable()
    print(line, flush=True)


# ---- 2. a bulk sync between two Pairs over UDP ----

def free_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def loop(pair: Pair, stop: threading.Event, cpu: list) -> None:
    """The replication thread; ``cpu[0]``: the CPU seconds it used (not the wall clock: on a
    loaded machine that is what stays comparable)."""
    fd = pair.fileno()
    t0 = time.thread_time()
    while not stop.is_set():
        select.select([fd], [], [], 0.001)
        pair.step()
        cpu[0] = time.thread_time() - t0


def standby(n: int, ports, max_datagram: int, conn) -> None:
    core = make_core(2, n)
    pair = Pair(core, threading.RLock(), unit_id=2, key=KEY, local=("127.0.0.1", ports[1]),
                peer=("127.0.0.1", ports[0]), hold_ms=2000, max_datagram=max_datagram, name="b")
    pair.start()
    stop, cpu = threading.Event(), [0.0]
    threading.Thread(target=loop, args=(pair, stop, cpu), daemon=True).start()
    end = time.monotonic() + 120
    while pair.role.state.name != "STANDBY_READY" and time.monotonic() < end:
        time.sleep(0.01)
    p = pair.requester.progress()
    stop.set()
    conn.send((pair.role.state.name, p["elapsed_ms"], p["received"], cpu[0],
               dict(pair.transport.counters.as_dict())))
    conn.recv()                             # both tables are read at the same moment
    with pair.lock:
        core.set_clock(monotonic_ms())
        table = wire_table(core)
    conn.send_bytes(table)
    conn.close()


def start_active(core: Core, ports: list[int], lock=None, **kw):
    """The active Pair "a" on ports[0] (peer: ports[1]) with its replication thread running,
    once it is active: (pair, stop event, cpu list, thread)."""
    pair = Pair(core, lock or threading.RLock(), unit_id=1, key=KEY, local=("127.0.0.1", ports[0]),
                peer=("127.0.0.1", ports[1]), hold_ms=200, name="a", **kw)
    pair.start()
    stop, cpu = threading.Event(), [0.0]
    t = threading.Thread(target=loop, args=(pair, stop, cpu), daemon=True)
    t.start()
    while not pair.role.is_active:
        time.sleep(0.01)
    pair.detector.hold_ms = 2000            # a busy standby must not look dead
    return pair, stop, cpu, t


def bench_pair(n: int, max_datagram: int, active_core: Core) -> None:
    ports = free_ports(2)
    pair, stop, cpu, t = start_active(active_core, ports, max_datagram=max_datagram)
    cpu_start = cpu[0]
    here, there = mp.Pipe()
    child = mp.get_context("fork").Process(target=standby, args=(n, ports, max_datagram, there))
    child.start()
    state, elapsed_ms, received, standby_cpu, tcounters = here.recv()
    active_cpu = cpu[0] - cpu_start
    here.send("export")
    with pair.lock:
        active_core.set_clock(monotonic_ms())
        mine = wire_table(active_core)
    table = here.recv_bytes()
    child.join(30)
    stop.set()
    t.join()
    pair.close()
    diff = compare(mine, table)
    per = (max_datagram - wire.OVERHEAD - wire.SECTION.size) // WIRE_STATE_SIZE
    print(f"  {n:>9,} states  datagram {max_datagram:>5} B ({per:>2} states): {state}, "
          f"bulk {elapsed_ms:>6} ms, received {received:,}, table "
          f"{'identical' if diff is None else 'DIFFERENT: ' + diff}; CPU s active "
          f"{active_cpu:.2f} standby {standby_cpu:.2f}; active retransmits "
          f"{pair.transport.counters['tx_retransmits']}, standby nacks {tcounters.get('tx_nacks', 0)}",
          flush=True)


def main() -> int:
    print(f"bulk sync, {os.cpu_count()} CPUs, sizes {', '.join(f'{n:,}' for n in SIZES)}")
    print("1. export + import of the whole table, one process (wire records, 104 B each)")
    for n in SIZES:
        bench_core(n)
    print("2. a bulk sync between two Pairs over UDP on 127.0.0.1 (two processes), "
          "from the standby's request to its table complete")
    for n in SIZES:
        a = make_core(1, n)
        seed(a, n)
        for size in DATAGRAMS:
            bench_pair(n, size, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
