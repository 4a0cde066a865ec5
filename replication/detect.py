"""Failure detection of the peer: when to send hellos, when the peer is gone.

Pure logic with an injected clock: the caller sends the hellos this module asks
for, tells it of every hello received (and on which path) and of the failover
link's carrier (netlink), and feeds the events that ``poll()`` returns to
``replication.role.Role.on_detect``. Names used:

- paths: ``FAILOVER`` (the dedicated failover link) and the data interfaces
  (by default ``"inside"`` and ``"outside"``; none at all is allowed: then a
  carrier drop is only a hint and the hold time decides); hellos go out on
  every path every ``poll_ms``.
- ``Detector``: ``hellos_due()`` (paths to send a hello on now), ``hello(path)``,
  ``carrier(up)``, ``poll()`` -> ``[(RoleEvent, reason)]``, ``next_deadline()``.
- ``check_timers(poll_ms, hold_ms)``: the config check (hold >= 3 x poll), raising
  ``TimerError`` with the key at fault, for dataplane.config to turn into a
  ``ConfigError`` at its line.

Events (edges, one per episode, never repeated every poll):

- PEER_SILENT: no hello on ANY path for ``hold_ms`` (also at start-up: a unit that
  hears nobody for the hold time, plus the grace of ``start(grace_ms)``, negotiates
  alone); or, faster, the failover link's carrier dropped (the peer's end vanished) and
  no hello came on a data interface within ``confirm_polls`` polls after the drop.
- PEER_LINK_DOWN: the carrier dropped: a hint, sent at once; the role waits.
- DATA_LINK_PEER_ALIVE: the failover link is down or silent for ``SPLIT_HOLDS`` hold
  times but the peer still answers on a data interface: do NOT take over (split link).

A new episode starts when a hello arrives again (PEER_SILENT can come once more).

Only a silence this unit observed counts (corosync's pause detection): ``paused(start,
end)`` says our listener (the beat process) was not running then (it woke far later than
it asked). That time is not the peer's silence: the hold time counts only the time we
listened since the last hello, and after a pause the peer gets ``PAUSE_GRACE_POLLS`` polls
of its own before it can be failed (when the whole machine stalled, the peer's hellos
stalled too; they come a moment after we resume). The bound this adds to a real failure's
detection: the pauses of our own listener that fall inside the hold time, and at most
``PAUSE_GRACE_POLLS`` x ``poll_ms`` after the last of them; without pauses, none. Counted:
observer_pauses, observer_paused_ms (their total) and observer_pause_max_ms; and
silent_spared, the silences that would have failed the peer but for our pauses (each
logged as a warning).

Counters: hellos_rx_<path>, hellos_tx_<path>, carrier_down, carrier_up,
silent_hold, silent_carrier, split_link, peer_back; and max_silence_ms, the longest time
without any hello that did not end in PEER_SILENT (the margin left to ``hold_ms``; the
observed time, pauses of our own left out).
"""
from __future__ import annotations

import collections
from typing import Iterable

from replication.fsm import LOG, Clock, monotonic_ms
from replication.role import RoleEvent

FAILOVER = "failover"
DATA_PATHS = ("inside", "outside")
DEFAULT_POLL_MS = 10
DEFAULT_HOLD_MS = 50
CONFIRM_POLLS = 2
MIN_HOLD_POLLS = 3
PAUSE_GRACE_POLLS = 2
SPLIT_HOLDS = 2                 # a split link: the failover link silent this many hold times


class TimerError(ValueError):
    """A refused timer setting: ``key`` (``poll_ms``, ``hold_ms``) and what is wrong."""

    def __init__(self, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")


def check_timers(poll_ms: int, hold_ms: int, confirm_polls: int = CONFIRM_POLLS) -> None:
    for key, v in (("poll_ms", poll_ms), ("hold_ms", hold_ms), ("confirm_polls", confirm_polls)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TimerError(key, f"must be an integer number of milliseconds, not {v!r}")
        if v < 1:
            raise TimerError(key, f"must be at least 1, not {v}")
    if hold_ms < MIN_HOLD_POLLS * poll_ms:
        raise TimerError("hold_ms", f"{hold_ms} ms is less than {MIN_HOLD_POLLS} x poll_ms "
                         f"({MIN_HOLD_POLLS} x {poll_ms} = {MIN_HOLD_POLLS * poll_ms} ms): "
                         f"one late hello would fail the peer over")
    if confirm_polls * poll_ms >= hold_ms:
        raise TimerError("confirm_polls", f"{confirm_polls} polls of {poll_ms} ms are not shorter "
                         f"than hold_ms ({hold_ms} ms): the carrier hint would gain nothing")


class Detector:
    def __init__(self, *, poll_ms: int = DEFAULT_POLL_MS, hold_ms: int = DEFAULT_HOLD_MS,
                 data_paths: Iterable[str] = DATA_PATHS, confirm_polls: int = CONFIRM_POLLS,
                 clock: Clock = monotonic_ms, name: str = "detect"):
        check_timers(poll_ms, hold_ms, confirm_polls)
        self.poll_ms, self.hold_ms, self.confirm_polls = poll_ms, hold_ms, confirm_polls
        self.data_paths = tuple(data_paths)
        if FAILOVER in self.data_paths or not all(self.data_paths):
            raise ValueError(f"data paths must be named and not {FAILOVER!r}: {self.data_paths}")
        self.clock, self.name = clock, name
        now = clock()
        self.started = now
        self.last: dict[str, int | None] = {p: None for p in (FAILOVER, *self.data_paths)}
        self.last_any = now             # silence counts from start-up
        self.carrier_up = True
        self.carrier_down_at: int | None = None
        self._confirm_deadline: int | None = None
        self.silent = False             # PEER_SILENT sent in this episode
        self.back_at = now              # start of this episode: the peer heard again (or start-up)
        self.split = False              # DATA_LINK_PEER_ALIVE sent in this episode
        self._next_send = now
        self._quiet_until = now         # start(): no PEER_SILENT before this
        self._fresh_until = now         # after a pause of ours: no PEER_SILENT before this
        self._spared = False            # "spared by our own pause" logged in this episode
        self._pauses: collections.deque[tuple[int, int]] = collections.deque(maxlen=256)
        self._out: list[tuple[RoleEvent, str]] = []
        self.counters: collections.Counter[str] = collections.Counter()

    def start(self, grace_ms: int = 0) -> None:
        """Silence counts from now, when the unit starts sending and listening, and until a
        hello comes PEER_SILENT waits ``grace_ms`` beyond the hold time: a unit that just
        booted must get its first hellos out before the peer can answer (the peer may hold
        the old MAC of our failover address until our ARP tells it the new one), and a loaded
        machine may run the first turns of the loop late. Without it a rejoining unit would
        find the active peer "silent" and go active too."""
        now = self.clock()
        self.started = self.last_any = self._next_send = now
        self._quiet_until = now + self.hold_ms + grace_ms

    # ---- sending ----

    def hellos_due(self) -> list[str]:
        """The paths to send a hello on now (empty until the next poll); no catch-up bursts."""
        now = self.clock()
        if now < self._next_send:
            return []
        self._next_send = now + self.poll_ms
        paths = [p for p in (FAILOVER, *self.data_paths) if p != FAILOVER or self.carrier_up]
        for p in paths:
            self.counters[f"hellos_tx_{p}"] += 1
        return paths

    def next_deadline(self, sending: bool = True) -> int:
        """The latest time the caller should call ``hellos_due``/``poll`` again (``sending``
        False: the caller's hellos go out elsewhere, a beat process; only ``poll``'s)."""
        d = [self._next_send] if sending else [self.clock() + self.poll_ms]
        if not self.silent:
            d.append(max(self.last_any + self.hold_ms + self._unobserved(self.clock()),
                         self._quiet_until, self._fresh_until))
        if self._confirm_deadline is not None:
            d.append(self._confirm_deadline)
        return min(d)

    # ---- inputs ----

    def hello(self, path: str, at: int | None = None) -> None:
        """A hello heard on ``path``; ``at``: when it was heard (clock units; default now):
        the hello process (replication.beat) stamps it on arrival, and silence is judged
        from then, not from when the loop got around to reading it."""
        if path not in self.last:
            raise ValueError(f"unknown path {path!r} (known: {', '.join(self.last)})")
        now = self.clock()
        if at is not None:
            now = min(now, at)
        self.counters[f"hellos_rx_{path}"] += 1
        heard = any(t is not None for t in self.last.values())
        prev = self.last[path]
        self.last[path] = now if prev is None else max(prev, now)
        if heard and not self.silent:
            # the longest silence that did not fail the peer: how close to hold_ms we came
            silence = self.silence(now)
            if silence > self.counters["max_silence_ms"]:
                self.counters["max_silence_ms"] = silence
        self.last_any = max(self.last_any, now)
        self._spared = False
        while self._pauses and self._pauses[0][1] <= self.last_any - 2 * self.hold_ms:
            self._pauses.popleft()          # kept a while: the split check looks further back
        self._quiet_until = min(self._quiet_until, self.last_any)   # the start-up grace is for a peer not heard yet
        if self.silent:
            self.silent = False
            self.back_at = now
            self.counters["peer_back"] += 1
            LOG.info("%s peer back path=%s", self.name, path)
        if path == FAILOVER:
            self.split = False
        elif self._confirm_deadline is not None and now > self.carrier_down_at:
            # the carrier dropped, yet the peer answers here: the link is cut, the peer lives
            # (a hello heard before the drop, read after it, proves nothing: the beat
            # process stamps hellos when they arrive, the loop reads them later)
            self._confirm_deadline = None
            self._split(f"carrier down, hello on {path}")

    def paused(self, start: int, end: int) -> None:
        """Our listener was not running from ``start`` to ``end`` (clock units): that time is
        not the peer's silence, and the peer gets ``PAUSE_GRACE_POLLS`` polls after ``end``."""
        if end <= start:
            return
        self._pauses.append((start, end))
        self._fresh_until = max(self._fresh_until, end + PAUSE_GRACE_POLLS * self.poll_ms)
        self.counters["observer_pauses"] += 1
        self.counters["observer_paused_ms"] += end - start
        if end - start > self.counters["observer_pause_max_ms"]:
            self.counters["observer_pause_max_ms"] = end - start
        LOG.debug("%s our listener paused %d ms", self.name, end - start)

    def _unobserved(self, now: int, since: int | None = None) -> int:
        """How much of the time since the last hello (or ``since``) our listener was paused."""
        since = self.last_any if since is None else since
        return sum(max(0, min(e, now) - max(s, since)) for s, e in self._pauses)

    def silence(self, now: int | None = None) -> int:
        """The peer's silence as we observed it: since the last hello, less our own pauses."""
        now = self.clock() if now is None else now
        return now - self.last_any - self._unobserved(now)

    def carrier(self, up: bool) -> None:
        """The failover link's carrier, from netlink (the interface vanishing counts as down)."""
        if up == self.carrier_up:
            return
        now = self.clock()
        self.carrier_up = up
        if up:
            self.counters["carrier_up"] += 1
            self.carrier_down_at = self._confirm_deadline = None
            LOG.info("%s failover carrier up", self.name)
            return
        self.counters["carrier_down"] += 1
        self.carrier_down_at = now
        if not self.data_paths:
            # nothing to confirm with: the hold time decides, as for a silent link
            self._out.append((RoleEvent.PEER_LINK_DOWN, "failover carrier lost, no data path to confirm"))
            return
        if not self.silent:
            self._confirm_deadline = now + self.confirm_polls * self.poll_ms
        self._out.append((RoleEvent.PEER_LINK_DOWN,
                          f"failover carrier lost, confirming over data within {self.confirm_polls} polls"))

    # ---- the decision ----

    def poll(self, now: int | None = None) -> list[tuple[RoleEvent, str]]:
        """The events due; ``now``: judge as of this time (default the clock): the time the
        caller last looked at every hello heard (replication.pair with the beat process),
        so a caller that stalls between looking and asking does not see a silence that
        was only its own."""
        now = self.clock() if now is None else min(now, self.clock())
        out, self._out = self._out, []
        if self.silent:
            return out
        if self._confirm_deadline is not None and now >= self._confirm_deadline:
            self._confirm_deadline = None
            self.counters["silent_carrier"] += 1
            out.append(self._silent(f"failover carrier lost and no hello on {'/'.join(self.data_paths)} "
                                    f"for {now - self.carrier_down_at} ms"))
        elif (silence := self.silence(now)) >= self.hold_ms and now >= max(self._quiet_until,
                                                                           self._fresh_until):
            self.counters["silent_hold"] += 1
            unseen = now - self.last_any - silence
            out.append(self._silent(f"no hello on any path for {now - self.last_any} ms "
                                    f"(hold {self.hold_ms} ms" +
                                    (f"; {unseen} ms of it our own pause)" if unseen else ")")))
        elif now - self.last_any >= self.hold_ms and now >= self._quiet_until and not self._spared:
            # the peer would have been failed but for our own pauses: say so, once an episode
            self._spared = True
            self.counters["silent_spared"] += 1
            LOG.warning("%s no hello for %d ms (hold %d ms), but %d ms of it our listener was "
                        "paused (not running): not the peer's silence, no takeover", self.name,
                        now - self.last_any, self.hold_ms, now - self.last_any - self.silence(now))
        if not self.silent and not self.split and self._confirm_deadline is None:
            # a new episode gives the failover link a hold time of its own: the first hello
            # back may come on a data leg a moment before the failover link's
            fo = self.last[FAILOVER]
            fo_last = max(fo if fo is not None else self.started, self.back_at)
            # (two hold times, not one: nobody moves on a split, so it can wait; on a busy
            # machine one path's hellos can be a hold time late behind a backlog while the
            # others' come through, and that is no cut)
            fo_dead = not self.carrier_up or (fo_last + SPLIT_HOLDS * self.hold_ms
                                              + self._unobserved(now, fo_last) <= now)
            # the data legs must have gone on answering after the failover link went quiet:
            # a peer that died falls silent on every path within a poll, and its failover
            # hold expires a moment before its data holds (no split for that)
            if fo_dead and any(t is not None and now - t < self.hold_ms and t >= fo_last + self.poll_ms
                               for p, t in self.last.items() if p != FAILOVER):
                self._split(f"failover link silent for {SPLIT_HOLDS} hold times, peer answers on a data interface")
        out.extend(self._out)
        self._out = []
        return out

    def _silent(self, reason: str) -> tuple[RoleEvent, str]:
        self.silent = True
        self.split = False
        LOG.warning("%s peer silent: %s", self.name, reason)
        return RoleEvent.PEER_SILENT, reason

    def _split(self, reason: str) -> None:
        if self.split:
            return
        self.split = True
        self.counters["split_link"] += 1
        LOG.warning("%s split link, no takeover: %s", self.name, reason)
        self._out.append((RoleEvent.DATA_LINK_PEER_ALIVE, reason))

    def status(self) -> dict:
        now = self.clock()
        return {"poll_ms": self.poll_ms, "hold_ms": self.hold_ms, "carrier_up": self.carrier_up,
                "silence_ms": self.silence(now),
                "silent": self.silent, "split": self.split,
                "last_ms_ago": {p: None if t is None else now - t for p, t in self.last.items()},
                "counters": dict(self.counters)}
