"""`sudo make bench-failover`: kill the active unit like a power cut, again and again, with
1k, 100k and 1M states in the table, on natpair and on the incumbent (kernel NAT + conntrackd
FTFW + keepalived VRRPv3, scripts/lab/incumbent.py) in the same lab (scripts/lab/topology.py),
and print one table of both side by side with the targets (issue 4 section 9), plus a PNG of
the gap against the table size.

Per system, in its own lab under --prefix (taken down at the end, also on error or Ctrl-C):

    cps     new TCP connections/s (scripts/connrate.c) from in-host to out-srv through fw-a,
            in a lab of its own: replication off (natpair: fw-a alone, no [failover]; the
            incumbent: kernel NAT alone) and on (the pair up, the standby ready)
    fill    fw-a active, fw-b standby(-ready); the active's table filled with real UDP
            states (scripts/udpfill.c: flow f = one packet from in-host port 30000 + f/1000
            to out-srv port 20000 + f%1000; out-srv drops them, so no ICMP comes back), to
            each --sizes in turn (flows only add up), topped up until the active holds them,
            then waited for until the standby holds them too (natpair: its core's state
            count; the incumbent: conntrackd's external cache). From --fill-alone-from (1M)
            on, the standby is cut first and the active fills alone, faster (natpair: no
            stream to feed, though its journal is still drained change by change); the
            standby then starts and joins with one bulk sync of the whole table, timed as
            a rejoin is (in the bulk sync row). Every state is one real packet through the
            active, and the fill's log line says how fast it went and what the active
            dropped (natpair's feed and core counters).
            The units run with room for 1.5 times the largest size (natpair: [core]
            max_states; the kernel: nf_conntrack_max, hashsize, conntrackd's HashLimit) and
            a UDP timeout of 3600 s, so that no filled state expires during the run.
    kill    --kills times per size: sinks on out-srv, from in-host a sequenced UDP stream and
            TCP_FLOWS TCP connections, each at 1000 records/s, and one bulk TCP connection
            paced to BULK_MBIT (its window full when the path goes, as iperf3's: it waits for
            its retransmission timer) (scripts/lab/stream.py); after PRE_S the active is
            power-cut (scripts/lab/build.power_cut with links_first: SIGSTOP, links down,
            SIGKILL, namespace deleted: a kernel NAT's forwarding stops with its processes,
            as natpair's does). Per flow: the gap = the longest silence at the
            receiver (ms) that overlaps the 0.5 s after the cut (stream.gap_at: a
            stall of the loaded machine elsewhere in the stream, nothing lost, is not the
            failover's; the longest silence anywhere is in the JSON, max_silence_ms); a TCP connection survived when it was neither reset nor moved to
            another NAT port and every record arrived. In the log lines and the JSON only:
            takeover = from the cut to the survivor being active (natpair: its status says
            ACTIVE; the incumbent: it holds the NAT address), polled every 2 ms (coarse on a
            loaded machine: the gap at the receiver is the figure).
    rejoin  the dead unit is built again (build.up_node) and started: the time from its
            start to standby-ready is the bulk sync time at that table size (the incumbent:
            until conntrackd's external cache holds the master's kernel table). The next
            kill kills the other unit. From --fill-alone-from on, --kills-large kills (3).

Memory: the resident set of every process in each unit's namespace (natpair's daemon and
beat process; conntrackd, keepalived) and the kernel's nf_conntrack slab (machine-wide),
after the fill and after the kills of each size.

Replication lag (natpair only: the active's LagHistogram, ack-based, replication/lag.py, read
from the control socket's status right before each kill, each active process counted once)
p50 and p99; "n/a" while the daemon does not fill it.

The gap is "flat" when the medians at every size are within FLAT_MS of each other.

The kernel's conntrack limit nf_conntrack_max and its hash table size (hashsize) are one
number each for the whole machine (read-only inside a namespace): when the largest size does
not fit (the hash table: at a quarter of the entries), the bench raises them for the run and
puts the old values back at the end (it says so).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyroute2 import IPRoute

from dataplane.daemon import request
from replication.lag import LagHistogram
from scripts.bench_unit import CPS_PORT, build_connrate, cps
from scripts.lab import build, incumbent, nsexec, stream
from scripts.lab import run as labrun
from scripts.lab.topology import FW_A, FW_B, HOST, SERVER, SERVER_ADDR, UNITS, Topology, lab
from scripts.lab.unit import HOLD_MS, POLL_MS, socket_path, start_unit, wait_role

REPO = Path(__file__).resolve().parents[1]
UDPFILL_SRC = REPO / "scripts" / "udpfill.c"
UDPFILL = REPO / ".build" / "udpfill"
DEFAULT_PNG = REPO / ".build" / "bench-failover.png"
LOGS = REPO / ".build" / "bench-failover-logs"

SYSTEMS = ("natpair", "incumbent")
DEFAULT_SIZES = (1_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 100_000)
FILL_SPORT, FILL_DPORT, FILL_DPORTS = 30000, 20000, 1000
FILL_START_PPS = 10_000         # the fill's first rate; it goes up as long as the unit keeps up
UDP_PORT, TCP_PORT = 9000, 9001
TCP_FLOWS = 2
BULK_PORT, BULK_MBIT = 9010, 100
PRE_S, POST_S = 1.0, 2.5
FLAT_MS = 10.0
TARGETS = {"udp_gap": 20.0, "tcp_gap": 50.0, "lag_p99": 5.0, "bulk_1m_s": 3.0}


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"bench-failover: {msg}", flush=True)


def quiet(*_a) -> None:
    pass


# ---- results ---------------------------------------------------------------------------------

@dataclass
class Kill:
    size: int
    dead: str
    takeover_ms: float
    udp_gap_ms: float | None
    udp_lost: int
    tcp_gaps_ms: list[float | None]
    tcp_survived: list[bool]
    bulk_gap_ms: float | None = None    # the bulk TCP connection's gap
    notes: list[str] = field(default_factory=list)
    lag: dict | None = None             # the active's LagHistogram snapshot before the cut
    survivor_counters: dict = field(default_factory=dict)   # natpair: core counters that moved
    max_silence_ms: list[float | None] = field(default_factory=list)   # per flow, anywhere in its stream


@dataclass
class SystemRun:
    system: str
    kills: list[Kill] = field(default_factory=list)
    bulk_s: dict[int, list[float]] = field(default_factory=dict)       # size -> rejoin times
    filled: dict[int, dict] = field(default_factory=dict)              # size -> counts, times
    lags: list[dict] = field(default_factory=list)                     # LagHistogram snapshots
    cps: dict[str, float] = field(default_factory=dict)                # "off"/"on" -> conn/s
    memory: dict[int, dict] = field(default_factory=dict)              # size -> memory()
    swaps: int = 0                      # rejoins after which the rejoined unit went active
    errors: list[str] = field(default_factory=list)


def spread(values: list) -> dict | None:
    """median, min, max of the numbers in values (None when there is none)."""
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def merge_lag(snapshots: list[dict]) -> dict | None:
    """One histogram of several LagHistogram.snapshot()s (cumulative buckets): p50, p99, count;
    None when nothing was observed."""
    total: LagHistogram | None = None
    for snap in snapshots:
        buckets = snap.get("buckets") or []
        if not snap.get("count") or not buckets:
            continue
        bounds = tuple(float(b) for b, _ in buckets[:-1])
        if total is None:
            total = LagHistogram(bounds)
        if tuple(total.bounds) != bounds:
            continue                      # another daemon version's buckets: not comparable
        prev = 0
        for i, (_, cum) in enumerate(buckets):
            total.counts[i] += cum - prev
            prev = cum
        total.count += snap["count"]
        total.max_ms = max(total.max_ms, float(snap.get("max_ms") or 0))
    if total is None or total.count == 0:
        return None
    return {"p50_ms": total.percentile(50), "p99_ms": total.percentile(99), "count": total.count}


def size_label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else (
        f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n))


def fmt_spread(s: dict | None, unit: str = "") -> str:
    if s is None:
        return "n/a"
    return f"{s['median']:.0f}{unit} [{s['min']:.0f}..{s['max']:.0f}]"


def summary(run: SystemRun, sizes: list[int]) -> dict:
    """The figures of the table for one system."""
    out: dict = {"sizes": {}}
    for size in sizes:
        ks = [k for k in run.kills if k.size == size]
        tcp_ok = [ok for k in ks for ok in k.tcp_survived]
        out["sizes"][size] = {
            "kills": len(ks),
            "udp_gap": spread([k.udp_gap_ms for k in ks]),
            "tcp_gap": spread([g for k in ks for g in k.tcp_gaps_ms]),
            "bulk_gap": spread([k.bulk_gap_ms for k in ks]),
            "tcp_survived": (sum(tcp_ok), len(tcp_ok)),
            "takeover": spread([k.takeover_ms for k in ks]),
            "bulk_s": spread(run.bulk_s.get(size, [])),
        }
    meds = {key: [out["sizes"][s][key]["median"] for s in sizes if out["sizes"][s][key]]
            for key in ("udp_gap", "tcp_gap", "bulk_gap")}
    out["flat"] = {key: (max(m) - min(m) if len(m) == len(sizes) and m else None)
                   for key, m in meds.items()}
    out["lag"] = merge_lag(run.lags)
    out["cps"] = dict(run.cps)
    return out


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("  MET" if ok else "  NOT MET")


def table(runs: dict[str, SystemRun], sizes: list[int]) -> str:
    sums = {name: summary(r, sizes) for name, r in runs.items()}
    names = [n for n in SYSTEMS if n in sums]
    rows: list[tuple[str, ...]] = [("figure", *names, "target")]

    def row(label: str, cells: dict[str, str], target: str = "") -> None:
        rows.append((label, *[cells.get(n, "-") for n in names], target))

    for size in sizes:
        sl = size_label(size)
        for key, label, target in (
                ("udp_gap", "UDP gap ms", f"<= {TARGETS['udp_gap']:g} median"),
                ("tcp_gap", "TCP gap ms (1000 rec/s)", f"<= {TARGETS['tcp_gap']:g} median"),
                ("bulk_gap", f"TCP gap ms (bulk {BULK_MBIT} Mbit/s)",
                 f"<= {TARGETS['tcp_gap']:g} median")):
            cells = {}
            for n in names:
                s = sums[n]["sizes"][size][key]
                goal = TARGETS["tcp_gap" if key == "bulk_gap" else key]
                cells[n] = fmt_spread(s) + (_verdict(s["median"] <= goal) if s else "")
            row(f"{label}, {sl} states", cells, target)
        cells = {}
        for n in names:
            ok, total = sums[n]["sizes"][size]["tcp_survived"]
            cells[n] = f"{ok}/{total}" + (_verdict(ok == total) if total else "")
        row(f"TCP conns survived, {sl}", cells, "100 %")
    for key, label in (("udp_gap", "UDP"), ("tcp_gap", "TCP"), ("bulk_gap", "TCP bulk")):
        cells = {}
        for n in names:
            d = sums[n]["flat"][key]
            cells[n] = "n/a" if d is None else f"{d:.0f} ms" + _verdict(d <= FLAT_MS)
        row(f"{label} gap flat {size_label(sizes[0])}..{size_label(sizes[-1])} (medians spread)",
            cells, f"flat (<= {FLAT_MS:g} ms)")
    cells = {}
    for n in names:
        lag = sums[n]["lag"]
        if n == "incumbent":
            cells[n] = "not measured"
        elif lag is None:
            cells[n] = "n/a"
        else:
            cells[n] = (f"{lag['p50_ms']:g} / {lag['p99_ms']:g} ({lag['count']} changes)"
                        + _verdict(lag["p99_ms"] <= TARGETS["lag_p99"]))
    row("replication lag ms p50 / p99", cells, f"p99 <= {TARGETS['lag_p99']:g}")
    for size in sizes:
        if size < 100_000:
            continue
        cells = {}
        for n in names:
            s = sums[n]["sizes"][size]["bulk_s"]
            txt = "n/a" if s is None else (f"{s['median']:.2f} s [{s['min']:.2f}..{s['max']:.2f}]")
            if s and size == 1_000_000:
                txt += _verdict(s["median"] <= TARGETS["bulk_1m_s"])
            cells[n] = txt
        row(f"bulk sync {size_label(size)} states (start -> ready)", cells,
            f"<= {TARGETS['bulk_1m_s']:g} s" if size == 1_000_000 else "")
    for mode, label in (("off", "new conn/s, replication off"), ("on", "new conn/s, replication on")):
        row(label, {n: (f"{sums[n]['cps'][mode]:.0f}" if mode in sums[n]["cps"] else "n/a")
                    for n in names})
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(lines)


def chart(runs: dict[str, SystemRun], sizes: list[int], path: Path) -> Path:
    """The median gap (bars: min..max) against the table size, UDP and TCP, both systems."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    style = {"natpair": "tab:blue", "incumbent": "tab:red"}
    series = 0
    for name, r in runs.items():
        s = summary(r, sizes)["sizes"]
        for key, marker, ls, what in (("udp_gap", "o", "-", "UDP"),
                                      ("tcp_gap", "s", "--", "TCP 1000 rec/s"),
                                      ("bulk_gap", "^", ":", "TCP bulk")):
            xs, ys, lo, hi = [], [], [], []
            dodge = 1.06 ** (series - 2.5)          # side by side, so the bars do not hide
            series += 1
            for size in sizes:
                sp = s[size][key]
                if sp is None:
                    continue
                xs.append(size * dodge)
                ys.append(sp["median"])
                lo.append(sp["median"] - sp["min"])
                hi.append(sp["max"] - sp["median"])
            if xs:
                ax.errorbar(xs, ys, yerr=[lo, hi], marker=marker, linestyle=ls, capsize=4,
                            color=style.get(name), label=f"{name} {what}")
    ax.axhline(TARGETS["udp_gap"], color="gray", linestyle=":", linewidth=1)
    ax.axhline(TARGETS["tcp_gap"], color="gray", linestyle="-.", linewidth=1)
    ax.text(sizes[0], TARGETS["udp_gap"], " UDP target", va="bottom", fontsize=8, color="gray")
    ax.text(sizes[0], TARGETS["tcp_gap"], " TCP target", va="bottom", fontsize=8, color="gray")
    ax.set_xscale("log")
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    lo, hi = min(lo, TARGETS["udp_gap"] / 1.5), max(hi, TARGETS["tcp_gap"] * 1.5)
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)
             if lo <= t <= hi]
    ax.set_yticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_ylim(lo, hi)
    ax.set_xticks(sizes, [size_label(x) for x in sizes])
    ax.set_xlabel("states in the table at the kill")
    ax.set_ylabel("gap at the receiver, ms (median, bars min..max)")
    ax.set_title("Failover gap (power cut of the active) against table size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ---- the two systems ---------------------------------------------------------------------------

class Natpair:
    """The natpair pair (scripts/lab/unit.py with [failover])."""
    name = "natpair"

    def __init__(self, topo: Topology, max_states: int, poll_ms: int = POLL_MS,
                 hold_ms: int = HOLD_MS):
        self.topo, self.timers = topo, {"poll_ms": poll_ms, "hold_ms": hold_ms}
        self.swaps = 0                  # rejoins after which the roles swapped
        self.last_transfer: dict | None = None
        self.extra = f"[core]\nmax_states = {max_states}\n\n[timeouts]\nudp = 3600\n"

    def start(self, unit: str, ready_s: float) -> float | None:
        """Start `unit` in the pair: the first one until ACTIVE (0.0), one that joins an
        active peer until STANDBY_READY (the seconds from its start: the bulk sync). A
        joiner that then took over with the whole table (a false failover: the peer's
        hellos came late) is accepted and counted (None); one that took over without the
        table stops the run."""
        peer = next(u for u in UNITS if u != unit)
        joins = self.status(peer).get("role") == "ACTIVE"
        table = self.held(peer, standby=False)
        t0 = time.monotonic()
        start_unit(self.topo, unit, log=quiet, failover=True, extra_config=self.extra,
                   ready_s=30, **self.timers)
        if not joins:
            wait_role(self.topo, unit, ("ACTIVE",), timeout_s=ready_s)
            return 0.0
        deadline = t0 + ready_s
        while (role := self.status(unit).get("role")) != "STANDBY_READY":
            if role == "ACTIVE":
                held = self.held(unit, standby=False)
                if held >= 0.99 * table:
                    self.swaps += 1
                    return None
                raise BenchError(f"{unit} joined {peer} (ACTIVE, {table} states) and became "
                                 f"ACTIVE with {held} states: the unit with the table gave way")
            if time.monotonic() > deadline:
                bulk = self.status(unit).get("failover", {}).get("bulk_recv")
                raise BenchError(f"{unit}: {role}, not STANDBY_READY {ready_s:.0f} s after "
                                 f"its start (bulk: {bulk})")
            time.sleep(0.02)
        took = time.monotonic() - t0
        self.last_transfer = self.status(unit).get("failover", {}).get("bulk_recv")
        return took

    def transfer(self) -> str:
        """The last join's bulk sync as its receiver saw it: the transfer alone (the start
        -> ready time also holds the daemon's start), and the attempt (a retry: the first
        was aborted, e.g. by a false 'peer silent' on a loaded machine)."""
        t = self.last_transfer or {}
        if not t.get("elapsed_ms"):
            return ""
        return f" (the transfer {t['elapsed_ms']:.0f} ms, attempt {t.get('attempt', '?')})"

    def status(self, unit: str) -> dict:
        try:
            return request(str(socket_path(self.topo, unit)), "status", timeout=2.0)
        except (OSError, ValueError):
            return {}

    def is_active(self, unit: str) -> bool:
        return self.status(unit).get("role") == "ACTIVE"

    def held(self, unit: str, standby: bool) -> int:
        return int(self.status(unit).get("states", -1))

    def replicable(self, unit: str) -> int:
        return self.held(unit, standby=False)

    def lag(self, unit: str) -> dict | None:
        return self.status(unit).get("failover", {}).get("lag")

    def forget(self, unit: str) -> None:
        pass

    def standby_ready(self, unit: str) -> bool:
        return self.status(unit).get("role") == "STANDBY_READY"

    def counters(self, unit: str) -> dict:
        try:
            reply = request(str(socket_path(self.topo, unit)), "counters", timeout=2.0)
        except (OSError, ValueError):
            return {}
        return {f"{part}.{k}": v for part in ("core", "feed")
                for k, v in (reply.get(part) or {}).items() if isinstance(v, int)}


class Incumbent:
    """kernel NAT + conntrackd + keepalived (scripts/lab/incumbent.py)."""
    name = "incumbent"

    def __init__(self, topo: Topology, max_states: int, advert_s: float):
        self.topo, self.max_states, self.advert_s = topo, max_states, advert_s
        self.started: dict[str, float] = {}
        self.swaps = 0
        self._ipr: dict[str, IPRoute] = {}

    def start(self, unit: str, ready_s: float) -> float:
        t0 = time.monotonic()
        others = [u for u in UNITS if u != unit and self._alive(u)]
        incumbent.start_incumbent(self.topo, unit, advert_s=self.advert_s,
                                  max_states=self.max_states, log=quiet)
        self.started[unit] = t0
        if not others:
            incumbent.wait_master(self.topo, unit)
            return 0.0
        want = self.replicable(others[0])
        deadline = t0 + ready_s
        while incumbent.conntrackd_stats(self.topo, unit)["external"] < 0.99 * want:
            if time.monotonic() > deadline:
                raise BenchError(f"{unit}: conntrackd's external cache below {want} after "
                                 f"{ready_s:.0f} s")
            time.sleep(0.02)
        return time.monotonic() - t0

    def _alive(self, unit: str) -> bool:
        return self.topo.ns(unit) in build.existing_namespaces() and unit in self.started

    def is_active(self, unit: str) -> bool:
        # one netlink socket per unit, kept while polling: opening one in a namespace forks
        try:
            ipr = self._ipr.get(unit) or self._ipr.setdefault(
                unit, IPRoute(netns=self.topo.ns(unit), flags=0))
            return incumbent.holds_nat_addr(self.topo, ipr)
        except OSError:
            self.forget(unit)
            return False

    def standby_ready(self, unit: str) -> bool:
        return self._alive(unit) and not self.is_active(unit)

    def counters(self, unit: str) -> dict:
        return {}

    def forget(self, unit: str) -> None:
        """Close the unit's netlink socket: it would keep a cut unit's namespace alive."""
        ipr = self._ipr.pop(unit, None)
        if ipr is not None:
            ipr.close()

    def replicable(self, unit: str) -> int:
        """What the standby should hold: conntrackd's internal cache on the active (the
        kernel's table less what its filter leaves out: the failover link, VRRP)."""
        return incumbent.conntrackd_stats(self.topo, unit)["internal"]

    def held(self, unit: str, standby: bool) -> int:
        if standby:
            return incumbent.conntrackd_stats(self.topo, unit)["external"]
        return incumbent.kernel_states(self.topo, unit)

    def lag(self, unit: str) -> dict | None:
        return None

    def transfer(self) -> str:
        return ""


    def settle(self) -> None:
        """conntrackd flushes the kernel table 5 s after it starts: fill after that."""
        first = min(self.started.values())
        time.sleep(max(0.0, first + 5.5 - time.monotonic()))


# ---- steps -------------------------------------------------------------------------------------

def build_tool(src: Path, out: Path, extra: tuple[str, ...] = ()) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", *extra, str(src), "-o", str(out)], check=True)
    return out


def new_lab(prefix: str) -> Topology:
    build.down(prefix, log=quiet)
    topo = lab(prefix)
    build.up(topo, log=quiet)
    build.run_dir(prefix).mkdir(parents=True, exist_ok=True)
    nsexec.sysctl(topo.ns(HOST), "net.ipv4.ip_local_port_range", "32768 60999")
    # out-srv drops the filler's packets itself, so no ICMP error comes back through the pair
    nsexec.run(topo.ns(SERVER), ["iptables", "-A", "INPUT", "-p", "udp", "--dport",
                                 f"{FILL_DPORT}:{FILL_DPORT + FILL_DPORTS - 1}", "-j", "DROP"],
               timeout=10, check=True)
    return topo


def keep_logs(topo: Topology, system: str) -> None:
    """The units' logs, out of the run dir that down() removes, into .build/."""
    dest = LOGS / system
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    for f in build.run_dir(topo.prefix).glob("*.log"):
        shutil.copy(f, dest / f.name)


def measure_cps(system: str, args, max_states: int) -> dict[str, float]:
    """New TCP connections/s through fw-a, replication off then on, in a lab of its own."""
    prefix, seconds, advert_s = args.prefix, args.cps_seconds, args.advert_ms / 1000
    topo = new_lab(prefix)
    out: dict[str, float] = {}
    try:
        nsexec.popen(topo.ns(SERVER), [str(REPO / ".build" / "connrate"), "server", SERVER_ADDR,
                                       str(CPS_PORT), "2"], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(0.3)
        if system == "natpair":
            alone = start_unit(topo, FW_A, log=quiet)
            out["off"] = cps(topo, seconds, 4)[0]
            alone.proc.terminate()
            alone.proc.wait(timeout=20)
            sys_ = Natpair(topo, max_states, args.poll_ms, args.hold_ms)
        else:
            nsexec.run(topo.ns(FW_A), ["iptables-restore"], input=incumbent.nat_rules(),
                       timeout=10, check=True)
            out["off"] = cps(topo, seconds, 4)[0]
            sys_ = Incumbent(topo, max_states, advert_s)
        sys_.start(FW_A, 30)
        sys_.start(FW_B, 60)
        out["on"] = cps(topo, seconds, 4)[0]
    finally:
        build.down(prefix, log=quiet)
    return out


def _udpfill(topo: Topology, first: int, last: int, pps: int) -> None:
    r = nsexec.run(topo.ns(HOST), [str(UDPFILL), SERVER_ADDR, str(FILL_SPORT), str(FILL_DPORT),
                                   str(FILL_DPORTS), str(first), str(last), str(pps)],
                   timeout=(last - first) / max(pps, 1) * 3 + 30)
    if r.returncode != 0:
        raise BenchError(f"udpfill: {r.stderr.strip()[-200:]}")


def fill(topo: Topology, sys_, active: str, standby: str | None, size: int, pps: int,
         timeout_s: float, done: int = 0) -> dict:
    """Fill the active's table with flows [done, size) so that it holds `size` UDP states,
    and wait until the standby holds them (`standby` None: the active is alone, no wait).
    In chunks of half a second of packets, from FILL_START_PPS up to `pps`: a chunk that
    did not all become states is sent again at half the rate (what the unit cannot take is
    dropped: a queue that is full fails closed); after one that did, the rate goes up by a
    quarter. The active's drop counters that moved are in the result ("drops")."""
    t0 = time.monotonic()
    rate, lo, resent = min(pps, FILL_START_PPS), done, 0
    counted = sys_.counters(active)
    while lo < size:
        hi = min(size, lo + max(500, rate // 2))
        # new states of this chunk, counted against the table before it (states of earlier
        # streams may expire meanwhile: a small tolerance)
        before = sys_.held(active, standby=False)
        for attempt in range(8):
            _udpfill(topo, lo, hi, rate)
            time.sleep(0.02)
            if sys_.held(active, standby=False) - before >= (hi - lo) - max(50, (hi - lo) // 200):
                break
            shrunk = before - sys_.held(active, standby=False)
            if shrunk > max(50, (hi - lo) // 200):
                raise BenchError(f"{sys_.name}: {active}'s table shrank by {shrunk} states "
                                 f"while flows {lo}..{hi} were sent: did it change roles? "
                                 "(see the units' logs)")
            resent += 1
            rate = max(500, rate // 2)
        else:
            raise BenchError(f"{sys_.name}: {sys_.held(active, False) - before} new states of "
                             f"{hi - lo} sent (flows {lo}..{hi}), after 8 tries, the last at "
                             f"{rate} packets/s")
        if attempt == 0:
            rate = min(pps, rate * 5 // 4)
        lo = hi
    after = sys_.counters(active)
    drops = {n: v - counted.get(n, 0) for n, v in after.items() if v != counted.get(n, 0)
             and any(w in n for w in ("drop", "full", "overflow", "fail", "refused"))}
    held = sys_.held(active, standby=False)
    fill_s = time.monotonic() - t0
    out = {"active": held, "standby": None, "resent_chunks": resent, "fill_s": round(fill_s, 2),
           "drops": drops,
           "last_rate_pps": rate, "states_per_s": round((size - done) / max(fill_s, 1e-3)),
           "replicated_s": None, "complete": True, "alone": standby is None}
    if standby is None:
        return out
    want = 0.99 * sys_.replicable(active)
    deadline = time.monotonic() + timeout_s
    while (got := sys_.held(standby, standby=True)) < want:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    out.update(standby=got, replicated_s=round(time.monotonic() - t0, 2), complete=got >= want)
    return out


def stop_unit(topo: Topology, sys_, unit: str) -> None:
    """Take `unit` out of the pair (cut as a kill does, its namespace built again, nothing
    started in it): the active fills alone, at the speed it has with no peer to feed."""
    sys_.forget(unit)
    build.power_cut([topo.ns(unit)], log=quiet, links_first=True)
    build.up_node(topo, unit, log=quiet)


def _ns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def memory(topo: Topology) -> dict:
    """Resident memory (MB) of the processes in each unit's namespace, summed per program
    (natpair's daemon and its beat process; conntrackd; keepalived), and the kernel's
    conntrack entries (the nf_conntrack slab, machine-wide: every namespace's)."""
    units = {_ns_inode(f"/run/netns/{topo.ns(u)}"): u for u in UNITS}
    units.pop(None, None)
    out: dict = {u: {} for u in units.values()}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        unit = units.get(_ns_inode(f"/proc/{pid}/ns/net"))
        if unit is None:
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        rss = next((int(line.split()[1]) for line in status.splitlines()
                    if line.startswith("VmRSS:")), 0)
        prog = Path(cmd[0].decode(errors="replace")).name
        if prog.startswith("python"):
            prog = "natpair"                # the daemon and its beat process
        if rss:
            out[unit][prog] = round(out[unit].get(prog, 0) + rss / 1024, 1)
    try:
        for line in Path("/proc/slabinfo").read_text().splitlines():
            f = line.split()
            if f and f[0] == "nf_conntrack":
                out["kernel nf_conntrack slab"] = round(int(f[2]) * int(f[3]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return out


def fmt_memory(mem: dict) -> str:
    parts = []
    for u in UNITS:
        if mem.get(u):
            parts.append(f"{u} " + " + ".join(f"{p} {mb:.0f} MB" for p, mb in sorted(mem[u].items())))
    if "kernel nf_conntrack slab" in mem:
        parts.append(f"kernel conntrack {mem['kernel nf_conntrack slab']:.0f} MB")
    return "; ".join(parts) or "n/a"


def _stream(ns: str, mode: str, proto: str, port: int, seconds: float) -> subprocess.Popen:
    return labrun._popen(ns, labrun._stream_argv(mode, proto, port, seconds))


def _json_of(p: subprocess.Popen, timeout: float) -> dict:
    """The JSON line a stream program printed; {} when it hangs (a TCP send blocked on a
    path that never came back) and is killed."""
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        return {}
    return labrun._json_tail(out)


def _sink_result(p: subprocess.Popen) -> tuple[dict, str]:
    try:
        out, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    return labrun._json_tail(out), err


def one_kill(topo: Topology, sys_, size: int, ready_s: float) -> Kill:
    """Streams through the pair, the active power-cut after PRE_S; what the flows saw."""
    active = next((u for u in UNITS if sys_.is_active(u)), None)
    if active is None:
        raise BenchError("no unit is active")
    survivor = next(u for u in UNITS if u != active)
    deadline = time.monotonic() + ready_s
    while not sys_.standby_ready(survivor):
        if time.monotonic() > deadline:
            raise BenchError(f"{survivor} is not standby-ready after {ready_s:.0f} s: "
                             "no kill (nobody would take over)")
        time.sleep(0.1)
    host, srv = topo.ns(HOST), topo.ns(SERVER)
    flow_s = PRE_S + POST_S
    ports = ([("udp", UDP_PORT)] + [("tcp", TCP_PORT + i) for i in range(TCP_FLOWS)]
             + [("bulk", BULK_PORT)])
    sinks = [_stream(srv, "sink", "udp" if proto == "udp" else "tcp", port, flow_s + 8)
             for proto, port in ports]
    try:
        for p in sinks:
            line = p.stdout.readline().strip()
            if line != "ready":
                raise BenchError(f"stream sink: {line or p.stderr.read()[-200:]}")
        senders = [_stream(host, "send", proto, port, flow_s) if proto != "bulk" else
                   labrun._popen(host, labrun._stream_argv("send", "tcp", port, flow_s)
                                 + ["--pps", "0", "--mbit", str(BULK_MBIT)])
                   for proto, port in ports]
        time.sleep(PRE_S)
        before = sys_.counters(survivor)
        lag = sys_.lag(active)
        sys_.forget(active)
        t0 = cut = time.monotonic()
        build.power_cut([topo.ns(active)], log=quiet, links_first=True)
        while not (taken := sys_.is_active(survivor)):
            if time.monotonic() - t0 > 15:
                break
            time.sleep(0.002)
        took = (time.monotonic() - t0) * 1000 if taken else float("nan")
        outs = [(_json_of(snd, 30), *_sink_result(snk)) for snd, snk in zip(senders, sinks)]
        after = sys_.counters(survivor)
    finally:
        for p in sinks:
            if p.poll() is None:
                p.kill()
    k = Kill(size, active, round(took, 1), None, 0, [], [], lag=lag or None)
    k.survivor_counters = {n: v - before.get(n, 0) for n, v in after.items()
                           if v != before.get(n, 0)}
    for (proto, _), (snt, got, err) in zip(ports, outs):
        if not snt or not got:
            k.notes.append(f"{proto}: no result {err.strip()[-100:]}")
            if proto != "udp":
                k.tcp_survived.append(False)
            continue
        # the silence the cut made (stream.gap_at: overlapping the 0.5 s after the cut),
        # not the longest anywhere in the stream: on a loaded machine that is often a stall
        # of the sender or the receiver before the cut, with nothing lost
        gap = stream.gap_at(got, cut)
        k.max_silence_ms.append(got["max_gap_ms"])
        if gap is None:
            gap = got["max_gap_ms"]
        if proto == "udp":
            k.udp_gap_ms, k.udp_lost = gap, snt["sent"] - got["received"]
            continue
        ok = (not snt["error"] and not got["reset"] and got["distinct_ports"] == 1
              and got["received"] == snt["sent"])
        if proto == "bulk":
            k.bulk_gap_ms = gap
        else:
            k.tcp_gaps_ms.append(gap)
        k.tcp_survived.append(ok)
        if not ok:
            k.notes.append(f"tcp: error={snt['error']} reset={got['reset']} "
                           f"ports={got['ports']} got {got['received']}/{snt['sent']}")
    return k


def run_system(system: str, args, sizes: list[int], max_states: int) -> SystemRun:
    res = SystemRun(system)
    t_sys = time.monotonic()
    if not args.no_cps:
        try:
            res.cps = measure_cps(system, args, max_states)
            log(f"{system}: new conn/s off {res.cps['off']:.0f}, on {res.cps['on']:.0f}")
        except Exception as e:            # recorded; the bench goes on with the rest
            res.errors.append(f"cps: {type(e).__name__}: {e}")
            log(f"{system}: cps failed: {e}")
    topo = new_lab(args.prefix)
    sys_ = (Natpair(topo, max_states, args.poll_ms, args.hold_ms) if system == "natpair"
            else Incumbent(topo, max_states, args.advert_ms / 1000))
    try:
        sys_.start(FW_A, 30)
        paired = sizes[0] < args.fill_alone_from
        if paired:
            sys_.start(FW_B, 60)
        if isinstance(sys_, Incumbent):
            sys_.settle()
        done = 0
        for size in sizes:
            active = next(u for u in UNITS if sys_.is_active(u))
            standby = next(u for u in UNITS if u != active)
            alone = size >= args.fill_alone_from
            if alone and paired:
                stop_unit(topo, sys_, standby)
                paired = False
                log(f"{system}: {standby} stopped: {active} fills alone to {size_label(size)}")
            f = fill(topo, sys_, active, None if alone else standby, size, args.fill_pps,
                     args.sync_timeout, done)
            done = size
            res.filled[size] = f
            log(f"{system}: {size_label(size)}: active holds {f['active']} states "
                f"(filled in {f['fill_s']} s, {f['states_per_s']} new states/s, "
                f"{f['resent_chunks']} chunks sent again, last at {f['last_rate_pps']} "
                f"packets/s; the active's drops {f['drops'] or 'none'}), "
                + ("alone" if alone else
                                  f"standby {f['standby']} after {f['replicated_s']} s"
                                  + ("" if f["complete"] else " (INCOMPLETE)")))
            if alone:
                # the standby joins and takes the whole table in one bulk sync: that is a
                # bulk sync time at this size too
                bulk = sys_.start(standby, args.sync_timeout)
                paired = True
                f["standby"] = sys_.held(standby, standby=True)
                f["complete"] = f["standby"] >= 0.99 * sys_.replicable(active)
                if bulk is None:
                    res.swaps += 1
                    log(f"{system}: {standby} joined, took the table and then the active role")
                else:
                    res.bulk_s.setdefault(size, []).append(round(bulk, 3))
                    log(f"{system}: {standby} joined, standby-ready with {f['standby']} states "
                        f"{bulk:.2f} s after its start{sys_.transfer()}")
            res.memory[size] = memory(topo)
            log(f"{system}: {size_label(size)}: memory: {fmt_memory(res.memory[size])}")
            kills = args.kills_large if alone else args.kills
            for i in range(kills):
                k = one_kill(topo, sys_, size, args.sync_timeout)
                if k.lag:
                    res.lags.append(k.lag)
                res.kills.append(k)
                if k.takeover_ms != k.takeover_ms:          # nan: nobody took over
                    raise BenchError(f"{size_label(size)} kill {i + 1}: {k.dead} cut, and the "
                                     "other unit did not become active within 15 s")
                tcp = " ".join("-" if g is None else f"{g:.0f}" for g in k.tcp_gaps_ms)
                log(f"{system}: {size_label(size)} kill {i + 1}/{kills}: {k.dead} cut, "
                    f"takeover {k.takeover_ms:.0f} ms, UDP gap {k.udp_gap_ms} ms "
                    f"(lost {k.udp_lost}), TCP gaps {tcp} ms, bulk {k.bulk_gap_ms} ms, survived "
                    f"{sum(k.tcp_survived)}/{len(k.tcp_survived)}"
                    + (f"; {'; '.join(k.notes)}" if k.notes else ""))
                build.up_node(topo, k.dead, log=quiet)
                bulk = sys_.start(k.dead, args.sync_timeout)
                if bulk is None:
                    res.swaps += 1
                    log(f"{system}: {k.dead} rejoined, took the table and then the active "
                        "role (a false failover: the active's hellos came late)")
                    continue
                res.bulk_s.setdefault(size, []).append(round(bulk, 3))
                log(f"{system}: {k.dead} rejoined, standby-ready {bulk:.2f} s after its start"
                    f"{sys_.transfer()}")
            res.memory[size] = memory(topo)
            log(f"{system}: {size_label(size)}: memory after the kills: "
                f"{fmt_memory(res.memory[size])}")
    except Exception as e:                # recorded; the bench goes on with the next system
        res.errors.append(f"{type(e).__name__}: {e}" if not isinstance(e, BenchError) else str(e))
        log(f"{system}: stopped: {e}")
    finally:
        for u in UNITS:
            sys_.forget(u)
        keep_logs(topo, system)
        build.down(args.prefix, log=quiet)
    log(f"{system}: done in {time.monotonic() - t_sys:.0f} s")
    return res


# ---- main --------------------------------------------------------------------------------------

CONNTRACK_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")
CONNTRACK_HASHSIZE = Path("/sys/module/nf_conntrack/parameters/hashsize")
_MAIN_PID = os.getpid()


def _sigterm(signum, frame):
    if os.getpid() != _MAIN_PID:          # pyroute2's forked helpers: die as by default
        os._exit(128 + signum)
    raise KeyboardInterrupt


def parse_sizes(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        mult = {"k": 1000, "m": 1_000_000}.get(part[-1:], 1)
        num = part[:-1] if mult > 1 else part
        if not num.isdigit() or int(num) * mult < 1:
            raise argparse.ArgumentTypeError(f"bad size {part!r} (e.g. 1k,100k,1M)")
        n = int(num) * mult
        if n > 60_000 * FILL_DPORTS // 1000 * 1000:
            raise argparse.ArgumentTypeError(f"size {part!r}: at most 60M flows")
        out.append(n)
    return sorted(set(out))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, defaults resolved: args.sizes and args.systems are lists."""
    ap = argparse.ArgumentParser(prog="scripts.bench_failover", description=__doc__.split("\n")[0])
    ap.add_argument("--prefix", default="npf-", help="namespace prefix of the bench's lab")
    ap.add_argument("--kills", type=int, default=None,
                    help="kills per table size (default 10; see --kills-large)")
    ap.add_argument("--sizes", type=parse_sizes, default=None,
                    help="table sizes, e.g. 1k,100k,1M (the default)")
    ap.add_argument("--quick", action="store_true", help="3 kills, 1k and 100k states")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--advert-ms", type=int, default=10,
                    help="keepalived's VRRPv3 advert interval (10: its fastest)")
    ap.add_argument("--poll-ms", type=int, default=POLL_MS, help="natpair [failover] poll_ms")
    ap.add_argument("--hold-ms", type=int, default=HOLD_MS, help="natpair [failover] hold_ms")
    ap.add_argument("--fill-pps", type=int, default=100_000)
    ap.add_argument("--fill-alone-from", type=lambda t: parse_sizes(t)[0], default=1_000_000,
                    help="from this table size on, the active is filled with its standby out, "
                         "which then joins with one bulk sync (default 1M)")
    ap.add_argument("--kills-large", type=int, default=None,
                    help="kills per size from --fill-alone-from on (default: 3, or --kills "
                         "when that is given; each one is followed by a bulk sync of the "
                         "whole table)")
    ap.add_argument("--sync-timeout", type=float, default=90.0,
                    help="seconds to wait for the standby to hold the table")
    ap.add_argument("--cps-seconds", type=float, default=3.0)
    ap.add_argument("--no-cps", action="store_true")
    ap.add_argument("--png", type=Path, default=DEFAULT_PNG)
    ap.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = ap.parse_args(argv)
    if args.kills_large is None:
        args.kills_large = 3 if args.kills is None else args.kills
    if args.quick:
        args.kills = 3 if args.kills is None else args.kills
        args.sizes = args.sizes or list(QUICK_SIZES)
    args.kills = 10 if args.kills is None else args.kills
    args.sizes = args.sizes or list(DEFAULT_SIZES)
    args.systems = args.systems.split(",")
    for s in args.systems:
        if s not in SYSTEMS:
            ap.error(f"unknown system {s!r} (known: {', '.join(SYSTEMS)})")
    if args.kills < 1 or args.kills_large < 1:
        ap.error("--kills and --kills-large must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes, systems = args.sizes, args.systems
    if os.geteuid() != 0:
        print("bench-failover: needs root (network namespaces): sudo make bench-failover",
              file=sys.stderr)
        return 1
    sys.stdout.reconfigure(line_buffering=True)
    signal.signal(signal.SIGTERM, _sigterm)
    build_connrate()
    build_tool(UDPFILL_SRC, UDPFILL)
    max_states = max(65536, int(max(sizes) * 1.5) + 65536)
    old_max = old_hash = None
    t0 = time.monotonic()
    runs: dict[str, SystemRun] = {}
    try:
        if "incumbent" in systems:
            cur = int(CONNTRACK_MAX.read_text())
            if cur < max_states:
                old_max = cur
                CONNTRACK_MAX.write_text(f"{max_states}\n")
                log(f"nf_conntrack_max {cur} -> {max_states} for the run (put back at the end)")
            # the hash table (one for every namespace) at a quarter of the entries or more,
            # so that 1M states do not make long chains
            cur = int(CONNTRACK_HASHSIZE.read_text())
            if cur < max_states // 4:
                old_hash = cur
                CONNTRACK_HASHSIZE.write_text(f"{max_states // 4}\n")
                log(f"nf_conntrack hashsize {cur} -> {max_states // 4} for the run "
                    "(put back at the end)")
        for system in systems:
            runs[system] = run_system(system, args, sizes, max_states)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        build.down(args.prefix, log=quiet)
        if old_max is not None:
            CONNTRACK_MAX.write_text(f"{old_max}\n")
            log(f"nf_conntrack_max back to {old_max}")
        if old_hash is not None:
            CONNTRACK_HASHSIZE.write_text(f"{old_hash}\n")
            log(f"nf_conntrack hashsize back to {old_hash}")
        log(f"lab {args.prefix}* removed; {time.monotonic() - t0:.0f} s in all")
    print()
    print(f"bench-failover: {args.kills} power cuts of the active per size"
          + (f" ({args.kills_large} at "
             f"{', '.join(size_label(x) for x in sizes if x >= args.fill_alone_from)})"
             if args.kills_large != args.kills and sizes[-1] >= args.fill_alone_from else "")
          + ", "
          f"{TCP_FLOWS} TCP connections + 1 UDP stream (1000 records/s each) per cut; "
          f"1 bulk TCP connection ({BULK_MBIT} Mbit/s); natpair poll {args.poll_ms} / hold "
          f"{args.hold_ms} ms; incumbent = iptables SNAT + conntrackd FTFW + keepalived "
          f"VRRPv3 {args.advert_ms} ms adverts")
    alone = [size_label(x) for x in sizes if x >= args.fill_alone_from]
    print(f"table: real UDP states (scripts/udpfill.c) through the active; "
          + (f"at {', '.join(alone)} filled with the standby out, which then joined with one "
             "bulk sync (counted in the bulk sync row); " if alone else "")
          + f"natpair's units at max_states {max_states}, UDP timeout 3600 s; the "
          f"incumbent's conntrack UDP timeout {incumbent.UDP_TIMEOUT_S} s (so that no "
          "filled state expires during the run)")
    print(table(runs, sizes))
    for name, r in runs.items():
        for size, mem in r.memory.items():
            print(f"memory {name} {size_label(size)}: {fmt_memory(mem)}")
    for name, r in runs.items():
        for size, f in r.filled.items():
            if not f["complete"]:
                print(f"note: {name} {size_label(size)}: the standby held {f['standby']} of "
                      f"{f['active']} states when the kills were due")
        if r.swaps:
            print(f"note: {name}: {r.swaps} rejoin(s) ended with the rejoined unit active (it "
                  "had the table; the other's hellos came late: a false failover)")
        for e in r.errors:
            print(f"note: {name}: {e}")
    png = chart(runs, sizes, args.png)
    print(f"chart: {png}")
    print(f"the units' logs: {LOGS}/<system>/")
    if args.json:
        args.json.write_text(json.dumps({n: asdict(r) for n, r in runs.items()}, indent=1,
                                        default=str) + "\n")
        print(f"figures: {args.json}")
    return 0 if all(not r.errors for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
