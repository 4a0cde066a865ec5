"""`sudo make bench-unit`: one unit (fw-a) against the kernel, in one run, in the lab topology.

Builds its own lab (scripts/lab/, prefix "npb-" unless --prefix), and always takes it down at
the end, also on an error, Ctrl-C or SIGTERM. Flows go from in-host to out-srv through fw-a in
four modes, each set up and undone in turn:

    forward      plain kernel forwarding: no NAT, no rules; out-srv gets a route back to the
                 inside net for this mode only
    kernel-nat   iptables SNAT to the NAT address (so conntrack) in fw-a's namespace only;
                 afterwards the nat table is deleted and conntrack flushed
    natpair-c    the natpair daemon, [feed] kind = "c"      (scripts/lab/unit.start_unit)
    natpair-nfq  the natpair daemon, [feed] kind = "netfilterqueue"

Tests, per mode:

    tcp1    iperf3 TCP, 1 stream            Gbit/s received at out-srv
    tcp4    iperf3 TCP, 4 streams (-P 4)    Gbit/s received at out-srv
    udp64   iperf3 UDP -l 64 -b 0           packets/s RECEIVED at out-srv
    cps     new TCP connections/s: scripts/connrate.c, built here into .build/connrate with gcc;
            a client with --cps-threads threads doing connect / read the FIN / close in a loop,
            against a server on out-srv that accepts and closes at once (C, 2 threads)

The modes are interleaved (rounds of forward, kernel-nat, natpair-c, natpair-nfq), and the
table shows the median of the rounds (min..max when they differ by more than 10 %) and every
ratio to kernel-nat. Checksum errors (TCP/UDP InCsumErrors of in-host and out-srv) are read
before and after each mode: a translated packet the kernel finds broken shows there. The machine
is shared: other load moves every figure, which is why the modes are interleaved.

CPU: for every test the CPU time (user + system) of the processes that carry the flow is read
around it: the client (iperf3 / connrate, a child: its rusage), the servers on out-srv and, in the
natpair modes, the daemon (all its threads) (/proc/PID/stat). The second table divides each
figure by that CPU time (per CPU-second) and gives the ratio to kernel-nat: on a loaded 2-core
machine, where every mode gets about the same CPU share, throughput follows this efficiency,
and it moves much less with other load than the raw figures. Kernel work done in softirq while
another process happens to run is not counted (the same for every mode).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from pyroute2 import IPRoute

from scripts.lab import build, nsexec
from scripts.lab.topology import (FW_A, HOST, INSIDE_NET, NAT_ADDR, OUTSIDE_LEG, SERVER,
                                  SERVER_ADDR, Topology, lab)
from scripts.lab.unit import start_unit

REPO = Path(__file__).resolve().parents[1]
CONNRATE_SRC = REPO / "scripts" / "connrate.c"
CONNRATE = REPO / ".build" / "connrate"
IPERF_PORT = 5201
CPS_PORT = 8081
MODES = ("forward", "kernel-nat", "natpair-c", "natpair-nfq")
TESTS = ("tcp1", "tcp4", "udp64", "cps")
UNITS = {"tcp1": "Gbit/s", "tcp4": "Gbit/s", "udp64": "pkt/s", "cps": "conn/s"}
BASE = "kernel-nat"
TARGETS = (("natpair-c", "tcp1", 0.8), ("natpair-c", "udp64", 0.9))
FW_A_ROUTER = "198.19.1.2"         # fw-a out0 (topology.py), out-srv's way back in forward mode


class BenchError(RuntimeError):
    pass


def _cpu_s(pid: int) -> float:
    """utime + stime of process `pid` (all its threads), in seconds; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def flow_cpu_s(pids: list[int]) -> float:
    """CPU seconds used so far by our reaped children (the clients) and by `pids`."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime + sum(_cpu_s(p) for p in pids)


def log(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


def build_connrate() -> Path:
    CONNRATE.parent.mkdir(parents=True, exist_ok=True)
    if not CONNRATE.exists() or CONNRATE.stat().st_mtime < CONNRATE_SRC.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-pthread", str(CONNRATE_SRC), "-o",
                        str(CONNRATE)], check=True)
    return CONNRATE


# ---- measurements --------------------------------------------------------------------------

def _iperf(topo: Topology, extra: list[str], seconds: float) -> dict:
    argv = ["iperf3", "-c", SERVER_ADDR, "-p", str(IPERF_PORT), "-J", "--connect-timeout",
            "3000", "-t", f"{seconds:g}", *extra]
    try:
        r = nsexec.run(topo.ns(HOST), argv, timeout=seconds + 20)
    except subprocess.TimeoutExpired:
        raise BenchError("iperf3 timed out") from None
    try:
        data = json.loads(r.stdout)
    except ValueError:
        raise BenchError(f"iperf3 exit {r.returncode}: {(r.stderr or r.stdout)[-200:]}") from None
    if "error" in data:
        raise BenchError(f"iperf3: {data['error']}")
    return data


def tcp(topo: Topology, seconds: float, streams: int) -> float:
    d = _iperf(topo, ["-P", str(streams)], seconds)
    return d["end"]["sum_received"]["bits_per_second"] / 1e9


def udp64(topo: Topology, seconds: float) -> float:
    d = _iperf(topo, ["-u", "-l", "64", "-b", "0"], seconds)
    s = d["end"]["sum_received"]              # the server's count, sent back to the client
    return s["bytes"] / 64 / s["seconds"] if s["seconds"] else 0.0


def cps(topo: Topology, seconds: float, threads: int) -> tuple[float, int]:
    argv = [str(CONNRATE), "client", SERVER_ADDR, str(CPS_PORT), str(threads), f"{seconds:g}"]
    try:
        r = nsexec.run(topo.ns(HOST), argv, timeout=seconds + 10)
    except subprocess.TimeoutExpired:
        raise BenchError("connrate timed out") from None
    m = re.search(r"connections (\d+) errors (\d+) seconds ([\d.]+)", r.stdout)
    if not m:
        raise BenchError(f"connrate: {(r.stderr or r.stdout)[-200:]}")
    return int(m[1]) / float(m[3]), int(m[2])


def csum_errors(topo: Topology) -> int:
    """TCP and UDP InCsumErrors of in-host and out-srv, summed."""
    total = 0
    for node in (HOST, SERVER):
        text = nsexec.run(topo.ns(node), ["cat", "/proc/net/snmp"], timeout=5).stdout
        rows = [ln.split() for ln in text.splitlines()]
        for i in range(0, len(rows) - 1, 2):
            head, vals = rows[i], rows[i + 1]
            if head and head[0] in ("Tcp:", "Udp:") and "InCsumErrors" in head:
                total += int(vals[head.index("InCsumErrors")])
    return total


# ---- modes ---------------------------------------------------------------------------------

@contextmanager
def mode_forward(topo: Topology):
    with IPRoute(netns=topo.ns(SERVER), flags=0) as ipr:
        ipr.route("add", dst=INSIDE_NET, gateway=FW_A_ROUTER)
    try:
        yield {}
    finally:
        with IPRoute(netns=topo.ns(SERVER), flags=0) as ipr:
            ipr.route("del", dst=INSIDE_NET, gateway=FW_A_ROUTER)


SNAT_RULE = ["POSTROUTING", "-s", INSIDE_NET, "-o", OUTSIDE_LEG, "-j", "SNAT",
             "--to-source", NAT_ADDR]


@contextmanager
def mode_kernel_nat(topo: Topology):
    ns = topo.ns(FW_A)
    nsexec.run(ns, ["iptables", "-t", "nat", "-A", *SNAT_RULE], timeout=10, check=True)
    try:
        yield {}
    finally:
        nsexec.run(ns, ["iptables", "-t", "nat", "-D", *SNAT_RULE], timeout=10)
        # the nat table's hooks keep conntrack on in fw-a: delete it (iptables-nft), and forget
        # the connections, so the next forward round is plain forwarding again
        nsexec.run(ns, ["nft", "delete", "table", "ip", "nat"], timeout=10)
        nsexec.run(ns, [sys.executable, "-c",
                        "from pyroute2 import Conntrack; Conntrack().flush()"], timeout=10)


@contextmanager
def mode_natpair(topo: Topology, feed: str, batch: int | None, drain_us: int | None):
    unit = start_unit(topo, FW_A, feed=feed, log=lambda m: None, batch=batch, drain_us=drain_us)
    info: dict = {"pid": unit.proc.pid}
    try:
        yield info
    finally:
        try:
            from dataplane.daemon import request
            c = request(str(build.run_dir(topo.prefix) / f"{FW_A}.sock"), "counters")
            feedc, core = c.get("feed", {}), c.get("core", {})
            info["kernel_queue_dropped"] = feedc.get("kernel_queue_dropped")
            info["kernel_user_dropped"] = feedc.get("kernel_user_dropped")
            info["core_drops"] = {k: v for k, v in core.items() if k.startswith("drop_") and v}
        except Exception as e:            # the figures are what matter; say why this is missing
            info["counters_error"] = str(e)
        unit.proc.send_signal(signal.SIGTERM)
        try:
            unit.proc.wait(10)
        except subprocess.TimeoutExpired:
            unit.proc.kill()
            unit.proc.wait(5)
            raise BenchError("natpair daemon did not stop on SIGTERM")


def mode(topo: Topology, name: str, args):
    if name == "forward":
        return mode_forward(topo)
    if name == "kernel-nat":
        return mode_kernel_nat(topo)
    return mode_natpair(topo, "c" if name == "natpair-c" else "netfilterqueue", args.batch,
                        args.drain_us)


def run_mode(topo: Topology, name: str, args) -> dict:
    res: dict = {}
    before = csum_errors(topo)
    with mode(topo, name, args) as info:
        pids = list(args.server_pids) + ([info["pid"]] if "pid" in info else [])
        for test in args.tests:
            cpu0, t0 = flow_cpu_s(pids), time.monotonic()
            try:
                if test == "tcp1":
                    res[test] = tcp(topo, args.seconds, 1)
                elif test == "tcp4":
                    res[test] = tcp(topo, args.seconds, 4)
                elif test == "udp64":
                    res[test] = udp64(topo, args.seconds)
                else:
                    res[test], res["cps_errors"] = cps(topo, args.cps_seconds, args.cps_threads)
            except BenchError as e:
                res[test] = None
                res.setdefault("errors", []).append(f"{test}: {e}")
            # CPU-seconds per second of the test: how many of the 2 cores the flow got
            res[f"{test}_cpu"] = (flow_cpu_s(pids) - cpu0) / (time.monotonic() - t0)
            time.sleep(0.3)                   # let queues drain between tests
    res["csum_errors"] = csum_errors(topo) - before
    info.pop("pid", None)
    res.update(info)
    return res


# ---- report --------------------------------------------------------------------------------

def _fmt(test: str, v: float | None) -> str:
    if v is None:
        return "failed"
    if test in ("tcp1", "tcp4"):
        return f"{v:.2f}"
    return f"{v / 1000:.1f}k"


def median(vals: list) -> float | None:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def table(runs: dict[str, list[dict]], tests: list[str]) -> str:
    med = {m: {t: median([r.get(t) for r in runs[m]]) for t in tests} for m in runs}
    heads = [f"{t} {UNITS[t]}" for t in tests]
    w = 31
    lines = ["mode         " + "".join(f"{h:>{w}}" for h in heads) + "   csum err"]
    for m in runs:
        cells = []
        for t in tests:
            v, b = med[m][t], med.get(BASE, {}).get(t)
            vals = [r.get(t) for r in runs[m] if r.get(t) is not None]
            spread = ""
            if len(vals) > 1 and min(vals) > 0 and max(vals) / min(vals) > 1.10:
                spread = f" [{_fmt(t, min(vals))}..{_fmt(t, max(vals))}]"
            ratio = f" {v / b:.2f}x" if v is not None and b else ""
            cells.append(f"{_fmt(t, v)}{ratio}{spread}")
        # each cell: median, ratio to kernel-nat, [min..max] when the rounds differ > 10 %
        line = f"{m:<13}" + "".join(f"{c:>{w}}" for c in cells)
        line += f"   {sum(r.get('csum_errors', 0) for r in runs[m])}"
        lines.append(line)
    lines.append(f"(median of {max(len(v) for v in runs.values())} rounds; ratio = to {BASE}; "
                 "[min..max] when rounds differ by >10 %)")
    for m, t, want in TARGETS:
        v, b = med.get(m, {}).get(t), med.get(BASE, {}).get(t)
        if v is None or not b:
            continue
        got = v / b
        lines.append(f"target {m} {t} >= {want:.1f}x {BASE}: {got:.2f}x "
                     f"{'MET' if got >= want else 'NOT MET'}")
    return "\n".join(lines)


def efficiency_table(runs: dict[str, list[dict]], tests: list[str]) -> str:
    """Each figure per CPU-second of the flow's processes (median over rounds), ratio to BASE,
    and the CPUs the flow got (median)."""
    def per_cpu(r: dict, t: str) -> float | None:
        v, c = r.get(t), r.get(f"{t}_cpu")
        return v / c if v and c else None
    eff = {m: {t: median([per_cpu(r, t) for r in runs[m]]) for t in tests} for m in runs}
    cpus = {m: {t: median([r.get(f"{t}_cpu") for r in runs[m]]) for t in tests} for m in runs}
    w = 31
    lines = ["per CPU-s    " + "".join(f"{t + ' ' + UNITS[t] + '/CPU-s, CPUs':>{w}}" for t in tests)]
    for m in runs:
        cells = []
        for t in tests:
            v, b, c = eff[m][t], eff.get(BASE, {}).get(t), cpus[m][t]
            if v is None:
                cells.append("-")
                continue
            ratio = f" {v / b:.2f}x" if b else ""
            cells.append(f"{_fmt(t, v)}{ratio} {c:.2f}")
        lines.append(f"{m:<13}" + "".join(f"{c:>{w}}" for c in cells))
    lines.append("(per CPU-second of client + servers + natpair daemon; median of rounds; "
                 f"ratio = to {BASE}; last: CPUs the flow got, median)")
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------------

_MAIN_PID = os.getpid()


def _sigterm(signum, frame):
    # pyroute2 forks helpers (IPRoute(netns=...)) and ends them with SIGTERM: they inherit this
    # handler, and must die as they would by default, not unwind into our cleanup
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts.bench_unit", description=__doc__.split("\n")[0])
    ap.add_argument("--prefix", default="npb-")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0, help="per iperf3 test")
    ap.add_argument("--cps-seconds", type=float, default=3.0)
    ap.add_argument("--cps-threads", type=int, default=4)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--tests", default=",".join(TESTS))
    ap.add_argument("--batch", type=int, default=None, help="natpair [feed] batch (default: "
                    "the daemon's)")
    ap.add_argument("--drain-us", type=int, default=None, help="natpair [feed] drain_us "
                    "(default: the daemon's)")
    ap.add_argument("--json", help="also write every round's figures here")
    args = ap.parse_args(argv)
    args.modes, args.tests = args.modes.split(","), args.tests.split(",")
    for m in args.modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r} (known: {', '.join(MODES)})")
    for t in args.tests:
        if t not in TESTS:
            ap.error(f"unknown test {t!r} (known: {', '.join(TESTS)})")
    if os.geteuid() != 0:
        print("bench-unit: needs root (network namespaces): sudo make bench-unit", file=sys.stderr)
        return 1
    sys.stdout.reconfigure(line_buffering=True)
    signal.signal(signal.SIGTERM, _sigterm)
    build_connrate()
    t0 = time.monotonic()
    log(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if build.down(args.prefix, log=log):
        log(f"took down a previous lab under {args.prefix!r}")
    topo = lab(args.prefix)
    runs: dict[str, list[dict]] = {m: [] for m in args.modes}
    args.server_pids = []
    try:
        build.up(topo, log=log)
        nsexec.sysctl(topo.ns(HOST), "net.ipv4.ip_local_port_range", "1024 65535")
        rdir = build.run_dir(topo.prefix)
        rdir.mkdir(parents=True, exist_ok=True)
        for argv_ in (["iperf3", "-s", "-B", SERVER_ADDR, "-p", str(IPERF_PORT)],
                      [str(CONNRATE), "server", SERVER_ADDR, str(CPS_PORT), "2"]):
            args.server_pids.append(nsexec.popen(
                topo.ns(SERVER), argv_, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True).pid)
        time.sleep(0.5)                   # both listen within a few ms; down() kills them
        for rnd in range(args.rounds):
            for m in args.modes:
                t1 = time.monotonic()
                res = run_mode(topo, m, args)
                runs[m].append(res)
                figs = " ".join(f"{t}={_fmt(t, res.get(t))}/{res.get(t + '_cpu', 0):.2f}CPU"
                                for t in args.tests)
                extra = {k: v for k, v in res.items()
                         if k not in args.tests and not k.endswith("_cpu") and v}
                log(f"round {rnd + 1} {m:<11} {figs}  {extra or ''} "
                    f"({time.monotonic() - t1:.0f} s)")
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        build.down(args.prefix, log=lambda m: None)
        log(f"lab {args.prefix}* removed; {time.monotonic() - t0:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")
    print()
    print(table(runs, args.tests))
    print()
    print(efficiency_table(runs, args.tests))
    log(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
