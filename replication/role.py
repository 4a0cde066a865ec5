"""The failover role of one unit: who forwards, who waits, who may take over.

Owns the role state machine (``RoleState``, ``RoleEvent``, ``TABLE``) and the
guards that pick an event from what is known of the peer; runs the ordered
takeover and release steps (``Actions``). Pure logic: no sockets, no netlink,
time from an injected clock. Names used:

- ``Role``: one unit's machine. Fed by ``start()``, ``on_peer(...)`` (the peer's
  announced role, from its hellos, on any path), ``on_detect(event)`` (from
  replication.detect: PEER_SILENT, PEER_LINK_DOWN, DATA_LINK_PEER_ALIVE),
  ``on_bulk(event)`` (from replication.bulk: BULK_START, BULK_DONE, BULK_FAILED),
  ``manual_active()``, ``manual_standby()``, ``fault()``, ``rejoin()``.
- ``Peer``: what a hello says: role state, priority, unit id, yielding, the rank of its
  active tenure (``Tenure``) and whether it asks for the active role (preemption).
- ``counters``: one per outcome (takeovers, takeover_refused_not_ready,
  split_link_no_takeover, ...); ``machine.refused`` counts refused transitions.

The rules (issue 4, sections 4-6):

- A joining unit is STANDBY_COLD, asks for a bulk sync (BULK_SYNC) and is
  STANDBY_READY only when the bulk sync completed.
- Only a STANDBY_READY unit takes over (peer silent, or the peer announces it is
  not active). A cold or syncing unit whose active peer goes silent stays where
  it is (counted ``takeover_refused_not_ready``); an operator may still force it
  with ``manual_active()``.
- Preemption (failback to the unit of higher priority) is off by default
  (``preempt=False``). When on, a STANDBY_READY unit of strictly higher priority whose
  peer is active asks for the role (``wants_active``: F_WANTS_ACTIVE in its hellos); the
  active hands it over in order (switchover.py: drain, acks, ``manual_standby``) and the
  preferred unit then goes active on the yielding peer's hello (logged as PREEMPT). A
  cold or syncing unit never asks, and never jumps to ACTIVE beside a live active.
- Failover link cut while the peer still answers on a data interface
  (DATA_LINK_PEER_ALIVE): no takeover, logged and counted
  (``split_link_no_takeover``); never two actives. PEER_SILENT only comes when
  no path has heard the peer for the hold time (or the carrier dropped and the
  data interfaces confirmed the silence).
- Negotiation: two units that start together pick one active deterministically:
  higher ``priority`` wins, then the lower ``unit_id``.
- Dual active (both announce ACTIVE: a rejoining unit that did not hear the active in
  time, a healed split, an operator's ``manual_active``): the unit that holds the live
  table wins. Each active announces the rank of its tenure (``Tenure``), from what it
  saw itself, no clock shared: COLD (it went active without a table: alone from
  NEGOTIATION, or forced from a cold standby, less than ``live_after_ms`` ago), LIVE (it
  took over from STANDBY_READY with the synced table, or has forwarded for
  ``live_after_ms``), SENIOR (while active it heard the peer announce a non-active
  state, more than ``senior_margin_ms`` after its tenure began: whatever tenure the
  peer has now began after ours, so ours is the older table). The higher rank wins,
  then priority, then the lower unit id; a yielding unit loses before all that. The
  loser goes STANDBY_COLD, asks for a bulk sync, and is STANDBY_READY only when it
  completed; the winner announces itself again (gratuitous ARP, pair.py). Two seniors
  (hellos that crossed a tenure change in flight) compare as equals: the rule stays
  symmetric, so both units reach the same verdict.
- ``on_peer`` judges every hello against the current state; an unchanged hello that
  would be a self-loop is not logged again. ``manual_standby()`` (only with a ready
  peer) sets ``yielding`` in our hellos so that the peer wins the comparison.
- Takeover order: state first, then addresses (``TAKEOVER_STEPS``); release:
  addresses first, then the core (``RELEASE_STEPS``).
"""
from __future__ import annotations

import collections
import enum
from typing import NamedTuple, Protocol

from replication.fsm import LOG, Clock, Machine, Transition, monotonic_ms


class RoleState(enum.Enum):
    INIT = 0
    NEGOTIATION = 1
    ACTIVE = 2
    STANDBY_COLD = 3
    BULK_SYNC = 4
    STANDBY_READY = 5
    FAILED = 6


class RoleEvent(enum.Enum):
    START = enum.auto()
    PEER_HELLO_ACTIVE = enum.auto()        # the peer announces ACTIVE
    PEER_HELLO_READY = enum.auto()         # ... STANDBY_READY
    PEER_HELLO_STANDBY = enum.auto()       # ... STANDBY_COLD or BULK_SYNC (not ready, not active)
    PEER_HELLO_NEGOTIATION = enum.auto()   # ... INIT or NEGOTIATION (it (re)started)
    PEER_HELLO_FAILED = enum.auto()        # ... FAILED
    NEGOTIATION_WON = enum.auto()          # the priority/unit id comparison, from the guards
    NEGOTIATION_LOST = enum.auto()
    PEER_SILENT = enum.auto()              # detect: hold expired on every path, or carrier + data silence
    PEER_LINK_DOWN = enum.auto()           # detect: failover link carrier lost (a hint, being confirmed)
    DATA_LINK_PEER_ALIVE = enum.auto()     # detect: failover link silent, peer alive on a data interface
    BULK_START = enum.auto()               # bulk: the active started sending us its table
    BULK_DONE = enum.auto()
    BULK_FAILED = enum.auto()
    PREEMPT = enum.auto()                  # guard: preempt on, ready, the active peer yielded to us
    MANUAL_ACTIVE = enum.auto()
    MANUAL_STANDBY = enum.auto()
    SELF_FAULT = enum.auto()               # our own interface/core failed
    REJOIN = enum.auto()                   # the fault is cleared: join as a cold standby


St, Ev = RoleState, RoleEvent

TABLE: dict[tuple[RoleState, RoleEvent], RoleState] = {
    (St.INIT, Ev.START): St.NEGOTIATION,
    (St.INIT, Ev.SELF_FAULT): St.FAILED,

    (St.NEGOTIATION, Ev.PEER_HELLO_ACTIVE): St.STANDBY_COLD,
    (St.NEGOTIATION, Ev.PEER_HELLO_READY): St.STANDBY_COLD,       # a ready peer will take the role
    (St.NEGOTIATION, Ev.PEER_HELLO_STANDBY): St.ACTIVE,           # nobody forwards, nobody can
    (St.NEGOTIATION, Ev.PEER_HELLO_FAILED): St.ACTIVE,
    (St.NEGOTIATION, Ev.NEGOTIATION_WON): St.ACTIVE,
    (St.NEGOTIATION, Ev.NEGOTIATION_LOST): St.STANDBY_COLD,
    (St.NEGOTIATION, Ev.PEER_SILENT): St.ACTIVE,                  # alone for the hold time
    (St.NEGOTIATION, Ev.PEER_LINK_DOWN): St.NEGOTIATION,
    (St.NEGOTIATION, Ev.DATA_LINK_PEER_ALIVE): St.NEGOTIATION,    # the peer lives: never alone-active
    (St.NEGOTIATION, Ev.MANUAL_ACTIVE): St.ACTIVE,
    (St.NEGOTIATION, Ev.MANUAL_STANDBY): St.STANDBY_COLD,
    (St.NEGOTIATION, Ev.SELF_FAULT): St.FAILED,

    (St.ACTIVE, Ev.NEGOTIATION_WON): St.ACTIVE,                   # dual active, we keep it
    (St.ACTIVE, Ev.NEGOTIATION_LOST): St.STANDBY_COLD,            # dual active, we yield and re-sync
    (St.ACTIVE, Ev.PEER_HELLO_READY): St.ACTIVE,
    (St.ACTIVE, Ev.PEER_HELLO_STANDBY): St.ACTIVE,
    (St.ACTIVE, Ev.PEER_HELLO_NEGOTIATION): St.ACTIVE,
    (St.ACTIVE, Ev.PEER_HELLO_FAILED): St.ACTIVE,
    (St.ACTIVE, Ev.PEER_SILENT): St.ACTIVE,
    (St.ACTIVE, Ev.PEER_LINK_DOWN): St.ACTIVE,
    (St.ACTIVE, Ev.DATA_LINK_PEER_ALIVE): St.ACTIVE,
    (St.ACTIVE, Ev.MANUAL_ACTIVE): St.ACTIVE,
    (St.ACTIVE, Ev.MANUAL_STANDBY): St.STANDBY_READY,             # guarded: only with a ready peer
    (St.ACTIVE, Ev.SELF_FAULT): St.FAILED,

    (St.STANDBY_COLD, Ev.BULK_START): St.BULK_SYNC,
    (St.STANDBY_COLD, Ev.BULK_FAILED): St.STANDBY_COLD,           # a late report of an aborted bulk
    (St.STANDBY_COLD, Ev.PEER_HELLO_ACTIVE): St.STANDBY_COLD,
    (St.STANDBY_COLD, Ev.PEER_HELLO_READY): St.STANDBY_COLD,      # it will go active, we wait
    (St.STANDBY_COLD, Ev.PEER_HELLO_STANDBY): St.NEGOTIATION,     # nobody holds a table: pick one
    (St.STANDBY_COLD, Ev.PEER_HELLO_NEGOTIATION): St.STANDBY_COLD,  # it goes active: we are cold
    (St.STANDBY_COLD, Ev.PEER_HELLO_FAILED): St.STANDBY_COLD,     # not ready: no takeover
    (St.STANDBY_COLD, Ev.PEER_SILENT): St.STANDBY_COLD,           # not ready: no takeover
    (St.STANDBY_COLD, Ev.PEER_LINK_DOWN): St.STANDBY_COLD,
    (St.STANDBY_COLD, Ev.DATA_LINK_PEER_ALIVE): St.STANDBY_COLD,
    (St.STANDBY_COLD, Ev.MANUAL_ACTIVE): St.ACTIVE,               # the operator's call, logged
    (St.STANDBY_COLD, Ev.MANUAL_STANDBY): St.STANDBY_COLD,
    (St.STANDBY_COLD, Ev.SELF_FAULT): St.FAILED,

    (St.BULK_SYNC, Ev.BULK_DONE): St.STANDBY_READY,
    (St.BULK_SYNC, Ev.BULK_FAILED): St.STANDBY_COLD,
    (St.BULK_SYNC, Ev.BULK_START): St.BULK_SYNC,                  # the sender restarted the bulk
    (St.BULK_SYNC, Ev.PEER_HELLO_ACTIVE): St.BULK_SYNC,
    (St.BULK_SYNC, Ev.PEER_HELLO_READY): St.STANDBY_COLD,         # our source is no longer active
    (St.BULK_SYNC, Ev.PEER_HELLO_STANDBY): St.STANDBY_COLD,
    (St.BULK_SYNC, Ev.PEER_HELLO_NEGOTIATION): St.STANDBY_COLD,
    (St.BULK_SYNC, Ev.PEER_HELLO_FAILED): St.STANDBY_COLD,
    (St.BULK_SYNC, Ev.PEER_SILENT): St.STANDBY_COLD,              # incomplete table: no takeover
    (St.BULK_SYNC, Ev.PEER_LINK_DOWN): St.BULK_SYNC,
    (St.BULK_SYNC, Ev.DATA_LINK_PEER_ALIVE): St.BULK_SYNC,
    (St.BULK_SYNC, Ev.MANUAL_ACTIVE): St.ACTIVE,
    (St.BULK_SYNC, Ev.MANUAL_STANDBY): St.BULK_SYNC,
    (St.BULK_SYNC, Ev.SELF_FAULT): St.FAILED,

    (St.STANDBY_READY, Ev.PEER_SILENT): St.ACTIVE,                # the takeover
    (St.STANDBY_READY, Ev.PEER_HELLO_ACTIVE): St.STANDBY_READY,
    (St.STANDBY_READY, Ev.PEER_HELLO_STANDBY): St.ACTIVE,         # nobody forwards; we hold the table
    (St.STANDBY_READY, Ev.PEER_HELLO_NEGOTIATION): St.ACTIVE,     # the active restarted: its table is gone
    (St.STANDBY_READY, Ev.PEER_HELLO_FAILED): St.ACTIVE,
    (St.STANDBY_READY, Ev.NEGOTIATION_WON): St.ACTIVE,            # both ready, nobody active
    (St.STANDBY_READY, Ev.NEGOTIATION_LOST): St.STANDBY_READY,
    (St.STANDBY_READY, Ev.PEER_LINK_DOWN): St.STANDBY_READY,      # a hint: wait for the confirmation
    (St.STANDBY_READY, Ev.DATA_LINK_PEER_ALIVE): St.STANDBY_READY,  # split link: no takeover
    (St.STANDBY_READY, Ev.PREEMPT): St.ACTIVE,
    # a re-sync while ready (the active's stream skipped: our link reset, it restarted
    # its stream): the table stays live, missing at most what the stream skipped, and
    # the bulk only adds and purges at its end, so we stay ready to take over
    (St.STANDBY_READY, Ev.BULK_START): St.STANDBY_READY,
    (St.STANDBY_READY, Ev.BULK_DONE): St.STANDBY_READY,
    (St.STANDBY_READY, Ev.BULK_FAILED): St.STANDBY_READY,
    (St.STANDBY_READY, Ev.MANUAL_ACTIVE): St.ACTIVE,
    (St.STANDBY_READY, Ev.MANUAL_STANDBY): St.STANDBY_READY,
    (St.STANDBY_READY, Ev.SELF_FAULT): St.FAILED,

    (St.FAILED, Ev.SELF_FAULT): St.FAILED,
    (St.FAILED, Ev.REJOIN): St.STANDBY_COLD,
    (St.FAILED, Ev.PEER_HELLO_ACTIVE): St.FAILED,
    (St.FAILED, Ev.PEER_HELLO_READY): St.FAILED,
    (St.FAILED, Ev.PEER_HELLO_STANDBY): St.FAILED,
    (St.FAILED, Ev.PEER_HELLO_NEGOTIATION): St.FAILED,
    (St.FAILED, Ev.PEER_HELLO_FAILED): St.FAILED,
    (St.FAILED, Ev.PEER_SILENT): St.FAILED,
    (St.FAILED, Ev.PEER_LINK_DOWN): St.FAILED,
    (St.FAILED, Ev.DATA_LINK_PEER_ALIVE): St.FAILED,
}

STANDBY_STATES = frozenset({St.STANDBY_COLD, St.BULK_SYNC, St.STANDBY_READY})
HELLO_EVENT = {
    St.INIT: Ev.PEER_HELLO_NEGOTIATION,
    St.NEGOTIATION: Ev.PEER_HELLO_NEGOTIATION,
    St.ACTIVE: Ev.PEER_HELLO_ACTIVE,
    St.STANDBY_COLD: Ev.PEER_HELLO_STANDBY,
    St.BULK_SYNC: Ev.PEER_HELLO_STANDBY,
    St.STANDBY_READY: Ev.PEER_HELLO_READY,
    St.FAILED: Ev.PEER_HELLO_FAILED,
}
DETECT_EVENTS = frozenset({Ev.PEER_SILENT, Ev.PEER_LINK_DOWN, Ev.DATA_LINK_PEER_ALIVE})
BULK_EVENTS = frozenset({Ev.BULK_START, Ev.BULK_DONE, Ev.BULK_FAILED})

# state first, then addresses; on the way out, addresses first, then the core
TAKEOVER_STEPS = ("core_active", "add_addresses", "announce")
RELEASE_STEPS = ("remove_addresses", "core_standby")


class Actions(Protocol):
    """What the daemon does when the role enters or leaves ACTIVE, step by step.

    ``core_active``: the core forwards as the active (its table is already live);
    ``add_addresses``: virtual IPs and MACs on the data legs (pyroute2);
    ``announce``: gratuitous ARP (scapy); ``remove_addresses``; ``core_standby``.
    A step that raises makes the unit FAILED (which releases what was taken).
    """

    def core_active(self) -> None: ...
    def add_addresses(self) -> None: ...
    def announce(self) -> None: ...
    def remove_addresses(self) -> None: ...
    def core_standby(self) -> None: ...


class Tenure(enum.IntEnum):
    """How much the table of an active unit is worth in a dual-active comparison."""
    NONE = 0        # not active
    COLD = 1        # active without a synced table, for less than live_after_ms
    LIVE = 2        # took over with the synced table, or forwarded for live_after_ms
    SENIOR = 3      # heard the peer non-active while active: the peer's tenure is younger


LIVE_AFTER_MS = 5000            # a unit active alone this long holds the flows' only table
SENIOR_MARGIN_MS = 1000         # a hello older than this is no proof of what the peer is now
# entering ACTIVE from these states brings the synced table along
WARM_SOURCES = frozenset({St.STANDBY_READY})


class Peer(NamedTuple):
    state: RoleState
    priority: int
    unit_id: int
    yielding: bool = False      # set by manual_standby until the peer is active: it loses comparisons
    tenure: Tenure = Tenure.NONE
    wants_active: bool = False  # a ready unit asks the active to hand over (switchover, preempt)


class Role:
    """One unit's failover role (see the module docstring for the rules)."""

    def __init__(self, unit_id: int, *, priority: int = 100, preempt: bool = False,
                 actions: Actions | None = None, clock: Clock = monotonic_ms, name: str = "role",
                 live_after_ms: int = LIVE_AFTER_MS, senior_margin_ms: int = SENIOR_MARGIN_MS):
        self.unit_id, self.priority, self.preempt = unit_id, priority, preempt
        self.live_after_ms, self.senior_margin_ms = live_after_ms, senior_margin_ms
        self._warm = False              # this tenure began from STANDBY_READY
        self._senior = False            # this tenure heard the peer non-active, late enough
        self.actions = actions
        self.machine: Machine[RoleState, RoleEvent] = Machine(name, TABLE, St.INIT, clock=clock)
        self.machine.subscribe(self._on_transition)
        self.peer: Peer | None = None
        self.yielding = False
        self.counters: collections.Counter[str] = collections.Counter()
        self._why = ""                  # why the last comparison went as it did (for the log)

    # ---- what the rest of the unit reads ----

    @property
    def state(self) -> RoleState:
        return self.machine.state

    @property
    def history(self):
        return list(self.machine.history)

    @property
    def is_active(self) -> bool:
        return self.state is St.ACTIVE

    @property
    def tenure(self) -> Tenure:
        if self.state is not St.ACTIVE:
            return Tenure.NONE
        if self._senior:
            return Tenure.SENIOR
        if self._warm or self.machine.in_state_ms() >= self.live_after_ms:
            return Tenure.LIVE
        return Tenure.COLD

    @property
    def wants_active(self) -> bool:
        """Preemption: ready, preferred (strictly higher priority), and the peer is active."""
        p = self.peer
        return (self.preempt and self.state is St.STANDBY_READY and p is not None
                and p.state is St.ACTIVE and self.priority > p.priority)

    def hello(self) -> Peer:
        """What our hellos announce."""
        return Peer(self.state, self.priority, self.unit_id, self.yielding, self.tenure,
                    self.wants_active)

    def status(self) -> dict:
        return {"state": self.state.name, "since_ms": self.machine.since_ms,
                "tenure": self.tenure.name,
                "peer": None if self.peer is None else self.peer.state.name,
                "preempt": self.preempt, "priority": self.priority,
                "counters": dict(self.counters), "refused": self.machine.refused_total}

    # ---- inputs ----

    def start(self) -> RoleState | None:
        return self._apply(Ev.START, "start")

    def on_peer(self, state: RoleState, priority: int, unit_id: int, yielding: bool = False,
                tenure: Tenure | int = Tenure.NONE, wants_active: bool = False,
                reason: str = "hello") -> None:
        """The peer's hello (any path), every time one arrives.

        Each hello is judged against our current state; it is applied when what the peer
        announces changed, or when it moves us; an unchanged announcement that would be a
        self-loop is not logged again.
        """
        peer = Peer(state, priority, unit_id, yielding, _tenure(tenure), wants_active)
        if state is St.ACTIVE:
            self.yielding = False
        elif (self.state is St.ACTIVE and not self._senior
              and self.machine.in_state_ms() > self.senior_margin_ms):
            self._senior = True         # the peer is not active now, well after we became active
            LOG.info("%s tenure SENIOR reason=\"peer %s %d ms into our tenure\"", self.machine.name,
                     state.name, self.machine.in_state_ms())
        changed = peer != self.peer
        self.peer = peer
        ev = self._peer_event(peer, count=changed)
        if ev is None:
            return
        if changed or TABLE.get((self.state, ev), self.state) is not self.state:
            why = self._why
            self._apply(ev, f"{reason} peer={state.name}" + (f" {why}" if why else ""))

    def on_detect(self, event: RoleEvent, reason: str = "") -> RoleState | None:
        if event not in DETECT_EVENTS:
            raise ValueError(f"{event} is not a detection event")
        st = self.state
        if event is Ev.PEER_SILENT:
            self.peer = None            # whatever it says next is news
            if st in (St.STANDBY_COLD, St.BULK_SYNC):
                self.counters["takeover_refused_not_ready"] += 1
        elif event is Ev.DATA_LINK_PEER_ALIVE and st is not St.ACTIVE:
            self.counters["split_link_no_takeover"] += 1
        return self._apply(event, reason or event.name.lower())

    def on_bulk(self, event: RoleEvent, reason: str = "") -> RoleState | None:
        if event not in BULK_EVENTS:
            raise ValueError(f"{event} is not a bulk sync event")
        return self._apply(event, reason or event.name.lower())

    def manual_active(self, reason: str = "operator") -> RoleState | None:
        return self._apply(Ev.MANUAL_ACTIVE, reason)

    def manual_standby(self, reason: str = "operator") -> RoleState | None:
        """Hand the active role over: only when the peer is STANDBY_READY (never zero actives)."""
        if self.state is St.ACTIVE and (self.peer is None or self.peer.state is not St.STANDBY_READY):
            self.counters["manual_standby_refused"] += 1
            LOG.warning("%s manual_standby refused: peer is %s, not STANDBY_READY", self.machine.name,
                        None if self.peer is None else self.peer.state.name)
            return None
        if self.state is St.ACTIVE:
            self.yielding = True        # the ready peer takes the role: let it win the comparison
        return self._apply(Ev.MANUAL_STANDBY, reason)

    def fault(self, reason: str) -> RoleState | None:
        return self._apply(Ev.SELF_FAULT, reason)

    def rejoin(self, reason: str = "fault cleared") -> RoleState | None:
        return self._apply(Ev.REJOIN, reason)

    # ---- guards: which event the peer's announcement is ----

    def _beats(self, peer: Peer) -> bool | None:
        """The deterministic comparison: a yielding unit loses, then the higher tenure (only
        actives have one: the live table wins a dual active), then the higher priority,
        then the lower unit id. None on a tie. Sets ``_why`` for the log."""
        mine = self.tenure
        if self.yielding != peer.yielding:
            self._why = "by=yielding"
            return peer.yielding
        if mine != peer.tenure and not (peer.state is St.ACTIVE and peer.tenure is Tenure.NONE):
            # (an active peer announcing no tenure is a unit from before tenures: the
            # priority decides, as it does there, so both ends agree)
            self._why = f"by=tenure ours={mine.name} peer={peer.tenure.name}"
            return mine > peer.tenure
        if peer.priority != self.priority:
            self._why = f"by=priority ours={self.priority} peer={peer.priority}"
            return self.priority > peer.priority
        if peer.unit_id != self.unit_id:
            self._why = f"by=unit_id ours={self.unit_id} peer={peer.unit_id}"
            return self.unit_id < peer.unit_id
        self._why = "tie"
        return None

    def _peer_event(self, peer: Peer, count: bool) -> RoleEvent | None:
        st = self.state
        self._why = ""
        ev = HELLO_EVENT[peer.state]
        compare = ((st is St.NEGOTIATION and ev is Ev.PEER_HELLO_NEGOTIATION)
                   or (st is St.ACTIVE and ev is Ev.PEER_HELLO_ACTIVE)
                   or (st is St.STANDBY_READY and ev is Ev.PEER_HELLO_READY))
        if compare:
            won = self._beats(peer)
            if won is None:
                if count:
                    self.counters["tie_unresolved"] += 1
                    LOG.error("%s peer has our priority %d and unit id %d: cannot pick an active",
                              self.machine.name, self.priority, self.unit_id)
                return None
            if st is St.ACTIVE and count:
                self.counters["dual_active"] += 1
                self.counters["dual_active_won" if won else "dual_active_lost"] += 1
            if won and st is St.STANDBY_READY and peer.yielding and self.preempt:
                return Ev.PREEMPT           # the preferred unit, handed the role in order
            return Ev.NEGOTIATION_WON if won else Ev.NEGOTIATION_LOST
        if count and ev is Ev.PEER_HELLO_FAILED and st in (St.STANDBY_COLD, St.BULK_SYNC):
            self.counters["takeover_refused_not_ready"] += 1
        return ev

    # ---- the one way the state changes ----

    def _apply(self, event: RoleEvent, reason: str) -> RoleState | None:
        return self.machine.apply(event, reason)

    def _on_transition(self, t: Transition) -> None:
        if t.src is t.dst:
            return
        if t.dst is St.ACTIVE:
            self.yielding = False
            self._warm, self._senior = t.src in WARM_SOURCES, False
            self.counters["takeovers" if t.src is St.STANDBY_READY else "became_active"] += 1
            self._run(TAKEOVER_STEPS)
        elif t.src is St.ACTIVE:
            self._warm = self._senior = False
            self._run(RELEASE_STEPS)

    def _run(self, steps: tuple[str, ...]) -> None:
        if self.actions is None:
            return
        for step in steps:
            try:
                getattr(self.actions, step)()
            except Exception as e:
                self.counters[f"action_failed_{step}"] += 1
                LOG.error("%s action %s failed: %s", self.machine.name, step, e)
                if steps is TAKEOVER_STEPS and self.state is St.ACTIVE:
                    self._apply(Ev.SELF_FAULT, f"{step} failed: {e}")
                return


def _tenure(value: Tenure | int) -> Tenure:
    """A tenure from a hello: an unknown value (a newer peer) counts as the highest known."""
    try:
        return Tenure(value)
    except ValueError:
        return Tenure.SENIOR
