"""Benchmark of the C connection/NAT core against a pure-Python table (``make bench``).

Owns the issue's figures, all measured in one run, each printed beside the same work
done by a pure-Python dict table and the ratio:

- per-packet cost of lookup + rewrite for ESTABLISHED TCP flows, at 1k, 100k and 1M
  states: (1) the loop in C (``np_core_process_batch``, 256 packets a call, plus one
  call for the whole array), (2) one cffi call per packet (``np_core_process``);
- new states per second (SYNs of new flows through ``np_core_process_batch``);
- bytes per state (``core.memory / max_states`` at max_states = 2**20).

Names: a "flow" is one TCP connection (inside host:port -> outside server:443), made
ESTABLISHED by a SYN, SYN|ACK, ACK through the core before timing; a "pass" is one
timed run over the prebuilt packet array. Packets are the server's ACKs (reply
direction, outside -> pool address:port), in random flow order. The core rewrites
them in place, so every pass starts from a master copy restored with one memmove
(not timed; its cost per packet is printed). Timed sections run with the garbage
collector off, for both sides. Run from the repository root with the venv python.

This script calls the cffi ``lib`` directly, the one exception to dataplane/core.py being
the only user: it measures the raw C call, without the wrapper's per-call conversions.
"""
from __future__ import annotations

import gc
import os
import platform
import random
import statistics
import struct
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dataplane.core import Core, ffi, lib  # noqa: E402  (the bench needs the raw lib for its C loops)

SIZES = tuple(int(x) for x in os.environ.get("BENCH_SIZES", "1000,100000,1000000").split(","))
MAX_STATES = 1 << 20
PASS_PACKETS = 1_000_000        # packets in the array of one timed pass
PER_CALL_PACKETS = 250_000      # packets of the one-cffi-call-per-packet pass
PASSES = 5                      # timed passes of the C core; the median is printed
PY_PASSES = 3                   # timed passes of the pure-Python table (seconds each at 1M)
BATCH = lib.NP_BATCH_MAX
POOL = [0xC613FF00 + i for i in range(1, 33)]     # 198.19.255.1-32
PORTS = (1024, 65535)
QUICK = "--quick" in sys.argv[1:]  # C figures only, default size 1M (BENCH_SIZES still applies)
if QUICK and "BENCH_SIZES" not in os.environ:
    SIZES = (1_000_000,)
TARGET_NS, TARGET_RATIO, TARGET_BYTES = 100, 20, 192

# one IPv4 + TCP header, no options: 40 bytes
PKT = struct.Struct("!BBHHHBBHIIHHIIBBHHH")
PKT_LEN = PKT.size
SYN, SYNACK, ACK = 0x02, 0x12, 0x10
NP_PKT = struct.Struct("=QIIBBBBI")
assert NP_PKT.size == ffi.sizeof("struct np_pkt")


def flow_ends(i: int) -> tuple[int, int, int, int]:
    """inside address, inside port, server address, server port of flow i."""
    return 0xC6120001 + i % 65000, 10000 + i // 65000, 0xC6130001 + i % 51000, 443


def put(buf, i, src, dst, sport, dport, flags, seq, ack):
    PKT.pack_into(buf, i * PKT_LEN, 0x45, 0, PKT_LEN, i & 0xFFFF, 0x4000, 64, 6, 0, src, dst,
                  sport, dport, seq, ack, 0x50, flags, 65535, 0, 0)


def pkt_array(buf_cdata, n: int, side: int):
    """a struct np_pkt[n] pointing at n consecutive 40-byte packets of buf_cdata."""
    base = int(ffi.cast("uintptr_t", buf_cdata))
    raw = b"".join(NP_PKT.pack(base + i * PKT_LEN, PKT_LEN, 0, side, 0, 0, 0, 0) for i in range(n))
    arr = ffi.new("struct np_pkt[]", n)
    ffi.memmove(arr, raw, len(raw))
    return arr


def run_batches(c, arr, n: int) -> None:
    process_batch = lib.np_core_process_batch
    for off in range(0, n, BATCH):
        process_batch(c, arr + off, min(BATCH, n - off))


def counters(core: Core) -> dict[str, int]:
    return core.counters()


def timed(fn) -> int:
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        fn()
        return time.perf_counter_ns() - t0
    finally:
        gc.enable()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---- the pure-Python baseline: a dict keyed by the 5-tuple (+ side) of both directions ----

class PyState:
    __slots__ = ("keys", "rw", "packets")

    def __init__(self, k0, k1):
        self.keys = (k0, k1)
        # a packet of direction d leaves as the reverse of key[1-d]
        self.rw = ((k1[1], k1[0], k1[3], k1[2]), (k0[1], k0[0], k0[3], k0[2]))
        self.packets = [0, 0]


class PyTable:
    """Parse with struct, look up, rewrite addresses/ports, incremental checksums (RFC 1624)."""

    def __init__(self, pool, ports):
        self.table: dict[tuple, tuple[PyState, int]] = {}
        self.maps: dict[tuple, tuple[int, int]] = {}
        self.pool, (self.lo, self.hi) = pool, ports
        self.used = [set() for _ in pool]
        self.cursor = [self.lo] * len(pool)

    def insert(self, k0, k1) -> None:
        st = PyState(k0, k1)
        self.table[k0] = (st, 0)
        self.table[k1] = (st, 1)

    def _map(self, proto, src, sport):
        m = self.maps.get((proto, src, sport))
        if m is None:
            a = hash(src) % len(self.pool)
            used = self.used[a]
            port = sport
            if not (self.lo <= port <= self.hi) or port in used:
                port = self.cursor[a]
                while port in used:
                    port = port + 1 if port < self.hi else self.lo
                self.cursor[a] = port
            used.add(port)
            m = self.maps[(proto, src, sport)] = (self.pool[a], port)
        return m

    def make_process(self):
        table, new_state = self.table, self._new_state
        u_ii, u_hh = struct.Struct("!II").unpack_from, struct.Struct("!HH").unpack_from
        p_ii, p_hh = struct.Struct("!II").pack_into, struct.Struct("!HH").pack_into
        u_h, p_h = struct.Struct("!H").unpack_from, struct.Struct("!H").pack_into

        def process(buf: bytearray, side: int) -> bool:
            ihl = (buf[0] & 15) << 2
            proto = buf[9]
            src, dst = u_ii(buf, 12)
            sport, dport = u_hh(buf, ihl)
            hit = table.get((src, dst, sport, dport, proto, side))
            if hit is None:
                hit = new_state(src, dst, sport, dport, proto, side, buf[ihl + 13])
                if hit is None:
                    return False
            st, d = hit
            st.packets[d] += 1
            nsrc, ndst, nsport, ndport = st.rw[d]
            dip = (0x1FFFE - (src >> 16) - (src & 0xFFFF) + (nsrc >> 16) + (nsrc & 0xFFFF) +
                   0x1FFFE - (dst >> 16) - (dst & 0xFFFF) + (ndst >> 16) + (ndst & 0xFFFF))
            s = 0xFFFF - u_h(buf, 10)[0] + dip
            s = (s & 0xFFFF) + (s >> 16)
            s = (s & 0xFFFF) + (s >> 16)
            p_h(buf, 10, 0xFFFF - s)
            coff = ihl + (16 if proto == 6 else 6)
            s = 0xFFFF - u_h(buf, coff)[0] + dip + 0x1FFFE - sport + nsport - dport + ndport
            s = (s & 0xFFFF) + (s >> 16)
            s = (s & 0xFFFF) + (s >> 16)
            p_h(buf, coff, 0xFFFF - s)
            p_ii(buf, 12, nsrc, ndst)
            p_hh(buf, ihl, nsport, ndport)
            return True

        return process

    def _new_state(self, src, dst, sport, dport, proto, side, tcp_flags):
        if side != 0 or (proto == 6 and tcp_flags & 0x16 != SYN):
            return None
        nsrc, nsport = self._map(proto, src, sport)
        k0 = (src, dst, sport, dport, proto, 0)
        k1 = (dst, nsrc, dport, nsport, proto, 1)
        st = PyState(k0, k1)
        self.table[k0] = (st, 0)
        self.table[k1] = (st, 1)
        return st, 0


# ---- one size ----

def bench_size(n: int, rng: random.Random, rows: list, notes: list) -> dict:
    core = Core(max_states=MAX_STATES, pool=POOL, port_range=PORTS, journal=False,
                hash_seed=0x9E3779B97F4A7C15)
    c = core._c
    ends = [flow_ends(i) for i in range(n)]

    # 1. SYNs of n new flows, timed: new states per second
    syn_buf = ffi.new("uint8_t[]", n * PKT_LEN)
    sb = ffi.buffer(syn_buf)
    tmp = bytearray(n * PKT_LEN)
    for i, (a, ap, s, sp) in enumerate(ends):
        put(tmp, i, a, s, ap, sp, SYN, 1000, 0)
    syn_master = bytes(tmp)
    sb[:] = syn_master
    syn_arr = pkt_array(syn_buf, n, lib.NP_SIDE_INSIDE)
    c0 = counters(core)
    t_new = timed(lambda: run_batches(c, syn_arr, n))
    assert core.state_count == n, (core.state_count, counters(core))
    translated = bytes(sb)
    outside = [struct.unpack_from("!I", translated, i * PKT_LEN + 12)[0] for i in range(n)]
    outport = [struct.unpack_from("!H", translated, i * PKT_LEN + 20)[0] for i in range(n)]

    # 2. SYN|ACK and ACK: every flow ESTABLISHED
    for flags, side in ((SYNACK, lib.NP_SIDE_OUTSIDE), (ACK, lib.NP_SIDE_INSIDE)):
        for i, (a, ap, s, sp) in enumerate(ends):
            if side == lib.NP_SIDE_OUTSIDE:
                put(tmp, i, s, outside[i], sp, outport[i], flags, 5000, 1001)
            else:
                put(tmp, i, a, s, ap, sp, flags, 1001, 5001)
        buf = ffi.new("uint8_t[]", n * PKT_LEN)
        ffi.buffer(buf)[:] = tmp
        run_batches(c, pkt_array(buf, n, side), n)
    cnt = counters(core)
    assert cnt["pkt_drop"] == c0["pkt_drop"], "handshake packets dropped"
    assert sum(1 for r in core.export() if r.tcp_state_name == "established") == n

    # 3. the timed array: the server's ACKs to random flows
    m = PASS_PACKETS
    pick = [rng.randrange(n) for _ in range(m)]
    tmp = bytearray(m * PKT_LEN)
    for j, i in enumerate(pick):
        s, sp = ends[i][2], ends[i][3]
        put(tmp, j, s, outside[i], sp, outport[i], ACK, 5001, 1001)
    master = bytes(tmp)
    work = ffi.new("uint8_t[]", m * PKT_LEN)
    arr = pkt_array(work, m, lib.NP_SIDE_OUTSIDE)

    def restore():
        ffi.memmove(work, master, len(master))

    def c_pass(fn, packets):
        times = []
        for _ in range(PASSES):
            restore()
            before = counters(core)
            times.append(timed(fn))
            after = counters(core)
            assert after["pkt_translated"] - before["pkt_translated"] == packets, "not all translated"
            assert after["pkt_drop"] == before["pkt_drop"], "drops in a timed pass"
        return statistics.median(times) / packets

    ns_batch = c_pass(lambda: run_batches(c, arr, m), m)
    ns_one = c_pass(lambda: lib.np_core_process_batch(c, arr, m), m)
    t_restore = statistics.median(timed(restore) for _ in range(3)) / m
    k = PER_CALL_PACKETS
    ptrs = [arr + j for j in range(k)]
    process = lib.np_core_process

    def per_call():
        for p in ptrs:
            process(c, p)
    ns_call = c_pass(per_call, k)
    mem = core.memory
    if QUICK:
        # --quick: the C figures only, no pure-Python table (for quick A/B iterations)
        print(f"  {n:,} states: loop in C {ns_batch:.1f} ns (256 a call), {ns_one:.1f} ns (one call), "
              f"{mem / MAX_STATES:.1f} B a state", flush=True)
        del ptrs, arr, work, syn_arr, syn_buf, core
        gc.collect()
        return {"n": n, "mem": mem, "py_bytes": float("nan"), "ns_batch": ns_batch, "ratio": float("nan")}
    del ptrs, arr, work, syn_arr, syn_buf, core

    # 4. the pure-Python table, same flows, same kind of traffic
    py = PyTable(POOL, PORTS)
    proc = py.make_process()
    rss0 = rss_bytes()
    syns = [bytearray(syn_master[i * PKT_LEN:(i + 1) * PKT_LEN]) for i in range(n)]

    def py_syns():
        for b in syns:
            proc(b, 0)
    t_py_new = timed(py_syns)
    assert len(py.table) == 2 * n
    py_rss = rss_bytes() - rss0         # the table, its mappings and port sets (and the SYN buffers)
    py_rss -= sum(sys.getsizeof(b) for b in syns) + sys.getsizeof(syns)
    py_out = [(struct.unpack_from("!I", b, 12)[0], struct.unpack_from("!H", b, 20)[0]) for b in syns]
    del syns
    pmaster = bytearray(m * PKT_LEN)
    for j, i in enumerate(pick):
        s, sp = ends[i][2], ends[i][3]
        put(pmaster, j, s, py_out[i][0], sp, py_out[i][1], ACK, 5001, 1001)
    py_times = []
    for _ in range(PY_PASSES):
        bufs = [pmaster[j * PKT_LEN:(j + 1) * PKT_LEN] for j in range(m)]   # restored, not timed
        ok = []

        def py_pass():
            ok.append(sum(map(proc, bufs, [1] * m)))
        py_times.append(timed(py_pass))
        assert ok[0] == m, "python baseline missed packets"
    ns_py = statistics.median(py_times) / m

    new_c, new_py = n / (t_new / 1e9), n / (t_py_new / 1e9)
    label = f"{n:,}"
    rows.append(("per packet, loop in C (256 a call)", label, f"{ns_batch:.1f} ns", f"{ns_py:.0f} ns",
                 ns_py / ns_batch, ns_batch <= TARGET_NS if n >= 1_000_000 else None,
                 f"<= {TARGET_NS} ns at 1M" if n >= 1_000_000 else ""))
    rows.append(("per packet, loop in C (one call)", label, f"{ns_one:.1f} ns", f"{ns_py:.0f} ns",
                 ns_py / ns_one, None, ""))
    rows.append(("per packet, one cffi call each", label, f"{ns_call:.0f} ns", f"{ns_py:.0f} ns",
                 ns_py / ns_call, None, ""))
    rows.append(("new states per second (SYN batches)", label, f"{new_c:,.0f}/s", f"{new_py:,.0f}/s",
                 new_c / new_py, None, ""))
    py_mem = f"{py_rss / n:.0f} bytes a state" if n >= 100_000 else "too small to measure by RSS"
    notes.append(f"{label} states: buffer restore (memmove, not timed) {t_restore:.1f} ns a packet; "
                 f"pure-Python table {py_mem}")
    result = {"n": n, "mem": mem, "py_bytes": py_rss / n, "ns_batch": ns_batch, "ratio": ns_py / ns_batch}
    del py, proc, pmaster
    gc.collect()
    return result


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main() -> None:
    t0 = time.time()
    rng = random.Random(20240601)
    rows, notes, results = [], [], []
    print(f"natpair core benchmark: {cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"max_states {MAX_STATES:,}; {len(POOL)} pool addresses, ports {PORTS[0]}-{PORTS[1]}; "
          f"journal off; {PASS_PACKETS:,} packets a pass ({PER_CALL_PACKETS:,} for one call a packet); "
          f"median of {PASSES} passes in C, {PY_PASSES} in Python")
    for n in SIZES:
        print(f"  measuring {n:,} states ...", flush=True)
        results.append(bench_size(n, rng, rows, notes))
    big = results[-1]
    if QUICK:
        print(f"total bench time {time.time() - t0:.0f} s")
        return
    per_state = big["mem"] / MAX_STATES
    rows.append(("bytes per state (memory / max_states)", f"{MAX_STATES:,} max",
                 f"{per_state:.1f} B", f"{big['py_bytes']:.0f} B", big["py_bytes"] / per_state,
                 per_state <= TARGET_BYTES, f"<= {TARGET_BYTES} B"))

    head = ("figure", "states", "natpair C", "pure Python", "speedup", "target")
    widths = (38, 12, 14, 14, 9, 30)
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    print()
    print(line)
    print("-" * len(line))
    for name, states, cval, pyval, ratio, ok, target in rows:
        tgt = target
        if ok is not None and target:
            tgt = f"{target}: {'met' if ok else 'MISSED'}"
        print("  ".join(str(v).ljust(w) for v, w in
                        zip((name, states, cval, pyval, f"{ratio:.1f}x", tgt), widths)))
    print()
    ratio_1m = big["ratio"]
    print(f"target >= {TARGET_RATIO}x the pure-Python table (C loop, 1M states): "
          f"{ratio_1m:.1f}x, {'met' if ratio_1m >= TARGET_RATIO else 'MISSED'}")
    print()
    print("notes:")
    print("  - per packet = median pass time / packets; a pass is the server's ACKs (reply direction,")
    print("    outside -> pool address) of ESTABLISHED flows in random order, one distinct 40-byte")
    print("    buffer each. The C path does parse, hash, lookup, TCP window tracking, timer refresh,")
    print("    counters and the rewrite with incremental IP/TCP checksums; the Python baseline does")
    print("    only parse, dict lookup, rewrite and checksums (no TCP tracking, no timers).")
    print("  - buffers are rewritten in place, so each pass starts from a master copy restored by one")
    print("    memmove (C) or by slicing fresh bytearrays (Python), outside the timed section.")
    print("  - 'one cffi call each' is a Python loop calling lib.np_core_process per packet.")
    print("  - new states per second: SYNs of new flows (policy, NAT port allocation, both keys,")
    print("    id hash, timer) through np_core_process_batch, 256 a call, filling an empty table;")
    print("    Python: dict miss, mapping, port choice from a set, two inserts, rewrite. The table")
    print("    is cold: its first SYNs fault in the pages of the (preallocated, lazily mapped) key")
    print("    and mapping hashes, which dominates at 1k new states and is amortized at 100k and 1M.")
    print(f"  - bytes per state = core.memory / max_states at max_states = {MAX_STATES:,}: the state")
    print("    record, its share of the key hash (2 refs), the id hash and a NAT mapping with its two")
    print("    hash buckets, plus the fixed parts (journal ring, pool port bitmaps, the core struct).")
    print("    Python: RSS growth while building the same table of 1M flows (dict of both keys,")
    print("    state objects, mappings, port sets), SYN buffers subtracted.")
    print("  - the garbage collector is off in every timed section, C and Python alike.")
    for note in notes:
        print(f"  - {note}")
    print(f"\ntotal bench time {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
