"""One running unit: config -> namespace -> core -> feed, rules, sysctls -> loop.

Owns the unit's life cycle and its threads. Names used:

- ``Daemon(cfg)``: ``start()`` checks what it can before changing anything,
  then applies in this order: leftovers of a crashed run removed, core built,
  queue bound, rules installed, sysctls set, control socket bound, threads
  started; a failure undoes what was done. ``stop()`` undoes it all, in an
  order that never forwards untranslated: feed thread stopped (packets then
  wait or are dropped: fail closed), sysctls restored (ip_forward first),
  rules removed, queue unbound, socket removed.
- with ``[failover]``: a ``replication.pair.Pair`` (link, detector, role, bulk sync), the
  journal on while the unit is active, drained by the feed thread between batches and
  offered to the pair; the virtual addresses (``dataplane.vips``) taken at a takeover
  (state first: the core's journal on, then the addresses, then gratuitous ARP) and given
  back on release; a leftover of a crashed run is removed at start; the neighbour table of
  the data legs watched and installed into (``replication.neighbours``, its own thread)
  and replicated by the pair. A unit without ``[failover]`` runs standalone, as before.
  The pair's pieces that touch the kernel are made by ``dataplane.pairing`` (the hello
  process, carrier watch, virtual MACs). The hellos of every path are sent and heard by a
  child process of the daemon (``replication.beat``, its own GIL, SCHED_FIFO), which the
  pair reads through shared memory at each step: under load the feed or control thread
  could hold this GIL while preempted, and the hellos came hundreds of ms late.
- threads: the feed thread (``feed.run_once`` in a loop), the replication thread (with
  ``[failover]``: ``Pair.step`` on every datagram, on a wake from another thread, and when a
  timer is due (``Pair.next_wake_ms``: 1 ms while busy, up to 5 ms idle)), the control thread
  (a unix socket, one JSON request per connection: ``{"cmd": "counters"}``,
  ``{"cmd": "status"}``, ``{"cmd": "export"}`` (the table as wire records), and the
  operator's commands of ``dataplane.show``), and the main thread, which runs the 1 s sweep timer
  and waits for SIGTERM / SIGINT.
- ``lock``: every core call holds it (the core is single-threaded); the feed
  holds it for one batch, waiting for packets outside it when the feed has a
  ``fileno()``.
- log lines: ``ts level natpair[name] event key=value ...`` (``log_event``; the shape is
  dataplane/logline.py's, for every line, also those of the replication modules).
"""
from __future__ import annotations

import base64
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from dataplane import rules as kernel
from dataplane.release import plan as release_plan
from dataplane.config import Config, ConfigError

SWEEP_BUDGET = 8192        # states expired per 1 s tick at most
JOURNAL_DRAIN = 1024       # journal changes per drain call
STATUS_READ_TRIES = 5      # a read-only control command read again after a RuntimeError
EXPORT_RUN = 4096          # states exported per hold of the core lock (control "export")
REPLICATION_RT_PRIORITY = 10   # SCHED_FIFO for the replication thread (when allowed)
FEED_RT_PRIORITY = 5           # SCHED_FIFO for a pair's feed thread: below replication and beat
OVERFLOW_CHECK_MS = 100   # how often the journal's overflow counter is looked at
GIL_SWITCH_S = 0.0005     # with [failover] (default 0.005)
TAKEOVER_TCP_GRACE_MS = 3000   # after a takeover, TCP windows re-learn from the first segments
FEED_WAIT_MS = 50          # how long one feed call waits for packets
LOG = logging.getLogger("natpair")


def _fmt(v) -> str:
    s = str(v)
    return json.dumps(s) if (not s or any(c in s for c in ' "=\n\t')) else s


def log_event(level: int, event: str, **kv) -> None:
    LOG.log(level, " ".join([event, *(f"{k}={_fmt(v)}" for k, v in kv.items())]))


def setup_logging(name: str, level: int = logging.INFO) -> None:
    from dataplane.logline import KvFormatter     # one key=value shape for every line
    handler = logging.StreamHandler()
    handler.setFormatter(KvFormatter(name))
    LOG.handlers[:] = [handler]
    LOG.setLevel(level)
    LOG.propagate = False


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def build_core(cfg: Config):
    """The core from the config; a static the core refuses is a ConfigError at its line."""
    from dataplane.config import Locator
    from dataplane.core import Core, CoreError

    core = Core(max_states=cfg.core.max_states, creator_id=cfg.unit.creator_id,
                pool=cfg.nat.pool, port_range=cfg.nat.ports, timeouts_ms=cfg.timeouts.as_ms(),
                tcp_loose=cfg.core.tcp == "loose",
                journal=cfg.failover is not None)   # only a pair's active drains it
    if cfg.failover is not None:
        core.set_journal(False)         # until the role says active
    loc = Locator(Path(cfg.path).read_text()) if os.path.exists(cfg.path) else Locator("")
    for i, s in enumerate(cfg.nat.static):
        try:
            core.add_static(s.inside, s.outside, s.proto, s.inside_port, s.outside_port)
        except CoreError as e:
            raise ConfigError(cfg.path, loc.line(f"nat.static[{i}]"), f"nat.static[{i}]",
                              f"refused by the core: {e}") from None
    for i, r in enumerate(cfg.rules):
        try:
            core.add_rule(r.action, side=r.side, proto=r.proto, src=r.src, dst=r.dst, dport=r.dport)
        except CoreError as e:
            raise ConfigError(cfg.path, loc.line(f"rules[{i}]"), f"rules[{i}]",
                              f"refused by the core: {e}") from None
    core.set_clock(monotonic_ms())
    return core


def make_feed(cfg: Config, core, sides: dict[int, str]):
    if cfg.feed.kind == "c":
        try:
            from dataplane.feed import FastFeed      # the C feed, built from cext/
        except ImportError as e:
            raise RuntimeError(f'feed kind = "c" is not available in this build ({e}); '
                               f'set [feed] kind = "netfilterqueue"') from None
        return FastFeed(core, cfg.feed.queue, sides, batch=cfg.feed.batch,
                        drain_us=cfg.feed.drain_us)
    from dataplane.simple_feed import SimpleFeed
    return SimpleFeed(core, cfg.feed.queue, sides)


class Daemon:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.name = cfg.unit.name
        self.lock = threading.RLock()      # RLock: a role action may run inside a core call
        self.pair = None
        self.vips = None
        self.neighbours = None
        self.carrier = None                # replication.carrier.CarrierWatch of the failover leg
        self.stopping = threading.Event()
        self.core = None
        self.feed = None
        self.legs: kernel.Legs | None = None
        self.sysctls = kernel.Sysctls(Path(cfg.control.socket).with_suffix(".sysctl.json"))
        self.started = 0.0
        self._rules_on = False
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.metrics = None             # dataplane.metrics.MetricsServer with [metrics]
        self.loop_errors = 0
        self._journal_overflow = 0
        self._next_overflow_check = 0
        self.first_packet_after_ns = 0  # set at a takeover: the feed logs its next verdict

    # ---- life cycle ----

    def start(self) -> None:
        cfg = self.cfg
        # checks: nothing changed yet
        self.legs = kernel.find_legs(cfg.interfaces.inside, cfg.interfaces.outside)
        version = kernel.iptables_version()
        sock_path = Path(cfg.control.socket)
        if sock_path.exists() and _socket_alive(sock_path):
            raise RuntimeError(f"control socket {sock_path} answers: is this unit already running?")
        self.core = build_core(cfg)
        try:
            recovered = self.sysctls.recover()
            if recovered:
                log_event(logging.WARNING, "recover", what="sysctls", count=len(recovered))
            if kernel.remove_rules():
                log_event(logging.WARNING, "recover", what="rules", chain=kernel.CHAIN)
            self.feed = make_feed(cfg, self.core, self.legs.sides)
            hello_accepts = ()
            if cfg.failover is not None:
                from dataplane import pairing
                hello_accepts = pairing.hello_accepts(cfg)
            kernel.install_rules(self.legs, cfg.feed.queue, cfg.feed.queue_bypass, hello_accepts)
            self._rules_on = True
            nat_addresses = list(cfg.nat.pool) + [s.outside for s in cfg.nat.static]
            vip_addresses = [v.address.split("/")[0] for v in cfg.failover.vips] if cfg.failover else []
            self.sysctls.apply(kernel.wanted_sysctls(self.legs, nat_addresses, vip_addresses))
            if cfg.failover is not None:
                self._start_pair()
            self._sock = _bind_control(sock_path)
            if cfg.metrics is not None:
                from dataplane import metrics
                self.metrics = metrics.serve(self, cfg.metrics)
        except BaseException:
            self._teardown()
            raise
        self.started = time.monotonic()
        loops = [(self._feed_loop, "feed"), (self._control_loop, "control")]
        if self.pair is not None:
            loops.insert(1, (self._replication_loop, "replication"))
            self.pair.start()
        for target, name in loops:
            t = threading.Thread(target=target, name=f"natpair-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        log_event(logging.INFO, "start", feed=cfg.feed.kind, queue=cfg.feed.queue,
                  inside=self.legs.inside, outside=self.legs.outside, pool=",".join(cfg.nat.pool),
                  netns=cfg.unit.netns or "-", socket=sock_path, iptables=version.split()[1],
                  pid=os.getpid())

    def catch_signals(self) -> None:
        """SIGTERM / SIGINT ask for a clean stop (call before start())."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self.stopping.set())

    def run(self) -> int:
        """Sweep every second until stop() or a signal; then tear down. Returns the exit code."""
        next_tick = time.monotonic() + 1.0
        while not self.stopping.wait(max(0.0, next_tick - time.monotonic())):
            next_tick += 1.0
            try:
                with self.lock:
                    self.core.set_clock(monotonic_ms())
                    self.core.sweep(SWEEP_BUDGET)
            except Exception as e:              # pragma: no cover - the core does not raise here
                self.loop_errors += 1
                log_event(logging.ERROR, "error", where="sweep", error=e)
        self.stop()
        return 0

    def stop(self) -> None:
        self.stopping.set()
        for t in self._threads:
            t.join(timeout=5)
        uptime = time.monotonic() - self.started if self.started else 0.0
        ok = self._teardown()
        counters = self.feed_counters()
        log_event(logging.INFO if ok else logging.ERROR, "stop", uptime_s=f"{uptime:.1f}",
                  packets=counters.get("packets", "-"), clean=ok)

    def _teardown(self) -> bool:
        """Undo whatever start() applied; never raises, returns False if something failed."""
        ok = True
        steps = [("sysctls", self.sysctls.restore)]
        if self._rules_on:
            steps.append(("rules", kernel.remove_rules))
        steps += [("metrics", self._close_metrics), ("feed", self._close_feed),
                  ("pair", self._close_pair), ("socket", self._close_socket)]
        for what, step in steps:
            try:
                step()
            except Exception as e:
                ok = False
                log_event(logging.ERROR, "error", where=f"stop/{what}", error=e)
        self._rules_on = False
        return ok

    def _close_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    def _close_feed(self) -> None:
        if self.feed is not None:
            self._last_feed_counters = self.feed.counters()
            self.feed.close()
            self.feed = None

    def _start_pair(self) -> None:
        from dataplane import pairing
        from replication.pair import Pair
        from replication.wire import MAX_DATAGRAM, datagram_size

        fo = self.cfg.failover
        # replication datagrams as large as the failover leg carries whole (a jumbo link:
        # 85 bulk states per datagram); both units' legs need the same MTU
        mtu = kernel.link_mtu(fo.interface)
        max_datagram = datagram_size(mtu) if mtu else MAX_DATAGRAM
        log_event(logging.INFO, "failover", interface=fo.interface, mtu=mtu, datagram=max_datagram)
        # the replication thread must not wait a whole 5 ms GIL slice behind the feed
        # thread's Python between batches: hellos and the takeover are timed in ms
        sys.setswitchinterval(GIL_SWITCH_S)
        self.vips = pairing.virtual_addresses(self.cfg)
        self.vips.prepare()                 # learns the own MACs first
        self.vips.remove()                  # a crashed run's, or the lab's: not ours until active
        self.neighbours = _start_neighbours(self.cfg)
        # the hellos, outside this GIL (replication.beat); should this daemon die without
        # stopping, the beat gives the virtual addresses and MACs back (dataplane.release)
        beat = pairing.beat(self.cfg, release_plan(self.vips))
        try:
            self.carrier = pairing.carrier_watch(self.cfg)
        except BaseException:
            beat.close()
            raise
        self.pair = Pair(self.core, self.lock, unit_id=self.cfg.unit.creator_id, key=fo.key,
                         local=fo.local, peer=fo.peer, priority=fo.priority, poll_ms=fo.poll_ms,
                         hold_ms=fo.hold_ms, preempt=fo.preempt,
                         http_replication=fo.http_replication, actions=_PairActions(self),
                         max_datagram=max_datagram, beat=beat, name=self.name,
                         neighbours=self.neighbours)
        if not self.carrier.up:
            self.pair.carrier(False)

    def _close_pair(self) -> None:
        if self.pair is not None:
            self._last_pair_status = self.pair.status()
            if self.pair.role.is_active and self.vips is not None:
                self.vips.remove()          # a clean stop gives the addresses back
            self.pair.close()
            if self.vips is not None:
                self.vips.close()
            self.pair = None
        if self.neighbours is not None:
            self.neighbours.close()
            self.neighbours = None
        if self.carrier is not None:
            self.carrier.close()
            self.carrier = None

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            Path(self.cfg.control.socket).unlink(missing_ok=True)

    # ---- threads ----

    def _feed_loop(self) -> None:
        feed, batch, pair = self.feed, self.cfg.feed.batch, self.pair
        fileno = getattr(feed, "fileno", None)
        if pair is not None:
            # a pair's feed thread holds the GIL the realtime replication thread needs, and
            # forwards the packets a takeover must pass at once: an ordinary task must not
            # preempt it while it holds them (measured: the replication thread waited up to
            # 5 ms behind a preempted feed thread, the feed woke 20-145 ms late after a
            # takeover under iperf3). Below the replication thread and the beat; it blocks
            # whenever the queue is empty, and the kernel's RT throttling keeps 5 % of each
            # CPU for ordinary tasks
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(FEED_RT_PRIORITY))
            except OSError as e:
                log_event(logging.WARNING, "feed", realtime="refused", error=e)
        while not self.stopping.is_set():
            try:
                if fileno is not None:
                    ready, _, _ = select.select([fileno()], [], [], FEED_WAIT_MS / 1000)
                    if not ready:
                        continue
                    wait = 0
                else:
                    wait = FEED_WAIT_MS
                woke = time.monotonic_ns() if self.first_packet_after_ns else 0
                with self.lock:
                    locked = time.monotonic_ns() if woke else 0
                    self.core.set_clock(monotonic_ms())
                    n = feed.run_once(batch, wait)
                    if pair is not None:
                        self._drain_journal(pair)
                if n and woke and self.first_packet_after_ns:
                    # the first verdicts after a takeover: when this thread ran again (woke:
                    # out of select with the GIL), had the core, and was done
                    since, self.first_packet_after_ns = self.first_packet_after_ns, 0
                    now = time.monotonic_ns()
                    log_event(logging.WARNING, "takeover", step="first_packet", packets=n,
                              at_us=now // 1000, woke_us=woke // 1000, locked_us=locked // 1000,
                              since_core_active_us=(now - since) // 1000)
            except Exception as e:
                self.loop_errors += 1
                log_event(logging.ERROR, "error", where="feed", error=e)
                time.sleep(0.1)

    def _drain_journal(self, pair) -> None:
        """Between batches, with the core held: every journal change to the pair."""
        core = self.core
        pair.drain_journal()                    # in C, one buffer per drain
        now = monotonic_ms()
        if now >= self._next_overflow_check:    # counters() builds a dict: not every batch
            self._next_overflow_check = now + OVERFLOW_CHECK_MS
            overflow = core.counters()["journal_overflow"]
            if overflow != self._journal_overflow:
                self._journal_overflow = overflow
                core.resend_scan()         # the ring was full: queue the marked states again

    def _replication_loop(self) -> None:
        pair, carrier = self.pair, self.carrier
        fds = pair.filenos() + [carrier.fileno()]
        try:
            self.vips.warm()                # the takeover's netlink socket, in this thread
        except Exception as e:
            log_event(logging.WARNING, "replication", warm="failed", error=e)
        try:
            # hellos are timed in ms on a machine whose cores iperf3 and the feed saturate
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REPLICATION_RT_PRIORITY))
        except OSError as e:
            log_event(logging.WARNING, "replication", realtime="refused", error=e)
        while not self.stopping.is_set():
            try:
                select.select(fds, [], [], pair.next_wake_ms() / 1000)
                for up in carrier.poll():
                    log_event(logging.WARNING, "failover_carrier", up=up,
                              interface=self.cfg.failover.interface)
                    pair.carrier(up)
                pair.step()
                # changes of the sweep or of an idle feed; never wait for the core here: a
                # busy feed thread drains it itself, and the hellos must not wait behind it
                if pair.role.is_active and self.lock.acquire(blocking=False):
                    try:
                        if self.core.journal_pending():
                            self._drain_journal(pair)
                    finally:
                        self.lock.release()
            except Exception as e:
                self.loop_errors += 1
                log_event(logging.ERROR, "error", where="replication", error=e)
                time.sleep(0.01)

    def _control_loop(self) -> None:
        sock = self._sock
        sock.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self.stopping.is_set():
                    return
                raise
            with conn:
                try:
                    conn.settimeout(2.0)
                    reply = self.handle(_read_request(conn))
                except Exception as e:
                    reply = {"ok": False, "error": str(e)}
                try:
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                except OSError:
                    pass

    # ---- control ----

    def feed_counters(self) -> dict:
        feed = self.feed
        if feed is None:
            return dict(getattr(self, "_last_feed_counters", {}))
        return feed.counters()

    def handle(self, req: dict) -> dict:
        # the replication objects are read without the replication thread's cooperation:
        # a dict it changes while we copy it raises RuntimeError; reading again is enough
        cmd = req.get("cmd") if isinstance(req, dict) else None
        tries = STATUS_READ_TRIES if cmd in ("status", "counters") or str(cmd).startswith("show") else 1
        for attempt in range(tries):
            try:
                return self._handle(req)
            except RuntimeError:
                if attempt == tries - 1:
                    raise
                time.sleep(0.001)
        raise AssertionError("unreachable")

    def _handle(self, req: dict) -> dict:
        cmd = req.get("cmd") if isinstance(req, dict) else None
        if cmd == "counters":
            with self.lock:
                core = self.core.counters()
                feed = self.feed_counters()
            reply = {"ok": True, "name": self.name, "core": core, "feed": feed,
                     "daemon": {"loop_errors": self.loop_errors}}
            if self.pair is not None:
                reply["replication"] = self.pair.replication_counters()
                if self.carrier is not None:
                    reply["replication"].update(
                        {f"carrier_{k}": v for k, v in self.carrier.counters.items()})
                reply["vips"] = dict(self.vips.counters)
                if self.vips.macs is not None:
                    reply["vips"].update({f"vmac_{k}": v for k, v in self.vips.macs.counters.items()})
            return reply
        if cmd == "status":
            with self.lock:
                states, mappings = self.core.state_count, self.core.mapping_count
            status = {"ok": True, "name": self.name, "creator_id": self.cfg.unit.creator_id,
                    "uptime_s": round(time.monotonic() - self.started, 3), "states": states,
                    "mappings": mappings, "feed": self.cfg.feed.kind, "queue": self.cfg.feed.queue,
                    "pid": os.getpid(), "role": "standalone" if self.pair is None else None}
            if self.pair is not None:
                st = self.pair.status()
                status.update(role=st["role"], peer=st["peer"], failover=st,
                              vips=[c for _, c in self.vips.vips] if self.pair.role.is_active else [],
                              virtual_macs=({} if self.vips.macs is None or not self.pair.role.is_active
                                            else dict(self.vips.macs.macs)))
            if self.neighbours is not None:
                status["neighbours"] = self.neighbours.status()
            return status
        if cmd == "export":
            return self._export()
        from dataplane import show        # the operator's commands (show, clear, failover)
        reply = show.answer(self, req if isinstance(req, dict) else {})
        if reply is not None:
            return reply
        return {"ok": False, "error": f"unknown cmd {cmd!r} (known: counters, status, export, "
                                      f"{', '.join(show.COMMANDS)})"}

    def _export(self) -> dict:
        """The table as the replication wire carries it (base64 of 104-byte records, slot
        order): what a bulk sync sends. Read in runs, the core released between them, so
        it is a snapshot only of a quiet table (tests compare the two units with it)."""
        cursor, parts = None, []
        while cursor is None or not cursor.done:
            with self.lock:
                self.core.set_clock(monotonic_ms())
                cursor = cursor or self.core.wire_cursor()
                parts.append(cursor.next(EXPORT_RUN))
        data = b"".join(parts)
        from dataplane.core import WIRE_STATE_SIZE
        return {"ok": True, "name": self.name, "states": len(data) // WIRE_STATE_SIZE,
                "records": base64.b64encode(data).decode()}


def _start_neighbours(cfg: Config):
    """The data legs' neighbour table, watched (replication.neighbours); the virtual
    addresses are never replicated."""
    from replication.neighbours import Neighbours
    from replication.wire import LEG_INSIDE, LEG_OUTSIDE

    neighbours = Neighbours({LEG_INSIDE: cfg.interfaces.inside, LEG_OUTSIDE: cfg.interfaces.outside},
                            skip=[v.address.split("/")[0] for v in cfg.failover.vips])
    neighbours.start()
    return neighbours


class _PairActions:
    """The role's takeover and release steps for this daemon (replication.role.Actions)."""

    def __init__(self, daemon: Daemon):
        self.d = daemon

    # the takeover's lines carry monotonic microseconds (at_us: the step's start, took_us),
    # comparable with the lab's receivers (one CLOCK_MONOTONIC across namespaces):
    # scripts/lab/timeline.py puts a kill's milliseconds side by side from them

    def core_active(self) -> None:
        t0 = time.monotonic_ns()
        with self.d.lock:
            self.d.core.set_clock(monotonic_ms())
            self.d.core.set_journal(True)
            # the replicated windows lag the dead unit's by what it forwarded after its
            # last journal drain: accept and re-learn for a moment (conntrackd marks its
            # committed entries "be liberal" for the same reason)
            self.d.core.set_tcp_grace(TAKEOVER_TCP_GRACE_MS)
        t1 = time.monotonic_ns()
        self.d.first_packet_after_ns = t0       # the feed thread logs the first verdict after
        pair = self.d.pair
        last = pair.detector.last_any if pair is not None else -1
        log_event(logging.WARNING, "takeover", step="core_active", states=self.d.core.state_count,
                  at_us=t0 // 1000, took_us=(t1 - t0) // 1000, last_heard_ms=last)

    def add_addresses(self) -> None:
        t0 = time.monotonic_ns()
        self.d.vips.add()
        t1 = time.monotonic_ns()
        log_event(logging.WARNING, "takeover", step="add_addresses",
                  vips=",".join(c for _, c in self.d.vips.vips), at_us=t0 // 1000,
                  took_us=(t1 - t0) // 1000,
                  **{f"{k}_us": v for k, v in self.d.vips.add_timings.items()})

    def announce(self) -> None:
        t0 = time.monotonic_ns()
        self.d.vips.announce()
        t1 = time.monotonic_ns()
        log_event(logging.WARNING, "takeover", step="announce", garp=self.d.vips.counters["garp_sent"],
                  at_us=t0 // 1000, took_us=(t1 - t0) // 1000)

    def remove_addresses(self) -> None:
        self.d.vips.remove()
        log_event(logging.WARNING, "release", step="remove_addresses")

    def core_standby(self) -> None:
        with self.d.lock:
            self.d.core.set_journal(False)
            while self.d.core.drain(JOURNAL_DRAIN):
                pass
        log_event(logging.WARNING, "release", step="core_standby")


def _read_request(conn: socket.socket) -> dict:
    data = b""
    while b"\n" not in data and len(data) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return json.loads(data.decode() or "{}")


def _socket_alive(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _bind_control(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)            # a stale socket of a crashed run
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(path))
        os.chmod(path, 0o600)
        s.listen(16)
    except BaseException:
        s.close()
        raise
    return s


def request(path: str, cmd: str, timeout: float = 5.0, **args) -> dict:
    """One request to a running unit's control socket (``args``: the command's fields)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data)
