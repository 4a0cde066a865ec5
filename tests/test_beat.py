"""The hello process and its shared block (replication.beat, replication.beatshm), on the
loopback (no root): the block's layout and seqlock; two beats hear each other on every
path; a forged, a replayed and a foreign hello are refused and counted, never passed on;
"send now" sends at once; a beat whose daemon stops stepping falls silent; the beat dies
with its parent (even a SIGKILLed one); two Pairs with beats negotiate and fail over.
"""
from __future__ import annotations

import mmap
import multiprocessing
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from replication import beatshm, wire
from replication.beat import Beat
from replication.beatshm import Block, Heard, Torn
from replication.wire import HELLO, Codec, Message

KEY = secrets.token_bytes(32)
HELLO_A = wire.Hello(3, 110, 0, 5, 20, 7, 1, 2)


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait(cond, timeout_s: float = 3.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


# ---- the block ----

def test_layout_is_fixed():
    assert (beatshm.OFF_ALIVE, beatshm.OFF_OURS, beatshm.OFF_HEARD, beatshm.SLOT) == (8, 16, 40, 48)
    assert beatshm.OURS.size == 20 and beatshm.HEARD.size == 36
    assert beatshm.OFF_COUNTERS == 184 and beatshm.OFF_WATCH == 184 + 8 * len(beatshm.COUNTERS)
    assert beatshm.OFF_WATCH % 8 == 0 and beatshm.SIZE == beatshm.OFF_WATCH + 4 + 36
    b = Block(bytearray(beatshm.SIZE))
    b.init()
    assert bytes(b.buf[:8]) == b"NPBT\x02\x00\x00\x00"
    assert b.watch() == beatshm.Watch(0, 0, 0, 0)
    b.set_watch(beatshm.Watch(1, 2, 3, 4))
    assert b.watch() == beatshm.Watch(1, 2, 3, 4)
    b.check()
    with pytest.raises(ValueError, match="needs"):
        Block(bytearray(beatshm.SIZE - 1))
    with pytest.raises(ValueError, match="not a beat block"):
        Block(bytearray(beatshm.SIZE)).check()


def test_records_round_trip_and_empty_before_the_first_write():
    b = Block(bytearray(beatshm.SIZE))
    b.init()
    assert b.ours() is None and b.heard("inside") is None
    b.set_ours(HELLO_A)
    assert b.ours() == HELLO_A
    h = Heard(3, 123456789012, 2, HELLO_A._replace(role=4))
    b.set_heard("inside", h)
    assert b.heard("inside") == h and b.heard("failover") is None and b.heard("outside") is None
    assert b.buf[beatshm.OFF_HEARD + beatshm.SLOT] == 2          # seq: written once, even
    b.bump("rx_inside")
    b.bump("wire_bad_mac", 3)
    assert b.counters()["rx_inside"] == 1 and b.counters()["wire_bad_mac"] == 3
    b.set_max("tx_late_max_ms", 7)
    b.set_max("tx_late_max_ms", 3)
    assert b.counters()["tx_late_max_ms"] == 7


def test_a_record_mid_write_is_never_read():
    """seq odd (the writer is between its two seq stores) or changed under the reader: retry;
    a writer stuck mid-write gives Torn, never a half-written record."""
    b = Block(bytearray(beatshm.SIZE))
    b.init()
    b.set_ours(HELLO_A)
    beatshm.SEQ.pack_into(b.buf, beatshm.OFF_OURS, 3)                   # odd: mid-write
    with pytest.raises(Torn):
        b.ours()
    beatshm.SEQ.pack_into(b.buf, beatshm.OFF_OURS, 4)
    assert b.ours() == HELLO_A


def _writer(buf, n: int) -> None:
    b = Block(buf)
    for i in range(1, n + 1):
        b.set_heard("failover", Heard(i, i, i, wire.Hello(i & 0xFF, i & 0xFF, 0, i & 0xFFFF,
                                                           i & 0xFFFF, i, i, i)))
        for _ in range(30):             # back to back, yet a reader gets in between
            pass


def test_seqlock_against_a_writer_in_another_process():
    """Every record read while another process rewrites it is one whole record."""
    buf = mmap.mmap(-1, beatshm.SIZE)
    b = Block(buf)
    b.init()
    p = multiprocessing.get_context("fork").Process(target=_writer, args=(buf, 100_000))
    p.start()
    seen = 0
    try:
        while p.is_alive() or seen == 0:
            try:
                h = b.heard("failover")
            except Torn:                    # the writer preempted mid-write: no record at all
                continue
            if h is None:
                continue
            seen += 1
            assert h.count == h.heard_ns == h.unit == h.hello.table_size == h.hello.bulk_total, h
            assert h.hello.role == h.count & 0xFF and h.hello.poll_ms == h.count & 0xFFFF, h
    finally:
        p.join(10)
    assert p.exitcode == 0 and seen > 100
    assert b.heard("failover").count == 100_000


# ---- the process ----

@pytest.fixture
def beats():
    made: list[Beat] = []

    def make(*a, **kw) -> Beat:
        b = Beat(*a, **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def pair_of_beats(make, hello_b=HELLO_A._replace(role=4, state=100)):
    fa, fb, d = free_port(), free_port(), free_port()
    a = make(KEY, 1, [("failover", ("127.0.0.1", fa), ("127.0.0.1", fb)),
                      ("inside", ("127.0.1.1", d), ("127.0.1.2", d)),
                      ("outside", ("127.0.2.1", d), ("127.0.2.2", d))])
    b = make(KEY, 2, [("failover", ("127.0.0.1", fb), ("127.0.0.1", fa)),
                      ("inside", ("127.0.1.2", d), ("127.0.1.1", d)),
                      ("outside", ("127.0.2.2", d), ("127.0.2.1", d))])
    for x, h in ((a, HELLO_A), (b, hello_b)):
        x.alive()
        x.publish(h)
    return a, b


def test_hellos_flow_on_every_path(beats):
    a, b = pair_of_beats(beats)
    got: dict[str, tuple] = {}

    def heard():
        a.alive()
        b.alive()
        got.update({p: (at, unit, h) for p, at, unit, h in a.heard()})
        return len(got) == 3

    assert wait(heard)
    now = time.monotonic_ns() // 1_000_000
    for path, (at, unit, h) in got.items():
        assert unit == 2 and h == HELLO_A._replace(role=4, state=100), path
        assert now - 3000 < at <= now
    assert a.data_paths == ("inside", "outside")
    c = a.counters()
    assert all(c[f"rx_{p}"] > 0 and c[f"tx_{p}"] > 0 for p in beatshm.PATHS), c
    assert not any(c[f"rx_rejected_{p}"] for p in beatshm.PATHS), c
    assert 0 <= c["rx_gap_max_ms_failover"] < 3000 and 0 <= c["tx_late_max_ms"] < 3000, c
    assert c["held_daemon_stuck"] == c["held_daemon_stopped"] == 0, c
    b.publish(HELLO_A._replace(role=5))             # a change reaches the peer's next hello
    assert wait(lambda: any(h.role == 5 for _, _, _, h in a.heard()))


def test_forged_replayed_and_foreign_hellos_are_refused_and_counted(beats):
    fa, fb = free_port(), free_port()
    a = beats(KEY, 1, [("failover", ("127.0.0.1", fa), ("127.0.0.1", fb))])
    a.alive()
    a.publish(HELLO_A)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", fb))
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.9", fb))
    try:
        peer.settimeout(3)
        data = peer.recv(2048)                      # a's own hellos come to the peer's port
        msg = Codec(KEY, 2).decode(data)
        assert msg is not None and msg.unit == 1 and msg.sections == ((HELLO, (HELLO_A,)),)
        codec = Codec(KEY, 2)
        mine = HELLO_A._replace(role=4)
        good = codec.encode(Message(unit=2, epoch=codec.epoch, xmit=1, sections=((HELLO, (mine,)),)))
        peer.sendto(good, ("127.0.0.1", fa))
        assert wait(lambda: a.counters()["rx_failover"] == 1)
        assert [(p, u, h) for p, _, u, h in a.heard()] == [("failover", 2, mine)]
        peer.sendto(good, ("127.0.0.1", fa))        # the same datagram again
        forged = Codec(b"x" * 32, 2, epoch=codec.epoch).encode(
            Message(unit=2, epoch=codec.epoch, xmit=2, sections=((HELLO, (mine,)),)))
        peer.sendto(forged, ("127.0.0.1", fa))
        stranger.sendto(codec.encode(Message(unit=2, epoch=codec.epoch, xmit=3,
                                             sections=((HELLO, (mine,)),))), ("127.0.0.1", fa))
        ack = codec.encode(Message(unit=2, epoch=codec.epoch, xmit=4,
                                   sections=((wire.UPDATE_REQUEST, (wire.UpdateRequest(0, 0, 1),)),)))
        peer.sendto(ack, ("127.0.0.1", fa))
        assert wait(lambda: a.counters()["rx_not_hello_failover"] == 1)
        c = a.counters()
        assert c["rx_rejected_failover"] == 2 and c["wire_replay"] == 1 and c["wire_bad_mac"] == 1, c
        assert c["rx_wrong_source_failover"] == 1 and c["rx_failover"] == 1, c
        assert a.heard() == []                      # nothing refused was passed on
    finally:
        peer.close()
        stranger.close()


def test_send_now_and_silence_when_the_daemon_stops_stepping(beats):
    fa, fb = free_port(), free_port()
    a = beats(KEY, 1, [("failover", ("127.0.0.1", fa), ("127.0.0.1", fb))])
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", fb))
    peer.settimeout(3)
    try:
        a.alive()
        a.publish(HELLO_A._replace(poll_ms=60_000))     # one hello a minute
        peer.recv(2048)                                 # the first, at once
        t0 = time.monotonic()
        a.send_now()
        peer.recv(2048)
        assert time.monotonic() - t0 < 1.0
        a.publish(HELLO_A._replace(poll_ms=5))
        a.send_now()
        a.alive(time.monotonic_ns() - (beatshm.STALE_MS + 100) * 1_000_000)   # the loop is stuck
        time.sleep(0.05)
        while True:                                     # drain what left before it noticed
            peer.settimeout(0.1)
            try:
                peer.recv(2048)
            except TimeoutError:
                break
        peer.settimeout(0.3)
        with pytest.raises(TimeoutError):
            peer.recv(2048)
        assert a.counters()["held_daemon_stuck"] > 0
        a.alive()                                       # stepping again: hellos again
        peer.settimeout(3)
        assert Codec(KEY, 2).decode(peer.recv(2048)) is not None
    finally:
        peer.close()


def test_a_bind_error_fails_the_start():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(RuntimeError, match="hellos on failover: cannot bind 127.0.0.1"):
            Beat(KEY, 1, [("failover", s.getsockname(), ("127.0.0.1", 9))])
    finally:
        s.close()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("how", ["SIGKILL", "exit"])
def test_the_beat_dies_with_its_parent(how):
    code = textwrap.dedent(f"""
        import sys, time
        from replication.beat import Beat
        b = Beat(bytes.fromhex({KEY.hex()!r}), 1, [("failover", ("127.0.0.1", {free_port()}),
                                                   ("127.0.0.1", {free_port()}))])
        print(b.pid, flush=True)
        sys.stdin.readline()                 # the test saw the beat running
        if {how!r} == "exit":
            import os; os._exit(0)           # no close(): only the pipe's EOF tells the beat
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stdin=subprocess.PIPE,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        beat_pid = int(parent.stdout.readline())
        assert not _gone(beat_pid)
        parent.stdin.write(b"\n")
        parent.stdin.flush()
        if how == "SIGKILL":
            parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert wait(lambda: _gone(beat_pid), 10), (f"beat {beat_pid} outlived its parent: "
                                                   f"{open(f'/proc/{beat_pid}/status').read()[:300]}")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_close_stops_the_process(beats):
    a = beats(KEY, 1, [("failover", ("127.0.0.1", free_port()), ("127.0.0.1", free_port()))])
    assert a.running()
    pid = a.pid
    a.close()
    assert not a.running() and _gone(pid)


# ---- a Pair with a beat ----

def test_pairs_with_beats_negotiate_and_the_standby_takes_over_a_silent_active(beats):
    from tests.test_pair import Unit, free_ports, run
    from replication.role import RoleState

    fa, fb, d = free_port(), free_port(), free_port()
    ba = beats(KEY, 1, [("failover", ("127.0.0.1", fa), ("127.0.0.1", fb)),
                        ("inside", ("127.0.1.1", d), ("127.0.1.2", d))])
    bb = beats(KEY, 2, [("failover", ("127.0.0.1", fb), ("127.0.0.1", fa)),
                        ("inside", ("127.0.1.2", d), ("127.0.1.1", d))])
    pa, pb = free_ports(2)
    a = Unit(1, pa, pb, poll_ms=10, hold_ms=100, beat=ba)
    b = Unit(2, pb, pa, poll_ms=10, hold_ms=100, beat=bb)
    try:
        a.pair.start()
        assert run([a], lambda: a.pair.role.is_active, 2)
        b.pair.start()
        assert run([a, b], lambda: b.pair.role.state is RoleState.STANDBY_READY)
        assert b.pair.detector.counters["hellos_rx_failover"] > 0
        assert b.pair.detector.counters["hellos_rx_inside"] > 0
        assert b.pair.replication_counters()["beat_rx_inside"] > 0
        assert run([a, b], lambda: a.pair.transport.idle() and b.pair.transport.idle())
        a.step()
        # an idle loop waits (its hellos are the beat's: no send timer of its own to spin on)
        assert a.pair.next_wake_ms() > 0 and b.pair.next_wake_ms() > 0
        a.alive = False                     # a stops stepping: its beat goes on for STALE_MS
        ba.close()                          # ... unless it is gone: the active is dead
        assert run([b], lambda: b.pair.role.is_active, 3)
        assert b.pair.role.counters["takeovers"] == 1
    finally:
        a.pair.link.close()
        b.pair.link.close()


def test_a_stopped_daemon_falls_silent_at_once():
    """SIGSTOP (a freeze) of the daemon: its beat stops sending within a poll, not STALE_MS
    later; SIGCONT: hellos again."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    code = textwrap.dedent(f"""
        import time
        from replication import wire
        from replication.beat import Beat
        b = Beat(bytes.fromhex({KEY.hex()!r}), 1, [("failover", ("127.0.0.1", {free_port()}),
                                                   ("127.0.0.1", {peer.getsockname()[1]}))])
        b.publish(wire.Hello(3, 110, 0, 5, 20, 0, 0, 0))
        while True:
            b.alive()
            time.sleep(0.005)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code],
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        peer.settimeout(10)
        peer.recv(2048)
        parent.send_signal(signal.SIGSTOP)
        time.sleep(0.05)
        peer.settimeout(0.05)
        with pytest.raises(TimeoutError):
            while True:                                 # what left before the stop
                peer.recv(2048)
        peer.settimeout(0.3)
        with pytest.raises(TimeoutError):
            peer.recv(2048)
        parent.send_signal(signal.SIGCONT)
        peer.settimeout(3)
        assert Codec(KEY, 2).decode(peer.recv(2048)) is not None
    finally:
        parent.kill()
        parent.wait()
        peer.close()


# ---- arrival stamps and the beat's own pauses ----

def test_arrival_is_the_kernel_stamp_unless_implausible():
    from replication.beat import SO_TIMESTAMPNS, TIMESPEC, arrival
    offset = 1_700_000_000 * 10**9
    read = 5_000_000_000

    def anc(mono_ns):
        t = mono_ns + offset
        return [(socket.SOL_SOCKET, SO_TIMESTAMPNS, TIMESPEC.pack(t // 10**9, t % 10**9))]
    assert arrival(anc(read - 30_000_000), read, offset) == read - 30_000_000
    assert arrival([], read, offset) == read                        # no stamp: the read time
    assert arrival(anc(read + 1), read, offset) == read             # after the read: a clock step
    assert arrival(anc(read - 2 * 10**9), read, offset) == read     # seconds before: likewise


def test_a_hello_heard_while_the_beat_was_stopped_keeps_its_arrival_time(beats):
    """The beat is stopped (SIGSTOP: like its CPU held by a kernel path) while the peer's
    hello arrives: the hello counts from its arrival, and the stop is a pause of its own
    that the daemon sees (Beat.watched): the detector leaves it out of the peer's silence."""
    fa, fb = free_port(), free_port()
    a = beats(KEY, 1, [("failover", ("127.0.0.1", fa), ("127.0.0.1", fb))])
    a.alive()
    a.publish(HELLO_A)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", fb))
    codec = Codec(KEY, 2)
    try:
        def send():
            peer.sendto(codec.encode(Message(unit=2, epoch=codec.epoch, xmit=1,
                                             sections=((HELLO, (HELLO_A,)),))), ("127.0.0.1", fa))
        assert wait(lambda: a.block.watch().looked_ns > 0)      # its loop runs
        os.kill(a.pid, signal.SIGSTOP)
        time.sleep(0.05)
        until, _ = a.watched()
        stopped_at = time.monotonic_ns() // 1_000_000
        assert until < stopped_at - 20              # overdue: it listened only until its wake
        send()
        sent_at = time.monotonic_ns() // 1_000_000
        # not overdue yet (as of its own wake), but a datagram waits unread in its socket
        # (the daemon holds copies of the beat's sockets): it listened until its last read
        w = a.block.watch()
        assert a._socks and wait(lambda: a.watched(w.wake_by_ns)[0] == w.looked_ns // 1_000_000), (w, a.watched(w.wake_by_ns), select.select(a._socks, [], [], 0))
        time.sleep(0.2)
        os.kill(a.pid, signal.SIGCONT)
        got = []
        assert wait(lambda: got.extend(a.heard()) or got)
        at = got[0][1]
        assert sent_at - 5 <= at <= sent_at + 20, (sent_at, at)     # not the read, 200 ms on
        assert wait(lambda: a.counters()["pauses"] >= 1)
        assert a.counters()["pause_max_ms"] >= 200 and a.counters()["rx_late_max_ms"] >= 150
        until, pauses = a.watched()
        assert len(pauses) == 1 and pauses[0][1] - pauses[0][0] >= 200, pauses
        assert a.watched()[1] == []                 # each pause once
        assert until >= time.monotonic_ns() // 1_000_000 - 50
    finally:
        os.kill(a.pid, signal.SIGCONT)
        peer.close()


def test_the_backup_thread_sends_when_the_main_one_does_not():
    """The main thread is held (here: never runs): the backup sends a round every 1.5 polls,
    counted (tx_backup); the peer's codec accepts every one."""
    from replication.beat import _backup, _Path, _Sender
    block = Block(bytearray(beatshm.SIZE))
    block.init()
    block.set_ours(HELLO_A)                         # poll 5 ms
    block.set_alive(time.monotonic_ns())
    fa, fb = free_port(), free_port()
    path = _Path("failover", ("127.0.0.1", fa), ("127.0.0.1", fb), KEY, 1, block)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", fb))
    peer.settimeout(1)
    stop = threading.Event()
    t = threading.Thread(target=_backup, args=(block, _Sender(block, [path], os.getpid()), None, stop))
    t.start()
    try:
        codec = Codec(KEY, 2)
        got = [codec.decode(peer.recv(2048)) for _ in range(20)]
        assert all(m is not None and m.sections[0][1][0] == HELLO_A for m in got)
        c = block.counters()
        assert c["tx_backup"] >= 20 and c["tx_failover"] == c["tx_backup"], c
        assert c["tx_gap_max_ms"] >= 7                  # 1.5 polls between rounds, no burst
    finally:
        stop.set()
        t.join()
        path.sock.close()
        peer.close()
