"""The failover role state machine: its table, negotiation, who may take over, rejoin.

Pure logic: two ``Role`` objects stand for the two units; their hellos are handed
across by ``exchange``; time is a fake clock.
"""
from __future__ import annotations

import logging

import pytest

from replication.fsm import Machine
from replication.role import (RELEASE_STEPS, TABLE, TAKEOVER_STEPS, Role, RoleEvent as Ev,
                              RoleState as St, Tenure as Tn)


class Clock:
    def __init__(self, t: int = 1000):
        self.t = t

    def __call__(self) -> int:
        return self.t


class Recorder:
    """Actions that only record the order of the steps."""

    def __init__(self, fail: str | None = None):
        self.steps: list[str] = []
        self.fail = fail

    def __getattr__(self, step):
        if step not in TAKEOVER_STEPS + RELEASE_STEPS:
            raise AttributeError(step)

        def run():
            self.steps.append(step)
            if step == self.fail:
                raise OSError(f"{step} broke")
        return run


def unit(unit_id: int, clock=None, **kw) -> Role:
    return Role(unit_id, clock=clock or Clock(), actions=Recorder(), name=f"role{unit_id}", **kw)


def exchange(a: Role, b: Role, rounds: int = 10) -> None:
    """Hand hellos across until neither changes."""
    for _ in range(rounds):
        before = (a.state, b.state)
        b.on_peer(*a.hello())
        a.on_peer(*b.hello())
        if (a.state, b.state) == before:
            return
    raise AssertionError(f"no stable roles after {rounds} rounds: {a.state} {b.state}")


def ready(role: Role) -> None:
    """A cold standby that completes a bulk sync."""
    assert role.state is St.STANDBY_COLD
    role.on_bulk(Ev.BULK_START)
    role.on_bulk(Ev.BULK_DONE)
    assert role.state is St.STANDBY_READY


def active_and_ready(clock: Clock | None = None, **kw_b) -> tuple[Role, Role]:
    """a active for a while, then b joins and bulk-syncs (one clock for both)."""
    clock = clock or Clock()
    a, b = unit(1, clock), unit(2, clock, **kw_b)
    a.start()
    a.on_detect(Ev.PEER_SILENT)          # alone for the hold time
    assert a.state is St.ACTIVE
    clock.t += 2000
    b.start()
    exchange(a, b)
    assert b.state is St.STANDBY_COLD
    clock.t += 500
    ready(b)
    exchange(a, b)
    return a, b


def last(role: Role, event: Ev):
    return [t for t in role.history if t.event is event][-1]


# ---- the table ----

@pytest.mark.parametrize("src,event", sorted(TABLE, key=lambda k: (k[0].value, k[1].value)),
                         ids=lambda x: x.name)
def test_every_allowed_transition(src, event):
    clock = Clock(5000)
    m = Machine("t", TABLE, src, clock=clock)
    assert m.apply(event, "test") is TABLE[(src, event)]
    assert m.state is TABLE[(src, event)]
    t = m.history[-1]
    assert (t.time_ms, t.src, t.event, t.dst, t.reason) == (5000, src, event, TABLE[(src, event)], "test")
    assert m.refused_total == 0


REFUSED = [
    (St.INIT, Ev.BULK_DONE), (St.INIT, Ev.PEER_SILENT), (St.INIT, Ev.MANUAL_ACTIVE),
    (St.NEGOTIATION, Ev.BULK_DONE), (St.NEGOTIATION, Ev.REJOIN),
    (St.ACTIVE, Ev.BULK_DONE), (St.ACTIVE, Ev.BULK_START), (St.ACTIVE, Ev.REJOIN),
    (St.ACTIVE, Ev.PREEMPT), (St.ACTIVE, Ev.START),
    (St.STANDBY_COLD, Ev.BULK_DONE), (St.STANDBY_COLD, Ev.PREEMPT),
    (St.STANDBY_COLD, Ev.NEGOTIATION_WON),
    (St.BULK_SYNC, Ev.PREEMPT), (St.BULK_SYNC, Ev.NEGOTIATION_WON),
    (St.STANDBY_READY, Ev.START), (St.STANDBY_READY, Ev.REJOIN),
    (St.FAILED, Ev.MANUAL_ACTIVE), (St.FAILED, Ev.BULK_DONE), (St.FAILED, Ev.START),
    (St.FAILED, Ev.PREEMPT),
]


def test_refused_transitions_are_counted_and_change_nothing(caplog):
    for src, event in REFUSED:
        assert (src, event) not in TABLE
    m = Machine("t", TABLE, St.INIT, clock=Clock())
    with caplog.at_level(logging.WARNING, logger="natpair"):
        for src, event in REFUSED:
            m.state = src
            assert m.apply(event, "nope") is None
            assert m.state is src
    assert m.refused_total == len(REFUSED)
    assert m.refused[(St.FAILED, Ev.MANUAL_ACTIVE)] == 1
    assert not m.history
    assert "t FAILED/MANUAL_ACTIVE refused reason=nope" in caplog.text


def test_every_state_reachable_and_every_event_used():
    assert {d for d in TABLE.values()} | {St.INIT} == set(St)
    assert {e for _, e in TABLE} == set(Ev)


def test_transitions_are_logged_state_event_new(caplog):
    a, b = active_and_ready()
    with caplog.at_level(logging.INFO, logger="natpair"):
        b.on_detect(Ev.PEER_SILENT, "hold expired")
    assert 'role2 STANDBY_READY/PEER_SILENT -> ACTIVE reason="hold expired"' in caplog.text
    t = b.history[-1]
    assert (t.src, t.event, t.dst, t.reason) == (St.STANDBY_READY, Ev.PEER_SILENT, St.ACTIVE,
                                                 "hold expired")


# ---- negotiation ----

@pytest.mark.parametrize("first", ["a", "b"])
def test_two_units_starting_together_pick_one_by_unit_id(first):
    a, b = unit(7), unit(3)
    a.start()
    b.start()
    if first == "a":
        exchange(a, b)
    else:
        exchange(b, a)
    assert (a.state, b.state) == (St.STANDBY_COLD, St.ACTIVE)       # equal priority: lower id
    assert b.counters["became_active"] == 1 and a.counters["takeovers"] == 0


@pytest.mark.parametrize("first", ["a", "b"])
def test_negotiation_priority_before_unit_id(first):
    a, b = unit(7, priority=200), unit(3, priority=100)
    a.start()
    b.start()
    exchange(a, b) if first == "a" else exchange(b, a)
    assert (a.state, b.state) == (St.ACTIVE, St.STANDBY_COLD)


def test_same_priority_and_id_is_not_decided():
    a, b = unit(5), unit(5)
    a.start()
    b.start()
    exchange(a, b)
    assert a.state is b.state is St.NEGOTIATION
    assert a.counters["tie_unresolved"] >= 1


def test_alone_for_the_hold_time_becomes_active():
    a = unit(1)
    a.start()
    a.on_detect(Ev.PEER_SILENT)
    assert a.state is St.ACTIVE
    assert a.actions.steps == list(TAKEOVER_STEPS)


def test_a_peer_seen_only_on_a_data_interface_keeps_negotiation_waiting():
    a = unit(1)
    a.start()
    a.on_detect(Ev.DATA_LINK_PEER_ALIVE)
    assert a.state is St.NEGOTIATION


def test_a_unit_joining_an_active_peer_is_cold_until_its_bulk_sync_completes():
    a, b = unit(1), unit(2, priority=250)   # a higher priority does not preempt either
    a.start()
    a.on_detect(Ev.PEER_SILENT)
    b.start()
    exchange(a, b)
    assert (a.state, b.state) == (St.ACTIVE, St.STANDBY_COLD)
    b.on_bulk(Ev.BULK_START)
    exchange(a, b)
    assert b.state is St.BULK_SYNC
    b.on_bulk(Ev.BULK_DONE)
    exchange(a, b)
    assert (a.state, b.state) == (St.ACTIVE, St.STANDBY_READY)


# ---- takeover ----

def test_takeover_from_ready_runs_state_first_then_addresses():
    a, b = active_and_ready()
    b.on_detect(Ev.PEER_SILENT)
    assert b.state is St.ACTIVE
    assert b.actions.steps == ["core_active", "add_addresses", "announce"]
    assert b.counters["takeovers"] == 1


@pytest.mark.parametrize("stage", ["cold", "bulk"])
def test_no_takeover_unless_standby_ready(stage):
    a, b = unit(1), unit(2)
    a.start()
    a.on_detect(Ev.PEER_SILENT)
    b.start()
    exchange(a, b)
    if stage == "bulk":
        b.on_bulk(Ev.BULK_START)
    b.on_detect(Ev.PEER_SILENT)
    assert b.state is St.STANDBY_COLD
    assert b.actions.steps == []
    assert b.counters["takeover_refused_not_ready"] == 1
    # a failed peer is no reason either
    b.on_peer(St.FAILED, 100, 1)
    assert b.state is St.STANDBY_COLD and b.counters["takeover_refused_not_ready"] == 2


def test_ready_takes_over_from_a_peer_that_reports_a_fault():
    a, b = active_and_ready()
    a.fault("inside leg down")
    assert a.state is St.FAILED and a.actions.steps == list(TAKEOVER_STEPS + RELEASE_STEPS)
    exchange(a, b)
    assert (a.state, b.state) == (St.FAILED, St.ACTIVE)


def test_failover_link_cut_with_peer_alive_does_not_take_over():
    a, b = active_and_ready()
    b.on_detect(Ev.PEER_LINK_DOWN)
    assert b.state is St.STANDBY_READY
    b.on_detect(Ev.DATA_LINK_PEER_ALIVE, "hello on inside")
    assert b.state is St.STANDBY_READY and a.state is St.ACTIVE
    assert b.counters["split_link_no_takeover"] == 1
    assert b.actions.steps == []
    assert [t.event for t in b.history[-2:]] == [Ev.PEER_LINK_DOWN, Ev.DATA_LINK_PEER_ALIVE]


def test_active_restarted_within_the_hold_time_ready_standby_takes_the_role():
    a, b = active_and_ready()
    a2 = unit(1)                         # same unit, new process: empty table
    a2.start()
    exchange(a2, b)
    assert (a2.state, b.state) == (St.STANDBY_COLD, St.ACTIVE)


def test_dual_active_after_a_healed_split_ends_with_one_active():
    clock = Clock()
    a, b = active_and_ready(clock, priority=250)       # b preferred: the older table wins anyway
    assert a.tenure is Tn.SENIOR                        # it heard b standby, well into its tenure
    b.on_detect(Ev.PEER_SILENT, "every path cut")     # a real split: both forward
    assert a.state is b.state is St.ACTIVE
    assert b.tenure is Tn.LIVE                          # took over with the synced table
    clock.t += 30_000
    exchange(a, b)                                      # the paths are back
    assert (a.state, b.state) == (St.ACTIVE, St.STANDBY_COLD)
    assert b.actions.steps == list(TAKEOVER_STEPS + RELEASE_STEPS)
    assert b.counters["dual_active"] == 1 and b.counters["dual_active_lost"] == 1
    assert "by=tenure ours=LIVE peer=SENIOR" in last(b, Ev.NEGOTIATION_LOST).reason
    # the loser is cold: it asks for a bulk sync and is ready only when it completed
    ready(b)
    exchange(a, b)
    assert (a.state, b.state) == (St.ACTIVE, St.STANDBY_READY)


def test_a_rejoining_unit_of_higher_priority_alone_by_mistake_loses_to_the_table():
    clock = Clock()
    a, b = active_and_ready(clock)
    a2 = unit(1, clock, priority=250)   # a restarts (empty table), preferred, not preempting
    a.fault("power")
    b.on_detect(Ev.PEER_SILENT)
    assert b.state is St.ACTIVE and b.tenure is Tn.LIVE
    clock.t += 60_000
    a2.start()
    a2.on_detect(Ev.PEER_SILENT, "heard nobody in the hold time")   # b's hellos were late
    assert a2.state is St.ACTIVE and a2.tenure is Tn.COLD
    clock.t += 300
    exchange(a2, b)
    assert (a2.state, b.state) == (St.STANDBY_COLD, St.ACTIVE)
    assert "by=tenure ours=COLD peer=LIVE" in last(a2, Ev.NEGOTIATION_LOST).reason
    assert "by=tenure ours=LIVE peer=COLD" in last(b, Ev.NEGOTIATION_WON).reason
    ready(a2)
    exchange(a2, b)
    assert (a2.state, b.state) == (St.STANDBY_READY, St.ACTIVE)   # preempt off: no failback


def test_a_unit_alone_for_long_keeps_the_role_against_a_cold_active_of_higher_priority():
    clock = Clock()
    a, b = unit(1, clock), unit(2, clock, priority=250)
    a.start()
    a.on_detect(Ev.PEER_SILENT)
    clock.t += 10_000                    # it forwarded alone: its table is the only one
    assert a.tenure is Tn.LIVE
    b.start()
    b.on_detect(Ev.PEER_SILENT)          # b did not hear a in time
    exchange(a, b)
    assert (a.state, b.state) == (St.ACTIVE, St.STANDBY_COLD)


@pytest.mark.parametrize("alone_ms", [0, 10_000])
@pytest.mark.parametrize("a_first", [True, False])
def test_dual_active_with_equal_everything_is_decided_by_the_unit_id(alone_ms, a_first):
    """Both went active alone at the same time (a cut link at start), equal priority: the
    lower unit id wins whichever hello arrives first, cold or live."""
    clock = Clock()
    a, b = unit(1, clock), unit(2, clock)
    for u in (a, b):
        u.start()
        u.on_detect(Ev.PEER_SILENT)
    clock.t += alone_ms
    assert a.tenure is b.tenure is (Tn.COLD if alone_ms == 0 else Tn.LIVE)
    exchange(*((a, b) if a_first else (b, a)))
    assert (a.state, b.state) == (St.ACTIVE, St.STANDBY_COLD)
    assert "by=unit_id" in last(b, Ev.NEGOTIATION_LOST).reason


def test_two_seniors_compare_as_equals_and_agree():
    """Hellos that crossed a tenure change in flight can make both senior: still one verdict."""
    clock = Clock()
    a, b = unit(1, clock, priority=100), unit(2, clock, priority=200)
    for u in (a, b):
        u.start()
        u.on_detect(Ev.PEER_SILENT)
    clock.t += 2000
    a.on_peer(St.NEGOTIATION, 200, 2)    # stale hellos from before the peer went active
    b.on_peer(St.NEGOTIATION, 100, 1)
    assert a.tenure is b.tenure is Tn.SENIOR
    exchange(a, b)
    assert (a.state, b.state) == (St.STANDBY_COLD, St.ACTIVE)
    assert "by=priority" in last(a, Ev.NEGOTIATION_LOST).reason


def test_an_active_peer_from_before_tenures_is_compared_by_priority():
    clock = Clock()
    a = unit(1, clock, priority=100)
    a.start()
    a.on_detect(Ev.PEER_SILENT)
    clock.t += 10_000
    a.on_peer(St.ACTIVE, 200, 2)          # no tenure bits: an older unit uses the priority
    assert a.state is St.STANDBY_COLD     # and so does this one: both agree


def test_manual_active_against_a_live_active_peer_loses_the_comparison():
    a, b = active_and_ready()
    b.manual_active("operator")
    exchange(a, b)
    assert (a.state, b.state) == (St.ACTIVE, St.STANDBY_COLD)


def test_a_takeover_step_that_fails_leaves_the_unit_failed_and_released():
    a, b = active_and_ready()
    b.actions.fail = "add_addresses"
    b.on_detect(Ev.PEER_SILENT)
    assert b.state is St.FAILED
    assert b.actions.steps == ["core_active", "add_addresses", "remove_addresses", "core_standby"]
    assert b.counters["action_failed_add_addresses"] == 1


def test_manual_standby_only_with_a_ready_peer():
    a, b = unit(1), unit(2)
    a.start()
    a.on_detect(Ev.PEER_SILENT)
    b.start()
    exchange(a, b)
    assert a.manual_standby() is None and a.state is St.ACTIVE
    assert a.counters["manual_standby_refused"] == 1
    ready(b)
    exchange(a, b)
    assert a.manual_standby() is St.STANDBY_READY
    exchange(a, b)
    assert (a.state, b.state) == (St.STANDBY_READY, St.ACTIVE)


# ---- preemption and rejoin ----

def hand_over_if_asked(active: Role, standby: Role) -> None:
    """What switchover.py does on the active when the ready peer's hellos ask for the role:
    drain, wait for the acks, then ``manual_standby`` (yielding)."""
    if active.is_active and standby.hello().wants_active:
        assert active.manual_standby("peer asked for the active role") is St.STANDBY_READY


def test_preemption_is_off_by_default():
    a, b = unit(1, priority=200), unit(2, priority=100)
    assert a.preempt is False
    a.start()
    b.start()
    exchange(a, b)
    assert (a.state, b.state) == (St.ACTIVE, St.STANDBY_COLD)
    ready(b)
    a.fault("power")
    b.on_detect(Ev.PEER_SILENT)
    assert b.state is St.ACTIVE
    a.rejoin()
    exchange(a, b)
    ready(a)
    exchange(a, b)
    assert not a.hello().wants_active
    hand_over_if_asked(b, a)
    exchange(a, b)
    assert (a.state, b.state) == (St.STANDBY_READY, St.ACTIVE)    # no failback


def test_preemption_when_enabled_fails_back_to_the_preferred_unit_in_order():
    clock = Clock()
    a, b = unit(1, clock, priority=200, preempt=True), unit(2, clock, priority=100)
    a.start()
    b.start()
    exchange(a, b)
    ready(b)
    a.fault("power")
    b.on_detect(Ev.PEER_SILENT)
    clock.t += 5000
    a.rejoin()
    exchange(a, b)
    assert a.state is St.STANDBY_COLD                   # not ready: never preempts
    assert not a.hello().wants_active
    a.on_bulk(Ev.BULK_START)
    exchange(a, b)
    assert a.state is St.BULK_SYNC and not a.hello().wants_active
    a.on_bulk(Ev.BULK_DONE)
    exchange(a, b)
    # ready and preferred: it asks; it never jumps to ACTIVE beside the live active
    assert (a.state, b.state) == (St.STANDBY_READY, St.ACTIVE)
    assert a.hello().wants_active
    hand_over_if_asked(b, a)                            # the active yields in order
    exchange(a, b)
    assert (a.state, b.state) == (St.ACTIVE, St.STANDBY_READY)   # b keeps its table: ready
    assert last(a, Ev.PREEMPT).dst is St.ACTIVE
    assert b.counters["dual_active"] == 0 and a.counters["dual_active"] == 0
    assert not a.hello().wants_active and not b.hello().wants_active


def test_rejoin_failed_cold_bulk_ready():
    clock = Clock()
    a = Role(1, clock=clock, actions=Recorder())
    a.start()
    a.on_detect(Ev.PEER_SILENT)
    clock.t += 10
    a.fault("core error")
    clock.t += 10
    a.rejoin()
    clock.t += 10
    a.on_bulk(Ev.BULK_START)
    clock.t += 10
    a.on_bulk(Ev.BULK_DONE)
    path = [(t.time_ms, t.src, t.dst) for t in a.history]
    assert path == [(1000, St.INIT, St.NEGOTIATION), (1000, St.NEGOTIATION, St.ACTIVE),
                    (1010, St.ACTIVE, St.FAILED), (1020, St.FAILED, St.STANDBY_COLD),
                    (1030, St.STANDBY_COLD, St.BULK_SYNC), (1040, St.BULK_SYNC, St.STANDBY_READY)]
    assert a.status()["state"] == "STANDBY_READY"


def test_a_ready_standby_that_re_syncs_stays_ready_and_may_take_over_mid_sync():
    """Its table stays live through the re-sync (the bulk adds, and purges only at its end)."""
    a, b = active_and_ready()
    for event in (Ev.BULK_START, Ev.BULK_DONE, Ev.BULK_START, Ev.BULK_FAILED, Ev.BULK_START):
        b.on_bulk(event, "stream skipped")
        assert b.state is St.STANDBY_READY
    assert b.machine.refused_total == 0
    b.on_detect(Ev.PEER_SILENT, "hold expired")
    assert b.state is St.ACTIVE and b.counters["takeovers"] == 1


def test_bulk_failure_goes_back_to_cold_and_a_lost_source_aborts_the_bulk():
    a, b = unit(1), unit(2)
    a.start()
    a.on_detect(Ev.PEER_SILENT)
    b.start()
    exchange(a, b)
    b.on_bulk(Ev.BULK_START)
    b.on_bulk(Ev.BULK_FAILED, "timeout")
    assert b.state is St.STANDBY_COLD
    b.on_bulk(Ev.BULK_START)
    a.fault("power")
    exchange(a, b)
    assert b.state is St.STANDBY_COLD       # its source is gone, and it is not ready
