"""Checksums of translated packets (design.md "Checksums of translated packets").

Every translated packet is compared with scapy's recomputation of all its
checksums. The three L4 cases are covered: complete checksum (incremental,
RFC 1624), CSUMNOTREADY + GSO (pseudo-header sum patched, not complemented)
and CSUMNOTREADY without GSO (full checksum computed). ICMP errors are checked
at every level: outer IP, ICMP, inner IP, inner TCP/UDP/ICMP echo (RFC 5508).
"""
import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPOption_NOP
from scapy.utils import checksum

from dataplane.core import Core
from packets import (IN_A, IN_B, POOL_1, ROUTER, SRV_1, SRV_2, addrs, echo, endpoints,
                     icmp_error, ip_header_ok, l4_check, ports, pseudo_sum, quote, rebuilt, tcp,
                     tcp_handshake, udp, with_l4_check)


@pytest.fixture
def core():
    return Core(pool=[POOL_1], hash_seed=0x5EED)


def through(core, data, side="inside", **flags):
    v = core.process(data, side, **flags)
    assert v.accepted, v.reason
    assert v.modified
    return v.data


def assert_scapy_agrees(data):
    assert data == rebuilt(data), f"{IP(data)!r} != {IP(rebuilt(data))!r}"


def ones_diff(a, b):
    """a - b in one's complement arithmetic (mod 0xffff)."""
    return (a - b) % 0xFFFF


# ---- complete checksums (case 2): incremental update, scapy agrees ----

@pytest.mark.parametrize("payload", [b"", b"x", b"odd-length-payload", bytes(range(256)) * 5])
def test_tcp_both_directions(core, payload):
    syn, synack, ack = tcp_handshake(core, IN_A, SRV_1, 40001, 443)
    for d in (syn, synack, ack):
        assert_scapy_agrees(d)
    assert endpoints(syn) == ((POOL_1, 40001), (SRV_1, 443))
    assert endpoints(synack) == ((SRV_1, 443), (IN_A, 40001))
    out = through(core, tcp(IN_A, SRV_1, 40001, 443, "PA", seq=1001, ack=5001, payload=payload))
    assert_scapy_agrees(out)
    back = through(core, tcp(SRV_1, POOL_1, 443, 40001, "PA", seq=5001, ack=1001 + len(payload),
                             payload=payload), "outside")
    assert_scapy_agrees(back)
    assert endpoints(back) == ((SRV_1, 443), (IN_A, 40001))


def test_tcp_with_translated_port(core):
    """Both address and port move: the incremental update covers the ports too."""
    through(core, tcp(IN_B, SRV_1, 40001, 443))
    out = through(core, tcp(IN_A, SRV_1, 40001, 443, payload=b""))
    assert ports(out)[0] != 40001
    assert_scapy_agrees(out)


@pytest.mark.parametrize("payload", [b"", b"q", b"natpair" * 100])
def test_udp_both_directions(core, payload):
    out = through(core, udp(IN_A, SRV_1, 40002, 53, payload))
    assert endpoints(out) == ((POOL_1, 40002), (SRV_1, 53))
    assert_scapy_agrees(out)
    back = through(core, udp(SRV_1, POOL_1, 53, 40002, payload[::-1]), "outside")
    assert endpoints(back) == ((SRV_1, 53), (IN_A, 40002))
    assert_scapy_agrees(back)


def test_udp_zero_checksum_stays_zero(core):
    raw = bytes(IP(src=IN_A, dst=SRV_1) / UDP(sport=40003, dport=53, chksum=0) / b"no checksum")
    out = through(core, raw)
    assert l4_check(out) == 0
    assert ip_header_ok(out[:20])
    assert out[20:26] == raw[20:26] and out[28:] == raw[28:]        # ports, length, payload
    back_raw = bytes(IP(src=SRV_1, dst=POOL_1) / UDP(sport=53, dport=40003, chksum=0) / b"none")
    back = through(core, back_raw, "outside")
    assert l4_check(back) == 0
    assert ip_header_ok(back[:20])
    assert addrs(back) == (SRV_1, IN_A)


def test_udp_computed_zero_is_sent_as_ffff(core):
    """A UDP checksum that computes to 0 must go out as 0xffff (RFC 768), never 0."""
    # payload word w chosen so that the TRANSLATED datagram's sum is 0xffff
    base = IP(src=POOL_1, dst=SRV_1) / UDP(sport=40004, dport=53) / b"\x00\x00"
    c0 = IP(bytes(base))[UDP].chksum
    w = c0 if c0 != 0xFFFF else 0
    raw = udp(IN_A, SRV_1, 40004, 53, w.to_bytes(2, "big"))
    assert l4_check(raw) not in (0, 0xFFFF)
    out = through(core, raw)
    assert l4_check(out) == 0xFFFF
    assert_scapy_agrees(out)


def test_icmp_echo_id_translated(core):
    first = through(core, echo(IN_A, SRV_1, 0x4242))
    assert ports(first)[0] == 0x4242
    assert_scapy_agrees(first)
    second = through(core, echo(IN_B, SRV_1, 0x4242, payload=b"other host"))
    new_id = ports(second)[0]
    assert new_id != 0x4242
    assert addrs(second) == (POOL_1, SRV_1)
    assert_scapy_agrees(second)
    reply = through(core, echo(SRV_1, POOL_1, new_id, reply=True, payload=b"other host"), "outside")
    assert addrs(reply) == (SRV_1, IN_B)
    assert ports(reply)[0] == 0x4242
    assert_scapy_agrees(reply)


def test_wrong_checksum_stays_exactly_as_wrong(core):
    """Case 2 is an incremental update: an error in the original is carried, never repaired."""
    good = tcp(IN_A, SRV_1, 40005, 80)
    core_ok = Core(pool=[POOL_1], hash_seed=0x5EED)
    good_out = through(core_ok, good)
    err = 0x0101
    bad = with_l4_check(good, (l4_check(good) + err) % 0xFFFF)
    bad_out = through(core, bad)
    assert bad_out[:36] == good_out[:36] and bad_out[38:] == good_out[38:]
    assert l4_check(bad_out) != l4_check(good_out)
    assert ones_diff(l4_check(bad_out), l4_check(good_out)) == err
    # the same for UDP
    ugood = udp(IN_A, SRV_1, 40006, 53)
    ugood_out = through(core_ok, ugood)
    ubad_out = through(core, with_l4_check(ugood, (l4_check(ugood) + err) % 0xFFFF))
    assert ones_diff(l4_check(ubad_out), l4_check(ugood_out)) == err


# ---- CSUMNOTREADY + GSO (case 3): pseudo-header sum, not complemented ----

def test_gso_tcp_pseudo_header_sum(core):
    tcp_handshake(core, IN_A, SRV_1, 40007, 443)
    payload = b"G" * 3000
    raw = tcp(IN_A, SRV_1, 40007, 443, "A", seq=1001, ack=5001, payload=payload)
    l4len = len(raw) - 20
    raw = with_l4_check(raw, pseudo_sum(IN_A, SRV_1, 6, l4len))
    out = through(core, raw, csum_notready=True, gso=True)
    assert addrs(out) == (POOL_1, SRV_1)
    assert l4_check(out) == pseudo_sum(POOL_1, SRV_1, 6, l4len)
    assert ip_header_ok(out[:20])
    # reply direction: the destination moves
    back_raw = tcp(SRV_1, POOL_1, 443, 40007, "A", seq=5001, ack=1001 + len(payload),
                   payload=payload)
    back_raw = with_l4_check(back_raw, pseudo_sum(SRV_1, POOL_1, 6, l4len))
    back = through(core, back_raw, "outside", csum_notready=True, gso=True)
    assert addrs(back) == (SRV_1, IN_A)
    assert l4_check(back) == pseudo_sum(SRV_1, IN_A, 6, l4len)
    assert ip_header_ok(back[:20])


def test_gso_pseudo_sum_ignores_translated_ports(core):
    """The ports are in the segment the kernel sums later: only the pseudo-header moves."""
    through(core, udp(IN_B, SRV_1, 40008, 53))
    raw = udp(IN_A, SRV_1, 40008, 53, b"U" * 2000)
    l4len = len(raw) - 20
    out = through(core, with_l4_check(raw, pseudo_sum(IN_A, SRV_1, 17, l4len)),
                  csum_notready=True, gso=True)
    assert ports(out)[0] != 40008
    assert l4_check(out) == pseudo_sum(POOL_1, SRV_1, 17, l4len)
    assert ip_header_ok(out[:20])


# ---- CSUMNOTREADY without GSO (case 4): the full checksum ----

def test_notready_syn_gets_full_checksum(core):
    raw = with_l4_check(tcp(IN_A, SRV_1, 40009, 22), 0xDEAD)
    out = through(core, raw, csum_notready=True)
    assert l4_check(out) != 0xDEAD
    assert_scapy_agrees(out)


def test_notready_udp_and_echo_get_full_checksum(core):
    out = through(core, with_l4_check(udp(IN_A, SRV_1, 40010, 53, b"abc"), 0x1234),
                  csum_notready=True)
    assert_scapy_agrees(out)
    through(core, echo(IN_B, SRV_1, 0x7777))
    e = through(core, with_l4_check(echo(IN_A, SRV_1, 0x7777), 0xBEEF), csum_notready=True)
    assert ports(e)[0] != 0x7777            # the id moved: not just the address
    assert_scapy_agrees(e)


def test_notready_reply_gets_full_checksum(core):
    through(core, udp(IN_A, SRV_1, 40011, 53))
    back = through(core, with_l4_check(udp(SRV_1, POOL_1, 53, 40011, b"answer"), 0),
                   "outside", csum_notready=True)
    assert addrs(back) == (SRV_1, IN_A)
    assert_scapy_agrees(back)


# ---- ICMP errors: outer IP, ICMP, inner IP, inner L4 ----

def outbound_flow(core, proto):
    """A packet from IN_A, as sent and as it left the core."""
    if proto == "tcp":
        raw = tcp(IN_A, SRV_1, 40020, 80)
    elif proto == "udp":
        raw = udp(IN_A, SRV_1, 40020, 53, b"0123456789abcdef")
    else:
        through(core, echo(IN_B, SRV_1, 0x4020))     # so the echo id is translated too
        raw = echo(IN_A, SRV_1, 0x4020)
    return raw, through(core, raw)


def check_icmp_error(data, router_src, dst):
    assert addrs(data) == (router_src, dst)
    assert ip_header_ok(data[:20])
    assert checksum(data[20:]) == 0, "ICMP checksum"
    inner = data[28:]
    ihl = (inner[0] & 0x0F) * 4
    assert ip_header_ok(inner[:ihl]), "inner IP checksum"
    return inner


@pytest.mark.parametrize("proto", ["tcp", "udp", "icmp"])
@pytest.mark.parametrize("l4_bytes", [None, 8])
def test_icmp_error_from_outside(core, proto, l4_bytes):
    raw, out = outbound_flow(core, proto)
    err = icmp_error(ROUTER, POOL_1, quote(out, l4_bytes), type=11)
    v = core.process(err, "outside")
    assert v.accepted, v.reason
    assert v.dir == 1
    inner = check_icmp_error(v.data, ROUTER, IN_A)
    # the quoted packet is the one IN_A sent, byte for byte: every inner checksum right
    assert inner == quote(raw, l4_bytes)
    if l4_bytes is None:
        assert_scapy_agrees(inner)
    assert ICMP(v.data[20:]).type == 11


@pytest.mark.parametrize("proto", ["tcp", "udp", "icmp"])
@pytest.mark.parametrize("l4_bytes", [None, 8])
def test_icmp_error_from_inside(core, proto, l4_bytes):
    """IN_A complains (port unreachable) about a reply it got: the quote goes back outside."""
    raw, out = outbound_flow(core, proto)
    (o_src, o_sport), (o_dst, o_dport) = endpoints(out)
    if proto == "tcp":
        reply = tcp(o_dst, o_src, o_dport, o_sport, "SA", seq=5000, ack=1001)
    elif proto == "udp":
        reply = udp(o_dst, o_src, o_dport, o_sport, b"reply payload")
    else:
        reply = echo(o_dst, o_src, o_sport, reply=True)
    rin = through(core, reply, "outside")
    assert addrs(rin) == (SRV_1, IN_A)
    err = icmp_error(IN_A, SRV_1, quote(rin, l4_bytes), type=3, code=3)
    v = core.process(err, "inside")
    assert v.accepted, v.reason
    assert v.dir == 0
    inner = check_icmp_error(v.data, POOL_1, SRV_1)
    assert inner == quote(reply, l4_bytes)
    if l4_bytes is None:
        assert_scapy_agrees(inner)


def test_icmp_error_inner_udp_zero_checksum_stays_zero(core):
    raw = bytes(IP(src=IN_A, dst=SRV_1) / UDP(sport=40031, dport=53, chksum=0) / b"zero")
    out = through(core, raw)
    assert l4_check(out) == 0
    v = core.process(icmp_error(ROUTER, POOL_1, quote(out), type=11), "outside")
    assert v.accepted, v.reason
    inner = check_icmp_error(v.data, ROUTER, IN_A)
    assert inner == raw


def test_icmp_error_inner_udp_computed_zero_restored_as_ffff(core):
    """The quoted datagram's UDP checksum was 0xffff (a computed 0): it must come back so."""
    base = IP(src=IN_A, dst=SRV_1) / UDP(sport=40032, dport=53) / b"\x00\x00"
    c0 = IP(bytes(base))[UDP].chksum
    raw = udp(IN_A, SRV_1, 40032, 53, (c0 if c0 != 0xFFFF else 0).to_bytes(2, "big"))
    assert l4_check(raw) == 0xFFFF
    out = through(core, raw)
    assert_scapy_agrees(out)
    v = core.process(icmp_error(ROUTER, POOL_1, quote(out, 8), type=11), "outside")
    assert v.accepted, v.reason
    inner = check_icmp_error(v.data, ROUTER, IN_A)
    assert inner == quote(raw, 8)


def test_icmp_error_about_port_forward(core):
    """The inside server of a port forward answers; an outside router reports on the answer."""
    core.add_static("198.18.0.30", POOL_1, "tcp", inside_port=8080, outside_port=2222)
    through(core, tcp(SRV_1, POOL_1, 33333, 2222), "outside")
    answer = tcp("198.18.0.30", SRV_1, 8080, 33333, "SA", seq=5000, ack=1001)
    out = through(core, answer)
    assert endpoints(out) == ((POOL_1, 2222), (SRV_1, 33333))
    for l4_bytes in (None, 8):
        v = core.process(icmp_error(ROUTER, POOL_1, quote(out, l4_bytes), type=3, code=4),
                         "outside")
        assert v.accepted, v.reason
        inner = check_icmp_error(v.data, ROUTER, "198.18.0.30")
        assert inner == quote(answer, l4_bytes)


def test_icmp_error_quoting_ip_options(core):
    raw = bytes(IP(src=IN_A, dst=SRV_1, options=[IPOption_NOP()] * 4) /
                UDP(sport=40030, dport=53) / b"with options")
    out = through(core, raw)
    v = core.process(icmp_error(ROUTER, POOL_1, quote(out, 8), type=11), "outside")
    assert v.accepted, v.reason
    inner = check_icmp_error(v.data, ROUTER, IN_A)
    assert inner == quote(raw, 8)
    # the error itself with options on its outer header
    opt_err = bytes(IP(src=ROUTER, dst=POOL_1, options=[IPOption_NOP()] * 4) /
                    ICMP(type=11) / quote(out))
    v = core.process(opt_err, "outside")
    assert v.accepted, v.reason
    assert addrs(v.data) == (ROUTER, IN_A)
    assert ip_header_ok(v.data[:24])
    assert checksum(v.data[24:]) == 0
    assert v.data[32:] == raw


def test_icmp_error_notready_gets_full_icmp_checksum(core):
    raw, out = outbound_flow(core, "udp")
    err = with_l4_check(icmp_error(ROUTER, POOL_1, quote(out, 8), type=3, code=4), 0xABCD)
    v = core.process(err, "outside", csum_notready=True)
    assert v.accepted, v.reason
    inner = check_icmp_error(v.data, ROUTER, IN_A)
    assert inner == quote(raw, 8)


def test_icmp_error_from_the_server_itself(core):
    """Port unreachable from the destination itself: outer source unchanged, inner restored."""
    raw, out = outbound_flow(core, "udp")
    v = core.process(icmp_error(SRV_1, POOL_1, quote(out), type=3, code=3), "outside")
    assert v.accepted, v.reason
    inner = check_icmp_error(v.data, SRV_1, IN_A)
    assert inner == raw


def test_icmp_error_about_unknown_flow_dropped(core):
    out = udp(POOL_1, SRV_2, 40099, 53)
    v = core.process(icmp_error(ROUTER, POOL_1, quote(out, 8)), "outside")
    assert not v.accepted
    assert v.reason == "drop_icmp_no_state"
    assert core.counters()["drop_icmp_no_state"] == 1
