"""Malformed input is dropped and counted, never crashes the core.

Every case names the exact drop counter it must hit; the random cases check that the core's
books balance (pkt_in == pkt_accept + pkt_drop, each drop counted under one reason) and that
every dropped packet says why.
"""
from __future__ import annotations

import random
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

from dataplane.core import COUNTER_NAMES, Core
from tests.packets import IN_A, IN_B, POOL_1, ROUTER, SRV_1, echo, udp

DROP_NAMES = {n for n in COUNTER_NAMES if n.startswith("drop_")}


def new_core(**kw) -> Core:
    kw.setdefault("pool", [POOL_1])
    kw.setdefault("hash_seed", 99)
    return Core(**kw)


def check_books(core: Core) -> dict[str, int]:
    c = core.counters()
    assert c["pkt_in"] == c["pkt_accept"] + c["pkt_drop"]
    assert c["pkt_drop"] == sum(c[n] for n in DROP_NAMES)
    return c


def ip_hdr(proto=6, src=IN_A, dst=SRV_1, totlen=None, ihl=5, version=4, frag=0, payload=b""):
    """A raw IPv4 header with whatever fields the test wants (no sanity applied)."""
    opts = b"\x01" * (max(ihl, 5) * 4 - 20)
    tl = totlen if totlen is not None else max(ihl, 5) * 4 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, 0, tl & 0xFFFF, 1, frag, 64, proto, 0,
                      bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    return hdr + opts + payload


def tcp_syn(src=IN_A, dst=SRV_1, sport=40000, dport=80, **kw) -> bytes:
    return bytes(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S", seq=1000, **kw))


def expect_drop(core: Core, data: bytes, reason: str, side: str = "inside"):
    before = core.counters()
    v = core.process(data, side)
    assert not v.accepted, data.hex()
    assert v.reason == reason, (v.reason, data.hex())
    assert not v.modified
    assert v.data == bytes(data)            # a dropped packet is left as it came
    after = check_books(core)
    assert after[reason] == before[reason] + 1
    assert after["pkt_drop"] == before["pkt_drop"] + 1
    return v


# ------------------------------------------------------------------ the IP header


def test_empty_packet():
    core = new_core()
    expect_drop(core, b"", "drop_short")


@pytest.mark.parametrize("n", range(1, 20))
def test_shorter_than_an_ip_header(n):
    core = new_core()
    expect_drop(core, tcp_syn()[:n], "drop_short")
    expect_drop(core, b"\x45" + b"\x00" * (n - 1), "drop_short", side="outside")


def test_version_6():
    core = new_core()
    pkt = bytearray(tcp_syn())
    pkt[0] = 0x65
    expect_drop(core, bytes(pkt), "drop_version")
    expect_drop(core, bytes(40), "drop_version")          # version 0


@pytest.mark.parametrize("ihl", range(0, 5))
def test_ihl_below_five(ihl):
    core = new_core()
    pkt = bytearray(tcp_syn())
    pkt[0] = 0x40 | ihl
    expect_drop(core, bytes(pkt), "drop_ihl")


def test_ihl_beyond_buffer():
    core = new_core()
    pkt = bytearray(tcp_syn())[:40]
    pkt[0] = 0x4F                                        # 60 bytes of header, 40 present
    expect_drop(core, bytes(pkt), "drop_ihl")
    expect_drop(core, bytes(pkt[:21]), "drop_ihl")
    pkt = bytearray(ip_hdr(ihl=6))[:23]
    expect_drop(core, bytes(pkt), "drop_ihl")


def test_total_length_beyond_buffer():
    core = new_core()
    pkt = bytearray(tcp_syn())
    struct.pack_into("!H", pkt, 2, len(pkt) + 1)
    expect_drop(core, bytes(pkt), "drop_totlen")
    struct.pack_into("!H", pkt, 2, 0xFFFF)
    expect_drop(core, bytes(pkt), "drop_totlen")


def test_total_length_below_ihl():
    core = new_core()
    pkt = bytearray(tcp_syn())
    for tl in (0, 1, 19):
        struct.pack_into("!H", pkt, 2, tl)
        expect_drop(core, bytes(pkt), "drop_totlen")
    pkt = bytearray(ip_hdr(ihl=6, payload=bytes(20)))
    struct.pack_into("!H", pkt, 2, 22)
    expect_drop(core, bytes(pkt), "drop_totlen")


def test_trailing_bytes_beyond_total_length_are_ignored():
    core = new_core()
    pkt = udp(IN_A, SRV_1, 5000, 53)
    v = core.process(pkt + b"\xEE" * 30, "inside")
    assert v.accepted
    assert v.data[len(pkt):] == b"\xEE" * 30             # padding untouched


def test_bad_ip_options():
    core = new_core()
    body = bytes(TCP(sport=1, dport=2, flags="S"))
    # an option whose length runs past the header
    pkt = bytearray(ip_hdr(ihl=6, payload=body))
    pkt[20:24] = b"\x07\x09\x00\x00"
    expect_drop(core, bytes(pkt), "drop_ip_options")
    # an option length below 2
    pkt[20:24] = b"\x07\x01\x00\x00"
    expect_drop(core, bytes(pkt), "drop_ip_options")
    # loose source route
    pkt = bytearray(ip_hdr(ihl=7, payload=body))
    pkt[20:28] = b"\x83\x07\x04" + bytes(4) + b"\x00"
    expect_drop(core, bytes(pkt), "drop_ip_options")


# ------------------------------------------------------------------ L4 headers


@pytest.mark.parametrize("proto,need", [(6, 20), (17, 8), (1, 8)])
def test_truncated_l4_headers(proto, need):
    core = new_core()
    for n in range(need):
        expect_drop(core, ip_hdr(proto=proto, payload=bytes(n)), "drop_l4_short")


@pytest.mark.parametrize("doff", range(0, 5))
def test_tcp_data_offset_below_five(doff):
    core = new_core()
    pkt = bytearray(tcp_syn())
    pkt[20 + 12] = doff << 4
    expect_drop(core, bytes(pkt), "drop_tcp_doff")


def test_tcp_data_offset_beyond_packet():
    core = new_core()
    pkt = bytearray(tcp_syn())                           # 20 bytes of TCP
    for doff in (6, 10, 15):
        pkt[20 + 12] = doff << 4
        expect_drop(core, bytes(pkt), "drop_tcp_doff")
    # options that claim more than the header holds are not a crash: the SYN passes
    pkt = bytearray(bytes(IP(src=IN_A, dst=SRV_1) / TCP(sport=1, dport=2, flags="S",
                                                         options=[("NOP", None)] * 4)))
    pkt[40:44] = b"\x03\x09\x07\x00"                     # WScale claiming 9 bytes
    assert new_core().process(bytes(pkt), "inside").accepted


def test_tcp_bad_flags():
    core = new_core()
    for flags in ("SF", "", "F", "SR"):
        pkt = bytes(IP(src=IN_A, dst=SRV_1) / TCP(sport=1, dport=2, flags=flags))
        expect_drop(core, pkt, "drop_tcp_flags")


# ------------------------------------------------------------------ ICMP errors nesting garbage


def icmp_err(inner: bytes, type_=3, code=1, src=ROUTER, dst=IN_A) -> bytes:
    return bytes(IP(src=src, dst=dst) / ICMP(type=type_, code=code) / Raw(inner))


def test_icmp_error_inner_too_short():
    core = new_core()
    inner = tcp_syn(src=IN_A, dst=SRV_1)
    for n in (0, 1, 8, 19, 20, 27):                      # needs 20 + 8 bytes
        expect_drop(core, icmp_err(inner[:n]), "drop_icmp_inner", side="outside")


def test_icmp_error_inner_version_6():
    core = new_core()
    inner = bytearray(tcp_syn()[:28])
    inner[0] = 0x65
    expect_drop(core, icmp_err(bytes(inner)), "drop_icmp_inner", side="outside")


def test_icmp_error_inner_bad_ihl():
    core = new_core()
    inner = bytearray(tcp_syn()[:28])
    inner[0] = 0x44
    expect_drop(core, icmp_err(bytes(inner)), "drop_icmp_inner", side="outside")
    inner[0] = 0x4F                                      # 60-byte header, 28 present
    expect_drop(core, icmp_err(bytes(inner)), "drop_icmp_inner", side="outside")


def test_icmp_error_inside_icmp_error():
    core = new_core()
    innermost = tcp_syn()[:28]
    inner = bytes(IP(src=IN_A, dst=SRV_1) / ICMP(type=11, code=0) / Raw(innermost))
    expect_drop(core, icmp_err(inner), "drop_icmp_inner", side="outside")
    inner = bytes(IP(src=IN_A, dst=SRV_1) / ICMP(type=3, code=3) / Raw(innermost))
    expect_drop(core, icmp_err(inner, type_=11, code=0), "drop_icmp_inner", side="outside")


def test_icmp_error_about_non_first_fragment():
    core = new_core()
    inner = bytearray(tcp_syn()[:28])
    struct.pack_into("!H", inner, 6, 0x0010)             # offset 16 x 8 bytes
    expect_drop(core, icmp_err(bytes(inner)), "drop_icmp_inner", side="outside")


def test_icmp_error_inner_unsupported_protocol():
    core = new_core()
    inner = ip_hdr(proto=47, src=IN_A, dst=SRV_1, payload=bytes(8))
    expect_drop(core, icmp_err(inner), "drop_icmp_inner", side="outside")


def test_icmp_error_itself_fragmented():
    core = new_core()
    pkt = bytearray(icmp_err(tcp_syn()[:28]))
    struct.pack_into("!H", pkt, 6, 0x2000)               # more fragments
    expect_drop(core, bytes(pkt), "drop_icmp_inner", side="outside")


def test_icmp_error_about_unknown_flow():
    core = new_core()
    expect_drop(core, icmp_err(tcp_syn(src=POOL_1, dst=SRV_1)[:28], dst=POOL_1),
                "drop_icmp_no_state", side="outside")


def test_icmp_unsupported_types():
    core = new_core()
    for t in (4, 5, 9, 10, 13, 14, 17, 255):
        pkt = bytes(IP(src=IN_A, dst=SRV_1) / ICMP(type=t, code=0) / b"12345678")
        expect_drop(core, pkt, "drop_icmp_type")


# ------------------------------------------------------------------ protocols and addresses


@pytest.mark.parametrize("proto", [0, 2, 4, 41, 47, 50, 58, 132, 255])
def test_unsupported_protocol(proto):
    core = new_core()
    expect_drop(core, ip_hdr(proto=proto, payload=bytes(40)), "drop_proto")
    assert core.state_count == 0


def test_land_source_equals_destination():
    core = new_core()
    expect_drop(core, tcp_syn(src=IN_A, dst=IN_A), "drop_land")
    expect_drop(core, udp(SRV_1, SRV_1, 53, 53), "drop_land", side="outside")
    expect_drop(core, echo(IN_B, IN_B, 5), "drop_land")
    expect_drop(core, ip_hdr(proto=47, src=IN_B, dst=IN_B, payload=bytes(8)), "drop_land")
    assert core.state_count == 0


def test_later_fragment_without_first():
    core = new_core()
    pkt = bytearray(udp(IN_A, SRV_1, 5000, 53))
    struct.pack_into("!H", pkt, 6, 0x0004)
    expect_drop(core, bytes(pkt), "drop_frag_untracked")


def test_first_fragment_too_short_for_ports():
    core = new_core()
    pkt = ip_hdr(proto=6, frag=0x2000, payload=bytes(12))
    expect_drop(core, pkt, "drop_frag_short")


def test_bad_side_is_refused():
    core = new_core()
    v = core.process(udp(IN_A, SRV_1, 1, 2), 7)
    assert not v.accepted and v.reason == "drop_short"
    check_books(core)


# ------------------------------------------------------------------ random input


def _valid_packets() -> list[tuple[bytes, str]]:
    pkts = [
        (tcp_syn(), "inside"),
        (bytes(IP(src=SRV_1, dst=POOL_1) / TCP(sport=80, dport=40000, flags="SA", seq=5000,
                                              ack=1001, options=[("WScale", 7)])), "outside"),
        (bytes(IP(src=IN_A, dst=SRV_1) / TCP(sport=40000, dport=80, flags="PA", seq=1001, ack=5001)
               / b"GET / HTTP/1.0\r\n\r\n"), "inside"),
        (udp(IN_A, SRV_1, 5000, 53, payload=b"q" * 40), "inside"),
        (udp(SRV_1, POOL_1, 53, 5000), "outside"),
        (echo(IN_B, SRV_1, 3000), "inside"),
        (echo(SRV_1, POOL_1, 3000, reply=True), "outside"),
        (icmp_err(udp(POOL_1, SRV_1, 5000, 53)[:28], dst=POOL_1), "outside"),
        (icmp_err(echo(POOL_1, SRV_1, 3000)[:28], dst=POOL_1, type_=11, code=0), "outside"),
        (bytes(IP(src=IN_A, dst=SRV_1, flags="MF", options=[b"\x94\x04\x00\x00"]) /
               UDP(sport=5000, dport=53) / (b"f" * 64)), "inside"),
    ]
    return pkts


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rng.randrange(6)
    if op == 0 and b:                                    # flip bits
        for _ in range(rng.randrange(1, 6)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1 and b:                                  # random bytes in the headers
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(min(len(b), 60))] = rng.randrange(256)
    elif op == 2:                                        # truncate
        b = b[:rng.randrange(len(b) + 1)]
    elif op == 3:                                        # extend with garbage
        b += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    elif op == 4 and len(b) >= 4:                        # lie about the total length
        struct.pack_into("!H", b, 2, rng.randrange(65536))
    elif len(b) >= 34:                                   # twiddle the L4 / inner header
        ihl = (b[0] & 0x0F) * 4
        for _ in range(rng.randrange(1, 4)):
            i = min(len(b) - 1, ihl + rng.randrange(40))
            b[i] = rng.randrange(256)
    return bytes(b)


def test_random_64k_buffers_never_crash():
    core = new_core(max_states=1024)
    rng = random.Random(20240601)
    n = 200
    for i in range(n):
        size = 65536 if i % 2 else rng.randrange(20, 65536)
        data = bytearray(rng.randbytes(size))
        if i % 4 == 0:                                   # make it look like IPv4 more often
            data[0] = 0x45
            struct.pack_into("!H", data, 2, min(size, rng.randrange(20, 65536)))
        v = core.process(bytes(data), rng.choice(("inside", "outside")))
        if not v.accepted:
            assert v.reason in DROP_NAMES
        else:
            assert v.reason is None
    c = check_books(core)
    assert c["pkt_in"] == n


def test_random_mutations_process_and_batch():
    rng = random.Random(4242)
    valid = _valid_packets()
    # each is well formed: on a fresh core it meets only the policy, never a parse error
    assert [new_core().process(p, side).reason for p, side in valid] == [
        None, "drop_no_state", "drop_no_state", None, "drop_policy", None, "drop_no_state",
        "drop_icmp_no_state", "drop_icmp_no_state", None]
    single = new_core(max_states=4096, hash_seed=1)
    batched = new_core(max_states=4096, hash_seed=1)
    # live states first, so that mutations also meet states, windows and ICMP error translation
    for core in (single, batched):
        assert [core.process(p, side).accepted for p, side in valid] == [
            True, True, True, True, True, True, True, True, True, True]
    total = len(valid)
    for round_ in range(12):
        pkts = []
        for _ in range(250):
            data, side = rng.choice(valid)
            for _ in range(rng.randrange(1, 3)):
                data = _mutate(rng, data)
            pkts.append((data, side))
        one = [single.process(d, s) for d, s in pkts]
        many = batched.process_batch(pkts)
        assert len(many) == len(pkts)
        for v in one + many:
            if v.accepted:
                assert v.reason is None
            else:
                assert v.reason in DROP_NAMES, v
        # the same packets through the same kind of core: the same verdicts
        assert [(v.accepted, v.reason, v.dir, v.modified, v.data) for v in one] == \
               [(v.accepted, v.reason, v.dir, v.modified, v.data) for v in many]
        total += len(pkts)
    for core in (single, batched):
        c = check_books(core)
        assert c["pkt_in"] == total
        assert c["pkt_drop"] > 0 and c["pkt_accept"] > 0
    assert single.counters() == batched.counters()
    assert single.state_count == batched.state_count


def test_batch_of_mixed_good_and_bad_packets():
    core = new_core()
    good = udp(IN_A, SRV_1, 5000, 53)
    batch = [(good, "inside"), (b"", "inside"), (b"\x45", "inside"), (bytes(40), "outside"),
             (ip_hdr(proto=47, payload=bytes(8)), "inside"), (good, "inside"),
             (tcp_syn(src=IN_A, dst=IN_A), "inside")] * 5
    out = core.process_batch(batch)
    reasons = [v.reason for v in out[:7]]
    assert reasons == [None, "drop_short", "drop_short", "drop_version", "drop_proto", None,
                       "drop_land"]
    assert [v.reason for v in out] == reasons * 5
    c = check_books(core)
    assert c["pkt_in"] == 35 and c["pkt_accept"] == 10 and c["pkt_drop"] == 25
    assert core.state_count == 1
