"""The planned switchover (replication/switchover.py) between two Pairs over UDP on the
loopback (no root): each unit's loop on its own thread, as in the daemon.

- `standby` on the active: the last changes reach the standby before it is handed the role,
  the roles swap, the old active is STANDBY_READY again (yielding, no takeover back);
- `active` on the ready standby: the active yields to it;
- refused: `standby` with no ready peer, `active` on a cold standby; `active` with a silent
  peer is the operator's forced takeover;
- per table statistics count what went over the link.
"""
from __future__ import annotations

import threading
import time

from replication.role import RoleEvent, RoleState
from tests.test_pair import run, units  # noqa: F401  (the fixture)


class Loop:
    """A unit's pair.step() on its own thread until stop()."""

    def __init__(self, *us):
        self.us, self.stopping = us, threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stopping.is_set():
            for u in self.us:
                u.step()
            time.sleep(0.001)

    def stop(self):
        self.stopping.set()
        self.t.join(5)


def ids(core):
    return {(r.creator, r.id) for r in core.export()}


TIMERS = {"poll_ms": 10, "hold_ms": 400}     # generous: this is not about detection speed


def settled(a, b, timeout_s: float = 10.0) -> None:
    """With the loops running: a active, b standby-ready (on a loaded machine a late hello
    may have sent b through a re-sync in between; the switchover rightly refuses a cold
    peer, which is not what these tests are about)."""
    deadline = time.monotonic() + timeout_s
    while not (a.pair.role.state is RoleState.ACTIVE and b.pair.role.state is RoleState.STANDBY_READY):
        assert time.monotonic() < deadline, (a.pair.role.state, b.pair.role.state)
        time.sleep(0.005)


def pair_ready(units_):
    a, b = units_(**TIMERS)
    a.pair.start()
    assert run([a], lambda: a.pair.role.state is RoleState.ACTIVE, 5)
    b.pair.start()
    assert run([a, b], lambda: b.pair.role.state is RoleState.STANDBY_READY, 10)
    return a, b


def wait(req, timeout=5.0):
    assert req.done.wait(timeout), "no answer"
    return req.result, req.error


def test_standby_on_the_active_hands_over_with_every_change(units):
    a, b = pair_ready(units)
    loops = [Loop(a), Loop(b)]
    try:
        settled(a, b)
        for port in range(41000, 41200):
            a.flow(port)            # drained into the offer queue, not yet submitted
        result, error = wait(a.pair.switchover.post("standby"))
        assert error is None and result.startswith("standby"), error
        deadline = time.monotonic() + 5
        while b.pair.role.state is not RoleState.ACTIVE and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        for lp in loops:
            lp.stop()
    assert b.pair.role.state is RoleState.ACTIVE
    assert a.pair.role.state is RoleState.STANDBY_READY
    assert ids(b.core) == ids(a.core) and len(ids(b.core)) == 200
    assert a.steps.done[-2:] == ["remove_addresses", "core_standby"]
    assert b.steps.done[-3:] == ["core_active", "add_addresses", "announce"]
    assert a.pair.switchover.counters["yields"] == 1
    t = a.pair.tables.snapshot()
    # every submitted change is a udp conn update (a loaded machine may drop some while the
    # peer looked silent: a bulk sync then carries them)
    assert t["udp conn"]["xmit"] == a.pair.counters["submitted"] > 0 and t["hello"]["xmit"] > 0, t
    rb = b.pair.tables.snapshot()
    assert rb["udp conn"]["rcv"] + rb["bulk"]["rcv"] >= 200 and rb["udp conn"]["rerr"] == 0, rb


def test_active_on_the_ready_standby_takes_the_role(units):
    a, b = pair_ready(units)
    loops = [Loop(a), Loop(b)]
    try:
        settled(a, b)
        result, error = wait(b.pair.switchover.post("active"))
    finally:
        for lp in loops:
            lp.stop()
    assert error is None, error
    assert b.pair.role.state is RoleState.ACTIVE and a.pair.role.state is not RoleState.ACTIVE


def test_refusals_and_the_forced_takeover(units):
    a, b = units(**TIMERS)
    a.pair.start()
    assert run([a], lambda: a.pair.role.state is RoleState.ACTIVE, 5)
    lp = Loop(a)
    try:
        result, error = wait(a.pair.switchover.post("standby"))
        assert result is None and "not STANDBY_READY" in error
        result, error = wait(a.pair.switchover.post("active"))
        assert result == "already active"
    finally:
        lp.stop()
    # b, driven by hand (no loop, no link): a cold standby of an active peer is refused
    b.pair.start()
    b.pair.role.on_peer(RoleState.ACTIVE, 110, 1)
    assert b.pair.role.state is RoleState.STANDBY_COLD
    req = b.pair.switchover.post("active")
    b.pair.switchover.step(0)
    result, error = wait(req)
    assert result is None and "incomplete" in error, (result, error)
    # the peer is silent: `active` is the operator's forced takeover
    b.pair.role.on_detect(RoleEvent.PEER_SILENT, "test")
    req = b.pair.switchover.post("active")
    b.pair.switchover.step(0)
    result, error = wait(req)
    assert error is None and result.startswith("active (forced"), (result, error)
    assert b.pair.role.state is RoleState.ACTIVE
    assert b.steps.done == ["core_active", "add_addresses", "announce"]
