"""The hello process across namespaces (root; marker `netns`): a hello that crosses a veth
and a bridge into another namespace keeps the kernel's arrival stamp there, and the daemon's
copies of the beat's sockets (pidfd_getfd) show it waiting unread while the beat is stopped.

The lab (scripts/lab/topology.py, prefix `npb<hex>-`, always taken down) is only built, no
daemon: a Beat on fw-b's failover address, a plain sender in fw-a's namespace.
"""
import json
import secrets

import pytest

from netns_lab import Lab, leg_state, unique_prefix
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


# ---- a daemon that dies without stopping: its beat gives the virtual addresses back ----

VMAC, VIP = "02:4e:50:07:00:01", "198.18.1.77/24"   # not the lab's gateway (built on fw-a)

HOLDER = r"""
import json, os, signal, sys, time
from pyroute2 import IPRoute
from replication.beat import Beat
key, how = bytes.fromhex(sys.argv[1]), sys.argv[2]
leg, vmac, vip, a, port = sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], int(sys.argv[7])
with IPRoute() as ipr:
    idx = ipr.link_lookup(ifname=leg)[0]
    own = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
    ipr.link("set", index=idx, address=vmac)        # as an active unit holds them
    addr, plen = vip.split("/")
    ipr.addr("add", index=idx, address=addr, prefixlen=int(plen))
beat = Beat(key, 1, [("failover", (a, port), ("198.18.255.2", port))],
            release={"vips": [[leg, vip]], "macs": {leg: [own, vmac]}})
print(json.dumps({"own": own, "beat": beat.pid}), flush=True)
if how == "SIGKILL":
    os.kill(os.getpid(), signal.SIGKILL)
if how == "exit":
    os._exit(1)                                     # a crash: no close()
beat.close()                                        # an orderly stop: the daemon gives back its own
print("closed", flush=True)
time.sleep(30)
"""

@pytest.mark.parametrize("how", ["SIGKILL", "exit", "stop"])
def test_a_dead_daemons_beat_gives_back_the_virtual_mac_and_addresses(request, how):
    import time
    lab_ = Lab.up(lab(unique_prefix("r")), request)
    holder = lab_.spawn_python(FW_A, HOLDER, KEY.hex(), how, "in0", VMAC, VIP, A, PORT, ready=None)
    try:
        line = holder.stdout.readline()
        assert line, holder.communicate(timeout=10)[1]
        first = json.loads(line)

        def leg():
            return leg_state(lab_, FW_A, "in0")
        if how == "stop":
            assert holder.stdout.readline().strip() == "closed"
            time.sleep(0.5)
            got = leg()             # an orderly stop leaves them to the daemon
            assert got["mac"] == VMAC and VIP.split("/")[0] in got["addrs"], got
            return
        holder.wait(timeout=20)
        end = time.monotonic() + 10
        while True:
            got = leg()
            if got["mac"] == first["own"] and VIP.split("/")[0] not in got["addrs"]:
                break
            assert time.monotonic() < end, (first, got)
            time.sleep(0.1)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
