"""Filters of ``natpair show conn`` and ``natpair clear conn``: which states a command means.

Owns ``FILTERS`` (the names an operator may use, ASA-style: ``address A``, ``port P``,
``protocol tcp|udp|icmp``, ``state S``), ``parse(pairs)`` (the CLI's words, or the control
request's dict, checked: an unknown filter or a bad value is a ``FilterError`` naming it) and
``ConnFilter.match(record)``. A state matches when every given filter matches:

- ``address``: an IPv4 address or network; any of the state's addresses (the inside host,
  the peer, the NAT address) is in it;
- ``port``: any of its ports (real or translated; the echo id of an ICMP query);
- ``protocol``: tcp, udp or icmp;
- ``state``: the TCP state name (``established``, ``syn-sent``, ...), or ``udp`` / ``icmp``.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from dataplane.core import PROTOS, TCP_STATES

FILTERS = ("address", "port", "protocol", "state")
PROTO_NAMES = {v: k for k, v in PROTOS.items()}


class FilterError(ValueError):
    pass


def state_name(rec) -> str:
    """What ``show conn`` calls the state of a record: the TCP state, else the protocol."""
    if rec.proto == PROTOS["tcp"]:
        return rec.tcp_state_name.lower()
    return PROTO_NAMES.get(rec.proto, str(rec.proto))


STATE_NAMES = tuple(s.lower() for s in TCP_STATES) + ("udp", "icmp")


@dataclass(frozen=True)
class ConnFilter:
    network: ipaddress.IPv4Network | None = None
    port: int | None = None
    proto: int | None = None
    state: str | None = None

    def match(self, rec) -> bool:
        if self.proto is not None and rec.proto != self.proto:
            return False
        if self.state is not None and state_name(rec) != self.state:
            return False
        a, b = rec.keys
        if self.port is not None and self.port not in (a.sport, a.dport, b.sport, b.dport):
            return False
        if self.network is not None:
            lo, hi = int(self.network.network_address), int(self.network.broadcast_address)
            if not any(lo <= x <= hi for x in (a.src, a.dst, b.src, b.dst)):
                return False
        return True

    def as_dict(self) -> dict:
        out = {}
        if self.network is not None:
            out["address"] = str(self.network)
        if self.port is not None:
            out["port"] = self.port
        if self.proto is not None:
            out["protocol"] = PROTO_NAMES[self.proto]
        if self.state is not None:
            out["state"] = self.state
        return out


def parse(filters: dict | list | tuple | None) -> ConnFilter:
    """A dict {name: value}, or the CLI's words [name, value, name, value, ...]."""
    if filters is None:
        return ConnFilter()
    if isinstance(filters, (list, tuple)):
        words = list(filters)
        if len(words) % 2:
            raise FilterError(f"filter {words[-1]!r} needs a value (filters: {', '.join(FILTERS)})")
        pairs = list(zip(words[::2], words[1::2]))
    elif isinstance(filters, dict):
        pairs = list(filters.items())
    else:
        raise FilterError(f"filters must be name/value pairs, not {type(filters).__name__}")
    kw: dict = {}
    for name, value in pairs:
        if name not in FILTERS:
            raise FilterError(f"unknown filter {name!r} (known: {', '.join(FILTERS)})")
        if name in kw:
            raise FilterError(f"filter {name!r} given twice")
        value = str(value)
        if name == "address":
            try:
                kw[name] = ipaddress.IPv4Network(value, strict=False)
            except ValueError:
                raise FilterError(f"address {value!r} is not an IPv4 address or network") from None
        elif name == "port":
            if not value.isdigit() or not 0 <= int(value) <= 65535:
                raise FilterError(f"port {value!r} is not 0..65535")
            kw[name] = int(value)
        elif name == "protocol":
            if value.lower() not in PROTOS:
                raise FilterError(f"protocol {value!r} is not one of {', '.join(PROTOS)}")
            kw[name] = PROTOS[value.lower()]
        else:
            if value.lower() not in STATE_NAMES:
                raise FilterError(f"state {value!r} is not one of {', '.join(STATE_NAMES)}")
            kw[name] = value.lower()
    return ConnFilter(network=kw.get("address"), port=kw.get("port"), proto=kw.get("protocol"),
                      state=kw.get("state"))
