"""NAT behaviour of the C core: dynamic PAT (RFC 4787 / RFC 5382), static NAT,
port forwards, hairpinning, ICMP echo ids, access rules, table limits,
fragments, IP options and expiry with an injected clock.

Addresses: 198.18.x.x inside, 198.19.x.x outside (RFC 2544 range only).
"""
import pytest
from scapy.layers.inet import (ICMP, IP, UDP, IPOption_LSRR, IPOption_NOP, IPOption_RR, IPOption_SSRR,
                               fragment)

from dataplane.core import Core, ip_int
from packets import (IN_A, IN_B, IN_C, POOL_1, POOL_2, POOL_3, POOL_4, SRV_1, SRV_2, SRV_3, addrs,
                     echo, endpoints, ip_header_ok, ports, rebuilt, tcp, tcp_handshake, udp)

SEED = 0x5EED
T0 = 1_000_000_500          # ms; deliberately not on a whole second
FWD_HOST = "198.18.0.30"    # an inside server behind a port forward
STATIC_IN = "198.18.0.40"   # an inside host with a 1:1 address
STATIC_OUT = "198.19.200.40"
ROUTED = "198.18.1.5"       # an inside server with a routed (non-NAT) address


def make(**kw):
    kw.setdefault("pool", [POOL_1])
    kw.setdefault("hash_seed", SEED)
    c = Core(**kw)
    c.set_clock(T0)
    return c


def send(core, data, side="inside", **kw):
    v = core.process(data, side, **kw)
    assert v.accepted, v.reason
    return v.data


def refused(core, data, side, reason):
    v = core.process(data, side)
    assert not v.accepted
    assert v.reason == reason
    assert v.data == data       # a dropped packet is not rewritten


def host(i):
    return f"198.18.0.{100 + i}"


def state_of(core, src, sport):
    """The state whose initiator is src:sport."""
    found = [r for r in core.export() if r.keys[0].src == ip_int(src) and r.keys[0].sport == sport]
    assert len(found) == 1
    return found[0]


# ---- dynamic PAT ----

def test_pat_source_to_pool_with_port_preservation():
    c = make()
    out = send(c, udp(IN_A, SRV_1, 40000, 53))
    assert endpoints(out) == ((POOL_1, 40000), (SRV_1, 53))
    assert out == rebuilt(out)
    back = send(c, udp(SRV_1, POOL_1, 53, 40000), "outside")
    assert endpoints(back) == ((SRV_1, 53), (IN_A, 40000))
    assert c.state_count == 1 and c.mapping_count == 1
    ctr = c.counters()
    assert ctr["state_created"] == 1 and ctr["mapping_created"] == 1
    assert ctr["pkt_translated"] == 2


def test_pat_port_outside_range_gets_one_inside_range():
    c = make(port_range=(20000, 20999))
    out = send(c, udp(IN_A, SRV_1, 53, 53))
    assert addrs(out)[0] == POOL_1
    assert 20000 <= ports(out)[0] <= 20999


def test_endpoint_independent_mapping():
    """RFC 4787 REQ-1 / RFC 5382 REQ-1: one inside endpoint, one outside endpoint."""
    c = make()
    seen = set()
    for dst, dport in ((SRV_1, 53), (SRV_2, 5000), (SRV_3, 123)):
        out = send(c, udp(IN_A, dst, 40000, dport))
        seen.add(endpoints(out)[0])
        assert endpoints(out)[1] == (dst, dport)
    assert seen == {(POOL_1, 40000)}
    assert c.state_count == 3
    assert c.mapping_count == 1
    assert c.counters()["mapping_created"] == 1
    for src, sport in ((SRV_1, 53), (SRV_2, 5000), (SRV_3, 123)):
        back = send(c, udp(src, POOL_1, sport, 40000), "outside")
        assert endpoints(back) == ((src, sport), (IN_A, 40000))
    # TCP too (RFC 5382), on the same port number: a separate mapping per protocol
    tcp_seen = {endpoints(tcp_handshake(c, IN_A, s, 40000, 443)[0])[0] for s in (SRV_1, SRV_2)}
    assert tcp_seen == {(POOL_1, 40000)}
    assert c.mapping_count == 2


def test_same_source_port_of_two_hosts_not_overloaded():
    c = make()
    a = send(c, udp(IN_A, SRV_1, 40000, 53))
    b = send(c, udp(IN_B, SRV_1, 40000, 53))
    assert endpoints(a)[0] == (POOL_1, 40000)
    assert addrs(b)[0] == POOL_1
    b_port = ports(b)[0]
    assert b_port != 40000 and 1024 <= b_port <= 65535
    assert c.mapping_count == 2
    assert endpoints(send(c, udp(SRV_1, POOL_1, 53, b_port), "outside"))[1] == (IN_B, 40000)
    assert endpoints(send(c, udp(SRV_1, POOL_1, 53, 40000), "outside"))[1] == (IN_A, 40000)
    # IN_B's next flow from that port keeps its own mapping
    assert endpoints(send(c, udp(IN_B, SRV_2, 40000, 53)))[0] == (POOL_1, b_port)


def test_paired_pooling():
    """RFC 4787 REQ-2: every session of one inside address uses one pool address."""
    pool = [POOL_1, POOL_2, POOL_3, POOL_4]
    c = make(pool=pool)
    used = {}
    for h in range(8):
        got = set()
        for i in range(6):
            got.add(addrs(send(c, udp(host(h), SRV_1 if i % 2 else SRV_2, 30000 + i, 53)))[0])
        got.add(addrs(send(c, echo(host(h), SRV_1, 0x100 + h)))[0])
        got.add(addrs(tcp_handshake(c, host(h), SRV_3, 31000, 80)[0])[0])
        assert len(got) == 1, f"{host(h)} spread over {got}"
        used[host(h)] = got.pop()
        assert used[host(h)] in pool
    assert len(set(used.values())) > 1     # with this seed the hosts spread over the pool


def test_port_exhaustion_refused_and_counted():
    c = make(port_range=(5000, 5003))
    outs = [send(c, udp(host(i), SRV_1, 5000, 53)) for i in range(4)]
    assert sorted(ports(o)[0] for o in outs) == [5000, 5001, 5002, 5003]
    assert ports(outs[0])[0] == 5000
    refused(c, udp(host(4), SRV_1, 5000, 53), "inside", "drop_nat_exhausted")
    assert c.counters()["drop_nat_exhausted"] == 1
    assert c.mapping_count == 4
    assert c.state_count == 4
    # ICMP ids are a separate space: not exhausted by UDP
    assert ports(send(c, echo(host(4), SRV_1, 5000)))[0] == 5000
    # an existing mapping still serves a new destination (no new port needed)
    assert endpoints(send(c, udp(host(1), SRV_2, 5000, 53)))[0] == endpoints(outs[1])[0]
    # freeing a mapping (both states of host 1) makes room
    freed = ports(outs[1])[0]
    recs = [r for r in c.export() if r.proto == 17 and r.keys[1].dport == freed]
    assert len(recs) == 2
    for r in recs:
        c.delete(r.creator, r.id)
    assert c.mapping_count == 4                 # 3 UDP + 1 ICMP
    out = send(c, udp(host(4), SRV_1, 5000, 53))
    assert endpoints(out)[0] == (POOL_1, freed)
    refused(c, udp(host(5), SRV_1, 5000, 53), "inside", "drop_nat_exhausted")
    assert c.counters()["drop_nat_exhausted"] == 2


def test_mapping_freed_with_its_last_state():
    c = make()
    send(c, udp(IN_A, SRV_1, 40000, 53))
    send(c, udp(IN_A, SRV_2, 40000, 53))
    assert c.mapping_count == 1 and c.state_count == 2
    recs = sorted(c.export(), key=lambda r: r.id)
    c.delete(recs[0].creator, recs[0].id)
    assert c.mapping_count == 1 and c.state_count == 1
    assert c.counters()["mapping_freed"] == 0
    # still the same mapping
    assert endpoints(send(c, udp(SRV_2, POOL_1, 53, 40000), "outside"))[1] == (IN_A, 40000)
    c.delete(recs[1].creator, recs[1].id)
    assert c.mapping_count == 0 and c.state_count == 0
    ctr = c.counters()
    assert ctr["mapping_freed"] == 1 and ctr["state_deleted"] == 2
    # the outside port is free again: unsolicited traffic to it is refused
    refused(c, udp(SRV_1, POOL_1, 53, 40000), "outside", "drop_policy")


def test_unsolicited_inbound_dropped():
    c = make()
    refused(c, udp(SRV_1, POOL_1, 53, 40000), "outside", "drop_policy")
    refused(c, tcp(SRV_1, POOL_1, 4444, 22), "outside", "drop_policy")
    refused(c, tcp(SRV_1, IN_A, 4444, 22), "outside", "drop_policy")
    # a mapping exists, but this outside host never was a destination of it
    send(c, udp(IN_A, SRV_1, 40000, 53))
    refused(c, udp(SRV_2, POOL_1, 53, 40000), "outside", "drop_policy")
    # an echo request to the pool address with no state
    refused(c, echo(SRV_1, POOL_1, 0x999), "outside", "drop_policy")
    assert c.counters()["drop_policy"] == 5
    assert c.state_count == 1


# ---- static NAT and port forwards ----

def test_static_one_to_one_both_directions():
    c = make()
    c.add_static(STATIC_IN, STATIC_OUT)
    out = send(c, tcp(STATIC_IN, SRV_1, 5555, 80))
    assert endpoints(out) == ((STATIC_OUT, 5555), (SRV_1, 80))
    assert out == rebuilt(out)
    # unsolicited inbound to the static address is allowed, ports kept
    inb = send(c, udp(SRV_2, STATIC_OUT, 6000, 161), "outside")
    assert endpoints(inb) == ((SRV_2, 6000), (STATIC_IN, 161))
    assert inb == rebuilt(inb)
    rep = send(c, udp(STATIC_IN, SRV_2, 161, 6000))
    assert endpoints(rep) == ((STATIC_OUT, 161), (SRV_2, 6000))
    assert c.mapping_count == 0                 # no dynamic mapping for a static host
    assert all(r.flags & 1 for r in c.export())  # NP_SF_STATIC
    # a dynamic host still uses the pool
    assert addrs(send(c, udp(IN_A, SRV_1, 40000, 53)))[0] == POOL_1


def test_port_forward_reachable_from_outside():
    c = make()
    c.add_static(FWD_HOST, POOL_1, "tcp", inside_port=8080, outside_port=2222)
    syn = send(c, tcp(SRV_1, POOL_1, 33333, 2222), "outside")
    assert endpoints(syn) == ((SRV_1, 33333), (FWD_HOST, 8080))
    assert syn == rebuilt(syn)
    synack = send(c, tcp(FWD_HOST, SRV_1, 8080, 33333, "SA", seq=5000, ack=1001))
    assert endpoints(synack) == ((POOL_1, 2222), (SRV_1, 33333))
    assert synack == rebuilt(synack)
    ack = send(c, tcp(SRV_1, POOL_1, 33333, 2222, "A", seq=1001, ack=5001), "outside")
    assert endpoints(ack) == ((SRV_1, 33333), (FWD_HOST, 8080))
    # only that protocol and port are forwarded
    refused(c, udp(SRV_1, POOL_1, 33333, 2222), "outside", "drop_policy")
    refused(c, tcp(SRV_1, POOL_1, 33333, 2223), "outside", "drop_policy")
    # dynamic PAT never hands out the forwarded port on that address (no port preservation)
    out = send(c, tcp(IN_A, SRV_2, 2222, 80))
    assert endpoints(out)[0][0] == POOL_1 and ports(out)[0] != 2222
    # but UDP 2222 is free for PAT (only TCP 2222 is forwarded)
    assert endpoints(send(c, udp(IN_A, SRV_2, 2222, 80)))[0] == (POOL_1, 2222)


def test_hairpin_to_port_forward():
    """An inside host reaches the port forward through its outside address (RFC 4787 REQ-9)."""
    c = make()
    c.add_static(FWD_HOST, POOL_1, "tcp", inside_port=8080, outside_port=80)
    syn = send(c, tcp(IN_A, POOL_1, 41000, 80))
    assert endpoints(syn) == ((POOL_1, 41000), (FWD_HOST, 8080))      # both translations
    assert syn == rebuilt(syn)
    synack = send(c, tcp(FWD_HOST, POOL_1, 8080, 41000, "SA", seq=5000, ack=1001))
    assert endpoints(synack) == ((POOL_1, 80), (IN_A, 41000))
    assert synack == rebuilt(synack)
    ack = send(c, tcp(IN_A, POOL_1, 41000, 80, "A", seq=1001, ack=5001))
    assert endpoints(ack) == ((POOL_1, 41000), (FWD_HOST, 8080))
    assert c.state_count == 1


def test_hairpin_to_dynamic_mapping():
    c = make()
    send(c, udp(IN_A, SRV_1, 40000, 3478))
    out = send(c, udp(IN_B, POOL_1, 40001, 40000))
    assert endpoints(out) == ((POOL_1, 40001), (IN_A, 40000))
    back = send(c, udp(IN_A, POOL_1, 40000, 40001))
    assert endpoints(back) == ((POOL_1, 40000), (IN_B, 40001))
    assert back == rebuilt(back)


# ---- ICMP echo ----

def test_icmp_echo_ids_mapped_and_replies_return():
    c = make()
    a = send(c, echo(IN_A, SRV_1, 0x4242))
    b = send(c, echo(IN_B, SRV_1, 0x4242))
    assert endpoints(a) == ((POOL_1, 0x4242), (SRV_1, 0x4242))
    b_id = ports(b)[0]
    assert addrs(b) == (POOL_1, SRV_1) and b_id != 0x4242
    ra = send(c, echo(SRV_1, POOL_1, 0x4242, reply=True), "outside")
    rb = send(c, echo(SRV_1, POOL_1, b_id, reply=True), "outside")
    assert endpoints(ra) == ((SRV_1, 0x4242), (IN_A, 0x4242))
    assert endpoints(rb) == ((SRV_1, 0x4242), (IN_B, 0x4242))
    assert rb == rebuilt(rb)
    # the next echo of IN_B keeps its id mapping
    assert ports(send(c, echo(IN_B, SRV_1, 0x4242, seq=2)))[0] == b_id
    assert c.state_count == 2


def test_echo_request_in_reply_direction_dropped():
    c = make()
    send(c, echo(IN_A, SRV_1, 0x4242))
    refused(c, echo(SRV_1, POOL_1, 0x4242), "outside", "drop_icmp_dir")
    refused(c, echo(IN_A, SRV_1, 0x4242, reply=True), "inside", "drop_icmp_dir")
    assert c.counters()["drop_icmp_dir"] == 2
    send(c, echo(SRV_1, POOL_1, 0x4242, reply=True), "outside")


# ---- access rules ----

def test_rules_first_match_wins():
    c = make()
    c.add_rule("allow", side="inside", proto="udp", dst=f"{SRV_3}/32", dport=(53, 53))
    c.add_rule("deny", side="inside", dst="198.19.0.0/24")
    send(c, udp(IN_A, SRV_3, 40000, 53))
    refused(c, udp(IN_A, SRV_3, 40001, 54), "inside", "drop_policy")
    refused(c, tcp(IN_A, SRV_3, 40002, 53), "inside", "drop_policy")
    refused(c, udp(IN_A, SRV_1, 40003, 53), "inside", "drop_policy")
    # outside the denied prefix: the default (inside -> outside allowed)
    send(c, udp(IN_A, "198.19.1.1", 40004, 53))
    assert c.counters()["drop_policy"] == 3
    assert c.mapping_count == 2           # refused flows took no mapping


def test_deny_inside_to_destination():
    c = make()
    c.add_rule("deny", side="inside", src=f"{IN_A}/32", dst=f"{SRV_2}/32")
    refused(c, tcp(IN_A, SRV_2, 40000, 443), "inside", "drop_policy")
    send(c, tcp(IN_A, SRV_1, 40000, 443))
    send(c, tcp(IN_B, SRV_2, 40000, 443))
    assert c.counters()["drop_policy"] == 1


def test_allow_outside_to_routed_inside_address():
    c = make()
    c.add_rule("allow", side="outside", proto="tcp", dst="198.18.1.0/24", dport=(22, 22))
    v = c.process(tcp(SRV_1, ROUTED, 50000, 22), "outside")
    assert v.accepted and not v.modified
    v = c.process(tcp(ROUTED, SRV_1, 22, 50000, "SA", seq=5000, ack=1001), "inside")
    assert v.accepted and not v.modified and v.dir == 1
    refused(c, tcp(SRV_1, ROUTED, 50001, 23), "outside", "drop_policy")
    refused(c, udp(SRV_1, ROUTED, 50002, 22), "outside", "drop_policy")


def test_rules_see_the_real_destination_after_dnat():
    c = make()
    c.add_static(FWD_HOST, POOL_1, "tcp", inside_port=8080, outside_port=80)
    c.add_rule("deny", side="outside", dst=f"{FWD_HOST}/32", dport=(8080, 8080))
    refused(c, tcp(SRV_1, POOL_1, 33333, 80), "outside", "drop_policy")
    c.clear_rules()
    send(c, tcp(SRV_1, POOL_1, 33333, 80), "outside")


# ---- table full ----

def test_table_full_refuses_new_flows_existing_pass():
    c = make(max_states=3)
    for p in (40000, 40001, 40002):
        send(c, udp(IN_A, SRV_1, p, 53))
    refused(c, udp(IN_A, SRV_1, 40003, 53), "inside", "drop_table_full")
    refused(c, tcp(IN_B, SRV_1, 40003, 80), "inside", "drop_table_full")
    assert c.counters()["drop_table_full"] == 2
    assert c.state_count == 3 and c.mapping_count == 3
    for p in (40000, 40001, 40002):
        assert endpoints(send(c, udp(IN_A, SRV_1, p, 53)))[0] == (POOL_1, p)
        assert endpoints(send(c, udp(SRV_1, POOL_1, 53, p), "outside"))[1] == (IN_A, p)
    # room again once one goes
    r = state_of(c, IN_A, 40001)
    c.delete(r.creator, r.id)
    send(c, udp(IN_A, SRV_1, 40003, 53))


# ---- fragments and IP options ----

def frags(src, dst, sport, dport, size=3000, ident=0x3456):
    return [bytes(f) for f in fragment(IP(src=src, dst=dst, id=ident) /
                                       UDP(sport=sport, dport=dport) / (b"F" * size),
                                       fragsize=1200)]


def test_fragments_translated_outbound_and_back():
    c = make()
    sent = frags(IN_A, SRV_1, 40000, 53)
    assert len(sent) == 3
    # what must leave: the same datagram from the pool address, fragmented the same way
    want = frags(POOL_1, SRV_1, 40000, 53)
    got = [send(c, f) for f in sent]
    assert got == want
    for g in got:
        assert ip_header_ok(g[:20])
    ctr = c.counters()
    assert ctr["frag_first"] == 1 and ctr["frag_translated"] == 2
    # a fragmented reply
    back = [send(c, f, "outside") for f in frags(SRV_1, POOL_1, 53, 40000, 2500, 0x789A)]
    assert back == frags(SRV_1, IN_A, 53, 40000, 2500, 0x789A)


def test_fragmented_echo_with_translated_id():
    c = make()
    send(c, echo(IN_B, SRV_1, 0x5151))

    def ping(src, dst, ident, reply=False):
        return [bytes(f) for f in fragment(IP(src=src, dst=dst, id=0x2222) /
                                           ICMP(type=0 if reply else 8, id=ident, seq=7) /
                                           (b"P" * 2600), fragsize=1200)]
    got = [send(c, f) for f in ping(IN_A, SRV_1, 0x5151)]
    new_id = ports(got[0])[0]
    assert new_id != 0x5151
    assert got == ping(POOL_1, SRV_1, new_id)
    back = [send(c, f, "outside") for f in ping(SRV_1, POOL_1, new_id, reply=True)]
    assert back == ping(SRV_1, IN_A, 0x5151, reply=True)


def test_fragments_of_a_routed_flow_pass_unmodified():
    """Nothing to translate (no NAT for this flow): no fragment is reported as rewritten."""
    c = make()
    c.add_rule("allow", side="outside", proto="udp", dst="198.18.1.0/24")
    for f in frags(SRV_1, ROUTED, 5000, 6000):
        v = c.process(f, "outside")
        assert v.accepted, v.reason
        assert not v.modified
        assert v.data == f
    assert c.counters()["pkt_translated"] == 0


def test_later_fragment_without_first_dropped():
    c = make()
    sent = frags(IN_A, SRV_1, 40000, 53)
    refused(c, sent[1], "inside", "drop_frag_untracked")
    # another datagram's first fragment does not adopt it
    send(c, frags(IN_A, SRV_1, 40000, 53, ident=0x1111)[0])
    refused(c, sent[2], "inside", "drop_frag_untracked")
    assert c.counters()["drop_frag_untracked"] == 2


@pytest.mark.parametrize("options", [
    [IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_NOP()],
    [IPOption_RR(routers=["198.19.0.254", "0.0.0.0"])],
])
def test_ip_options_pass_and_are_kept(options):
    c = make()
    raw = bytes(IP(src=IN_A, dst=SRV_1, options=options) / UDP(sport=40000, dport=53) / b"opt")
    assert raw[0] & 0x0F > 5
    out = send(c, raw)
    assert out == bytes(IP(src=POOL_1, dst=SRV_1, options=options) /
                        UDP(sport=40000, dport=53) / b"opt")
    assert out == rebuilt(out)
    back = send(c, bytes(IP(src=SRV_1, dst=POOL_1, options=options) /
                         UDP(sport=53, dport=40000) / b"re"), "outside")
    assert endpoints(back) == ((SRV_1, 53), (IN_A, 40000))
    assert back == rebuilt(back)


@pytest.mark.parametrize("option", [IPOption_LSRR(routers=["198.19.0.254"]),
                                    IPOption_SSRR(routers=["198.19.0.254"])])
def test_source_route_dropped(option):
    c = make()
    raw = bytes(IP(src=IN_A, dst=SRV_1, options=[option]) / UDP(sport=40000, dport=53))
    refused(c, raw, "inside", "drop_ip_options")
    assert c.counters()["drop_ip_options"] == 1
    assert c.state_count == 0


# ---- expiry with an injected clock ----

def test_udp_lives_at_least_two_minutes_then_expires_lazily():
    """RFC 4787 REQ-5: not less than 2 minutes, measured from the last packet."""
    c = make()
    send(c, udp(IN_A, SRV_1, 40000, 53))
    c.set_clock(T0 + 120_000 - 1)
    send(c, udp(SRV_1, POOL_1, 53, 40000), "outside")   # inbound: only a live state lets it in
    # the reply refreshed it: another 2 minutes from now
    c.set_clock(T0 + 240_000 - 2)
    send(c, udp(SRV_1, POOL_1, 53, 40000), "outside")
    assert c.counters()["state_created"] == 1
    # silence for more than 2 minutes: gone
    c.set_clock(T0 + 240_000 - 2 + 122_000)
    refused(c, udp(SRV_1, POOL_1, 53, 40000), "outside", "drop_policy")
    ctr = c.counters()
    assert ctr["state_expired"] == 1
    assert c.state_count == 0 and c.mapping_count == 0
    # the next outbound packet makes a fresh state
    send(c, udp(IN_A, SRV_1, 40000, 53))
    assert c.counters()["state_created"] == 2


def test_lazy_expiry_outbound_creates_fresh_state():
    c = make()
    send(c, udp(IN_A, SRV_1, 40000, 53))
    first = state_of(c, IN_A, 40000).id
    c.set_clock(T0 + 125_000)
    send(c, udp(IN_A, SRV_1, 40000, 53))
    ctr = c.counters()
    assert ctr["state_created"] == 2 and ctr["state_expired"] == 1
    assert state_of(c, IN_A, 40000).id != first
    assert c.state_count == 1 and c.mapping_count == 1


def test_sweep_expires_idle_keeps_refreshed():
    c = make()
    for p in (40000, 40001, 40002):
        send(c, udp(IN_A, SRV_1, p, 53))
    send(c, echo(IN_B, SRV_1, 0x10))          # ICMP: 60 s
    assert c.state_count == 4
    c.set_clock(T0 + 62_000)
    assert c.sweep() == 1                      # the echo state
    c.set_clock(T0 + 100_000)
    send(c, udp(SRV_1, POOL_1, 53, 40001), "outside")     # refresh one UDP flow
    assert c.sweep() == 0
    c.set_clock(T0 + 125_000)
    assert c.sweep() == 2
    assert c.state_count == 1 and c.mapping_count == 1
    ctr = c.counters()
    assert ctr["sweep_expired"] == 3 and ctr["state_expired"] == 3
    assert ctr["mapping_freed"] == 3
    assert state_of(c, IN_A, 40001).keys[1].dport == 40001
    c.set_clock(T0 + 100_000 + 125_000)
    assert c.sweep() == 1
    assert c.state_count == 0 and c.mapping_count == 0


def test_sweep_budget_respected():
    c = make()
    for p in range(40000, 40005):
        send(c, udp(IN_A, SRV_1, p, 53))
    c.set_clock(T0 + 130_000)
    assert c.sweep(2) == 2
    assert c.state_count == 3
    assert c.sweep(2) == 2
    assert c.state_count == 1
    assert c.sweep(2) == 1
    assert c.state_count == 0
    assert c.sweep(2) == 0
    assert c.counters()["sweep_expired"] == 5


@pytest.mark.parametrize("budget, rounds", [(4, [4, 4, 1]), (3, [3, 3, 3]), (2, [2, 2, 2, 2, 1])])
def test_sweep_budget_across_seconds(budget, rounds):
    """The budget caps the states a sweep visits, also when they span several wheel slots."""
    c = make()
    for i, p in enumerate(range(40000, 40009)):
        c.set_clock(T0 + (i // 3) * 1000)       # three states a second, over three seconds
        send(c, udp(IN_A, SRV_1, p, 53))
    c.set_clock(T0 + 200_000)
    got = []
    while True:
        n = c.sweep(budget)
        if n == 0:
            break
        got.append(n)
    assert got == rounds
    assert c.state_count == 0


def test_big_clock_jump_expires_everything_old():
    c = make()
    for p in range(40000, 40010):
        send(c, udp(IN_A, SRV_1, p, 53))
    send(c, echo(IN_A, SRV_1, 0x20))
    tcp_handshake(c, IN_B, SRV_2, 40100, 443)           # established: 1 h
    assert c.state_count == 12
    c.set_clock(T0 + 30 * 60_000)                        # 30 min: UDP and ICMP gone
    assert c.sweep() == 11
    assert c.state_count == 1
    c.set_clock(T0 + 5 * 3600_000)                       # hours later: everything
    send(c, udp(IN_C, SRV_1, 40200, 53))                 # a new flow just before the sweep
    assert c.sweep() == 1
    assert c.state_count == 1 and c.mapping_count == 1
    assert c.counters()["sweep_expired"] == 12
    refused(c, tcp(SRV_2, POOL_1, 443, 40100, "A", seq=5001, ack=1001), "outside", "drop_no_state")
