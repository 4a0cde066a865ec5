"""Benchmark of the standby's live imports: the CPU the standby spends per replicated change.

Owns one figure: two ``replication.pair.Pair`` over UDP on 127.0.0.1, one process each (as
two daemons, the way scripts/bench_bulk.py runs them). The standby joins and bulk-syncs an
empty table; then the active makes ``--changes`` new states by real packets through its core
(journal on), in bursts of ``--burst`` per millisecond, drains its journal into the pair (the
feed thread's job), and deletes them again the same way. The standby's replication thread
is timed in CPU seconds (``time.thread_time``: on a loaded machine the wall clock says more
about the other jobs) from the first change to the last one imported, and split into its
creates and deletes. Printed: CPU microseconds per change on the standby (and on the
active, for scale), the wall time, and the standby's import counters (every change must be
applied: creates as ``live_import``, deletes as ``live_delete``; a refusal is printed).

Seen on the loaded shared machine: at 50k changes a run sometimes stalls (both ends log "peer
silent" after 2 s, the link resets, the standby re-syncs and the live counters never reach the
goal; the phase gives up after 120 s); 20k runs complete.

Run from the repository root with the venv python:
``.venv/bin/python scripts/bench_live.py [--changes N] [--burst N]``.
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
    for goal in (lambda: rc["live_import"] >= n, lambda: rc["live_delete"] >= n):
        cpu0, t0 = cpu[0], time.monotonic()
        conn.recv()                            # the active starts this phase
        end = time.monotonic() + 120
        while not goal() and time.monotonic() < end:
            time.sleep(0.001)
        marks.append((cpu[0] - cpu0, time.monotonic() - t0))
    stop.set()
    conn.send((marks, {k: v for k, v in rc.items() if k.startswith(("live", "delete"))},
               core.state_count))
    conn.close()


def burst_flows(core: Core, pair: Pair, lock, n: int, burst: int, delete: bool) -> None:
    for j in range(0, n, burst):
        t0 = time.monotonic()
        with lock:
            core.set_clock(monotonic_ms())
            if delete:
                for i in range(j, min(n, j + burst)):
                    core.delete(1, i + 1)
            else:
                pkts = [(udp(INSIDE + 1 + i // 250, 10000 + i % 250), "inside")
                        for i in range(j, min(n, j + burst))]
                core.process_batch(pkts)
            changes = core.drain(burst + 16)
        pair.offer(changes)
        time.sleep(max(0.0, 0.001 - (time.monotonic() - t0)))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=20_000)
    ap.add_argument("--burst", type=int, default=100, help="changes offered per millisecond")
    a = ap.parse_args()
    n = a.changes
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
    active_cpu = []
    for delete in (False, True):
        c0 = cpu[0]
        here.send("go")
        burst_flows(core, pair, lock, n, a.burst, delete)
        active_cpu.append(cpu[0] - c0)
    marks, counters, left = here.recv()
    child.join(30)
    stop.set()
    t.join()
    pair.close()
    print(f"live imports, {os.cpu_count()} CPUs, {n:,} creates then {n:,} deletes, "
          f"{a.burst} changes offered per ms")
    for (scpu, wall), acpu, what in zip(marks, active_cpu, ("creates", "deletes")):
        print(f"  {what}: standby CPU {scpu:.2f} s = {scpu / n * 1e6:.1f} us/change; "
              f"active CPU {acpu:.2f} s = {acpu / n * 1e6:.1f} us/change; wall {wall:.2f} s")
    print(f"  standby counters {counters}; states left on the standby {left}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
