"""Named outcome counters of the replication layer (one per drop reason or event).

Owns ``Counters``: a small mapping name -> count, as conntrack-tools keeps one counter
per outcome and pf one per drop reason. Names are declared up front so a CLI can list
the zeros too; bumping an undeclared name is allowed and adds it.
"""
from __future__ import annotations

from typing import Iterable


class Counters:
    """Counts by name; ``bump`` never raises, ``as_dict`` is a snapshot."""

    def __init__(self, names: Iterable[str] = ()):
        self._c: dict[str, int] = dict.fromkeys(names, 0)

    def bump(self, name: str, n: int = 1) -> None:
        self._c[name] = self._c.get(name, 0) + n

    def __getitem__(self, name: str) -> int:
        return self._c.get(name, 0)

    def as_dict(self) -> dict[str, int]:
        return dict(self._c)

    def nonzero(self) -> dict[str, int]:
        return {k: v for k, v in self._c.items() if v}

    def __repr__(self) -> str:
        return f"Counters({self.nonzero()})"
