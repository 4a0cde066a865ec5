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
          TCP with --pps 0: bulk, as much as the connection takes, paced by the kernel to
          --mbit (SO_MAX_PACING_RATE): a sender whose window is full when the path goes,
          so that it waits for its retransmission timer (the case of iperf3).

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
SILENCE_MIN_S = 0.002       # silences reported with their times (the sink's "silences")
SILENCES_MAX = 500
CUT_WINDOW_S = 0.5          # gap_at: a cut's silence starts within this of the cut


class _Gaps:
    """Arrivals counted as they come: how many, and the longest silence between two."""
    def __init__(self) -> None:
        self.count, self.last, self.max_gap = 0, None, None
        self.events: list[tuple[float, int]] = []     # (time, records) per receive: the timeline

    def arrive(self, now: float, n: int = 1) -> None:
        if n <= 0:
            return
        if self.last is not None:
            gap = now - self.last
            self.max_gap = gap if self.max_gap is None or gap > self.max_gap else self.max_gap
        if n > 1 and self.max_gap is None:
            self.max_gap = 0.0            # several at once: a gap of zero between them
        self.count += n
        self.last = now
        self.events.append((now, n))


def sink(proto: str, bind: str, port: int, seconds: float) -> dict:
    arrivals = _Gaps()
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
            arrivals.arrive(time.monotonic())
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
                arrivals.arrive(now, n)
                buf = buf[n * REC.size:]
    gap = arrivals.max_gap
    times = [t for t, _ in arrivals.events]
    gaps = [y - x for x, y in zip(times, times[1:])]
    largest = sorted(sorted(range(len(gaps)), key=gaps.__getitem__)[-3:])
    long_ = sorted(sorted((i for i, g in enumerate(gaps) if g >= SILENCE_MIN_S),
                          key=gaps.__getitem__)[-SILENCES_MAX:])
    return {"received": arrivals.count, "max_gap_ms": None if gap is None else round(gap * 1000, 1),
            "gaps_ms": [round(gaps[i] * 1000, 1) for i in largest],
            "silences": [[times[i], times[i + 1]] for i in long_],
            "first": times[0] if times else None, "last": times[-1] if times else None,
            "ports": ports[:1] + ports[-1:], "distinct_ports": len(set(ports)), "reset": reset,
            "timeline": timeline(arrivals.events)}


def gap_at(got: dict, cut: float, window_s: float = CUT_WINDOW_S) -> float | None:
    """The silence a cut at monotonic time ``cut`` made in what a sink got (ms): the longest
    silence that overlaps the ``window_s`` after the cut. A stall of the machine elsewhere
    in the stream (the sender or the receiver not running, nothing lost) is not the
    failover's; a stall inside the window counts. None when the sink did not report its
    silences (the caller then has only ``max_gap_ms``) or the stream was not running across
    the cut (nothing to measure); 0.0 when none overlaps the window."""
    if "silences" not in got or got.get("last") is None or not got["first"] <= cut < got["last"]:
        return None
    over = [end - start for start, end in got["silences"] if end > cut and start < cut + window_s]
    return round(max(over) * 1000, 1) if over else 0.0


def timeline(events: list[tuple[float, int]], bin_s: float = 0.010) -> dict:
    """Arrivals ((monotonic s, records) per receive) as counts per bin from the first one,
    its wall-clock time, and the TOP_GAPS largest gaps between two receives, largest first
    (wall clock, both ends): on a loaded machine the largest is not always the kill's."""
    if not events:
        return {"first_unix": None, "bin_ms": bin_s * 1000, "counts": [], "gaps_unix": []}
    first = events[0][0]
    counts = [0] * (int((events[-1][0] - first) / bin_s) + 1)
    for t, n in events:
        counts[int((t - first) / bin_s)] += n
    to_wall = time.time() - time.monotonic()
    times = [t for t, _ in events]
    gaps = sorted(zip(times, times[1:]), key=lambda ab: ab[0] - ab[1])[:TOP_GAPS]
    return {"first_unix": first + to_wall, "bin_ms": bin_s * 1000, "counts": counts,
            "gaps_unix": [[x + to_wall, y + to_wall] for x, y in gaps]}


def send_bulk(to: str, port: int, mbit: float, seconds: float) -> dict:
    """TCP records as fast as the connection (paced to `mbit`) takes them."""
    sent, error = 0, None
    s = socket.create_connection((to, port), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, int(mbit * 1e6 / 8))
    s.settimeout(None)
    per_write = 1024
    chunk = bytes(REC.size * per_write)   # the sink counts records; their content is not read
    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            s.sendall(chunk)
            sent += per_write
    except OSError as e:
        error = f"{type(e).__name__}: {e}"
    finally:
        s.close()
    return {"sent": sent, "error": error}


SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)


def send(proto: str, to: str, port: int, pps: int, seconds: float, mbit: float = 100) -> dict:
    if proto == "tcp" and pps == 0:
        return send_bulk(to, port, mbit, seconds)
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
    ap.add_argument("--mbit", type=float, default=100.0, help="TCP --pps 0: the pacing rate")
    ap.add_argument("--seconds", type=float, required=True)
    a = ap.parse_args(argv)
    if a.pps < 0 or (a.pps == 0 and a.proto != "tcp"):
        ap.error("--pps: at least 1 (0, bulk, for TCP only)")
    if a.mode == "sink":
        out = sink(a.proto, a.bind, a.port, a.seconds)
    else:
        out = send(a.proto, a.to, a.port, a.pps, a.seconds, a.mbit)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
