"""Sequenced probe streams for the failover lab: what a flow saw while the active unit died.

Two small programs, run with ``python -m scripts.lab.stream`` inside the lab's namespaces:

    sink  --proto udp|tcp --bind ADDR --port P --seconds S
          prints "ready", then receives 16-byte records (seq u64, send time ns u64) until
          S seconds passed (or the TCP peer closed), and prints one JSON line: received,
          the largest gap between two arrivals (ms), the three largest in the order they
          happened (ms, one per kill of a run), the source ports seen (first, last,
          distinct count), whether the TCP connection was reset, and the arrivals per
          10 ms from the first one on (``timeline``: first_unix, bin_ms, counts, gaps_unix;
          the lab's picture, scripts/lab/plot.py, draws it).
    send  --proto udp|tcp --to ADDR --port P --pps N --seconds S
          sends N records a second for S seconds (one TCP connection, or one UDP socket:
          the NAT port must stay the same), or until SIGINT, then prints one JSON line:
          sent, error.

``lost`` = sent - received; the gap is measured where it matters, at the receiver.
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys
import time

REC = struct.Struct("!QQ")
TOP_GAPS = 8


def sink(proto: str, bind: str, port: int, seconds: float) -> dict:
    arrivals: list[float] = []
    ports: list[int] = []
    reset = False
    end = time.monotonic() + seconds
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((bind, port))
        print("ready", flush=True)
        while (left := end - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data, peer = s.recvfrom(2048)
            except socket.timeout:
                break
            arrivals.append(time.monotonic())
            if not ports or ports[-1] != peer[1]:
                ports.append(peer[1])
    else:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((bind, port))
        ls.listen(1)
        print("ready", flush=True)
        ls.settimeout(seconds)
        try:
            conn, peer = ls.accept()
        except socket.timeout:
            conn = None
        if conn is not None:
            ports.append(peer[1])
            buf = b""
            while (left := end - time.monotonic()) > 0:
                conn.settimeout(left)
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    break
                except ConnectionResetError:
                    reset = True
                    break
                if not chunk:
                    break
                now = time.monotonic()
                buf += chunk
                n = len(buf) // REC.size
                arrivals.extend([now] * n)
                buf = buf[n * REC.size:]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    largest = sorted(sorted(range(len(gaps)), key=gaps.__getitem__)[-3:])
    return {"received": len(arrivals), "max_gap_ms": round(max(gaps) * 1000, 1) if gaps else None,
            "gaps_ms": [round(gaps[i] * 1000, 1) for i in largest],
            "ports": ports[:1] + ports[-1:], "distinct_ports": len(set(ports)), "reset": reset,
            "timeline": timeline(arrivals)}


def timeline(arrivals: list[float], bin_s: float = 0.010) -> dict:
    """Arrivals (monotonic s) as counts per bin from the first one, its wall-clock time, and
    the TOP_GAPS largest gaps between two arrivals, largest first (wall clock, both ends):
    on a loaded machine the largest is not always the one the kill made."""
    if not arrivals:
        return {"first_unix": None, "bin_ms": bin_s * 1000, "counts": [], "gaps_unix": []}
    first = arrivals[0]
    counts = [0] * (int((arrivals[-1] - first) / bin_s) + 1)
    for a in arrivals:
        counts[int((a - first) / bin_s)] += 1
    to_wall = time.time() - time.monotonic()
    gaps = sorted(zip(arrivals, arrivals[1:]), key=lambda ab: ab[0] - ab[1])[:TOP_GAPS]
    return {"first_unix": first + to_wall, "bin_ms": bin_s * 1000, "counts": counts,
            "gaps_unix": [[a + to_wall, b + to_wall] for a, b in gaps]}


def send(proto: str, to: str, port: int, pps: int, seconds: float) -> dict:
    sent, error = 0, None
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((to, port))
    else:
        s = socket.create_connection((to, port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(None)
    start = time.monotonic()
    period = 1.0 / pps
    stop: list[int] = []                # SIGINT: the caller has seen enough; a normal end,
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))    # never between send and count
    try:
        while (elapsed := time.monotonic() - start) < seconds and not stop:
            due = int(elapsed / period) + 1
            while sent < due:
                try:
                    s.send(REC.pack(sent, time.monotonic_ns()))
                except (ConnectionRefusedError, BlockingIOError) as e:
                    if proto == "tcp":
                        raise
                    error = error or type(e).__name__       # UDP: an ICMP error, go on
                sent += 1
            time.sleep(max(0.0, start + due * period - time.monotonic()))
    except OSError as e:
        error = f"{type(e).__name__}: {e}"
    finally:
        s.close()
    return {"sent": sent, "error": error}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts.lab.stream")
    ap.add_argument("mode", choices=("sink", "send"))
    ap.add_argument("--proto", choices=("udp", "tcp"), required=True)
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--to")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pps", type=int, default=1000)
    ap.add_argument("--seconds", type=float, required=True)
    a = ap.parse_args(argv)
    if a.mode == "sink":
        out = sink(a.proto, a.bind, a.port, a.seconds)
    else:
        out = send(a.proto, a.to, a.port, a.pps, a.seconds)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
