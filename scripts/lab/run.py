"""`sudo make lab`: take down a previous lab, build the lab (topology.py), start fw-a and fw-b
as a pair (unit.start_unit with [failover]: fw-a active, fw-b standby), wait until fw-b is
standby-ready, push traffic from in-host to out-srv through the pair, kill the active unit like
a power cut in the middle (build.power_cut: SIGSTOP, SIGKILL, links down, namespace deleted),
bring it back (`rejoin`: build.power_on, its daemon started, standby-ready after a bulk sync),
kill the new active `--back-after` (8) s after the first kill so that the flows go back to the
first unit (`--no-kill-back`: one kill only), and print what each flow saw: survived or not,
the gap of each kill in ms, packets lost, the outside NAT port before and after, and how the
unit rejoined (roles, bulk sync records and ms, power on to ready). The lab stays up to be
looked at (the survivor active, alone). `sudo make lab-down` (`--down`) removes it;
`sudo make kill-active` (`--kill-active`) kills the active unit of a running lab and reports
how long the other took to be active; `sudo make rejoin` (`--rejoin`) brings its dead unit back.

Flows during the kill (all at once, from in-host (198.18.1.10) to out-srv (198.19.1.10)):

    tcp      iperf3 TCP, one stream, --tcp-seconds (20), intervals of 100 ms: gap = the
             longest run of empty intervals (100 ms resolution), retransmits
    curl     a generated file over HTTP at a limited rate so that it spans the kill,
             sha256 of what arrived == sha256 of what was served
    udp      a sequenced UDP stream at 1000 packets/s (scripts/lab/stream.py): gap at the
             receiver, lost = sent - received, source port seen by out-srv before and after
    tcp-seq  the same stream over one TCP connection: gap at the receiver, reset or not,
             the source port (one connection: it can only survive with the same one)
    ping     echo every 10 ms: gap = the longest run of missing replies x 10 ms, lost

The standalone traffic check (before the failover issue) is `--no-failover`: fw-a alone, then
ping, curl, iperf3 TCP and UDP one after the other.

Flows, each bounded in time, all from in-host (198.18.1.10) to out-srv (198.19.1.10):

    ping     5 echoes                                 rtt avg, loss
    curl     a generated file over HTTP (python -m    MB/s, sha256 of what arrived ==
             http.server on out-srv, port 8080)       sha256 of what was served, source seen
    tcp      iperf3 TCP, one stream (port 5201)       Gbit/s received
    udp      iperf3 UDP at a fixed rate               Mbit/s received, loss %

A flow fails when it does not complete, when a byte differs, or when UDP loses more than
UDP_MAX_LOSS_PCT. The exit status is 1 if any flow failed.

The prefix is --prefix, else $LAB_PREFIX, else "np-".
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import build, nsexec, plot, stream
from .topology import (DEFAULT_PREFIX, FW_A, FW_B, HOST, NAT_ADDR, SERVER, SERVER_ADDR, UNITS,
                       Topology, lab)
from dataplane.daemon import request

from . import unit as unit_mod
from .unit import socket_path, start_unit, wait_role

HTTP_PORT = 8080
IPERF_PORT = 5201
BLOB = "blob.bin"
UDP_MAX_LOSS_PCT = 1.0


@dataclass
class Result:
    flow: str
    ok: bool
    figure: str


def _wait_for_line(path: Path, needle: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}: "
                               f"{path.read_text(errors='replace')[-500:]}")
        if needle in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"no {needle!r} in {path} after {timeout} s")


def make_blob(path: Path, mb: int) -> str:
    """Write `mb` MiB of random bytes to path; return their sha256."""
    h = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(mb):
            chunk = os.urandom(1 << 20)
            h.update(chunk)
            f.write(chunk)
    return h.hexdigest()


def start_server(ns: str, argv: list[str], logf: Path, ready: str,
                 timeout: float = 10) -> subprocess.Popen:
    """Start a server in namespace `ns`, its output in `logf`; return once `ready` is logged.
    Left running with the lab (down() kills it)."""
    with open(logf, "ab") as out:
        proc = nsexec.popen(ns, argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                            start_new_session=True)
    _wait_for_line(logf, ready, proc, timeout=timeout)
    return proc


def http_server_argv(addr: str, port: int, directory: Path) -> list[str]:
    return [sys.executable, "-u", "-m", "http.server", str(port), "--bind", addr,
            "--directory", str(directory)]


HTTP_READY = "Serving HTTP"


def start_servers(topo: Topology, rdir: Path, log=print) -> None:
    """http.server and iperf3 -s on out-srv, left running with the lab (down() kills them)."""
    ns = topo.ns(SERVER)
    start_server(ns, http_server_argv(SERVER_ADDR, HTTP_PORT, rdir / "www"),
                 rdir / "out-srv-http.log", HTTP_READY)
    start_server(ns, ["iperf3", "-s", "-B", SERVER_ADDR, "-p", str(IPERF_PORT), "--forceflush"],
                 rdir / "out-srv-iperf3.log", "Server listening")
    log(f"lab: out-srv: http.server on {SERVER_ADDR}:{HTTP_PORT}, "
        f"iperf3 -s on {SERVER_ADDR}:{IPERF_PORT}")


def _run(ns: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess | str:
    """Run in ns; a string (what went wrong) instead of a result when it could not finish."""
    try:
        return nsexec.run(ns, argv, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:g} s"


def flow_ping(topo: Topology, count: int = 5) -> Result:
    r = _run(topo.ns(HOST), ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1",
                             SERVER_ADDR], timeout=count + 5)
    if isinstance(r, str):
        return Result("ping", False, r)
    got = re.search(r"(\d+) packets transmitted, (\d+) received", r.stdout)
    rtt = re.search(r"= [\d.]+/([\d.]+)/[\d.]+/", r.stdout)
    if not got:
        return Result("ping", False, (r.stderr or r.stdout).strip()[-120:])
    sent, recv = int(got[1]), int(got[2])
    figure = f"{recv}/{sent} replies" + (f", rtt avg {float(rtt[1]):.3f} ms" if rtt else "")
    return Result("ping", recv == sent and sent == count, figure)


def flow_curl(topo: Topology, rdir: Path, sha: str, mb: int, timeout: float = 60) -> Result:
    dest = rdir / "in-host-download.bin"
    url = f"http://{SERVER_ADDR}:{HTTP_PORT}/{BLOB}"
    r = _run(topo.ns(HOST), ["curl", "-sS", "--max-time", str(int(timeout)), "-o", str(dest),
                             "-w", "%{http_code} %{size_download} %{speed_download}", url],
             timeout=timeout + 5)
    if isinstance(r, str):
        return Result("curl", False, r)
    if r.returncode != 0:
        return Result("curl", False, f"curl exit {r.returncode}: {r.stderr.strip()[-100:]}")
    code, size, speed = r.stdout.split()
    got = hashlib.sha256(dest.read_bytes()).hexdigest() if dest.exists() else ""
    dest.unlink(missing_ok=True)
    seen = last_http_client(rdir / "out-srv-http.log")
    ok = code == "200" and got == sha and int(size) == mb << 20
    figure = (f"{int(size) / 2**20:.0f} MiB at {float(speed) / 2**20:.0f} MiB/s, "
              f"sha256 {'ok' if got == sha else 'MISMATCH'}, server saw {seen}")
    return Result("curl", ok, figure if code == "200" else f"HTTP {code}")


def last_http_client(logf: Path, name: str = BLOB) -> str:
    """The source address an http.server logged for the last GET of file `name`."""
    lines = [ln for ln in logf.read_text(errors="replace").splitlines() if f"GET /{name}" in ln]
    return lines[-1].split()[0] if lines else "?"


def _iperf(topo: Topology, extra: list[str], seconds: int) -> dict | str:
    r = _run(topo.ns(HOST), ["iperf3", "-c", SERVER_ADDR, "-p", str(IPERF_PORT), "-J",
                             "--connect-timeout", "3000", "-t", str(seconds), *extra],
             timeout=seconds + 15)
    if isinstance(r, str):
        return r
    try:
        data = json.loads(r.stdout)
    except ValueError:
        return f"iperf3 exit {r.returncode}: {(r.stderr or r.stdout).strip()[-100:]}"
    if "error" in data:
        return f"iperf3: {data['error']}"
    return data


def flow_tcp(topo: Topology, seconds: int) -> Result:
    d = _iperf(topo, [], seconds)
    if isinstance(d, str):
        return Result("tcp", False, d)
    rx = d["end"]["sum_received"]["bits_per_second"]
    retr = d["end"]["sum_sent"].get("retransmits", 0)
    return Result("tcp", rx > 0, f"{rx / 1e9:.2f} Gbit/s over {seconds} s, {retr} retransmits")


def flow_udp(topo: Topology, seconds: int, rate: str) -> Result:
    d = _iperf(topo, ["-u", "-b", rate], seconds)
    if isinstance(d, str):
        return Result("udp", False, d)
    end = d["end"]
    s = end.get("sum_received") or end["sum"]          # receiver's view when iperf3 gives it
    loss = float(s.get("lost_percent", end["sum"].get("lost_percent", 100.0)))
    rx = s["bits_per_second"]
    ok = rx > 0 and loss <= UDP_MAX_LOSS_PCT
    return Result("udp", ok, f"{rx / 1e6:.0f} Mbit/s at -b {rate}, loss {loss:.2f} %")


def report(results: list[Result], unit_kind: str) -> str:
    w = max(len(r.flow) for r in results)
    lines = [f"lab report: in-host -> fw-a ({unit_kind}) -> out-srv",
             f"  {'flow':<{w}}  result  figure"]
    for r in results:
        lines.append(f"  {r.flow:<{w}}  {'ok' if r.ok else 'FAILED':<6}  {r.figure}")
    return "\n".join(lines)


# ---- the failover run ------------------------------------------------------------------------

STREAM_UDP_PORT, STREAM_TCP_PORT = 9000, 9001
STREAM_PPS = 1000
PING_INTERVAL_S = 0.01


@dataclass
class FlowResult:
    flow: str
    survived: bool
    gap_ms: str
    lost: str
    port: str
    note: str = ""


def start_pair(topo: Topology, feed: str, log=print, **timers) -> dict:
    """fw-a, then fw-b, as a pair; returns once fw-a is active and fw-b standby-ready.
    `timers`: poll_ms, hold_ms (default: unit.POLL_MS, unit.HOLD_MS)."""
    units = {FW_A: start_unit(topo, FW_A, feed=feed, log=log, failover=True, **timers)}
    wait_role(topo, FW_A, ("ACTIVE",))
    units[FW_B] = start_unit(topo, FW_B, feed=feed, log=log, failover=True, **timers)
    st = wait_role(topo, FW_B, ("STANDBY_READY",))
    bulk = st["failover"]["bulk_recv"]
    log(f"lab: fw-a ACTIVE, fw-b STANDBY_READY (bulk sync: {bulk['received']} states in "
        f"{bulk['elapsed_ms']} ms)")
    return units


def active_unit(topo: Topology) -> str | None:
    for name in UNITS:
        try:
            if request(str(socket_path(topo, name)), "status", timeout=1.0).get("role") == "ACTIVE":
                return name
        except (OSError, ValueError):
            pass
    return None


def kill_active(topo: Topology, log=print) -> tuple[str, str, float]:
    """Power-cut the active unit; (dead, survivor, ms until the survivor said ACTIVE)."""
    dead = active_unit(topo)
    if dead is None:
        raise RuntimeError("no unit answers as ACTIVE")
    survivor = next(u for u in UNITS if u != dead)
    try:
        peer = request(str(socket_path(topo, survivor)), "status", timeout=1.0).get("role")
    except (OSError, ValueError):
        peer = None
    if peer != "STANDBY_READY":
        log(f"lab: {survivor} is {peer or 'not running'}, not STANDBY_READY: nobody will take over")
    t0 = time.monotonic()
    build.power_cut([topo.ns(dead)], log=log)
    cut_ms = (time.monotonic() - t0) * 1000
    if peer is None:
        log(f"lab: killed {dead} (power cut in {cut_ms:.0f} ms); no unit left")
        return dead, survivor, float("nan")
    wait_role(topo, survivor, ("ACTIVE",), timeout_s=10)
    took = (time.monotonic() - t0) * 1000
    log(f"lab: killed {dead} (power cut in {cut_ms:.0f} ms); {survivor} ACTIVE "
        f"{took:.0f} ms after the cut began (polled every 50 ms)")
    return dead, survivor, took


REJOIN_START_S = 30            # a loaded machine can take long to start a daemon


def roles(topo: Topology) -> dict[str, str | None]:
    """Each unit's role now (None: it does not answer)."""
    out: dict[str, str | None] = {}
    for name in UNITS:
        try:
            out[name] = request(str(socket_path(topo, name)), "status", timeout=1.0).get("role")
        except (OSError, ValueError):
            out[name] = None
    return out


ROLE_LINE = re.compile(r"transition machine=\S*-role from=(\w+) event=\w+ to=(\w+)")   # logline.py


def role_path(logf: Path, since: int = 0) -> list[str]:
    """The roles a unit went through, from its log (from byte `since`): its role machine
    logs every transition (replication/fsm.py)."""
    path: list[str] = []
    with open(logf, "rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    for src, dst in ROLE_LINE.findall(text):
        if not path:
            path.append(src)
        if dst != path[-1]:
            path.append(dst)
    return path


def rejoin(topo: Topology, name: str, feed: str = "c", log=print, alone: bool = False,
           **timers) -> dict:
    """Bring a power-cut unit back (build.power_on), start its daemon, and wait until it is
    STANDBY_READY behind the active peer (with `alone`, no peer runs: until it is ACTIVE);
    returns what it went through: roles, bulk sync (records, ms), ms from power on to ready."""
    t0 = time.monotonic()
    build.power_on(topo, name, log=log)
    logf = build.run_dir(topo.prefix) / f"{name}.log"
    since = logf.stat().st_size if logf.exists() else 0
    start_unit(topo, name, feed=feed, log=log, failover=True, ready_s=REJOIN_START_S, **timers)
    st = wait_role(topo, name, ("ACTIVE",) if alone else ("STANDBY_READY",), timeout_s=20)
    ready_ms = (time.monotonic() - t0) * 1000
    bulk = st["failover"]["bulk_recv"]
    roles = role_path(logf, since)
    if alone:
        log(f"lab: {name} back, alone: {' -> '.join(roles)} {ready_ms:.0f} ms after power on")
    else:
        log(f"lab: {name} rejoined: {' -> '.join(roles)}, bulk sync {bulk['received']} of "
            f"{bulk['total']} states in {bulk['elapsed_ms']} ms, ready {ready_ms:.0f} ms after "
            f"power on")
    return {"roles": roles, "bulk_records": bulk["received"], "bulk_ms": bulk["elapsed_ms"],
            "ready_ms": ready_ms}


def dead_units(topo: Topology) -> list[str]:
    """The units of the lab whose namespace is gone (power cut)."""
    there = build.existing_namespaces()
    return [u for u in UNITS if topo.ns(u) not in there]


def _stream_argv(mode: str, proto: str, port: int, seconds: float) -> list[str]:
    argv = [sys.executable, "-m", "scripts.lab.stream", mode, "--proto", proto, "--port", str(port),
            "--seconds", str(seconds)]
    if mode == "sink":
        return argv + ["--bind", SERVER_ADDR]
    return argv + ["--to", SERVER_ADDR, "--pps", str(STREAM_PPS)]


def _popen(ns: str, argv: list[str]) -> subprocess.Popen:
    return plot.keep_output(nsexec.popen(ns, argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, cwd=str(REPO)))


REPO = Path(__file__).resolve().parents[2]


def _json_tail(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {}


def _stream_result(flow: str, sink: subprocess.Popen, sender: subprocess.Popen,
                   kills: int = 1, cuts: list[float] = ()) -> FlowResult:
    """A stream's report; its gap per kill is the silence of that cut (``cuts``: monotonic
    times, stream.gap_at), else the largest silences."""
    s_out, s_err = sender.communicate(timeout=60)
    k_out, k_err = sink.communicate(timeout=60)
    snt, got = _json_tail(s_out), _json_tail(k_out)
    if not snt or not got:
        return FlowResult(flow, False, "-", "-", "-", (s_err + k_err).strip()[-120:])
    lost = snt["sent"] - got["received"]
    ports = got["ports"]
    same = got["distinct_ports"] == 1
    survived = not snt["error"] and not got["reset"] and same and got["received"] > 0
    port = f"{ports[0]} -> {ports[-1]}" if ports else "-"
    note = ", ".join(x for x in (snt["error"] and f"sender: {snt['error']}",
                                 got["reset"] and "reset", not same and "NAT port changed") if x)
    gap = f"{got['max_gap_ms']}"
    at = [stream.gap_at(got, c) for c in cuts]
    if cuts and "silences" in got:
        gap = ", ".join("-" if g is None else str(g) for g in at)
        if None in at:
            note = ", ".join(x for x in (note, "over before a kill (-)") if x)
    elif kills > 1 and len(got.get("gaps_ms", ())) >= kills:   # the largest ones, in time order
        big = sorted(got["gaps_ms"], reverse=True)[:kills]
        gap = ", ".join(str(g) for g in got["gaps_ms"] if g in big)
    return FlowResult(flow, survived, gap, str(lost), port, note)


def _iperf_result(p: subprocess.Popen) -> FlowResult:
    out, err = p.communicate(timeout=120)
    try:
        d = json.loads(out)
    except ValueError:
        return FlowResult("tcp", False, "-", "-", "-", (err or out).strip()[-120:])
    if "error" in d:
        return FlowResult("tcp", False, "-", "-", "-", f"iperf3: {d['error']}")
    empty = run = 0
    for iv in d["intervals"]:
        run = run + 1 if iv["sum"]["bytes"] == 0 else 0
        empty = max(empty, run)
    rx = d["end"]["sum_received"]["bits_per_second"]
    retr = d["end"]["sum_sent"].get("retransmits", 0)
    return FlowResult("tcp", p.returncode == 0, f"<= {(empty + 1) * 100}", f"{retr} retr.",
                      "same connection", f"{rx / 1e9:.2f} Gbit/s average")


def _curl_result(p: subprocess.Popen, dest: Path, sha: str) -> FlowResult:
    out, err = p.communicate(timeout=120)
    got = hashlib.sha256(dest.read_bytes()).hexdigest() if dest.exists() else ""
    dest.unlink(missing_ok=True)
    ok = p.returncode == 0 and got == sha
    note = f"sha256 {'ok' if got == sha else 'MISMATCH'}" + (f", curl exit {p.returncode}: "
                                                           f"{err.strip()[-80:]}" if p.returncode else "")
    return FlowResult("curl", ok, "-", "-", "same connection", note)


def _ping_result(p: subprocess.Popen, kills: int = 1) -> FlowResult:
    out, err = p.communicate(timeout=60)
    seqs = sorted({int(m) for m in re.findall(r"icmp_seq=(\d+) ", out)})
    sent = re.search(r"(\d+) packets transmitted", out)
    if not seqs or not sent:
        return FlowResult("ping", False, "-", "-", "-", (err or out).strip()[-120:])
    n = int(sent[1])
    missing = [b - a - 1 for a, b in zip(seqs, seqs[1:])] + [0]
    big = sorted(sorted(range(len(missing)), key=missing.__getitem__)[-kills:])   # time order
    gap = ", ".join(f"{(missing[i] + 1) * PING_INTERVAL_S * 1000:.0f}" for i in big)
    return FlowResult("ping", True, gap, str(n - len(seqs)), "-", f"{len(seqs)}/{n} replies")


def failover_run(topo: Topology, rdir: Path, sha: str, file_mb: int, tcp_seconds: int,
                 kill_after: float, log=print, feed: str = "c", back_after: float | None = None,
                 timers: dict | None = None,
                 picture: Path | None = None) -> tuple[list[FlowResult], dict | None]:
    """Every flow at once, the active killed after `kill_after` s; with `back_after`, the dead
    unit brought back (rejoin) and, `back_after` s after the first kill, the new active killed
    too, so the flows go back to the first unit. What each flow saw, and the rejoin. With
    `picture`, the continuity picture (scripts/lab/plot.py) is drawn there (the first kill
    marked; the second shows as the later gap)."""
    host, srv = topo.ns(HOST), topo.ns(SERVER)
    flow_s = kill_after + (back_after or 0) + 5
    sinks = {proto: _popen(srv, _stream_argv("sink", proto, port, flow_s + 5))
             for proto, port in (("udp", STREAM_UDP_PORT), ("tcp", STREAM_TCP_PORT))}
    for p in sinks.values():
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    dest = rdir / "in-host-download.bin"
    rate = max(1, (file_mb << 20) // int(flow_s + 2))
    started = time.time()
    procs = {
        "tcp": _popen(host, ["iperf3", "-c", SERVER_ADDR, "-p", str(IPERF_PORT), "-J", "-i", "0.1",
                             "--connect-timeout", "3000", "-t", str(max(tcp_seconds, int(flow_s) + 1))]),
        "curl": _popen(host, ["curl", "-sS", "--max-time", str(int(flow_s + 30)), "--limit-rate",
                              str(rate), "-o", str(dest), f"http://{SERVER_ADDR}:{HTTP_PORT}/{BLOB}"]),
        "udp": _popen(host, _stream_argv("send", "udp", STREAM_UDP_PORT, flow_s)),
        "tcp-seq": _popen(host, _stream_argv("send", "tcp", STREAM_TCP_PORT, flow_s)),
        "ping": plot.drain_output(_popen(host, ["ping", "-n", "-D", "-i", str(PING_INTERVAL_S), "-W",
                                                "1", "-c", str(int(flow_s / PING_INTERVAL_S)),
                                                SERVER_ADDR])),
    }
    time.sleep(kill_after)
    first_cut, killed = time.monotonic(), time.time()
    dead, _, took_ms = kill_active(topo, log=log)
    rejoined, kills, second_cut, cuts = None, 1, None, [first_cut]
    if back_after is not None:
        try:
            rejoined = rejoin(topo, dead, feed, log=log, **(timers or {}))
        except Exception as e:                  # the flows still get their report
            log(f"lab: {dead} did not rejoin: {e}")
            rejoined = {"error": str(e)}
        else:
            time.sleep(max(0.0, first_cut + back_after - time.monotonic()))
            now = roles(topo)
            if now.get(dead) != "STANDBY_READY":
                # a false failover (the loaded machine delayed hellos past hold_ms): say so
                log(f"lab: before the second kill {dead} is {now.get(dead)}, not STANDBY_READY "
                    f"(roles {now}; see the logs): the active one is killed all the same")
                rejoined["before_second_kill"] = now
            second_cut, cuts = time.time(), cuts + [time.monotonic()]
            rejoined["second_kill"] = kill_active(topo, log=log)[0]
            kills = 2
    results = [_iperf_result(procs["tcp"]), _curl_result(procs["curl"], dest, sha),
               _stream_result("udp", sinks["udp"], procs["udp"], kills, cuts),
               _stream_result("tcp-seq", sinks["tcp"], procs["tcp-seq"], kills, cuts),
               _ping_result(procs["ping"], kills)]
    if picture is not None:
        active = None if took_ms != took_ms else killed + took_ms / 1000      # NaN: nobody left
        plot.lab_picture(picture, kill=killed, active=active, tcp_started=started, procs=procs,
                         sinks=sinks, results=results, second_kill=second_cut)
    return results, rejoined


def failover_report(results: list[FlowResult], feed: str, kills: int = 1) -> str:
    rows = [("flow", "survived", "gap ms", "lost", "NAT port before -> after", "")] + [
        (r.flow, "yes" if r.survived else "NO", r.gap_ms, r.lost, r.port, r.note) for r in results]
    w = [max(len(row[i]) for row in rows) for i in range(5)]
    what = ("active unit killed mid-transfer" if kills == 1 else
             "active unit killed mid-transfer, brought back, then the other killed: "
             "gaps of both kills")
    lines = [f"lab report: in-host -> fw-a/fw-b pair (natpair daemon, {feed} feed) -> out-srv, {what}"]
    for row in rows:
        lines.append("  " + "  ".join(c.ljust(w[i]) for i, c in enumerate(row[:5])) + "  " + row[5])
    return "\n".join(lines)


def rejoin_report(r: dict) -> str:
    if "error" in r:
        return f"  rejoin: FAILED: {r['error']}"
    line = (f"  rejoin: {' -> '.join(r['roles'])}; bulk sync {r['bulk_records']} states in "
            f"{r['bulk_ms']} ms; standby-ready {r['ready_ms']:.0f} ms after power on")
    if "second_kill" in r:
        line += f"; second kill: {r['second_kill']}"
    if "before_second_kill" in r:
        line += (f" (NOT back: before it the roles were {r['before_second_kill']}, a false "
                 f"failover under load)")
    return line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts.lab.run", description=__doc__.split("\n")[0])
    ap.add_argument("--prefix", default=os.environ.get("LAB_PREFIX") or DEFAULT_PREFIX)
    ap.add_argument("--down", action="store_true", help="only take the lab down")
    ap.add_argument("--file-mb", type=int, default=20)
    ap.add_argument("--tcp-seconds", type=int, default=None,
                    help="iperf3 TCP seconds (default: 20 with the kill, 10 without)")
    ap.add_argument("--kill-after", type=float, default=4.0,
                    help="seconds of traffic before the active unit is killed")
    ap.add_argument("--poll-ms", type=int, default=unit_mod.POLL_MS, help="[failover] poll_ms")
    ap.add_argument("--hold-ms", type=int, default=unit_mod.HOLD_MS, help="[failover] hold_ms")
    ap.add_argument("--no-failover", action="store_true",
                    help="fw-a alone, the four flows one after the other, no kill")
    ap.add_argument("--back-after", type=float, default=8.0,
                    help="seconds after the first kill at which the new active is killed too "
                         "(the dead unit brought back and standby-ready by then)")
    ap.add_argument("--no-kill-back", action="store_true",
                    help="one kill only: the dead unit stays dead")
    ap.add_argument("--kill-active", action="store_true",
                    help="only kill the active unit of a running lab")
    ap.add_argument("--rejoin", action="store_true",
                    help="only bring the dead unit of a running lab back (standby-ready)")
    ap.add_argument("--udp-seconds", type=int, default=5)
    ap.add_argument("--udp-rate", default="100M")
    ap.add_argument("--feed", default=os.environ.get("LAB_FEED", "c"),
                    help='the daemon\'s [feed] kind: "c" or "netfilterqueue"')
    args = ap.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)     # keep our lines in order with stderr's
    if os.geteuid() != 0:
        print("natpair lab: needs root (network namespaces): sudo make lab / sudo make lab-down",
              file=sys.stderr)
        return 1
    if args.kill_active:
        try:
            kill_active(lab(args.prefix))
        except RuntimeError as e:
            print(f"natpair lab: {e}", file=sys.stderr)
            return 1
        return 0
    if args.rejoin:
        topo = lab(args.prefix)
        dead = dead_units(topo)
        if not dead:
            print("natpair lab: no unit is dead (both namespaces are there)", file=sys.stderr)
            return 1
        try:
            for i, name in enumerate(dead):     # both dead: the first alone, then the other
                rejoin(topo, name, args.feed, alone=len(dead) == len(UNITS) and i == 0,
                       poll_ms=args.poll_ms, hold_ms=args.hold_ms)
        except (RuntimeError, build.LabError) as e:
            print(f"natpair lab: {e}", file=sys.stderr)
            return 1
        return 0
    if args.down:
        removed = build.down(args.prefix)
        if not removed:
            print(f"lab: nothing under {args.prefix!r} to remove")
        return 0

    down_hint = "sudo make lab-down" + ("" if args.prefix == DEFAULT_PREFIX
                                        else f" LAB_PREFIX={args.prefix}")
    if build.down(args.prefix):
        print(f"lab: took down the previous lab under {args.prefix!r}")
    topo = lab(args.prefix)
    build.up(topo)
    rdir = build.run_dir(topo.prefix)
    if not args.no_failover:
        try:
            sha = make_blob(rdir / "www" / BLOB, args.file_mb)
            start_pair(topo, args.feed, poll_ms=args.poll_ms, hold_ms=args.hold_ms)
            start_servers(topo, rdir)
            timers = {"poll_ms": args.poll_ms, "hold_ms": args.hold_ms}
            picture = rdir / "continuity.png"
            results, rejoined = failover_run(
                topo, rdir, sha, args.file_mb, args.tcp_seconds or 20, args.kill_after,
                feed=args.feed, back_after=None if args.no_kill_back else args.back_after,
                timers=timers, picture=picture)
        except Exception as e:
            print(f"natpair lab: {e}\nThe lab is left as it is, to look at; remove it with: "
                  f"{down_hint}", file=sys.stderr)
            return 1
        print()
        kills = 2 if rejoined and "error" not in rejoined else 1
        print(failover_report(results, args.feed, kills))
        if rejoined is not None:
            print(rejoin_report(rejoined))
        print(f"  picture (throughput, UDP per 10 ms, ping RTT; kills and gaps marked): {picture}")
        print()
        print(f"The lab stays up: {' '.join(n for n in topo.namespaces() if n in build.existing_namespaces())}\n"
              f"  the survivor is active alone; logs and configs: {rdir}\n"
              f"  Look at it: {' ; '.join(f'scripts/natpair show failover --socket {rdir}/{u}.sock' for u in UNITS if topo.ns(u) in build.existing_namespaces())}\n"
              f"  Bring the dead unit back: sudo make rejoin{down_hint[len('sudo make lab-down'):]}\n"
              f"  Down:  {down_hint}")
        ok = all(r.survived for r in results) and (rejoined is None or "error" not in rejoined)
        return 0 if ok else 1
    args.tcp_seconds = args.tcp_seconds or 10
    try:
        sha = make_blob(rdir / "www" / BLOB, args.file_mb)
        unit = start_unit(topo, FW_A, feed=args.feed)
        start_servers(topo, rdir)
    except Exception as e:
        print(f"natpair lab: {e}\nThe lab is left as it is, to look at; remove it with: "
              f"{down_hint}", file=sys.stderr)
        return 1
    results = [
        flow_ping(topo),
        flow_curl(topo, rdir, sha, args.file_mb),
        flow_tcp(topo, args.tcp_seconds),
        flow_udp(topo, args.udp_seconds, args.udp_rate),
    ]
    print()
    print(report(results, f"natpair daemon, {args.feed} feed"))
    print()
    ns = " ".join(topo.namespaces())
    print(f"The lab stays up: {ns}\n"
          f"  fw-a runs the natpair daemon (pid {unit.proc.pid}) alone (--no-failover).\n"
          f"  Look:  sudo ip netns exec {topo.ns(HOST)} curl -o /dev/null "
          f"http://{SERVER_ADDR}:{HTTP_PORT}/{BLOB}\n"
          f"  Files: {rdir}  (NAT address {NAT_ADDR})\n"
          f"  Down:  {down_hint}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
