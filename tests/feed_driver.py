"""A minimal firewall unit for the netns tests: one Core, one FastFeed, a loop.

Run inside the firewall's namespace (the test starts it there); it binds the
queue, prints ``ready`` on stdout, and loops until SIGTERM, then prints the
feed's and the core's counters as one JSON line and exits. The real daemon
(config, rules, control socket) is ``natpair run``; this is only its loop.

    python tests/feed_driver.py --queue N --pool ADDR --inside IFNAME --outside IFNAME
"""
import argparse
import json
import signal
import socket
import sys
import threading

from dataplane.core import Core
from dataplane.feed import FastFeed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queue", type=int, required=True)
    ap.add_argument("--pool", action="append", required=True)
    ap.add_argument("--inside", required=True)
    ap.add_argument("--outside", required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--drain-us", type=int, default=0)
    args = ap.parse_args()

    core = Core(pool=args.pool, journal=False)
    sides = {socket.if_nametoindex(args.inside): "inside",
             socket.if_nametoindex(args.outside): "outside"}
    feed = FastFeed(core, args.queue, sides, batch=args.batch, drain_us=args.drain_us)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    feed.run(stop, max_pkts=args.batch, timeout_ms=50)
    report = {"feed": feed.counters(), "core": core.counters()}
    feed.close()
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
