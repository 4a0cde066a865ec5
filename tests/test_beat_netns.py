"""The hello process across namespaces (root; marker `netns`): a hello that crosses a veth
and a bridge into another namespace keeps the kernel's arrival stamp there, and the daemon's
copies of the beat's sockets (pidfd_getfd) show it waiting unread while the beat is stopped.

The lab (scripts/lab/topology.py, prefix `npb<hex>-`, always taken down) is only built, no
daemon: a Beat on fw-b's failover address, a plain sender in fw-a's namespace.
"""
import json
import secrets

import pytest

from netns_lab import Lab, unique_prefix
from scripts.lab.topology import FW_A, FW_B, lab

pytestmark = pytest.mark.netns

KEY = secrets.token_bytes(32)
PORT = 7790
A, B = "198.18.255.1", "198.18.255.2"       # fw-a's and fw-b's fo0 (topology.py)

LISTENER = r"""
import json, os, select, signal, sys, time
from replication import wire
from replication.beat import Beat
key, a, b, port = bytes.fromhex(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
beat = Beat(key, 2, [("failover", (b, port), (a, port))])
beat.alive()
beat.publish(wire.Hello(4, 100, 0, 3, 15, 0, 0, 0))
end = time.monotonic() + 5
while beat.block.watch().looked_ns == 0 and time.monotonic() < end:
    time.sleep(0.005)
os.kill(beat.pid, signal.SIGSTOP)           # its CPU held: it reads nothing
print("ready", flush=True)
end = time.monotonic() + 10
while not select.select(beat._socks, [], [], 0.01)[0] and time.monotonic() < end:
    pass                                    # the sender's hello arrives, waits unread
time.sleep(0.3)
w = beat.block.watch()
until, _ = beat.watched(w.wake_by_ns)       # not yet overdue as of its own wake, but...
cont = time.monotonic_ns() // 1_000_000
os.kill(beat.pid, signal.SIGCONT)
heard = []
end = time.monotonic() + 5
while not heard and time.monotonic() < end:
    beat.alive()
    heard = beat.heard()
    time.sleep(0.002)
print(json.dumps({"cont": cont, "heard": heard[0][1] if heard else None,
                  "until": until, "looked": w.looked_ns // 1_000_000,
                  "counters": beat.counters()}), flush=True)
beat.close()
"""

SENDER = r"""
import sys, socket, time
from replication import wire
from replication.wire import HELLO, Codec, Message
key, a, b, port = bytes.fromhex(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
codec = Codec(key, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((a, port))
msg = codec.encode(Message(unit=1, epoch=codec.epoch, xmit=1,
                           sections=((HELLO, (wire.Hello(3, 110, 0, 3, 15, 0, 0, 0),)),)))
before = time.monotonic_ns() // 1_000_000
s.sendto(msg, (b, port))
print(before, time.monotonic_ns() // 1_000_000, flush=True)
"""


def test_a_hello_into_another_namespace_counts_from_its_arrival(request):
    lab_ = Lab.up(lab(unique_prefix("b")), request)
    args = (KEY.hex(), A, B, PORT)
    listener = lab_.spawn_python(FW_B, LISTENER, *args)
    r = lab_.python(FW_A, SENDER, *args, timeout=20)
    assert r.returncode == 0, r.stderr
    before, after = map(int, r.stdout.split()[:2])
    out, err = listener.communicate(timeout=30)
    assert listener.returncode == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    assert got["heard"] is not None, got
    # heard at its arrival in fw-b's namespace, not when the stopped beat read it
    assert before <= got["heard"] <= after + 50, (before, after, got)
    assert got["cont"] - got["heard"] >= 250, (before, after, got)
    # while it waited unread, the daemon's side knew the beat listened only until its last read
    assert got["until"] == got["looked"], got
    assert got["counters"]["rx_failover"] == 1 and got["counters"]["rx_late_max_ms"] >= 250, got
