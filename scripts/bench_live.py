"""Benchmark of live replication: the CPU each end spends per replicated change, with the
active's two ways of draining its journal side by side in one run.

Owns one figure: two ``replication.pair.Pair`` over UDP on 127.0.0.1, one process each (as
two daemons, the way scripts/bench_bulk.py runs them). The standby joins and bulk-syncs an
empty table; then, once per drain path, the active makes ``--changes`` new states by real
packets through its core (journal on), in bursts of ``--burst`` per millisecond, drains its
journal into the pair (the feed thread's job), and deletes them again the same way. The
paths: ``objects`` (``Core.drain`` -> a ``Change`` per change -> ``Pair.offer`` -> the
transport coalesces and encodes each record in Python) and ``wire`` (``Pair.drain_journal``:
``Core.drain_wire`` writes wire records in C, one buffer per drain -> packed runs), the
daemon's since the C drain. Threads are timed in CPU seconds (``time.thread_time``: on a
loaded machine the wall clock says more about the other jobs): the active's drain (the
feed thread's part), the active's replication thread (submit, encode, HMAC, send, acks) and
the standby's replication thread, from the first change to the last one imported, split
into creates and deletes. Printed per path: CPU microseconds per change of each, the
active's sum and the objects/wire ratio, the wall time, the replication lag p50/p99 the
active measured (lag.py, on loopback), and the standby's import counters (every change must
be applied: creates as ``live_import``, deletes as ``live_delete``; a refusal is printed).

Seen on the loaded shared machine: at 50k changes a run sometimes stalls (both ends log "peer
silent" after 2 s, the link resets, the standby re-syncs and the live counters never reach the
goal; the phase gives up after 120 s); 20k runs complete.

Run from the repository root with the venv python:
``.venv/bin/python scripts/bench_live.py [--changes N] [--burst N] [--paths objects,wire]``.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dataplane.core import Core  # noqa: E402
from scripts.bench_bulk import INSIDE, KEY, free_ports, loop, make_core, start_active, udp  # noqa: E402
from replication.fsm import monotonic_ms  # noqa: E402
from replication.pair import Pair  # noqa: E402


def standby(n: int, ports, conn) -> None:
    core = make_core(2, n)
    pair = Pair(core, threading.RLock(), unit_id=2, key=KEY, local=("127.0.0.1", ports[1]),
                peer=("127.0.0.1", ports[0]), hold_ms=2000, name="b")
    pair.start()
    stop, cpu = threading.Event(), [0.0]
    threading.Thread(target=loop, args=(pair, stop, cpu), daemon=True).start()
    while pair.role.state.name != "STANDBY_READY":
        time.sleep(0.01)
    rc = pair.requester.counters
    conn.send("ready")
    marks = []
    while True:
        goal = conn.recv()                     # the active starts a phase: (counter, target)
        if goal is None:
            break
        name, target = goal
        cpu0, t0 = cpu[0], time.monotonic()
        end = time.monotonic() + 120
        while rc[name] < target and time.monotonic() < end:
            time.sleep(0.001)
        marks.append((cpu[0] - cpu0, time.monotonic() - t0))
        conn.send("done")
    stop.set()
    conn.send((marks, {k: v for k, v in rc.items() if k.startswith(("live", "delete"))},
               core.state_count))
    conn.close()


def burst_flows(core: Core, pair: Pair, lock, n: int, burst: int, delete: bool, wire: bool,
                base: int) -> float:
    """The changes made and drained into the pair; returns the drain's CPU seconds."""
    drain_cpu = 0.0
    for j in range(0, n, burst):
        t0 = time.monotonic()
        with lock:
            core.set_clock(monotonic_ms())
            if delete:
                for i in range(j, min(n, j + burst)):
                    core.delete(1, base + i + 1)
            else:
                pkts = [(udp(INSIDE + 1 + i // 250, 10000 + i % 250), "inside")
                        for i in range(j, min(n, j + burst))]
                core.process_batch(pkts)
            c0 = time.thread_time()
            if wire:
                pair.drain_journal()
            else:
                pair.offer(core.drain(burst + 16))
            drain_cpu += time.thread_time() - c0
        time.sleep(max(0.0, 0.001 - (time.monotonic() - t0)))
    return drain_cpu


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=20_000)
    ap.add_argument("--burst", type=int, default=100, help="changes offered per millisecond")
    ap.add_argument("--paths", default="objects,wire", help="drain paths, in this order")
    a = ap.parse_args()
    n, paths = a.changes, a.paths.split(",")
    if not set(paths) <= {"objects", "wire"}:
        ap.error("--paths: objects and/or wire")
    ports = free_ports(2)
    core = make_core(1, n)
    core.set_journal(True)
    lock = threading.RLock()
    pair, stop, cpu, t = start_active(core, ports, lock)
    here, there = mp.Pipe()
    child = mp.get_context("fork").Process(target=standby, args=(n, ports, there))
    child.start()
    assert here.recv() == "ready"
    while not pair.replicating():
        time.sleep(0.01)
    rows, base = [], 0
    for k, path in enumerate(paths):
        for delete in (False, True):
            c0 = cpu[0]
            pair.lag.reset()
            here.send(("live_delete" if delete else "live_import", n * (k + 1)))
            dcpu = burst_flows(core, pair, lock, n, a.burst, delete, path == "wire", base)
            assert here.recv() == "done"
            time.sleep(0.05)                   # the last acks
            rows.append((path, "deletes" if delete else "creates", dcpu, cpu[0] - c0,
                         pair.lag.snapshot()))
        base += n                               # the next path's states: new ids
    here.send(None)
    marks, counters, left = here.recv()
    child.join(30)
    stop.set()
    t.join()
    pair.close()
    print(f"live replication, {os.cpu_count()} CPUs, per path {n:,} creates then {n:,} deletes, "
          f"{a.burst} changes offered per ms")
    total = {}
    for (path, what, dcpu, rcpu, lag), (scpu, wall) in zip(rows, marks):
        total[(path, what)] = dcpu + rcpu
        print(f"  {path:7} {what}: active drain {dcpu / n * 1e6:.1f} + replication thread "
              f"{rcpu / n * 1e6:.1f} = {(dcpu + rcpu) / n * 1e6:.1f} us/change; standby "
              f"{scpu / n * 1e6:.1f} us/change; wall {wall:.2f} s; lag p50/p99 "
              f"{lag['p50_ms']}/{lag['p99_ms']} ms ({lag['count']} changes)")
    for what in ("creates", "deletes"):
        if ("objects", what) in total and ("wire", what) in total:
            print(f"  active CPU per change, {what}: objects / wire = "
                  f"{total[('objects', what)] / max(total[('wire', what)], 1e-9):.2f}x")
    print(f"  standby counters {counters}; states left on the standby {left}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
