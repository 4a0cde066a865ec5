"""The takeover's timeline (scripts/lab/timeline.py) at table sizes, in one run of one lab.

    python -m scripts.lab.gapsize [--prefix gs-] [--sizes 100k,1M] [--kills 4] [--pps 2000]

Builds its own lab, starts the pair with room for 1.5 times the largest size, and per size:
fills the active's table with real UDP states (bench_failover.fill; from --alone-from on the
standby is cut and joins afterwards by one bulk sync, as bench-failover does), then --kills
times timeline.one_kill (a sequenced UDP stream, the active power-cut, the survivor's takeover
lines read back) and the dead unit's rejoin (start -> standby-ready, the bulk sync's own time).
Prints the medians per size side by side, the 1M/100k ratio of each, and the load average at
every kill (the machine is shared: read the ratios, not the absolute values). Takes the lab
down at the end, also on error or Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from scripts import bench_failover as bf
from scripts.lab import build, timeline
from scripts.lab.topology import FW_A, FW_B, UNITS

KEYS = ("gap", "detection", "takeover", "to_verdict", "to_receiver", "sent_to_woke", "lost")


def run(prefix: str, sizes: list[int], kills: int, pps: int, alone_from: int, log=print) -> dict:
    bf.build_tool(bf.UDPFILL_SRC, bf.UDPFILL)
    topo = bf.new_lab(prefix)
    sys_ = bf.Natpair(topo, int(max(sizes) * 1.5))
    out: dict = {}
    try:
        sys_.start(FW_A, 30)
        sys_.start(FW_B, 60)
        paired, done = True, 0
        for size in sizes:
            active = next(u for u in UNITS if sys_.is_active(u))
            standby = next(u for u in UNITS if u != active)
            alone = size >= alone_from
            if alone and paired:
                bf.stop_unit(topo, sys_, standby)
                paired = False
            f = bf.fill(topo, sys_, active, None if alone else standby, size, 100_000, 120, done)
            done = size
            log(f"{size}: filled {f['active']} in {f['fill_s']} s (standby {f['standby']})")
            rows, bulks = [], []
            if alone:
                bulks.append(sys_.start(standby, 120))
                paired = True
                log(f"{size}: joined in {bulks[-1]} s{sys_.transfer()}")
            for i in range(kills):
                t, dead, survivor = timeline.one_kill(topo, pps, sys_.timers, log)
                t.update(timeline.spans(t))
                t["load1"] = os.getloadavg()[0]
                rows.append(t)
                log(f"{size} kill {i + 1}: gap {t['gap']} ms, " + " ".join(
                    f"{k}={t.get(k)}" for k in KEYS[1:]) + f", load {t['load1']:.2f}")
                build.up_node(topo, dead, log=bf.quiet)
                bulks.append(sys_.start(dead, 120))
                log(f"{size}: {dead} rejoined in {bulks[-1]} s{sys_.transfer()}")
            out[size] = {"rows": rows, "bulk_s": bulks,
                         "median": timeline.medians(rows, KEYS + ("load1",))}
    finally:
        bf.keep_logs(topo, "gapsize")
        build.down(prefix, log=bf.quiet)
    return out


def report(out: dict) -> str:
    sizes = sorted(out)
    lines = [f"{'median ms':>12} " + " ".join(f"{bf.size_label(s):>9}" for s in sizes)
             + (f" {'ratio':>7}" if len(sizes) > 1 else "")]
    for k in KEYS + ("load1",):
        vals = [out[s]["median"].get(k) for s in sizes]
        ratio = ""
        if len(sizes) > 1 and vals[0] and vals[-1] is not None:
            ratio = f" {vals[-1] / vals[0]:>7.2f}"
        lines.append(f"{k:>12} " + " ".join(f"{'-' if v is None else v:>9}" for v in vals) + ratio)
    lines.append(f"{'bulk s':>12} " + " ".join(
        f"{','.join(f'{b:.2f}' for b in out[s]['bulk_s'] if b is not None):>9}" for s in sizes))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix", default="gs-")
    ap.add_argument("--sizes", type=bf.parse_sizes, default=[100_000, 1_000_000])
    ap.add_argument("--kills", type=int, default=4)
    ap.add_argument("--pps", type=int, default=2000)
    ap.add_argument("--alone-from", type=lambda t: bf.parse_sizes(t)[0], default=1_000_000)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, timeline._sigterm)
    out = run(a.prefix, a.sizes, a.kills, a.pps, a.alone_from,
              log=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True))
    print(report(out), flush=True)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
