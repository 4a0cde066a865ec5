"""Writes the seed inputs of fuzz/fuzz_core.c into fuzz/seeds/ (binary files, committed).

Run from the repository root with the venv's python: ``.venv/bin/python fuzz/make_seeds.py``.
Packets are built with scapy (never on the packet path, only here). An input is a
sequence of records ``[op:1][len:2 little-endian][len bytes]``; the op numbers and
their flag nibble are those of fuzz_core.c (names: OP_*, F_*). Addresses are those of
the fuzz target's configuration: inside 10.0.0.0/24, pool 198.18.0.1-2, static 1:1
10.0.0.10 <-> 198.18.1.10, port forward 198.18.1.20:8080 -> 10.0.0.20:80.
"""
import pathlib
import struct

from scapy.all import ICMP, IP, TCP, UDP, Raw, fragment, raw

OUT = pathlib.Path(__file__).resolve().parent / "seeds"

(OP_RAW, OP_TEMPLATE, OP_STATE, OP_BATCH, OP_CLOCK, OP_SWEEP, OP_DRAIN, OP_RESEND,
 OP_BULK, OP_IMPORT, OP_DELETE, OP_RULES, OP_JOURNAL, OP_EXPORT) = range(14)
F_OUTSIDE, F_NOTREADY, F_GSO, F_BATCH = 0x10, 0x20, 0x40, 0x80   # OP_RAW flags

INSIDE, INSIDE2, SERVER, OUTSIDE = "10.0.0.1", "10.0.0.2", "10.0.0.20", "198.19.0.1"


def rec(op: int, data: bytes = b"") -> bytes:
    return struct.pack("<BH", op, len(data)) + data


def pkt(p, flags: int = 0) -> bytes:
    return rec(OP_RAW | flags, raw(p))


def state(cursor: int = 0, mode: int = 0, flags_sel: int = 0) -> bytes:
    """A packet of a tracked flow: mode bit 0 = reply direction, bits 1-2 = 3 for an ICMP error."""
    return rec(OP_STATE, struct.pack("<HBHBHBhhB", cursor, mode, 1, 0, 65535, 7, 0, 0, flags_sel))


def template(kind: int, src: int, dst: int, sport: int, dport: int, tflags: int = 0) -> bytes:
    """Table indexes as in fuzz_core.c (addrs[], ports[]); kind: 0 TCP, 1 UDP, 2 echo, 3-5 errors."""
    body = bytes([kind, src, dst, sport, dport, tflags, 7, 0]) + struct.pack(
        "<IIHHHB", 1000, 0, 64240, 1, 0x4000, 10) + bytes([0, 0, 11, 12, 0, 0, 1, 5])
    return rec(OP_TEMPLATE, body)


SYN = TCP(sport=40000, dport=80, flags="S", seq=1000, window=64240, options=[("WScale", 7), ("MSS", 1460)])


def seeds() -> dict[str, bytes]:
    s = {}
    s["tcp_syn_inside"] = pkt(IP(src=INSIDE, dst=OUTSIDE) / SYN)
    s["tcp_handshake"] = (pkt(IP(src=INSIDE, dst=OUTSIDE) / SYN) + state(0, 1, 4) + state(0, 0, 0)
                          + state(0, 0, 1) + state(0, 1, 2) + state(0, 0, 2) + state(0, 1, 0)
                          + rec(OP_DRAIN, b"\x00") + rec(OP_BULK))
    s["tcp_syn_notready"] = pkt(IP(src=INSIDE, dst=OUTSIDE) / SYN, F_NOTREADY)
    s["tcp_gso"] = pkt(IP(src=INSIDE, dst=OUTSIDE) / TCP(sport=40001, dport=443, flags="S") / Raw(b"x" * 200),
                       F_NOTREADY | F_GSO)
    s["udp_dns"] = pkt(IP(src=INSIDE2, dst="8.8.8.8") / UDP(sport=5353, dport=53) / Raw(b"\x12\x34" + b"\x00" * 10))
    s["udp_zero_csum"] = rec(OP_RAW, raw(IP(src=INSIDE, dst=OUTSIDE) / UDP(sport=1234, dport=9999, chksum=0) / Raw(b"abc")))
    s["icmp_echo"] = pkt(IP(src=INSIDE, dst=OUTSIDE) / ICMP(type=8, id=0x4242, seq=1) / Raw(b"ping")) + state(0, 1)
    s["port_forward_in"] = pkt(IP(src=OUTSIDE, dst="198.18.1.20") / TCP(sport=50000, dport=8080, flags="S"), F_OUTSIDE)
    s["static_1to1_in"] = pkt(IP(src=OUTSIDE, dst="198.18.1.10") / UDP(sport=5000, dport=7000), F_OUTSIDE)
    s["no_state_outside"] = pkt(IP(src=OUTSIDE, dst="198.18.0.1") / TCP(sport=80, dport=1024, flags="A"), F_OUTSIDE)
    # an ICMP error about the flow a SYN made, built by the target from the state
    s["icmp_error_state"] = pkt(IP(src=INSIDE, dst=OUTSIDE) / SYN) + state(0, 7, 0x20) + state(0, 6, 0x04)
    # an ICMP error from scapy quoting an untranslated packet (no state: dropped)
    s["icmp_error_raw"] = pkt(IP(src="198.19.0.254", dst="198.18.0.1") / ICMP(type=3, code=3)
                              / IP(src="198.18.0.1", dst=OUTSIDE) / UDP(sport=1024, dport=53), F_OUTSIDE)
    frags = fragment(IP(src=INSIDE, dst=OUTSIDE, id=777) / UDP(sport=4000, dport=4001) / Raw(b"F" * 1200), fragsize=400)
    s["fragments"] = b"".join(pkt(f) for f in frags) + b"".join(pkt(f) for f in reversed(frags))
    s["ip_options"] = pkt(IP(src=INSIDE, dst=OUTSIDE, options=b"\x01\x01\x01\x00") / UDP(sport=1, dport=2))
    s["ip_lsrr"] = pkt(IP(src=INSIDE, dst=OUTSIDE, options=b"\x83\x07\x04\x01\x02\x03\x04\x00") / UDP(sport=1, dport=2))
    s["templates"] = b"".join(template(k, 0, 11, 9, 0) for k in range(8))
    s["exhaust_ports"] = b"".join(
        pkt(IP(src=INSIDE, dst=OUTSIDE) / TCP(sport=20000 + i, dport=80, flags="S")) for i in range(140))
    s["expire_sweep"] = (pkt(IP(src=INSIDE, dst=OUTSIDE) / UDP(sport=7, dport=7))
                         + rec(OP_CLOCK | 0x40, struct.pack("<I", 200000)) + rec(OP_SWEEP, b"\x00\x00")
                         + rec(OP_CLOCK | 0x90, struct.pack("<I", 5000)))
    s["journal_overflow"] = (b"".join(pkt(IP(src=INSIDE2, dst=OUTSIDE) / UDP(sport=30000 + i, dport=53))
                                      for i in range(80))
                             + rec(OP_DRAIN, b"\x20") + rec(OP_RESEND, b"\xff\x00") + rec(OP_DRAIN, b"\x00"))
    # the journal drained as wire records (OP_DRAIN flag 1): buffers of 3 inserts, 2 updates,
    # 1 delete (caps as u16, then skip port 80), then the rest with room for all
    s["journal_wire"] = (b"".join(pkt(IP(src=INSIDE2, dst=OUTSIDE) / UDP(sport=31000 + i, dport=53))
                                  for i in range(20))
                         + pkt(IP(src=INSIDE, dst=OUTSIDE) / TCP(sport=40100, dport=80, flags="S"))
                         + rec(OP_DRAIN | 0x10, struct.pack("<HHHB", 3 * 104 + 7, 2 * 104, 16, 1))
                         + rec(OP_DELETE | 0x10, b"\x01\x00")
                         + rec(OP_DRAIN | 0x10, struct.pack("<HHHB", 8 * 104, 8 * 104, 8 * 16, 0)))
    s["import_export"] = (rec(OP_IMPORT | 0x10, bytes(range(112))) + rec(OP_IMPORT | 0xb0, bytes(range(50, 162)))
                          + rec(OP_EXPORT, b"\x00\x00\x08") + rec(OP_DELETE | 0x10, b"\x01\x00") + rec(OP_BULK))
    s["batch"] = rec(OP_BATCH, b"".join(bytes([i & 1, 30]) + bytes([i % 8, 0, 11, 9, 0, 0, 1, 0]) + bytes(22)
                                        for i in range(20)))
    s["rules"] = rec(OP_RULES, bytes([1, 2, 1, 0, 24, 0x0b, 32, 80, 0, 80, 0])) + rec(OP_RULES | 0x10)
    # wire records (OP_EXPORT flags): export + read back, skipping port 80, a bulk through
    # wire records, and an import of one plausible record, a bad pad and a torn tail
    s["wire"] = (pkt(IP(src=INSIDE, dst=OUTSIDE) / SYN) + pkt(IP(src=INSIDE2, dst=OUTSIDE) / UDP(sport=1024, dport=53))
                 + rec(OP_EXPORT | W_EXPORT, b"\x00\x00\x08") + rec(OP_EXPORT | W_EXPORT | W_ACTIVE, b"\x00\x00\x08")
                 + rec(OP_EXPORT | W_BULK) + rec(OP_EXPORT | W_IMPORT, wire_udp_state() + wire_udp_state(pad=1) + b"\x01" * 50))
    return s


W_EXPORT, W_IMPORT, W_BULK, W_ACTIVE = 0x10, 0x20, 0x40, 0x80     # OP_EXPORT flags


def wire_udp_state(pad: int = 0) -> bytes:
    """A UDP state 10.0.0.3:1024 -> 198.19.0.1:53 mapped to 198.18.0.1:1030, as the wire carries it."""
    key = struct.Struct("!IIHHBBH")
    a = lambda x: struct.unpack("!I", bytes(map(int, x.split("."))))[0]   # noqa: E731
    return (struct.pack("!QIBBBB", 4242, 3, 17, 0, 0, pad)
            + key.pack(a("10.0.0.3"), a(OUTSIDE), 1024, 53, 17, 0, 0)
            + key.pack(a(OUTSIDE), a("198.18.0.1"), 53, 1030, 17, 1, 0)
            + bytes(24) + struct.pack("!II", 30000, 100) + bytes(24))


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, data in seeds().items():
        (OUT / name).write_bytes(data)
    print(f"wrote {len(seeds())} seeds to {OUT}")


if __name__ == "__main__":
    main()
