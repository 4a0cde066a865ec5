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
- ``Peer``: what a hello says: role state, priority, unit id.
- ``counters``: one per outcome (takeovers, takeover_refused_not_ready,
  split_link_no_takeover, ...); ``machine.refused`` counts refused transitions.

The rules (issue 4, sections 4-6):

- A joining unit is STANDBY_COLD, asks for a bulk sync (BULK_SYNC) and is
  STANDBY_READY only when the bulk sync completed.
- Only a STANDBY_READY unit takes over (peer silent, or the peer announces it is
  not active). A cold or syncing unit whose active peer goes silent stays where
  it is (counted ``takeover_refused_not_ready``); an operator may still force it
  with ``manual_active()``.
- Preemption (a ready unit of higher priority taking the active role back) is
  off by default (``preempt=False``).
- Failover link cut while the peer still answers on a data interface
  (DATA_LINK_PEER_ALIVE): no takeover, logged and counted
  (``split_link_no_takeover``); never two actives. PEER_SILENT only comes when
  no path has heard the peer for the hold time (or the carrier dropped and the
  data interfaces confirmed the silence).
- Negotiation: two units that start together pick one active deterministically:
  higher ``priority`` wins, then the lower ``unit_id``. The same comparison ends a
  dual-active episode (the loser goes STANDBY_COLD and re-syncs).
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
    PREEMPT = enum.auto()                  # guard: preempt on, ready, we beat the active peer
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


class Peer(NamedTuple):
    state: RoleState
    priority: int
    unit_id: int
    yielding: bool = False      # set by manual_standby until the peer is active: it loses comparisons


class Role:
    """One unit's failover role (see the module docstring for the rules)."""

    def __init__(self, unit_id: int, *, priority: int = 100, preempt: bool = False,
                 actions: Actions | None = None, clock: Clock = monotonic_ms, name: str = "role"):
        self.unit_id, self.priority, self.preempt = unit_id, priority, preempt
        self.actions = actions
        self.machine: Machine[RoleState, RoleEvent] = Machine(name, TABLE, St.INIT, clock=clock)
        self.machine.subscribe(self._on_transition)
        self.peer: Peer | None = None
        self.yielding = False
        self.counters: collections.Counter[str] = collections.Counter()

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

    def hello(self) -> Peer:
        """What our hellos announce."""
        return Peer(self.state, self.priority, self.unit_id, self.yielding)

    def status(self) -> dict:
        return {"state": self.state.name, "since_ms": self.machine.since_ms,
                "peer": None if self.peer is None else self.peer.state.name,
                "preempt": self.preempt, "priority": self.priority,
                "counters": dict(self.counters), "refused": self.machine.refused_total}

    # ---- inputs ----

    def start(self) -> RoleState | None:
        return self._apply(Ev.START, "start")

    def on_peer(self, state: RoleState, priority: int, unit_id: int, yielding: bool = False,
                reason: str = "hello") -> None:
        """The peer's hello (any path), every time one arrives.

        Each hello is judged against our current state; it is applied when what the peer
        announces changed, or when it moves us; an unchanged announcement that would be a
        self-loop is not logged again.
        """
        peer = Peer(state, priority, unit_id, yielding)
        if state is St.ACTIVE:
            self.yielding = False
        changed = peer != self.peer
        self.peer = peer
        ev = self._peer_event(peer, count=changed)
        if ev is None:
            return
        if changed or TABLE.get((self.state, ev), self.state) is not self.state:
            self._apply(ev, f"{reason} peer={state.name}")

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
        """The deterministic comparison: a yielding unit loses, then higher priority wins,
        then the lower unit id. None on a tie."""
        if self.yielding != peer.yielding:
            return peer.yielding
        if peer.priority != self.priority:
            return self.priority > peer.priority
        if peer.unit_id != self.unit_id:
            return self.unit_id < peer.unit_id
        return None

    def _peer_event(self, peer: Peer, count: bool) -> RoleEvent | None:
        st = self.state
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
            return Ev.NEGOTIATION_WON if won else Ev.NEGOTIATION_LOST
        if (st is St.STANDBY_READY and ev is Ev.PEER_HELLO_ACTIVE and self.preempt
                and self._beats(peer)):
            return Ev.PREEMPT
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
            self.counters["takeovers" if t.src is St.STANDBY_READY else "became_active"] += 1
            self._run(TAKEOVER_STEPS)
        elif t.src is St.ACTIVE:
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
