"""The one way natpair runs a state machine (pfsync's bulk sync is the model).

A machine is an enum of states, an enum of events and ONE transition table
``{(state, event): new_state}``. ``Machine.apply(event, reason)`` is the only
way to change the state: it looks the pair up, logs ``machine state/event -> new``,
appends a ``Transition`` to the history and returns the new state; a pair that
is not in the table is refused: logged as a warning, counted in ``refused``
(per ``(state, event)``), the state left alone, and ``None`` returned.

A self-loop in the table (``(S, e): S``) means "expected here, nothing to do":
it is logged and kept in the history like any transition, but it is not refused.
Guards (which of two events applies, e.g. a priority comparison) live in the
module that owns the machine and only pick the event; the table stays pure.

Names: ``Machine``, ``Transition`` (time_ms, from, event, to, reason), ``Clock``
(a callable returning milliseconds; tests inject a fake one).
"""
from __future__ import annotations

import collections
import enum
import logging
import time
from typing import Callable, Generic, Mapping, NamedTuple, TypeVar

LOG = logging.getLogger("natpair")
Clock = Callable[[], int]
S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class Transition(NamedTuple):
    time_ms: int
    src: enum.Enum
    event: enum.Enum
    dst: enum.Enum
    reason: str


class Machine(Generic[S, E]):
    """One instance of a state machine over a fixed transition table."""

    def __init__(self, name: str, table: Mapping[tuple[S, E], S], initial: S, *,
                 clock: Clock = monotonic_ms, history: int = 256):
        self.name = name
        self.table = dict(table)
        self.state: S = initial
        self.clock = clock
        self.history: collections.deque[Transition] = collections.deque(maxlen=history)
        self.refused: collections.Counter[tuple[S, E]] = collections.Counter()
        self.since_ms = clock()
        self._listeners: list[Callable[[Transition], None]] = []

    def subscribe(self, fn: Callable[[Transition], None]) -> None:
        """fn(transition) runs after every applied transition (self-loops included)."""
        self._listeners.append(fn)

    def allowed(self, event: E) -> bool:
        return (self.state, event) in self.table

    def apply(self, event: E, reason: str = "") -> S | None:
        src = self.state
        dst = self.table.get((src, event))
        if dst is None:
            self.refused[(src, event)] += 1
            LOG.warning("%s %s/%s refused reason=%s refused_total=%d", self.name, src.name,
                        event.name, _q(reason), self.refused_total)
            return None
        now = self.clock()
        t = Transition(now, src, event, dst, reason)
        self.history.append(t)
        if dst is not src:
            self.state = dst
            self.since_ms = now
        LOG.info("%s %s/%s -> %s reason=%s", self.name, src.name, event.name, dst.name, _q(reason))
        for fn in list(self._listeners):
            fn(t)
        return dst

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    def in_state_ms(self) -> int:
        return self.clock() - self.since_ms


def _q(s: str) -> str:
    return '"' + s.replace('"', "'") + '"' if (not s or any(c in s for c in ' "=\n\t')) else s
