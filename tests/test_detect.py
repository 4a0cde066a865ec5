"""Failure detection: hello schedule, hold time, carrier hint confirmed over the data paths.

A fake clock moves 1 ms at a time; the peer's hellos are fed in by hand.
"""
from __future__ import annotations

import pytest

from replication.detect import FAILOVER, Detector, TimerError, check_timers
from replication.role import Role, RoleEvent as Ev, RoleState as St

POLL, HOLD = 10, 50


class Clock:
    def __init__(self, t: int = 10_000):
        self.t = t

    def __call__(self) -> int:
        return self.t


def run(det: Detector, clock: Clock, ms: int, peer_paths=(), role: Role | None = None):
    """Advance ms milliseconds; the peer sends a hello every POLL ms on peer_paths."""
    events = []
    for _ in range(ms):
        clock.t += 1
        if clock.t % POLL == 0:
            for p in peer_paths:
                det.hello(p)
        for ev in det.poll():
            events.append((clock.t, ev[0]))
            if role is not None:
                role.on_detect(*ev)
    return events


def test_hold_must_be_three_polls():
    check_timers(10, 30)
    with pytest.raises(TimerError, match=r"hold_ms: 29 ms is less than 3 x poll_ms \(3 x 10 = 30 ms\)") as e:
        check_timers(10, 29)
    assert e.value.key == "hold_ms"
    with pytest.raises(TimerError, match="poll_ms: must be at least 1"):
        check_timers(0, 30)
    with pytest.raises(TimerError, match="hold_ms: must be an integer"):
        check_timers(10, 30.5)
    with pytest.raises(TimerError) as e:
        Detector(poll_ms=20, hold_ms=50)
    assert e.value.key == "hold_ms"


def test_hellos_every_poll_on_every_path_but_a_dead_carrier():
    clock = Clock()
    det = Detector(poll_ms=POLL, hold_ms=HOLD, clock=clock)
    sent = []
    for _ in range(35):
        if paths := det.hellos_due():
            sent.append((clock.t, tuple(paths)))
        clock.t += 1
    assert [t for t, _ in sent] == [10_000, 10_010, 10_020, 10_030]
    assert sent[0][1] == (FAILOVER, "inside", "outside")
    det.carrier(False)
    clock.t += POLL
    assert det.hellos_due() == ["inside", "outside"]
    assert det.counters["hellos_tx_failover"] == 4


def test_silence_from_start_up_is_reported_after_the_hold_time_once():
    clock = Clock()
    det = Detector(poll_ms=POLL, hold_ms=HOLD, clock=clock)
    start = clock.t
    assert run(det, clock, 500) == [(start + HOLD, Ev.PEER_SILENT)]
    assert det.counters["silent_hold"] == 1


def test_hold_expiry_after_the_last_hello_on_any_path():
    clock = Clock()
    det = Detector(poll_ms=POLL, hold_ms=HOLD, clock=clock)
    assert run(det, clock, 200, peer_paths=(FAILOVER, "inside", "outside")) == []
    last = clock.t - clock.t % POLL
    assert run(det, clock, 200) == [(last + HOLD, Ev.PEER_SILENT)]
    # the peer comes back: a new episode
    assert run(det, clock, 100, peer_paths=(FAILOVER,)) == []
    assert det.counters["peer_back"] == 1
    last = clock.t - clock.t % POLL
    assert run(det, clock, 100) == [(last + HOLD, Ev.PEER_SILENT)]


def test_carrier_loss_and_data_silence_confirmed_within_two_polls():
    clock = Clock()
    det = Detector(poll_ms=POLL, hold_ms=HOLD, clock=clock)
    run(det, clock, 105, peer_paths=(FAILOVER, "inside", "outside"))
    down = clock.t
    det.carrier(False)                   # the peer's namespace is gone
    ev = run(det, clock, 100)
    assert ev == [(down + 1, Ev.PEER_LINK_DOWN), (down + 2 * POLL, Ev.PEER_SILENT)]
    assert 2 * POLL < HOLD
    assert det.counters["silent_carrier"] == 1 and det.counters["silent_hold"] == 0


def test_carrier_loss_with_the_peer_alive_on_a_data_path_is_a_split_link():
    clock = Clock()
    det = Detector(poll_ms=POLL, hold_ms=HOLD, clock=clock)
    run(det, clock, 105, peer_paths=(FAILOVER, "inside", "outside"))
    det.carrier(False)
    ev = run(det, clock, 10 * HOLD, peer_paths=("inside",))
    assert [e for _, e in ev] == [Ev.PEER_LINK_DOWN, Ev.DATA_LINK_PEER_ALIVE]
    assert ev[1][0] - ev[0][0] <= POLL
    assert det.counters["split_link"] == 1
    # then the peer dies for good: the hold time of the data paths decides
    ev = run(det, clock, 200)
    assert [e for _, e in ev] == [Ev.PEER_SILENT]


def test_failover_link_silent_without_carrier_change_but_data_alive_is_a_split_link():
    clock = Clock()
    det = Detector(poll_ms=POLL, hold_ms=HOLD, clock=clock)
    run(det, clock, 100, peer_paths=(FAILOVER, "inside", "outside"))
    ev = run(det, clock, 1000, peer_paths=("inside", "outside"))
    assert [e for _, e in ev] == [Ev.DATA_LINK_PEER_ALIVE]
    # the failover link heals, then breaks again: a new split is reported
    run(det, clock, 100, peer_paths=(FAILOVER, "inside"))
    ev = run(det, clock, 200, peer_paths=("outside",))
    assert [e for _, e in ev] == [Ev.DATA_LINK_PEER_ALIVE]
    assert det.counters["split_link"] == 2


def _ready_standby(clock) -> Role:
    r = Role(2, clock=clock)
    r.start()
    r.on_peer(St.ACTIVE, 100, 1)
    r.on_bulk(Ev.BULK_START)
    r.on_bulk(Ev.BULK_DONE)
    assert r.state is St.STANDBY_READY
    return r


def test_with_the_role_carrier_loss_takes_over_within_two_polls():
    clock = Clock()
    det = Detector(poll_ms=POLL, hold_ms=HOLD, clock=clock)
    role = _ready_standby(clock)
    run(det, clock, 100, peer_paths=(FAILOVER, "inside", "outside"), role=role)
    down = clock.t
    det.carrier(False)
    run(det, clock, 100, role=role)
    took = next(t for t in role.history if t.dst is St.ACTIVE)
    assert took.time_ms - down <= 2 * POLL
    assert took.src is St.STANDBY_READY and took.event is Ev.PEER_SILENT


def test_with_the_role_hold_expiry_takes_over():
    clock = Clock()
    det = Detector(poll_ms=POLL, hold_ms=HOLD, clock=clock)
    role = _ready_standby(clock)
    run(det, clock, 100, peer_paths=(FAILOVER, "inside", "outside"), role=role)
    last = clock.t - clock.t % POLL
    run(det, clock, 200, role=role)
    took = next(t for t in role.history if t.dst is St.ACTIVE)
    assert took.time_ms == last + HOLD


def test_with_the_role_a_cut_failover_link_with_the_peer_alive_never_takes_over():
    clock = Clock()
    det = Detector(poll_ms=POLL, hold_ms=HOLD, clock=clock)
    role = _ready_standby(clock)
    run(det, clock, 100, peer_paths=(FAILOVER, "inside", "outside"), role=role)
    det.carrier(False)
    run(det, clock, 20 * HOLD, peer_paths=("outside",), role=role)
    assert role.state is St.STANDBY_READY
    assert role.counters["split_link_no_takeover"] == 1
    assert role.counters["takeovers"] == 0


def test_a_dead_peer_is_no_split_link_even_when_its_data_hellos_came_last():
    """The failover hello goes out first, the data hellos a moment later: when the peer
    dies, the failover hold expires just before the data holds. That is no split link."""
    clock = Clock()
    det = Detector(poll_ms=POLL, hold_ms=HOLD, clock=clock)
    run(det, clock, 100, peer_paths=(FAILOVER,))
    clock.t += 1
    det.hello("inside")                 # 1 ms after the last failover hello, then nothing
    ev = run(det, clock, 2 * HOLD)
    assert [e for _, e in ev] == [Ev.PEER_SILENT]
    assert det.counters["split_link"] == 0


def test_without_data_paths_a_carrier_drop_is_only_a_hint():
    clock = Clock()
    det = Detector(poll_ms=POLL, hold_ms=HOLD, data_paths=(), clock=clock)
    run(det, clock, 100, peer_paths=(FAILOVER,))
    down = clock.t
    det.carrier(False)
    ev = run(det, clock, 2 * HOLD)
    assert [e for _, e in ev] == [Ev.PEER_LINK_DOWN, Ev.PEER_SILENT]
    assert ev[1][0] - down >= HOLD - POLL     # the hold time decided, not the carrier
    assert det.counters["silent_hold"] == 1


def test_max_silence_is_the_longest_gap_that_did_not_fail_the_peer():
    clock = Clock(t=10_005)
    det = Detector(poll_ms=POLL, hold_ms=HOLD, clock=clock)
    run(det, clock, 500)                            # nobody yet: start-up does not count
    run(det, clock, 100, peer_paths=(FAILOVER,))
    assert det.counters["max_silence_ms"] == POLL
    clock.t += 3 * POLL + 2                         # one late burst, below the hold time
    det.hello(FAILOVER)
    run(det, clock, 100, peer_paths=(FAILOVER,))
    assert 3 * POLL + 2 <= det.counters["max_silence_ms"] < HOLD


def test_the_first_hello_back_on_a_data_path_is_no_split_link():
    """After a silence (the peer stalled), its data hello may arrive a moment before its
    failover hello: the failover link gets a hold time of its own in the new episode."""
    clock = Clock()
    det = Detector(poll_ms=POLL, hold_ms=HOLD, clock=clock)
    run(det, clock, 100, peer_paths=(FAILOVER, "inside"))
    ev = run(det, clock, 2 * HOLD)
    assert [e for _, e in ev] == [Ev.PEER_SILENT]
    det.hello("inside")
    clock.t += 1
    ev = run(det, clock, 3 * HOLD, peer_paths=(FAILOVER, "inside"))
    assert ev == [] and det.counters["split_link"] == 0


def test_silence_counts_from_when_the_hello_was_heard_not_read():
    """The hello process stamps each hello on arrival; a loop that reads it late must not
    stretch the hold time by its lateness (nor shrink max_silence_ms)."""
    clock = Clock()
    det = Detector(poll_ms=POLL, hold_ms=HOLD, clock=clock)
    det.hello(FAILOVER, at=clock.t)
    clock.t += 30
    det.hello("inside", at=clock.t - 25)             # heard 5 ms after the last, read 25 ms late
    assert det.last["inside"] == clock.t - 25 and det.last_any == clock.t - 25
    assert det.counters["max_silence_ms"] == 5
    det.hello(FAILOVER, at=clock.t - 28)             # an older one read after a newer: no step back
    assert det.last_any == clock.t - 25
    clock.t += HOLD - 26
    assert det.poll() == []
    clock.t += 1                                     # HOLD after it was heard
    assert [e for e, _ in det.poll()] == [Ev.PEER_SILENT]
    det.hello(FAILOVER, at=clock.t + 50)             # a time in the future is taken as now
    assert det.last[FAILOVER] == clock.t


def test_silence_is_judged_as_of_when_the_caller_looked():
    """A loop that looked at the hellos heard, then stalled 30 ms before asking, sees no
    silence that was only its own stall; asked as of a later look, it does."""
    clock = Clock()
    det = Detector(poll_ms=POLL, hold_ms=HOLD, clock=clock)
    det.hello(FAILOVER, at=clock.t)
    looked = clock.t + HOLD - 5
    clock.t = looked + 30                            # the stall
    assert det.poll(looked) == []
    assert [e for e, _ in det.poll(looked + 5)] == [Ev.PEER_SILENT]


def test_a_data_hello_heard_before_the_carrier_drop_is_no_split():
    """The beat process stamps a hello when it arrives; the loop may read it after the
    carrier event: heard before the drop, it is no sign that the peer lives on."""
    t = [1000]
    d = Detector(poll_ms=5, hold_ms=200, clock=lambda: t[0], data_paths=("inside", "outside"))
    d.start(0)
    for p in ("failover", "inside", "outside"):
        d.hello(p)
    d.poll()
    t[0] = 1003
    d.carrier(False)
    d.hello("outside", at=1002)                 # heard before the drop, read after it
    assert not d.split
    t[0] = 1013                                 # confirm_polls (2) x poll later: silent
    events = [e.name for e, _ in d.poll()]
    assert events == ["PEER_LINK_DOWN", "PEER_SILENT"] or events == ["PEER_SILENT"], events
    assert d.counters["silent_carrier"] == 1 and d.counters["split_link"] == 0


# ---- pauses of our own listener (corosync's pause detection) ----

def _heard_then_quiet(clock: Clock) -> Detector:
    det = Detector(poll_ms=POLL, hold_ms=HOLD, clock=clock)
    det.hello(FAILOVER)
    return det


def test_a_pause_of_ours_is_not_the_peers_silence():
    """We (the beat) were not running for 40 ms: the peer, heard 5 ms before the pause,
    answers 3 ms after it. A plain hold of 50 ms would have failed it at 10 ms after."""
    clock = Clock()
    det = _heard_then_quiet(clock)
    t0 = clock.t
    clock.t = t0 + 45
    det.paused(t0 + 5, t0 + 45)
    clock.t = t0 + 60                       # 60 ms since the hello, 20 of them listened
    assert det.poll() == [] and det.silence() == 20
    det.hello(FAILOVER)
    assert run(det, clock, 45, peer_paths=(FAILOVER, "inside")) == []
    assert det.counters["observer_pauses"] == 1 and det.counters["observer_pause_max_ms"] == 40
    assert det.counters["observer_paused_ms"] == 40 and det.counters["silent_hold"] == 0
    assert det.counters["max_silence_ms"] == 20


def test_a_real_failure_around_a_pause_is_found_within_hold_plus_the_pause():
    """The bound: hold + our pauses inside it, and at least PAUSE_GRACE_POLLS polls after the
    last pause (the peer's stalled hellos get through first)."""
    from replication.detect import PAUSE_GRACE_POLLS
    clock = Clock()
    det = _heard_then_quiet(clock)
    t0 = clock.t
    clock.t = t0 + 30
    det.paused(t0 + 10, t0 + 30)            # 20 ms of our own pause
    events = run(det, clock, 60)
    assert events == [(t0 + HOLD + 20, Ev.PEER_SILENT)]
    # a pause right at the end of the hold: the grace decides
    det.hello(FAILOVER)
    t1 = clock.t
    clock.t = t1 + HOLD - 1
    det.paused(t1 + HOLD - 3, t1 + HOLD - 1)
    events = run(det, clock, 40)
    assert events == [(t1 + HOLD - 1 + PAUSE_GRACE_POLLS * POLL, Ev.PEER_SILENT)]


def test_a_pause_before_the_last_hello_does_not_stretch_the_next_silence():
    clock = Clock()
    det = _heard_then_quiet(clock)
    t0 = clock.t
    det.paused(t0 - 30, t0 - 5)             # over before the peer was heard
    clock.t += 1
    det.hello(FAILOVER)
    assert run(det, clock, 60)[0] == (t0 + 1 + HOLD, Ev.PEER_SILENT)


def test_the_silence_log_says_how_much_was_our_pause(caplog):
    clock = Clock()
    det = _heard_then_quiet(clock)
    t0 = clock.t
    clock.t = t0 + 20
    with caplog.at_level("INFO", logger="natpair"):
        det.paused(t0 + 10, t0 + 20)
        events = run(det, clock, 60)
    assert events[0][1] is Ev.PEER_SILENT
    assert "10 ms of it our own pause" in caplog.text


def test_a_silence_spared_by_our_pause_is_counted_and_logged_once(caplog):
    clock = Clock()
    det = _heard_then_quiet(clock)
    t0 = clock.t
    clock.t = t0 + 45
    det.paused(t0 + 5, t0 + 45)
    with caplog.at_level("WARNING", logger="natpair"):
        assert run(det, clock, 20) == []            # raw silence 50..65 ms: spared
        det.hello(FAILOVER)
    assert det.counters["silent_spared"] == 1 and det.counters["silent_hold"] == 0
    assert caplog.text.count("our listener was paused") == 1 and "no takeover" in caplog.text


def test_a_pause_of_ours_makes_no_split_link():
    """Paused, we heard nothing on any path; the data leg's hello comes a moment before
    the failover link's: the failover link was not silent for the hold time."""
    clock = Clock()
    det = _heard_then_quiet(clock)
    det.hello("inside")
    t0 = clock.t
    clock.t = t0 + 45
    det.paused(t0 + 2, t0 + 45)
    det.hello("inside")
    clock.t += 1
    assert det.poll() == []
    clock.t += 2
    det.hello(FAILOVER)
    assert run(det, clock, 100, peer_paths=(FAILOVER, "inside")) == []
    assert det.counters["split_link"] == 0


def test_a_failover_link_a_hold_time_late_is_no_split_yet():
    """Its hellos stuck a hold time behind a backlog while the data legs' come through: a
    split needs SPLIT_HOLDS hold times of silence on the failover link."""
    from replication.detect import SPLIT_HOLDS
    clock = Clock()
    det = Detector(poll_ms=POLL, hold_ms=HOLD, clock=clock)
    run(det, clock, 100, peer_paths=(FAILOVER, "inside", "outside"))
    assert run(det, clock, SPLIT_HOLDS * HOLD - POLL, peer_paths=("inside", "outside")) == []
    det.hello(FAILOVER)
    assert run(det, clock, 100, peer_paths=(FAILOVER, "inside", "outside")) == []
    ev = run(det, clock, SPLIT_HOLDS * HOLD + POLL, peer_paths=("inside", "outside"))
    assert [e for _, e in ev] == [Ev.DATA_LINK_PEER_ALIVE] and det.counters["split_link"] == 1
