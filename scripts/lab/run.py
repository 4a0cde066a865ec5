"""`sudo make lab`: take down a previous lab, build the lab (topology.py), start fw-a
(unit.start_unit), push traffic from in-host to out-srv through it, print what each flow saw,
and leave the lab up to be looked at. `sudo make lab-down` (`--down`) removes it.

Flows, each bounded in time, all from in-host (198.18.1.10) to out-srv (198.19.1.10):

    ping     5 echoes                                 rtt avg, loss
    curl     a generated file over HTTP (python -m    MB/s, sha256 of what arrived ==
             http.server on out-srv, port 8080)       sha256 of what was served, source seen
    tcp      iperf3 TCP, one stream (port 5201)       Gbit/s received
    udp      iperf3 UDP at a fixed rate               Mbit/s received, loss %

A flow fails when it does not complete, when a byte differs, or when UDP loses more than
UDP_MAX_LOSS_PCT. The exit status is 1 if any flow failed.

fw-b is built but not started: it joins with the failover issue, which also adds the kill.
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

from . import build, nsexec
from .topology import (DEFAULT_PREFIX, FW_A, HOST, NAT_ADDR, SERVER, SERVER_ADDR, Topology,
                       lab)
from .unit import start_unit

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts.lab.run", description=__doc__.split("\n")[0])
    ap.add_argument("--prefix", default=os.environ.get("LAB_PREFIX") or DEFAULT_PREFIX)
    ap.add_argument("--down", action="store_true", help="only take the lab down")
    ap.add_argument("--file-mb", type=int, default=20)
    ap.add_argument("--tcp-seconds", type=int, default=10)
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
          f"  fw-a runs the natpair daemon (pid {unit.proc.pid}); fw-b is built but not started until the failover issue.\n"
          f"  Look:  sudo ip netns exec {topo.ns(HOST)} curl -o /dev/null "
          f"http://{SERVER_ADDR}:{HTTP_PORT}/{BLOB}\n"
          f"  Files: {rdir}  (NAT address {NAT_ADDR})\n"
          f"  Down:  {down_hint}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
