"""The planned switchover: the operator hands the active role to the ready standby, and no
replicated change is lost on the way (ASA's ``failover active`` / ``no failover active``).

Owns ``Switchover``, driven by the pair's loop on the replication thread; the control thread
only posts a ``Request`` (``post``) and waits on it. Two ways in:

- ``standby`` on the active (``natpair failover standby``), or the ready peer asking for the
  role (its hellos carry ``F_WANTS_ACTIVE``): the active yields, see below. Refused unless
  the peer is STANDBY_READY (never zero actives).
- ``active`` on the standby (``natpair failover active``): with an active peer, a ready
  standby sets ``F_WANTS_ACTIVE`` in its hellos until it is active (or WANT_TIMEOUT_MS
  passed): the active yields to it. A cold or syncing standby is refused (its table is
  incomplete). With no active peer (silent, failed, negotiating), the unit takes the role
  at once (``Role.manual_active``, the operator's call).

The yield, on the active, in one turn of the loop, holding the core lock so that the feed
forwards nothing meanwhile (its packets wait in the queue: fail closed, nothing lost):
the core's journal drained into the stream, the stream flushed and waited on until the
standby acked everything (at most DRAIN_TIMEOUT_MS, else the active stays active and says
why), then ``Role.manual_standby`` (``yielding``: the peer wins the comparison; releases the
addresses, then the core), and a hello sent at once, so the peer takes over one failover
link trip later instead of one poll interval. The standby imports before it acks, so its
table holds every change when the hello that hands it the role arrives.

Counters (``counters``): yields, yield_timeouts, requests_refused, wants, wants_expired,
forced_active.
"""
from __future__ import annotations

import collections
import threading

from replication.fsm import LOG
from replication.role import RoleState

F_WANTS_ACTIVE = 0x02           # hello flag: "I am ready, give me the active role"
DRAIN_TIMEOUT_MS = 500          # the yield waits this long for the standby's acks
WANT_TIMEOUT_MS = 3000          # a wanting standby gives up after this long
PEER_WANT_BACKOFF_MS = 1000     # after a failed yield, the peer's wish waits this long


class Request:
    """One operator command: ``done`` is set with ``result`` (text) or ``error`` (text)."""

    def __init__(self, kind: str, reason: str):
        self.kind, self.reason = kind, reason
        self.done = threading.Event()
        self.result: str | None = None
        self.error: str | None = None

    def finish(self, result: str | None = None, error: str | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class Switchover:
    def __init__(self, pair):
        self.pair = pair
        self.counters: collections.Counter[str] = collections.Counter()
        self._posted: collections.deque[Request] = collections.deque()
        self._want: Request | None = None
        self._want_until = 0
        self._peer_wants_after = 0
        self._busy = False              # in _yield: its pumping may deliver the wish again

    # ---- from other threads ----

    def post(self, kind: str, reason: str = "operator") -> Request:
        if kind not in ("active", "standby"):
            raise ValueError(f"unknown switchover {kind!r}")
        req = Request(kind, reason)
        self._posted.append(req)
        self.pair.wake()
        return req

    # ---- the hello ----

    @property
    def wanting(self) -> bool:
        return self._want is not None

    @property
    def busy(self) -> bool:
        """A request posted or under way: the loop must turn every millisecond."""
        return self._want is not None or bool(self._posted) or self._busy

    def peer_wants_active(self, now: int) -> None:
        """The peer's hello carries F_WANTS_ACTIVE."""
        role = self.pair.role
        if role.is_active and not self._busy and now >= self._peer_wants_after:
            err = self._yield(now, "peer asked for the active role")
            if err:
                self._peer_wants_after = now + PEER_WANT_BACKOFF_MS

    # ---- the loop ----

    def step(self, now: int) -> None:
        while self._posted:
            req = self._posted.popleft()
            try:
                (self._active if req.kind == "active" else self._standby)(req, now)
            except Exception as e:       # never kill the loop; tell the operator
                LOG.error("switchover %s failed: %s", req.kind, e)
                req.finish(error=f"{type(e).__name__}: {e}")
        want = self._want
        if want is not None:
            role = self.pair.role
            if role.is_active:
                self._want = None
                want.finish(result=f"active (the peer yielded)")
            elif now >= self._want_until:
                self._want = None
                self.counters["wants_expired"] += 1
                want.finish(error=f"the peer did not yield within {WANT_TIMEOUT_MS} ms "
                                  f"(peer {role.peer.state.name if role.peer else 'silent'})")

    def _active(self, req: Request, now: int) -> None:
        role = self.pair.role
        st, peer = role.state, role.peer
        if role.is_active:
            req.finish(result="already active")
            return
        if peer is not None and peer.state is RoleState.ACTIVE:
            if st is not RoleState.STANDBY_READY:
                self.counters["requests_refused"] += 1
                req.finish(error=f"this unit is {st.name}, not STANDBY_READY: its table is "
                                 f"incomplete, taking over now would lose connections")
                return
            if self._want is not None:
                self._want.finish(error="superseded by a new request")
            self.counters["wants"] += 1
            self._want, self._want_until = req, now + WANT_TIMEOUT_MS
            LOG.info("switchover want_active reason=%s", _q(req.reason))
            self.pair.send_hello(now)
            return
        self.counters["forced_active"] += 1
        if role.manual_active(req.reason) is RoleState.ACTIVE:
            req.finish(result=f"active (forced from {st.name}, peer "
                              f"{peer.state.name if peer else 'silent'})")
        else:
            req.finish(error=f"refused in {role.state.name}")

    def _standby(self, req: Request, now: int) -> None:
        role = self.pair.role
        if not role.is_active:
            req.finish(result=f"already standby ({role.state.name})")
            return
        err = self._yield(now, req.reason)
        if err:
            req.finish(error=err)
        else:
            req.finish(result="standby (the peer takes over)")

    def _yield(self, now: int, reason: str) -> str | None:
        """Hand the role over with nothing unacked; None, or why it did not."""
        pair, role = self.pair, self.pair.role
        if role.peer is None or role.peer.state is not RoleState.STANDBY_READY:
            self.counters["requests_refused"] += 1
            return (f"the peer is {role.peer.state.name if role.peer else 'silent'}, not "
                    f"STANDBY_READY: nobody could take over")
        tr = pair.transport
        self._busy = True
        try:
            return self._handover(now, reason)
        finally:
            self._busy = False

    def _handover(self, now: int, reason: str) -> str | None:
        pair, role, tr = self.pair, self.pair.role, self.pair.transport
        with pair.lock:          # the feed waits: nothing new is forwarded, nothing missed
            pair.drain_journal()
            while pair.core.journal_pending():      # more than its rounds were queued
                pair.drain_journal()
            pair.submit_offered(pair.clock())
            if not pair.link.run(lambda: tr.idle(), DRAIN_TIMEOUT_MS):
                self.counters["yield_timeouts"] += 1
                LOG.warning("switchover yield refused reason=unacked pending=%d unacked=%d",
                            tr.pending, tr.unacked)
                return (f"the standby did not ack the last changes within {DRAIN_TIMEOUT_MS} ms "
                        f"({tr.pending} pending, {tr.unacked} unacked): still active")
            if role.manual_standby(reason) is not RoleState.STANDBY_READY:
                return f"refused by the role in {role.state.name}"
        self.counters["yields"] += 1
        pair.send_hello(pair.clock())
        LOG.info("switchover yielded reason=%s", _q(reason))
        return None


def _q(s: str) -> str:
    return '"' + s.replace('"', "'") + '"' if (not s or any(c in s for c in ' "=\n\t')) else s


__all__ = ["Switchover", "Request", "F_WANTS_ACTIVE"]
