"""Where the milliseconds of a failover go: a measured timeline of each kill of the active unit.

    python -m scripts.lab.timeline [--prefix tl-] [--kills 5] [--pps 2000] [--poll-ms 5] [--hold-ms 20]

Builds its own lab under --prefix (scripts/lab/topology.py), starts the pair (fw-a active, fw-b
standby-ready), and --kills times: a sequenced UDP stream from in-host to out-srv at --pps
(scripts/lab/stream.py send; each record carries its send time), received by ``recv`` below,
which stamps every arrival; after PRE_S the active is power-cut (build.power_cut with
links_first, as bench-failover does) and the dead unit rejoins afterwards. The lab is taken
down at the end, also on error or Ctrl-C.

Every time is CLOCK_MONOTONIC, one clock for every namespace of the machine, so the receiver's
stamps, the cut and the survivor's log fields line up (dataplane/daemon.py's takeover lines:
``at_us`` = a step's start, ``took_us``; core_active's ``last_heard_ms`` = the survivor's last
hello from the dead unit, on any path, as the beat process stamped it). Per kill, in ms from the
last UDP packet the receiver got before the gap (``rx_last``):

    cut0 / cut1      the power cut began / was done (SIGSTOP, links down, SIGKILL, netns gone)
    heard            the survivor's last hello from the dead unit
    decide           the detector's verdict: the role's takeover began (core_active's start)
    core             core_active done (journal on)
    vmac garp neigh addr
                     add_addresses' steps done: virtual MACs on the legs, one round of
                     gratuitous ARP, the neighbour entries the MAC change flushed written back,
                     the virtual addresses added (dataplane/vips.py add_timings)
    announce         the announce step done (the takeover's last step)
    first_sent       when the first packet after the gap was sent (in-host's clock: the same)
    woke             the survivor's feed thread out of its wait (with the GIL) for that batch
    verdict          the survivor's feed returned the first batch after the takeover began
                     (then logged: its line comes when the GIL lets it, after the packets left)
    rx_first         the first UDP packet after the gap at the receiver (= the gap); its send
                     time (``first_sent``) says whether it waited somewhere on the way

then the medians over the kills, and the same as the spans between them: detection
(heard -> decide, the hold time plus the loop's wake), takeover (decide -> announce),
to_verdict (decide -> verdict), to_receiver (verdict -> rx_first).

``recv`` (run inside out-srv): ``python -m scripts.lab.timeline recv --bind A --port P --seconds S``
prints "ready", then one JSON line: received, lost, and the packets on both sides of the largest
gap (seq, sent_us, rx_us).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REC_SIZE = 16
PRE_S, POST_S = 1.0, 1.5
UDP_PORT = 9100
GAP_MIN_MS = 3.0
AFTER_SHOWN = 5
STEPS = ("cut0", "cut1", "heard", "decide", "core", "vmac", "garp", "neigh", "addr", "announce",
         "first_sent", "woke", "verdict", "rx_first")
SPANS = (("detection", "heard", "decide"), ("takeover", "decide", "announce"),
         ("to_vmac", "decide", "vmac"), ("to_verdict", "decide", "verdict"),
         ("to_receiver", "verdict", "rx_first"), ("vmac_to_rx", "vmac", "rx_first"),
         ("sent_to_woke", "first_sent", "woke"),
         ("gap", "rx_last", "rx_first"))
FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


# ---- the receiver (inside out-srv) -----------------------------------------------------------

def recv(bind: str, port: int, seconds: float) -> dict:
    """Every record's (seq, sent ns, arrival ns); the largest gap's two sides."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((bind, port))
    print("ready", flush=True)
    got: list[tuple[int, int, int]] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            data = s.recv(2048)
        except socket.timeout:
            break
        now = time.monotonic_ns()
        if len(data) >= REC_SIZE:
            seq, sent = int.from_bytes(data[:8], "big"), int.from_bytes(data[8:16], "big")
            got.append((seq, sent, now))
    s.close()
    out: dict = {"received": len(got), "lost": (got[-1][0] + 1 - len(got)) if got else 0,
                 "gaps": []}
    side = lambda r: {"seq": r[0], "sent_us": r[1] // 1000, "rx_us": r[2] // 1000}  # noqa: E731
    lat = sorted(r[2] - r[1] for r in got)
    out["latency_us"] = lat[len(lat) // 2] // 1000 if lat else None
    # every silence longer than GAP_MIN_MS with its two sides and the packets right after
    # (the caller picks the kill's: on a loaded machine the largest is not always it)
    for j in range(1, len(got)):
        if got[j][2] - got[j - 1][2] >= GAP_MIN_MS * 1_000_000:
            out["gaps"].append({"before": side(got[j - 1]), "after": side(got[j]),
                                "next": [side(r) for r in got[j + 1:j + 1 + AFTER_SHOWN]]})
    return out


# ---- one kill ----------------------------------------------------------------------------------

def takeover_fields(log_text: str) -> dict[str, dict[str, str]]:
    """The last takeover line of each step in a unit's log: step -> its key=value fields."""
    steps: dict[str, dict[str, str]] = {}
    for line in log_text.splitlines():
        if " takeover step=" not in line:
            continue
        kv = {k: v.strip('"') for k, v in FIELD.findall(line)}
        steps[kv.get("step", "?")] = kv
    return steps


def timeline(rx: dict, cut0_us: int, cut1_us: int, steps: dict[str, dict[str, str]]) -> dict:
    """One kill's times, ms from the last packet before the gap (None: not seen)."""
    base = rx["before"]["rx_us"]
    t: dict[str, float | None] = dict.fromkeys(STEPS)
    ms = lambda us: round((us - base) / 1000, 2)  # noqa: E731
    t["rx_last"] = 0.0
    t["cut0"], t["cut1"] = ms(cut0_us), ms(cut1_us)
    t["rx_first"], t["first_sent"] = ms(rx["after"]["rx_us"]), ms(rx["after"]["sent_us"])
    core = steps.get("core_active")
    if core:
        at = int(core["at_us"])
        t["decide"], t["core"] = ms(at), ms(at + int(core["took_us"]))
        if int(core.get("last_heard_ms", -1)) >= 0:
            t["heard"] = ms(int(core["last_heard_ms"]) * 1000)
    add = steps.get("add_addresses")
    if add:
        at = int(add["at_us"])
        for k in ("vmac", "garp", "neigh", "addr"):
            if f"{k}_us" in add:
                at += int(add[f"{k}_us"])
                t[k] = ms(at)
    ann = steps.get("announce")
    if ann:
        t["announce"] = ms(int(ann["at_us"]) + int(ann["took_us"]))
    first = steps.get("first_packet")
    if first:
        t["verdict"] = ms(int(first["at_us"]))
        if "woke_us" in first:
            t["woke"] = ms(int(first["woke_us"]))
    t["lost"] = rx["after"]["seq"] - rx["before"]["seq"] - 1
    t["next"] = [(ms(r["sent_us"]), ms(r["rx_us"])) for r in rx.get("next", [])]
    return t


def spans(t: dict) -> dict[str, float | None]:
    return {name: (None if t.get(a) is None or t.get(b) is None else round(t[b] - t[a], 2))
            for name, a, b in SPANS}


def medians(rows: list[dict], keys) -> dict[str, float | None]:
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = round(statistics.median(vals), 2) if vals else None
    return out


def fmt_row(label: str, values: dict, keys) -> str:
    return f"{label:>8} " + " ".join(f"{'-' if values.get(k) is None else values[k]:>9}"
                                     for k in keys)


def one_kill(topo, pps: int, timers: dict, log=print) -> tuple[dict, str, str]:
    """Stream, cut, wait for the survivor: (timeline, dead, survivor)."""
    from scripts.lab import build, nsexec
    from scripts.lab import run as labrun
    from scripts.lab.topology import HOST, SERVER, SERVER_ADDR, UNITS
    from scripts.lab.unit import wait_role

    dead = labrun.active_unit(topo)
    if dead is None:
        raise RuntimeError("no unit is active")
    survivor = next(u for u in UNITS if u != dead)
    wait_role(topo, survivor, ("STANDBY_READY",), timeout_s=60)
    logf = build.run_dir(topo.prefix) / f"{survivor}.log"
    since = logf.stat().st_size
    seconds = PRE_S + POST_S
    py = [sys.executable, "-m"]
    sink = nsexec.popen(topo.ns(SERVER), py + ["scripts.lab.timeline", "recv", "--bind", SERVER_ADDR,
                                               "--port", str(UDP_PORT), "--seconds", str(seconds + 3)],
                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True, cwd=str(REPO))
    try:
        if (line := sink.stdout.readline().strip()) != "ready":
            raise RuntimeError(f"receiver: {line or sink.stderr.read()[-300:]}")
        sender = nsexec.popen(topo.ns(HOST), py + ["scripts.lab.stream", "send", "--proto", "udp",
                                                   "--to", SERVER_ADDR, "--port", str(UDP_PORT),
                                                   "--pps", str(pps), "--seconds", str(seconds)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=str(REPO))
        time.sleep(PRE_S)
        cut0 = time.monotonic_ns() // 1000
        build.power_cut([topo.ns(dead)], log=lambda *_: None, links_first=True)
        cut1 = time.monotonic_ns() // 1000
        wait_role(topo, survivor, ("ACTIVE",), timeout_s=10)
        sender.communicate(timeout=seconds + 30)
        out, err = sink.communicate(timeout=seconds + 30)
    finally:
        for p in (sink,):
            if p.poll() is None:
                p.kill()
    rx = json.loads(out.strip().splitlines()[-1])
    with open(logf, errors="replace") as f:
        f.seek(since)
        steps = takeover_fields(f.read())
    gap = kill_gap(rx["gaps"], steps)
    if gap is None:
        raise RuntimeError(f"receiver saw no gap around the takeover: {rx} {err[-300:]}")
    t = timeline(gap, cut0, cut1, steps)
    t["latency"] = round(rx["latency_us"] / 1000, 2)
    return t, dead, survivor


def kill_gap(gaps: list[dict], steps: dict[str, dict[str, str]]) -> dict | None:
    """The receiver's silence that the takeover ended: the one around the takeover's start."""
    core = steps.get("core_active")
    if core is None:
        return max(gaps, key=lambda g: g["after"]["rx_us"] - g["before"]["rx_us"], default=None)
    at = int(core["at_us"])
    return next((g for g in gaps if g["before"]["rx_us"] <= at <= g["after"]["rx_us"]), None)


REPO = Path(__file__).resolve().parents[2]


def run(prefix: str, kills: int, pps: int, timers: dict, log=print) -> list[dict]:
    from scripts.lab import build
    from scripts.lab import run as labrun
    from scripts.lab.topology import lab

    build.down(prefix, log=lambda *_: None)
    topo = lab(prefix)
    rows: list[dict] = []
    try:
        build.up(topo, log=lambda *_: None)
        labrun.start_pair(topo, "c", log=lambda *_: None, **timers)
        for i in range(kills):
            t, dead, survivor = one_kill(topo, pps, timers, log)
            t.update(spans(t))
            rows.append(t)
            log(f"kill {i + 1}/{kills}: {dead} cut, {survivor} took over; gap {t['gap']} ms, "
                f"lost {t['lost']}, latency before {t['latency']} ms; "
                + " ".join(f"{k}={t[k]}" for k in STEPS) + f"; next (sent, rx): {t['next']}")
            labrun.rejoin(topo, dead, log=lambda *_: None, **timers)
    finally:
        build.down(prefix, log=lambda *_: None)
    return rows


def report(rows: list[dict]) -> str:
    keys = ("rx_last",) + STEPS + ("lost", "latency")
    span_keys = [s for s, _, _ in SPANS]
    lines = [fmt_row("ms", {k: k for k in keys}, keys)]
    lines += [fmt_row(f"kill {i + 1}", r, keys) for i, r in enumerate(rows)]
    lines.append(fmt_row("median", medians(rows, keys), keys))
    lines.append("")
    lines.append(fmt_row("span ms", {k: k for k in span_keys}, span_keys))
    lines += [fmt_row(f"kill {i + 1}", r, span_keys) for i, r in enumerate(rows)]
    lines.append(fmt_row("median", medians(rows, span_keys), span_keys))
    return "\n".join(lines)


_MAIN_PID = os.getpid()


def _sigterm(signum, frame):
    if os.getpid() != _MAIN_PID:          # pyroute2's forked helpers: die as by default
        os._exit(128 + signum)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    from scripts.lab.unit import HOLD_MS, POLL_MS

    ap = argparse.ArgumentParser(prog="scripts.lab.timeline", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode")
    r = sub.add_parser("recv", help="the receiver (inside out-srv)")
    r.add_argument("--bind", required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--prefix", default="tl-", help="namespace prefix of the lab (default tl-)")
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--pps", type=int, default=2000, help="UDP records per second (default 2000)")
    ap.add_argument("--poll-ms", type=int, default=POLL_MS)
    ap.add_argument("--hold-ms", type=int, default=HOLD_MS)
    ap.add_argument("--json", type=Path, default=None, help="also write every kill's times here")
    a = ap.parse_args(argv)
    if a.mode == "recv":
        print(json.dumps(recv(a.bind, a.port, a.seconds)), flush=True)
        return 0
    signal.signal(signal.SIGTERM, _sigterm)
    rows = run(a.prefix, a.kills, a.pps, {"poll_ms": a.poll_ms, "hold_ms": a.hold_ms})
    print(report(rows), flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
