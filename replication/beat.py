"""The hello process: a pair's hellos sent and heard outside the daemon's GIL.

Owns ``Beat`` (the daemon's handle) and ``main`` (``python -m replication.beat``, the
process itself). The daemon's replication thread runs at SCHED_FIFO, but it needs the
GIL, which the feed, control and neighbour threads (SCHED_OTHER) hold between their C
calls and may keep while an ordinary task preempts them: a priority inversion that made
the active's hellos 20-500 ms late under load and the standby take over. The beat
process has its own interpreter and GIL, runs at SCHED_FIFO and does only this:

- every ``poll_ms`` (from our hello) one HELLO on each path: the failover link, on a port
  of its own (the stream's port + 1, so the transport's socket and replay window are
  untouched), and each data leg (the sockets replication.datapath.DataHellos held, on
  the failover port: dataplane.rules.HelloAccept lets them past NFQUEUE); each path has
  its own Codec (HMAC-SHA256 under the failover key, its own epoch and replay window);
- every valid HELLO from the peer's address on a path: its arrival time and content into
  that path's slot of the shared block. The arrival is the kernel's receive timestamp
  (SO_TIMESTAMPNS, moved to CLOCK_MONOTONIC), not the time this process got around to
  reading it: a hello that waited in the socket while the beat could not run was still
  heard in time (rx_late_max_ms: the longest such wait); forged, replayed, foreign or
  non-HELLO datagrams are counted per reason and per path, never passed on;
- it sends only what the daemon wrote (``Block.ours``), only while the daemon runs (not
  stopped: SIGSTOP, a power cut's freeze, a debugger; /proc/<pid>/stat) and its
  replication thread is stepping (``beatshm.STALE_MS``): a frozen or hung daemon falls
  silent (counted: held_daemon_stopped, held_daemon_stuck);
- what it watched (``beatshm.Watch``): when it last read its sockets, when it asked to be
  woken, and its pauses: a wake later than ``beatshm.pause_ms(poll)`` after it asked means
  the beat was not running (measured on the 2-vCPU lab VM under iperf3: the kernel there
  does not preempt (PREEMPT_NONE), so a SCHED_FIFO task waits up to ~100 ms for a long
  kernel path on its CPU). Nobody listened meanwhile: the daemon's detector does not count
  that time as the peer's silence. Counted: pauses, pause_max_ms; with NATPAIR_BEAT_TRACE
  set, each pause and late hello is a line in ``$NATPAIR_BEAT_TRACE.<unit>``.

A second thread, pinned to another CPU, sends a round of hellos when the main thread is
half a poll late with one: the stalls above hold one CPU (the main thread runnable, waiting
for it), rarely both at once (tx_backup counts its rounds, tx_gap_max_ms the longest time
between two rounds by either).

The process locks its memory (no page fault in the loop) and freezes the start-up objects
out of the garbage collector's sight (a full collection only walks what the loop made).

The block (replication.beatshm) lives in a memfd the daemon passes (``--fd``); the
config (key, unit id, paths, the daemon's pid) comes as one JSON line on stdin. stdin
then stays the daemon's pipe: a byte means "send a hello now" (the switchover), ``STOP``
then EOF an orderly stop, EOF alone that the daemon is gone (a crash too: the kernel closes
its end), and the beat exits; PR_SET_PDEATHSIG is the second guard. With a release plan
(``release`` in its config, from dataplane.release.plan: the virtual addresses and MACs) a daemon that died
without stopping has them given back by its beat on the way out. Readiness (sockets bound) or the start error
comes back on ``--ready`` (a pipe fd), so the daemon fails to start as it did when it
bound the data-leg sockets itself.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import mmap
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from replication import beatshm, wire
from replication.beatshm import Block, Heard
from replication.counters import Counters
from replication.wire import HELLO, Codec, Message

RT_PRIORITY = 20                # above the daemon's replication thread (10)
START_TIMEOUT_S = 10
STOP = b"."              # on the pipe: an orderly stop (nothing to release)
RELEASE_WAIT_S = 2.0      # a pipe that ended: how long the daemon may take to be gone
RX_BURST = 64                   # datagrams read per socket per wake: a flood cannot pin the CPU
PR_SET_PDEATHSIG = 1
MCL_CURRENT, MCL_FUTURE = 1, 2
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)     # Linux (x86, arm64); = SCM_TIMESTAMPNS
TIMESPEC = struct.Struct("@qq")
CLOCK_STEP_NS = 2_000_000_000   # a kernel stamp this far from the read time: a clock step, not a wait
TRACE_ENV = "NATPAIR_BEAT_TRACE"


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


# ---- the daemon's side ----

SYS_PIDFD_GETFD = {"x86_64": 438, "aarch64": 438}


def _peek_fds(pid: int, fds: str) -> list[int]:
    """Copies of the beat's sockets (pidfd_getfd), for the daemon to see whether datagrams
    wait unread in them; [] where the kernel does not allow it (then only the beat's own
    wakes say when it stopped listening)."""
    nr = SYS_PIDFD_GETFD.get(os.uname().machine)
    if not fds or nr is None:
        return []
    out: list[int] = []
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        return []
    try:
        for f in fds.split(","):
            fd = libc.syscall(nr, pidfd, int(f), 0)
            if fd < 0:
                for x in out:
                    os.close(x)
                return []
            out.append(fd)
    finally:
        os.close(pidfd)
    return out

class Beat:
    """Starts the beat process and talks to it through the block. ``paths``: (name,
    local (address, port), peer (address, port)), names from ``beatshm.PATHS``."""

    def __init__(self, key: bytes, unit: int, paths, *, rt_priority: int = RT_PRIORITY,
                 release: dict | None = None):
        for name, _, _ in paths:
            if name not in beatshm.PATHS:
                raise ValueError(f"unknown beat path {name!r}")
        self.paths = tuple(name for name, _, _ in paths)
        self.data_paths = tuple(n for n in self.paths if n != beatshm.PATHS[0])
        self._last: dict[str, int] = dict.fromkeys(self.paths, 0)
        self._paused_ns = 0
        self._ours: wire.Hello | None = None
        self._fd = os.memfd_create("natpair-beat")
        self._wake = self._proc = None
        self._socks: list[int] = []     # the beat's sockets, ours to look at (never read)
        try:
            os.ftruncate(self._fd, beatshm.SIZE)
            self._mm = mmap.mmap(self._fd, beatshm.SIZE)
            self.block = Block(self._mm)
            self.block.init()
            cfg = {"key": bytes(key).hex(), "unit": unit, "parent": os.getpid(),
                   "rt_priority": rt_priority, "release": release,
                   "paths": [[n, list(local), list(peer)] for n, local, peer in paths]}
            self._start(cfg)
        except BaseException:
            self.close()
            raise

    def _start(self, cfg: dict) -> None:
        cmd_r, self._wake = os.pipe()
        ready_r, ready_w = os.pipe()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "replication.beat", "--fd", str(self._fd),
                 "--ready", str(ready_w)], stdin=cmd_r, pass_fds=(self._fd, ready_w), env=env)
        finally:
            os.close(cmd_r)
            os.close(ready_w)
        try:
            os.write(self._wake, json.dumps(cfg).encode() + b"\n")
            os.set_blocking(self._wake, False)
            answer = b""
            deadline = time.monotonic() + START_TIMEOUT_S
            while not answer.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([ready_r], [], [], left)[0]:
                    raise RuntimeError(f"the beat process did not start within {START_TIMEOUT_S} s")
                chunk = os.read(ready_r, 4096)
                if not chunk:
                    break
                answer += chunk
        finally:
            os.close(ready_r)
        text = answer.decode(errors="replace").strip()
        word, _, fds = text.partition(" ")
        if word != "ready":
            raise RuntimeError(f"beat: {text or 'exited at start'}")
        self._socks = _peek_fds(self._proc.pid, fds)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self, now_ns: int | None = None) -> None:
        """The replication thread is stepping (the beat goes quiet if this stops)."""
        self.block.set_alive(time.monotonic_ns() if now_ns is None else now_ns)

    def publish(self, hello: wire.Hello) -> None:
        """What our hellos say from now on (written only when it changed)."""
        if hello != self._ours:
            self.block.set_ours(hello)
            self._ours = hello

    def send_now(self) -> None:
        """A hello on every path at once (the switchover's want/yield)."""
        try:
            os.write(self._wake, b"!")
        except BlockingIOError:         # a full pipe: wake-ups already wait
            pass

    def watched(self, now_ns: int | None = None) -> tuple[int, list[tuple[int, int]]]:
        """(until when the beat has been listening, in monotonic ms; its pauses since the
        last call, (start, end) in ms). Listening: waiting for a datagram or its next send,
        or reading; a beat overdue by more than ``beatshm.pause_ms`` is paused right now
        (not running): it listened only until the wake it asked for. Several pauses between
        two calls come as one, ending at the last (their total length)."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        try:
            w = self.block.watch()
        except beatshm.Torn:
            return now_ns // 1_000_000, []
        if self._socks and w.looked_ns:
            try:
                unread = select.select(self._socks, [], [], 0)[0]
            except (OSError, ValueError):
                unread = []
            if unread:
                # datagrams wait that the beat has not read (it is not running, though not
                # overdue yet): it listened only until it last read
                now_ns = min(now_ns, w.looked_ns)
        pauses = []
        if w.paused_ns > self._paused_ns:
            pauses.append(((w.resumed_ns - (w.paused_ns - self._paused_ns)) // 1_000_000,
                           w.resumed_ns // 1_000_000))
            self._paused_ns = w.paused_ns
        poll = self._ours.poll_ms if self._ours is not None else 5
        overdue = w.wake_by_ns and now_ns > w.wake_by_ns + beatshm.pause_ms(poll) * 1_000_000
        until = max(w.looked_ns, w.wake_by_ns) if overdue else now_ns
        return until // 1_000_000, pauses

    def heard(self) -> list[tuple[str, int, int, wire.Hello]]:
        """(path, heard at in monotonic ms, peer unit, hello) for each path that heard a
        new hello since the last call (the latest one of each)."""
        out = []
        for path in self.paths:
            try:
                h = self.block.heard(path)
            except beatshm.Torn:        # rewritten all the time: read it at the next step
                continue
            if h is not None and h.count != self._last[path]:
                self._last[path] = h.count
                out.append((path, h.heard_ns // 1_000_000, h.unit, h.hello))
        return out

    def counters(self) -> dict[str, int]:
        c = self.block.counters()
        others = tuple(f"_{p}" for p in beatshm.PATHS if p not in self.paths)
        return {k: v for k, v in c.items()
                if (v if k.startswith("wire_") else not k.endswith(others) if others else True)}

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        if self._wake is not None:
            try:
                os.write(self._wake, STOP)  # an orderly stop: the daemon gives back its own
            except OSError:
                pass
            os.close(self._wake)        # EOF: the beat exits
            self._wake = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for fd in getattr(self, "_socks", ()):
            os.close(fd)
        self._socks = []
        if getattr(self, "_mm", None) is not None:
            self._mm.close()
            self._mm = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# ---- the process ----

class _Path:
    def __init__(self, name: str, local, peer, key: bytes, unit: int, block: Block):
        self.name, self.peer = name, (peer[0], int(peer[1]))
        self.block = block
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:                 # no kernel stamps: the read time stands in
            pass
        try:
            self.sock.bind((local[0], int(local[1])))
        except OSError as e:
            self.sock.close()
            raise OSError(e.errno, f"hellos on {name}: cannot bind {local[0]}:{local[1]}: "
                          f"{e.strerror}") from None
        self.codec = Codec(key, unit, counters=_BlockCounters(block))
        self.xmit = 0
        self.count = 0
        self.last_ns = 0

    def send(self, hello: wire.Hello) -> None:
        self.xmit += 1
        msg = Message(unit=self.codec.unit, epoch=self.codec.epoch, xmit=self.xmit,
                      sections=((HELLO, (hello,)),))
        try:
            self.sock.sendto(self.codec.encode(msg), self.peer)
            self.block.bump(f"tx_{self.name}")
        except OSError:                 # the leg is down or gone: like a loss on the wire
            self.block.bump(f"tx_errors_{self.name}")

    def receive(self, trace=None) -> None:
        # the kernel stamps in CLOCK_REALTIME: the offset to CLOCK_MONOTONIC as of now
        offset = time.time_ns() - time.monotonic_ns()
        for _ in range(RX_BURST):
            try:
                data, anc, _flags, addr = self.sock.recvmsg(2048, socket.CMSG_SPACE(TIMESPEC.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:             # ICMP errors reported on the socket
                self.block.bump(f"rx_socket_errors_{self.name}")
                continue
            read = time.monotonic_ns()
            at = arrival(anc, read, offset)
            if read - at > 0:
                self.block.set_max("rx_late_max_ms", (read - at) // 1_000_000)
            if addr[0] != self.peer[0]:
                self.block.bump(f"rx_wrong_source_{self.name}")
                continue
            msg = self.codec.decode(data)
            if msg is None:
                self.block.bump(f"rx_rejected_{self.name}")
                continue
            hellos = [r for action, recs in msg.sections if action == HELLO for r in recs]
            if not hellos or len(msg.sections) != 1:
                self.block.bump(f"rx_not_hello_{self.name}")
                continue
            self.count += 1
            self.block.set_heard(self.name, Heard(self.count, at, msg.unit, hellos[-1]))
            self.block.bump(f"rx_{self.name}")
            if self.last_ns:
                gap = (at - self.last_ns) // 1_000_000
                self.block.set_max(f"rx_gap_max_ms_{self.name}", gap)
                if trace is not None and gap > 2 * max(1, hellos[-1].poll_ms):
                    trace(f"rx_gap {self.name} {gap} ms, read {(read - at) / 1e6:.1f} ms after arrival")
            self.last_ns = max(self.last_ns, at)


def arrival(anc, read_ns: int, offset_ns: int) -> int:
    """When a datagram arrived (CLOCK_MONOTONIC ns): its kernel stamp from ``anc`` (recvmsg's
    ancillary data) less ``offset_ns`` (realtime - monotonic), or ``read_ns`` without one or
    when the stamp is implausible (after the read, or a clock step away from it)."""
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= TIMESPEC.size:
            sec, nsec = TIMESPEC.unpack_from(data)
            at = sec * 1_000_000_000 + nsec - offset_ns
            if read_ns - CLOCK_STEP_NS < at <= read_ns:
                return at
    return read_ns


class _BlockCounters(Counters):
    """The codec's drop reasons, counted in the block too (``wire_<reason>``)."""

    def __init__(self, block: Block):
        super().__init__(wire.REASONS + ("rx_ok", "rx_dropped"))
        self.block = block

    def bump(self, name: str, n: int = 1) -> None:
        super().bump(name, n)
        if f"wire_{name}" in beatshm.COUNTERS:
            self.block.bump(f"wire_{name}", n)


def _read_line(fd: int) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            raise EOFError("the daemon closed the pipe before the config")
        line += chunk
    return line


def _die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except OSError:
        pass
    if os.getppid() != parent:          # it died before the prctl
        os._exit(0)


def _ours(block: Block, last: wire.Hello | None) -> wire.Hello | None:
    try:
        return block.ours()
    except beatshm.Torn:                # being rewritten: what it said a moment ago
        return last


def _running(stat: str) -> bool:
    """The process of /proc/<pid>/stat ``stat`` is not stopped (SIGSTOP, traced) nor gone."""
    try:
        with open(stat, "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"T", b"t", b"Z", b"X")


class _Watcher:
    """The beat's own wakes: what it publishes as ``beatshm.Watch``, and its pauses."""

    def __init__(self, block: Block, trace=None):
        self.block, self.trace = block, trace
        self.looked = self.wake_by = self.paused = self.resumed = self.woke_ns = 0
        self.poll_ms = 5

    def waiting(self, wake_by_ns: int) -> None:
        self.wake_by = wake_by_ns
        self._publish()

    def woke(self, woke_ns: int, poll_ms: int) -> None:
        """Back from waiting at ``woke_ns``: a pause if that is well after the wake asked for."""
        self.woke_ns, self.poll_ms = woke_ns, poll_ms
        if self.wake_by:
            self._pause(self.wake_by, woke_ns)

    def looked_now(self) -> None:
        """Done reading: a pause too if that took a poll (held mid-way: nobody listened)."""
        self.looked = time.monotonic_ns()
        if self.woke_ns:
            self._pause(self.woke_ns, self.looked)
        self._publish()

    def _pause(self, start: int, end: int) -> None:
        late = end - start
        if late > beatshm.pause_ms(self.poll_ms) * 1_000_000:
            self.paused += late
            self.resumed = end
            self.block.bump("pauses")
            self.block.set_max("pause_max_ms", late // 1_000_000)
            if self.trace is not None:
                self.trace(f"pause {late / 1e6:.1f} ms")

    def _publish(self) -> None:
        self.block.set_watch(beatshm.Watch(self.looked, self.wake_by, self.paused, self.resumed))


class _Sender:
    """A round of hellos on every path, from either thread: one at a time (each path's
    sequence numbers), and only while the daemon runs and steps."""

    def __init__(self, block: Block, paths: list[_Path], parent: int):
        self.block, self.paths = block, paths
        self.parent_stat = f"/proc/{parent}/stat"
        self.lock = threading.Lock()
        self.last_ms = 0                # the last round (sent or held back)

    def send(self, ours: wire.Hello, backup: bool = False) -> None:
        with self.lock:
            now = monotonic_ms()
            if self.last_ms:
                self.block.set_max("tx_gap_max_ms", now - self.last_ms)
            self.last_ms = now
            if not _running(self.parent_stat):
                self.block.bump("held_daemon_stopped")      # frozen: the peer must see it dead
                return
            if time.monotonic_ns() - self.block.alive() > beatshm.STALE_MS * 1_000_000:
                self.block.bump("held_daemon_stuck")        # the daemon's loop is stuck: likewise
                return
            for p in self.paths:
                p.send(ours)
            if backup:
                self.block.bump("tx_backup")


def _cpus(unit: int) -> tuple[int, int] | None:
    """(the main thread's CPU, the backup's): two different CPUs of ours, the pair's two
    units on different ones where they share a machine (the lab); None with one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    i = unit % len(cpus)
    return cpus[i], cpus[(i + 1) % len(cpus)]


def _backup(block: Block, sender: _Sender, cpu: int | None, stop: threading.Event | None = None) -> None:
    """Sends a round when the main thread is half a poll late with one (its CPU held)."""
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
    ours = None
    while stop is None or not stop.is_set():
        ours = _ours(block, ours)
        if ours is None:
            time.sleep(0.005)
            continue
        poll = max(1, ours.poll_ms)
        due = sender.last_ms + poll + max(1, poll // 2)
        now = monotonic_ms()
        if now < due:
            time.sleep((due - now) / 1000)
            continue
        sender.send(ours, backup=True)


def run(block: Block, paths: list[_Path], cmd_fd: int, parent: int, trace=None,
        cpus: tuple[int, int] | None = None, died_fd: int | None = None) -> bool:
    """Until the daemon stops (True) or its pipe ends without a stop, or its death signal
    comes through ``died_fd`` (False: it died)."""
    sender = _Sender(block, paths, parent)
    if cpus is not None:
        try:
            os.sched_setaffinity(0, {cpus[0]})
        except OSError:
            pass
        threading.Thread(target=_backup, args=(block, sender, cpus[1]), daemon=True,
                         name="beat-backup").start()
    next_send = 0
    socks = {p.sock.fileno(): p for p in paths}
    fds = [cmd_fd, *socks] + ([died_fd] if died_fd is not None else [])
    ours = None
    watch = _Watcher(block, trace)
    while True:
        now_ns = time.monotonic_ns()
        now = now_ns // 1_000_000
        ours = _ours(block, ours)
        now_asked = False
        wait_ms = 5 if ours is None else max(0, next_send - now)     # none yet: look again soon
        watch.waiting(now_ns + wait_ms * 1_000_000)
        ready = select.select(fds, [], [], wait_ms / 1000)[0]
        # a wake for a datagram comes before the deadline: only a late one can be a pause
        watch.woke(time.monotonic_ns(), ours.poll_ms if ours is not None else 5)
        for fd in ready:
            if fd == died_fd:
                return False                # PR_SET_PDEATHSIG: the daemon is gone
            if fd == cmd_fd:
                got = os.read(cmd_fd, 4096)
                if not got:
                    return False            # the daemon is gone
                if STOP in got:
                    return True             # an orderly stop
                now_asked = True
            else:
                socks[fd].receive(trace)
        watch.looked_now()
        now = monotonic_ms()
        ours = _ours(block, ours)
        if ours is None or not (now_asked or now >= next_send):
            continue
        if sender.last_ms + max(1, ours.poll_ms) > now and not now_asked:
            next_send = sender.last_ms + max(1, ours.poll_ms)   # the backup sent meanwhile
            continue
        if next_send and not now_asked:
            block.set_max("tx_late_max_ms", now - next_send)
            if trace is not None and now - next_send > ours.poll_ms:
                trace(f"tx_late {now - next_send} ms")
        next_send = now + max(1, ours.poll_ms)      # no catch-up bursts
        sender.send(ours)


def _tracer(unit: int):
    """``trace(line)`` appending to ``$NATPAIR_BEAT_TRACE.<unit>`` (a diagnosis aid), or None."""
    base = os.environ.get(TRACE_ENV)
    if not base:
        return None
    f = open(f"{base}.{unit}", "a", buffering=1)

    def trace(line: str) -> None:
        f.write(f"{time.monotonic_ns() // 1_000_000} {line}\n")
    return trace


def _steady() -> None:
    """No page fault and no long collection in the loop: memory locked, start-up objects frozen."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
            print(f"beat: mlockall refused ({os.strerror(ctypes.get_errno())})", file=sys.stderr)
    except OSError:
        pass
    gc.collect()
    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fd", type=int, required=True, help="the memfd of the shared block")
    ap.add_argument("--ready", type=int, required=True, help="a pipe: 'ready' or the start error")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the daemon's ^C is the daemon's to handle
    paths: list[_Path] = []
    try:
        cfg = json.loads(_read_line(0))
        plan = cfg.get("release")
        died_fd = None
        if plan:
            # a release to run at the daemon's death: its death signal wakes the loop
            # through a pipe (nothing raised at a random point of the loop or the release)
            died_fd, died_w = os.pipe()
            os.set_blocking(died_w, False)
            signal.signal(signal.SIGUSR1, lambda *_: None)
            signal.set_wakeup_fd(died_w)
        _die_with_parent(int(cfg["parent"]), signal.SIGUSR1 if plan else signal.SIGKILL)
        block = Block(mmap.mmap(a.fd, beatshm.SIZE))
        block.check()
        key = bytes.fromhex(cfg["key"])
        for name, local, peer in cfg["paths"]:
            paths.append(_Path(name, local, peer, key, int(cfg["unit"]), block))
        _steady()
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(cfg["rt_priority"])))
        except OSError as e:
            print(f"beat: SCHED_FIFO refused ({e}), running at normal priority", file=sys.stderr)
    except Exception as e:
        os.write(a.ready, f"{e}\n".encode())
        return 1
    os.write(a.ready, f"ready {','.join(str(p.sock.fileno()) for p in paths)}\n".encode())
    os.close(a.ready)
    stopped = False
    try:
        stopped = run(block, paths, 0, int(cfg["parent"]), _tracer(int(cfg["unit"])),
                      _cpus(int(cfg["unit"])), died_fd)
    finally:
        for p in paths:
            p.sock.close()
        if plan and not stopped:
            _release(plan, int(cfg["parent"]))
    return 0


def _release(plan: dict, parent: int) -> None:
    """The daemon died without stopping: its virtual addresses and MACs given back, once
    it is certainly gone (reparented away from it), never beside a live daemon."""
    end = time.monotonic() + RELEASE_WAIT_S
    while os.getppid() == parent:
        if time.monotonic() > end:
            print("beat: the daemon's pipe ended but the daemon lives: nothing released",
                  file=sys.stderr)
            return
        time.sleep(0.005)
    from dataplane.release import release
    try:
        for line in release(plan):
            print(f"beat: the daemon died: {line}", file=sys.stderr)
    except Exception as e:
        print(f"beat: the daemon died, release failed: {e}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
