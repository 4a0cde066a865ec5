"""Hellos on the data interfaces: the second opinion when the failover link goes quiet.

Owns ``DataHellos``: one UDP socket per data leg ("inside", "outside"), bound to this
unit's own (never a virtual) address on that leg and the failover port, sending
unreliable HELLO datagrams to the peer's own address on the same leg and receiving the
peer's. Every datagram is a wire message under the failover key (HMAC-SHA256), with a
codec of its own per leg (its own epoch, transmission counter and replay window: the
paths lose and reorder independently). Nothing here is reliable or replicated: a
data-path hello only says "the peer is alive and in this role" (replication.detect and
replication.role decide what that means). Names used:

- ``DataPath``: leg name, local (address, port), peer (address, port), its socket and codec.
- ``send(path, hello)``: one HELLO now; a send error (the leg down or gone) is counted,
  never raised. ``pump(on_hello)``: every waiting datagram of every path, decoded;
  ``on_hello(path, unit_id, hello)`` for each valid HELLO from the peer's address.
- ``local_address(ifname, peer_ip)``: the leg's own address in the peer's subnet, which
  the daemon binds to (the VIPs come and go on the same leg: never them).

These datagrams arrive on a data leg, so the unit's raw PREROUTING chain must let them
through before its NFQUEUE rule (dataplane.rules ``hello_accepts``): the core would
otherwise treat them as forwarded traffic.

Counters (``counters``, per path): tx_<path>, tx_errors_<path>, rx_<path>,
rx_wrong_source_<path>, rx_not_hello_<path>, plus the wire's drop reasons (shared
``wire_counters``).
"""
from __future__ import annotations

import collections
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Callable

from replication import wire
from replication.counters import Counters
from replication.wire import HELLO, Codec, Message


@dataclass
class DataPath:
    name: str
    local: tuple[str, int]
    peer: tuple[str, int]
    sock: socket.socket = field(repr=False)
    codec: Codec = field(repr=False)
    xmit: int = 0


class DataHellos:
    def __init__(self, key: bytes, unit: int, paths: list[tuple[str, tuple[str, int], tuple[str, int]]],
                 *, counters: Counters | None = None):
        """``paths``: (leg name, local (address, port), peer (address, port))."""
        self.counters: collections.Counter[str] = collections.Counter()
        self.wire_counters = counters if counters is not None else Counters(wire.REASONS + ("rx_ok", "rx_dropped"))
        self.paths: dict[str, DataPath] = {}
        try:
            for name, local, peer in paths:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    s.setblocking(False)
                    s.bind(local)
                except OSError as e:
                    s.close()
                    raise OSError(e.errno, f"data hellos on {name}: cannot bind {local[0]}:{local[1]}: "
                                  f"{e.strerror}") from None
                self.paths[name] = DataPath(name, local, peer, s,
                                            Codec(key, unit, counters=self.wire_counters))
        except BaseException:
            self.close()
            raise

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.paths)

    def filenos(self) -> list[int]:
        return [p.sock.fileno() for p in self.paths.values()]

    def send(self, path: str, hello: wire.Hello) -> None:
        p = self.paths[path]
        p.xmit += 1
        msg = Message(unit=p.codec.unit, epoch=p.codec.epoch, xmit=p.xmit, seq=0, ack=0,
                      peer_epoch=0, flags=0, sections=((HELLO, (hello,)),))
        try:
            p.sock.sendto(p.codec.encode(msg), p.peer)
            self.counters[f"tx_{path}"] += 1
        except OSError:                     # the leg is down or gone: like a loss on the wire
            self.counters[f"tx_errors_{path}"] += 1

    def pump(self, on_hello: Callable[[str, int, wire.Hello], None]) -> int:
        n = 0
        for p in self.paths.values():
            while True:
                try:
                    data, addr = p.sock.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:             # ICMP errors reported on the socket
                    self.counters[f"rx_socket_errors_{p.name}"] += 1
                    continue
                if addr[0] != p.peer[0]:
                    self.counters[f"rx_wrong_source_{p.name}"] += 1
                    continue
                msg = p.codec.decode(data)
                if msg is None:
                    continue
                hellos = [r for action, recs in msg.sections if action == HELLO for r in recs]
                if not hellos or len(msg.sections) != 1:
                    self.counters[f"rx_not_hello_{p.name}"] += 1
                    continue
                self.counters[f"rx_{p.name}"] += 1
                n += 1
                on_hello(p.name, msg.unit, hellos[-1])
        return n

    def close(self) -> None:
        for p in self.paths.values():
            p.sock.close()
        self.paths.clear()


def local_address(ifname: str, peer_ip: str, exclude: set[str] = frozenset()) -> str:
    """The address of interface ``ifname`` (this namespace) whose subnet holds ``peer_ip``,
    not one of ``exclude`` (the virtual addresses); RuntimeError when there is none."""
    from pyroute2 import IPRoute

    peer = ipaddress.IPv4Address(peer_ip)
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise RuntimeError(f"interface {ifname!r} not found")
        for a in ipr.get_addr(index=found[0], family=socket.AF_INET):
            addr = a.get_attr("IFA_ADDRESS")
            if addr in exclude:
                continue
            if peer in ipaddress.IPv4Interface(f"{addr}/{a['prefixlen']}").network and str(peer) != addr:
                return addr
    raise RuntimeError(f"{ifname} has no address of its own in the subnet of the peer's {peer_ip}")
