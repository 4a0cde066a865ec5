"""Small packet builders and checksum helpers shared by the unit tests.

Every address comes from the benchmarking range 198.18.0.0/15 (RFC 2544):
198.18.x.x is the inside, 198.19.x.x the outside (servers, NAT pool).
Builders return bytes (what the core takes); scapy does the encoding.
"""
from __future__ import annotations

import ipaddress

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.utils import checksum

# inside hosts
IN_A = "198.18.0.10"
IN_B = "198.18.0.11"
IN_C = "198.18.0.12"
# outside servers
SRV_1 = "198.19.0.1"
SRV_2 = "198.19.0.2"
SRV_3 = "198.19.0.3"
ROUTER = "198.19.0.254"     # an outside router that sends ICMP errors
# NAT pool addresses
POOL_1 = "198.19.255.1"
POOL_2 = "198.19.255.2"
POOL_3 = "198.19.255.3"
POOL_4 = "198.19.255.4"


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"natpair-udp", **ip) -> bytes:
    return bytes(IP(src=src, dst=dst, **ip) / UDP(sport=sport, dport=dport) / payload)


def tcp(src: str, dst: str, sport: int, dport: int, flags: str = "S", seq: int = 1000,
        ack: int = 0, payload: bytes = b"", window: int = 65535, **ip) -> bytes:
    return bytes(IP(src=src, dst=dst, **ip) /
                 TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=window) /
                 payload)


def echo(src: str, dst: str, ident: int, seq: int = 1, reply: bool = False,
         payload: bytes = b"natpair-ping", **ip) -> bytes:
    return bytes(IP(src=src, dst=dst, **ip) / ICMP(type=0 if reply else 8, id=ident, seq=seq) /
                 payload)


def icmp_error(src: str, dst: str, quoted: bytes, type: int = 11, code: int = 0, **ip) -> bytes:
    """An ICMP error from src to dst quoting the bytes of an earlier packet."""
    return bytes(IP(src=src, dst=dst, **ip) / ICMP(type=type, code=code) / quoted)


def quote(data: bytes, l4_bytes: int | None = None) -> bytes:
    """What an ICMP error embeds: the IP header and l4_bytes of L4 (None: everything)."""
    ihl = (data[0] & 0x0F) * 4
    return data if l4_bytes is None else data[:ihl + l4_bytes]


def addrs(data: bytes) -> tuple[str, str]:
    return str(ipaddress.IPv4Address(data[12:16])), str(ipaddress.IPv4Address(data[16:20]))


def ports(data: bytes) -> tuple[int, int]:
    """TCP/UDP ports (or the ICMP echo id twice) of a first fragment or whole packet."""
    ihl = (data[0] & 0x0F) * 4
    if data[9] == 1:
        ident = int.from_bytes(data[ihl + 4:ihl + 6], "big")
        return ident, ident
    return int.from_bytes(data[ihl:ihl + 2], "big"), int.from_bytes(data[ihl + 2:ihl + 4], "big")


def endpoints(data: bytes) -> tuple[tuple[str, int], tuple[str, int]]:
    (s, d), (sp, dp) = addrs(data), ports(data)
    return (s, sp), (d, dp)


def rebuilt(data: bytes) -> bytes:
    """The packet with its IP and L4 checksums recomputed by scapy."""
    p = IP(data)
    del p.chksum
    for layer in (TCP, UDP, ICMP):
        if p.haslayer(layer):
            del p[layer].chksum
    return bytes(p)


def ip_header_ok(hdr: bytes) -> bool:
    """An IP header (options included) whose checksum verifies."""
    return checksum(hdr) == 0


def pseudo_sum(src: str, dst: str, proto: int, length: int) -> int:
    """The folded, uncomplemented pseudo-header sum that CHECKSUM_PARTIAL leaves in the field."""
    s = 0
    for a in (src, dst):
        v = int(ipaddress.IPv4Address(a))
        s += (v >> 16) + (v & 0xFFFF)
    s += proto + length
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def l4_check(data: bytes) -> int:
    """The TCP/UDP/ICMP checksum field as it stands in the packet."""
    ihl = (data[0] & 0x0F) * 4
    off = {6: 16, 17: 6, 1: 2}[data[9]]
    return int.from_bytes(data[ihl + off:ihl + off + 2], "big")


def with_l4_check(data: bytes, value: int) -> bytes:
    ihl = (data[0] & 0x0F) * 4
    off = ihl + {6: 16, 17: 6, 1: 2}[data[9]]
    return data[:off] + value.to_bytes(2, "big") + data[off + 2:]


def tcp_handshake(core, client: str, server: str, cport: int, sport: int,
                  client_side: str = "inside", server_addr: str | None = None,
                  cseq: int = 1000, sseq: int = 5000) -> tuple[bytes, bytes, bytes]:
    """SYN, SYN|ACK, ACK through the core; returns the three packets as they left it.

    server_addr/sport are where the client sends; the server answers from the
    address/port the SYN arrived at after translation (read from the SYN as it left).
    """
    dst = server_addr or server
    syn = core.process(tcp(client, dst, cport, sport, "S", seq=cseq), client_side)
    assert syn.accepted, syn.reason
    (s_src, s_sport), (s_dst, s_dport) = endpoints(syn.data)
    server_side = "outside" if client_side == "inside" else "inside"
    if s_dst.startswith("198.18."):
        server_side = "inside"
    synack = core.process(tcp(s_dst, s_src, s_dport, s_sport, "SA", seq=sseq, ack=cseq + 1),
                          server_side)
    assert synack.accepted, synack.reason
    ack = core.process(tcp(client, dst, cport, sport, "A", seq=cseq + 1, ack=sseq + 1), client_side)
    assert ack.accepted, ack.reason
    return syn.data, synack.data, ack.data
