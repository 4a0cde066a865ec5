"""The false-failover soak: the pair under full iperf3 load, nobody killed, nobody may move.

`make soak LAB_PREFIX=... SOAK_ARGS="--seconds 180 --poll-ms 4 --hold-ms 15"` builds the lab
(scripts/lab/topology.py under the prefix), starts fw-a and fw-b as a pair with the timers
given, runs iperf3 TCP (`--streams`, default 2) from the inside host to the outside server
through the pair for `--seconds`, and then reads both units: every takeover, every
PEER_SILENT (hold or carrier), every split link and every role change after the pair was
up (counters compared with their values then) is a false failover. Prints the throughput, the machine's load average before and after (the
machine is shared: say what the load was), the detector counters, and exits non-zero on
any false failover. The lab is always taken down at the end.

`--probe` runs the control beside it: scripts/lab/stallprobe.c (built into .build/), a C
thread per CPU at SCHED_FIFO waking every 1 ms, and prints how late it woke (per CPU: max
and histogram; stalls of 10 ms and more on one CPU alone or on both at once; how much of
the lateness was spent runnable, waiting for the CPU). What it sees is the machine, not
natpair: the timers must ride that out.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from dataplane.daemon import request

from . import build
from . import run as labrun
from . import unit as unit_mod
from .topology import FW_A, FW_B, lab

PROBE_SRC = Path(__file__).resolve().parent / "stallprobe.c"
PROBE = Path(__file__).resolve().parents[2] / ".build" / "stallprobe"
FALSE = ("detect_silent_hold", "detect_silent_carrier", "detect_split_link", "role_takeovers")


def start_probe(seconds: int) -> subprocess.Popen:
    PROBE.parent.mkdir(parents=True, exist_ok=True)
    if not PROBE.exists() or PROBE.stat().st_mtime < PROBE_SRC.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-pthread", str(PROBE_SRC), "-o", str(PROBE)], check=True)
    return subprocess.Popen([str(PROBE), str(seconds)], stdout=subprocess.PIPE, text=True)


def probe_report(out: str, big_ms: float = 10.0) -> list[str]:
    """The probe's summary lines, and its stalls of ``big_ms`` or more: on one CPU alone or
    overlapping one of another CPU, and the runnable (waiting for the CPU) share."""
    late: dict[int, list[tuple[float, float, float]]] = {}
    lines = []
    for ln in out.splitlines():
        f = ln.split()
        if f and f[0] == "late" and len(f) >= 6:
            cpu, t, us, rd = int(f[1]), int(f[2]), int(f[3]), int(f[5])
            late.setdefault(cpu, []).append((t - us / 1000, t, rd / us))
        elif ln.startswith("cpu"):
            lines.append(f"soak: probe {ln}")
    one = both = 0
    share = []
    for cpu, evs in late.items():
        for start, end, rd in evs:
            if end - start < big_ms:
                continue
            share.append(rd)
            others = [e for c, es in late.items() if c != cpu for e in es]
            if any(min(end, e) - max(start, s) > 0.5 * (end - start) for s, e, _ in others):
                both += 1
            else:
                one += 1
    share.sort()
    lines.append(f"soak: probe stalls >= {big_ms:g} ms: {one} on one CPU alone, {both} overlapping "
                 f"another CPU's" + (f"; runnable for {share[len(share) // 2]:.0%} of the lateness "
                                     f"(median)" if share else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prefix", default="np-")
    ap.add_argument("--seconds", type=int, default=180)
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--poll-ms", type=int, default=unit_mod.POLL_MS)
    ap.add_argument("--hold-ms", type=int, default=unit_mod.HOLD_MS)
    ap.add_argument("--feed", default="c")
    ap.add_argument("--probe", action="store_true",
                    help="also run scripts/lab/stallprobe.c (the machine's own stalls) meanwhile")
    a = ap.parse_args(argv)
    topo = lab(a.prefix)
    build.down(a.prefix, log=lambda *_: None)
    build.up(topo)
    try:
        load0 = os.getloadavg()
        units = labrun.start_pair(topo, a.feed, poll_ms=a.poll_ms, hold_ms=a.hold_ms)
        base = {u: request(str(units[u].socket), "counters")["replication"] for u in (FW_A, FW_B)}
        rdir = build.run_dir(a.prefix)
        (rdir / "www").mkdir(parents=True, exist_ok=True)
        labrun.start_servers(topo, rdir)
        probe = start_probe(a.seconds) if a.probe else None
        d = labrun._iperf(topo, ["-P", str(a.streams)], a.seconds)
        if probe is not None:
            out, _ = probe.communicate(timeout=30)
            print("\n".join(probe_report(out)))
        load1 = os.getloadavg()
        bad = {}
        for u in (FW_A, FW_B):
            st = request(str(units[u].socket), "status")
            c = request(str(units[u].socket), "counters")["replication"]
            det = {k: v for k, v in c.items() if k.startswith(("detect_", "carrier_", "role_"))
                   and not k.startswith(("detect_hellos_",))
                   or k.startswith("beat_") and ("_max_ms" in k or k.startswith(("beat_held", "beat_pauses",
                                                                                 "beat_tx_backup")))}
            print(f"soak: {u} {st['role']}: {det}")
            bad.update({f"{u}.{k}": c.get(k, 0) - base[u].get(k, 0) for k in FALSE
                        if c.get(k, 0) != base[u].get(k, 0)})
        if isinstance(d, str):
            print(f"soak: iperf3 failed: {d}")
            return 1
        gbit = d["end"]["sum_received"]["bits_per_second"] / 1e9
        print(f"soak: poll {a.poll_ms} ms, hold {a.hold_ms} ms, {a.seconds} s of iperf3 TCP x "
              f"{a.streams} at {gbit:.2f} Gbit/s through the pair; load average "
              f"{load0[0]:.1f} before, {load1[0]:.1f} (1 min) / {load1[1]:.1f} (5 min) after, "
              f"{os.cpu_count()} CPUs")
        roles = {u: request(str(units[u].socket), "status")["role"] for u in (FW_A, FW_B)}
        if bad or roles != {FW_A: "ACTIVE", FW_B: "STANDBY_READY"}:
            print(f"soak: FALSE FAILOVER: {bad} roles {roles}")
            for u in (FW_A, FW_B):
                for ln in units[u].log.read_text(errors="replace").splitlines():
                    if any(w in ln for w in ("silent", "split", "takeover", "NEGOTIATION_")):
                        print(f"soak: {u}: {ln}")
            return 1
        print("soak: no false failover")
        return 0
    finally:
        build.down(a.prefix, log=lambda *_: None)


if __name__ == "__main__":
    sys.exit(main())
