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
into creates and deletes. Both replication threads run as the daemon's (dataplane/daemon.py):
woken by the link, the wake pipe (the drains' offers) or their next timer, SCHED_FIFO when
allowed, the GIL's switch interval at the daemon's 0.5 ms. Printed per path: CPU microseconds per change of each, the
active's sum and the objects/wire ratio, the wall time, the replication lag p50/p99 the
active measured (lag.py, on loopback) with its parts (the active's drain -> datagram sent,
the standby's wake -> ack sent), and the standby's import counters (every change must
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
import select
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dataplane.core import Core  # noqa: E402
from dataplane.daemon import GIL_SWITCH_S, REPLICATION_RT_PRIORITY  # noqa: E402
from scripts.bench_bulk import INSIDE, KEY, free_ports, make_core, udp  # noqa: E402
from replication.fsm import monotonic_ms  # noqa: E402
from replication.pair import Pair  # noqa: E402


def loop(pair: Pair, stop: threading.Event, cpu: list) -> None:
    """The replication thread as the daemon's; ``cpu[0]``: the CPU seconds it used."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REPLICATION_RT_PRIORITY))
    except OSError:
        pass                                    # not root: the lag then waits for the CPU too
    fds = pair.filenos()
    t0 = time.thread_time()
    while not stop.is_set():
        select.select(fds, [], [], pair.next_wake_ms() / 1000)
        pair.step()
        cpu[0] = time.thread_time() - t0


def start_active(core: Core, ports: list[int], lock):
    """The active Pair on ports[0] with its replication thread, once it is active."""
    pair = Pair(core, lock, unit_id=1, key=KEY, local=("127.0.0.1", ports[0]),
                peer=("127.0.0.1", ports[1]), hold_ms=200, name="a")
    pair.start()
    stop, cpu = threading.Event(), [0.0]
    t = threading.Thread(target=loop, args=(pair, stop, cpu), daemon=True)
    t.start()
    while not pair.role.is_active:
        time.sleep(0.01)
    pair.detector.hold_ms = 2000            # a busy standby must not look dead
    return pair, stop, cpu, t


def standby(n: int, ports, conn) -> None:
    sys.setswitchinterval(GIL_SWITCH_S)
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
        marks.append((cpu[0] - cpu0, time.monotonic() - t0, pair.ack_hold.snapshot()))
        pair.ack_hold.reset()
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
    sys.setswitchinterval(GIL_SWITCH_S)
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
            pair.lag_sent.reset()
            here.send(("live_delete" if delete else "live_import", n * (k + 1)))
            dcpu = burst_flows(core, pair, lock, n, a.burst, delete, path == "wire", base)
            assert here.recv() == "done"
            time.sleep(0.05)                   # the last acks
            rows.append((path, "deletes" if delete else "creates", dcpu, cpu[0] - c0,
                         pair.lag.snapshot(), pair.lag_sent.snapshot()))
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
    for (path, what, dcpu, rcpu, lag, sent), (scpu, wall, hold) in zip(rows, marks):
        total[(path, what)] = dcpu + rcpu
        print(f"  {path:7} {what}: active drain {dcpu / n * 1e6:.1f} + replication thread "
              f"{rcpu / n * 1e6:.1f} = {(dcpu + rcpu) / n * 1e6:.1f} us/change; standby "
              f"{scpu / n * 1e6:.1f} us/change; wall {wall:.2f} s; lag p50/p99 "
              f"{lag['p50_ms']}/{lag['p99_ms']} ms ({lag['count']} changes; drain -> sent "
              f"{sent['p50_ms']}/{sent['p99_ms']}, the standby's wake -> ack "
              f"{hold['p50_ms']}/{hold['p99_ms']} ms)")
    for what in ("creates", "deletes"):
        if ("objects", what) in total and ("wire", what) in total:
            print(f"  active CPU per change, {what}: objects / wire = "
                  f"{total[('objects', what)] / max(total[('wire', what)], 1e-9):.2f}x")
    print(f"  standby counters {counters}; states left on the standby {left}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
