"""The continuity picture of a lab run: what the flows saw while the active unit died.

Owns ``Timeline`` (every series on one wall clock, seconds since the epoch) built by
``timeline(...)`` from what the lab's flows print (iperf3 -J with 100 ms intervals, the UDP
stream sink's per-10-ms arrivals from scripts/lab/stream.py, ``ping -D`` lines) and the flow
table of run.py, and ``draw(timeline, path)``, which writes the PNG (matplotlib, Agg):

    left column:  the whole run        right column: +-ZOOM_S around the kill
    row 1  iperf3 TCP throughput (Gbit/s per 100 ms interval)
    row 2  UDP packets received per 10 ms (the sender sends 10)
    row 3  ping RTT (ms), the lost echoes marked on the axis
    below  the flow table: survived, gap, lost, NAT port before -> after

Time 0 is the power cut (red line); the dashed green line is when the survivor answered
ACTIVE on its control socket (polled every 50 ms: an upper bound); each flow's gap at the
kill (the longest silence that touches [kill - 50 ms, kill + 1 s]) is shaded red with its
length; a longer gap elsewhere (a stall of the loaded machine, not of the pair) is shaded
grey and named as such. ``keep_output(popen)`` makes a Popen remember what
``communicate()`` returned, so run.py reads its flows once and hands the same text here;
``drain_output(popen)`` also reads a chatty program's pipes as it runs (ping -D would
otherwise block on a full pipe and bend its own timeline).
"""
from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ZOOM_S = 0.25
PING_RE = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+) .*time=([\d.]+) ms", re.M)


@dataclass
class Timeline:
    kill: float                                   # the power cut began (unix s)
    active: float | None = None                   # the survivor answered ACTIVE
    second_kill: float | None = None              # the kill back (make lab's second power cut)
    tcp: list[tuple[float, float, float]] = field(default_factory=list)  # (start, end, Gbit/s)
    udp: list[tuple[float, int]] = field(default_factory=list)           # (bin start, packets)
    udp_bin_s: float = 0.010
    udp_gaps: list[tuple[float, float]] = field(default_factory=list)    # as the sink measured them
    ping: list[tuple[float, float]] = field(default_factory=list)        # (reply time, rtt ms)
    ping_lost: list[float] = field(default_factory=list)                 # when lost echoes were due
    flows: list[tuple[str, ...]] = field(default_factory=list)           # the report's rows
    title: str = "natpair pair: the active unit power-cut mid-transfer"


def keep_output(p: subprocess.Popen) -> subprocess.Popen:
    """p.communicate() as usual, its (stdout, stderr) also kept as ``p.kept``."""
    original = p.communicate

    def communicate(*args, **kw):
        p.kept = original(*args, **kw)
        return p.kept
    p.kept = (None, None)
    p.communicate = communicate
    return p


def drain_output(p: subprocess.Popen) -> subprocess.Popen:
    """A Popen with text pipes whose output is read as it comes (a thread per pipe: a full
    pipe would stop a chatty program such as ``ping -D`` mid-run and bend its timeline);
    ``communicate(timeout)`` waits for it as usual and returns (stdout, stderr), also kept
    as ``p.kept``."""
    import threading

    chunks: dict[str, list[str]] = {"out": [], "err": []}

    def pump(stream, into):
        for line in iter(stream.readline, ""):
            into.append(line)
        stream.close()

    readers = [threading.Thread(target=pump, args=(stream, chunks[k]), daemon=True)
               for k, stream in (("out", p.stdout), ("err", p.stderr)) if stream is not None]
    for t in readers:
        t.start()

    def communicate(input=None, timeout=None):
        p.wait(timeout=timeout)
        for t in readers:
            t.join(timeout=10)
        p.kept = ("".join(chunks["out"]), "".join(chunks["err"]))
        return p.kept
    p.kept = (None, None)
    p.communicate = communicate
    return p


def iperf_series(text: str | None, started: float) -> list[tuple[float, float, float]]:
    try:
        d = json.loads(text or "")
    except ValueError:
        return []
    return [(started + iv["sum"]["start"], started + iv["sum"]["end"],
             iv["sum"]["bits_per_second"] / 1e9) for iv in d.get("intervals", [])]


def sink_series(text: str | None) -> tuple[list[tuple[float, int]], float, list[tuple]]:
    """(bins, bin width, the largest gaps between two arrivals) from the sink's JSON line."""
    for line in reversed((text or "").strip().splitlines()):
        try:
            tl = json.loads(line).get("timeline") or {}
        except (ValueError, AttributeError):
            continue
        if not tl.get("first_unix"):
            return [], 0.010, []
        b = tl["bin_ms"] / 1000
        return ([(tl["first_unix"] + i * b, c) for i, c in enumerate(tl["counts"])], b,
                [tuple(g) for g in tl.get("gaps_unix") or []])
    return [], 0.010, []


def ping_series(text: str | None) -> tuple[list[tuple[float, float]], list[float]]:
    got = [(float(t), int(seq), float(rtt)) for t, seq, rtt in PING_RE.findall(text or "")]
    if not got:
        return [], []
    by_seq = sorted({s: t for t, s, _ in got}.items())
    lost = []                       # when a lost echo was due: between its received neighbours
    for (sa, ta), (sb, tb) in zip(by_seq, by_seq[1:]):
        lost += [ta + (s - sa) * (tb - ta) / (sb - sa) for s in range(sa + 1, sb)]
    return [(t, rtt) for t, _, rtt in got], lost


def timeline(*, kill: float, active: float | None, tcp_started: float, iperf_json: str | None,
             udp_sink: str | None, ping_text: str | None,
             flows: list[tuple[str, ...]] = ()) -> Timeline:
    udp, bin_s, udp_gaps = sink_series(udp_sink)
    ping, lost = ping_series(ping_text)
    return Timeline(kill=kill, active=active, tcp=iperf_series(iperf_json, tcp_started), udp=udp,
                    udp_bin_s=bin_s, udp_gaps=udp_gaps, ping=ping, ping_lost=lost, flows=list(flows))


def lab_picture(path: str | Path, *, kill: float, active: float | None, tcp_started: float,
                procs: dict, sinks: dict, results: list,
                title: str | None = None, second_kill: float | None = None) -> Path:
    """run.py's hook: its flows' processes (made with keep_output, already read) and its
    FlowResults (flow, survived, gap_ms, lost, port, note) -> the PNG at ``path``."""
    rows = [("flow", "survived", "gap ms", "lost", "NAT port before -> after", "note")] + [
        (r.flow, "yes" if r.survived else "NO", r.gap_ms, r.lost, r.port, r.note) for r in results]
    tl = timeline(kill=kill, active=active, tcp_started=tcp_started,
                  iperf_json=procs["tcp"].kept[0], udp_sink=sinks["udp"].kept[0],
                  ping_text=procs["ping"].kept[0], flows=rows)
    if title:
        tl.title = title
    tl.second_kill = second_kill
    return draw(tl, path)


# ---- the gaps ----

def empty_runs(points: list[tuple[float, float]], width: float) -> list[tuple[float, float]]:
    """The runs of zero values in evenly spaced bins: [(start, end)] in s."""
    if not points:
        return []
    runs, run_start = [], None
    for t, v in list(points) + [(points[-1][0] + width, 1)]:     # a last bin ends a run
        if v == 0 and run_start is None:
            run_start = t
        elif v != 0 and run_start is not None:
            runs.append((run_start, t))
            run_start = None
    return runs


def silences(times: list[float]) -> list[tuple[float, float]]:
    return list(zip(times, times[1:]))


KILL_WINDOW_S = (-0.05, 1.0)


def gap_at_kill(spans: list[tuple[float, float]], kill: float) -> tuple[float, float] | None:
    """The longest span that touches [kill - 50 ms, kill + 1 s]: the gap the kill made (on a
    loaded machine a longer one elsewhere is a stall of the machine, not of the pair)."""
    near = [(a, b) for a, b in spans if b >= kill + KILL_WINDOW_S[0] and a <= kill + KILL_WINDOW_S[1]]
    return max(near, key=lambda ab: ab[1] - ab[0], default=None)


def longest(spans: list[tuple[float, float]]) -> tuple[float, float] | None:
    return max(spans, key=lambda ab: ab[1] - ab[0], default=None)


# ---- drawing ----

def draw(tl: Timeline, path: str | Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig = plt.figure(figsize=(14, 10.5), dpi=100)
    grid = fig.add_gridspec(4, 2, height_ratios=[1, 1, 1, 0.8], width_ratios=[1.6, 1],
                            hspace=0.45, wspace=0.18)
    rel = lambda t: t - tl.kill                               # noqa: E731
    tcp_spans = (empty_runs([(a, g) for a, _, g in tl.tcp], tl.tcp[1][0] - tl.tcp[0][0])
                 if len(tl.tcp) > 1 else [])
    udp_spans = tl.udp_gaps or empty_runs(tl.udp, tl.udp_bin_s)
    ping_spans = silences([t for t, _ in tl.ping])
    rows = [("iperf3 TCP throughput (100 ms intervals)", "Gbit/s / 100 ms", tcp_spans),
            ("UDP stream: packets received per 10 ms", "packets", udp_spans),
            ("ping every 10 ms: RTT", "ms", ping_spans)]
    for col, zoom in ((0, False), (1, True)):
        for row, (name, unit, spans) in enumerate(rows):
            gap, worst = gap_at_kill(spans, tl.kill), longest(spans)
            gap2 = None if tl.second_kill is None else gap_at_kill(spans, tl.second_kill)
            ax = fig.add_subplot(grid[row, col])
            if row == 0 and tl.tcp:
                ax.step([rel(a) for a, _, _ in tl.tcp], [g for _, _, g in tl.tcp], where="post",
                        color="tab:blue", lw=1.2)
            elif row == 1 and tl.udp:
                ax.step([rel(t) for t, _ in tl.udp], [c for _, c in tl.udp], where="post",
                        color="tab:purple", lw=0.9)
            elif row == 2 and tl.ping:
                ax.plot([rel(t) for t, _ in tl.ping], [r for _, r in tl.ping], ".", ms=2.5,
                        color="tab:orange")
                if tl.ping_lost:
                    ax.plot([rel(t) for t in tl.ping_lost], [0] * len(tl.ping_lost), "x",
                            color="red", ms=6, label="lost echo", clip_on=False)
                    ax.legend(loc="upper right", fontsize=7)
            ax.axvline(0, color="red", lw=1.4)
            if tl.active is not None:
                ax.axvline(rel(tl.active), color="green", lw=1, ls="--")
            if tl.second_kill is not None and not zoom:
                ax.axvline(rel(tl.second_kill), color="red", lw=1.4)
                if gap2 is not None:
                    ms = (gap2[1] - gap2[0]) * 1000
                    ax.axvspan(rel(gap2[0]), rel(gap2[1]), color="red", alpha=0.18)
                    ax.text(rel(gap2[1]), 0.62, f" gap at the 2nd kill {ms:.0f} ms",
                            transform=ax.get_xaxis_transform(), fontsize=8, color="darkred")
            if worst is not None and worst != gap and worst != gap2 and not zoom:
                ms = (worst[1] - worst[0]) * 1000
                ax.axvspan(rel(worst[0]), rel(worst[1]), color="grey", alpha=0.3)
                ax.text(0.99, 0.96, f"grey: longest gap {ms:.0f} ms at {rel(worst[0]):+.2f} s, "
                        f"not the kill (a stall)", transform=ax.transAxes, ha="right", va="top",
                        fontsize=7, color="dimgrey")
            if gap is not None:
                ms = (gap[1] - gap[0]) * 1000
                ax.axvspan(rel(gap[0]), rel(gap[1]), color="red", alpha=0.18)
                ax.annotate(f"gap at the kill {ms:.0f} ms", xy=(rel(gap[1]), 0), xycoords=("data", "axes fraction"),
                            xytext=(6, 0.78 if not zoom else 0.6), textcoords=("offset points",
                                                                             "axes fraction"),
                            fontsize=8, color="darkred",
                            arrowprops=dict(arrowstyle="-", color="darkred", lw=0.6))
            if zoom:
                ax.set_xlim(-ZOOM_S, ZOOM_S)
            ax.set_ylim(bottom=0)
            ax.set_ylabel(unit, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ax.set_title(f"zoom: +-{ZOOM_S * 1000:.0f} ms around the kill" if zoom else name, fontsize=9)
            if row == 2:
                ax.set_xlabel("seconds since the power cut of the active unit", fontsize=8)
            if row == 0 and not zoom:
                ax.text(0, 0.05, " power cut", color="red", fontsize=8, transform=ax.get_xaxis_transform())
                if tl.active is not None:
                    ax.text(rel(tl.active), 0.15, f" survivor ACTIVE (+{(tl.active - tl.kill) * 1000:.0f} ms,"
                            " polled)", color="green", fontsize=7, transform=ax.get_xaxis_transform())
    tab = fig.add_subplot(grid[3, :])
    tab.axis("off")
    if tl.flows:
        t = tab.table(cellText=[list(r) for r in tl.flows[1:]], colLabels=list(tl.flows[0]),
                      loc="center", cellLoc="left", colLoc="left")
        t.auto_set_font_size(False)
        t.set_fontsize(8)
        t.scale(1, 1.3)
        tab.text(0, 1.0, "gap ms in the table: udp and tcp-seq, the silence at each kill (- : the "
                 "flow was over); tcp and ping, the longest gap anywhere in the run",
                 transform=tab.transAxes, fontsize=7, color="dimgrey", va="bottom")
    fig.suptitle(tl.title, fontsize=12)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
