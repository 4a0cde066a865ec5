"""What a (re)joining unit needs, without root: silence counts from ``Detector.start`` (not
from construction, which may be long before the loop runs on a loaded machine), and a unit
that has heard nobody yet listens a grace beyond the hold time before it negotiates alone,
so a rejoining unit hears the active peer instead of going active beside it. Once a hello
came, the hold time alone applies (a takeover is not slowed). The netns side (power_on,
rejoin, second failover back) is tests/test_rejoin_netns.py.
"""
from __future__ import annotations

from replication.detect import FAILOVER, Detector
from replication.role import RoleEvent as Ev

POLL, HOLD, GRACE = 5, 20, 250


class Clock:
    def __init__(self, t: int = 10_000):
        self.t = t

    def __call__(self) -> int:
        return self.t


def silent_at(det: Detector, clock: Clock, until: int, hello_at: tuple[int, ...] = ()) -> int | None:
    while clock.t < until:
        clock.t += 1
        if clock.t in hello_at:
            det.hello(FAILOVER)
        if any(ev is Ev.PEER_SILENT for ev, _ in det.poll()):
            return clock.t
    return None


def test_silence_counts_from_start_with_a_grace_for_a_peer_not_heard_yet():
    clock = Clock()
    det = Detector(poll_ms=POLL, hold_ms=HOLD, clock=clock)
    clock.t += 80                               # constructed, then a slow start-up
    det.start(GRACE)
    t0 = clock.t
    assert det.next_deadline() <= t0            # a hello is due at once
    assert silent_at(det, clock, t0 + HOLD + GRACE - 1) is None
    assert silent_at(det, clock, t0 + HOLD + GRACE + 5) == t0 + HOLD + GRACE


def test_once_the_peer_was_heard_the_hold_time_alone_applies():
    clock = Clock()
    det = Detector(poll_ms=POLL, hold_ms=HOLD, clock=clock)
    det.start(GRACE)
    t0 = clock.t
    assert silent_at(det, clock, t0 + 100, hello_at=(t0 + 10,)) == t0 + 10 + HOLD


def test_without_start_the_old_behaviour_stays():
    clock = Clock()
    det = Detector(poll_ms=POLL, hold_ms=HOLD, clock=clock)
    assert silent_at(det, clock, clock.t + 100) == 10_000 + HOLD
