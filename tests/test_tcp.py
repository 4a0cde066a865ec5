"""TCP through the core with real packets: the state machine, pf-style windows, timeouts.

The inside client IN_A:40000 talks to the outside server SRV_1:80 through a NAT pool whose port
range does not contain 40000, so the outside port is a random one and every test that cares about
the mapping really checks it. Sequence numbers: the client starts at 1000, the server at 5000.
"""
from __future__ import annotations

from scapy.layers.inet import IP, TCP

from dataplane.core import COUNTER_NAMES, Core, ip_str
from tests.packets import IN_A, IN_B, POOL_1, SRV_1, addrs, ports

CPORT, SPORT = 40000, 80
C_ISN, S_ISN = 1000, 5000
PORT_RANGE = (20000, 29999)



def tcp_bytes(src, dst, sport, dport, flags, seq=0, ack=0, win=65535, wscale=None, data=b""):
    opts = [("MSS", 1460)]
    if wscale is not None:
        opts.append(("WScale", wscale))
    if "S" not in flags:
        opts = []
    return bytes(IP(src=src, dst=dst) /
                 TCP(sport=sport, dport=dport, flags=flags, seq=seq % 2**32, ack=ack % 2**32, window=win,
                     options=opts) / data)


def drops(core: Core) -> dict[str, int]:
    return {k: v for k, v in core.counters().items() if k.startswith("drop_") and v}


class Flow:
    """One TCP connection IN_A:CPORT -> SRV_1:SPORT through a core."""

    def __init__(self, core: Core, client=IN_A, cport=CPORT, server=SRV_1, sport=SPORT):
        self.core, self.client, self.cport, self.server, self.sport = core, client, cport, server, sport
        self.out_addr = None
        self.out_port = None

    def c2s(self, flags, seq, ack=0, win=65535, wscale=None, data=b""):
        v = self.core.process(tcp_bytes(self.client, self.server, self.cport, self.sport, flags,
                                        seq, ack, win, wscale, data), "inside")
        if v.accepted and self.out_port is None:
            self.out_addr = addrs(v.data)[0]
            self.out_port = ports(v.data)[0]
        if v.accepted:
            assert addrs(v.data) == (self.out_addr, self.server)
            assert ports(v.data) == (self.out_port, self.sport)
        return v

    def s2c(self, flags, seq, ack=0, win=65535, wscale=None, data=b""):
        v = self.core.process(tcp_bytes(self.server, self.out_addr, self.sport, self.out_port, flags,
                                        seq, ack, win, wscale, data), "outside")
        if v.accepted:
            assert addrs(v.data) == (self.server, self.client)
            assert ports(v.data) == (self.sport, self.cport)
        return v

    def rec(self):
        recs = [r for r in self.core.export()
                if r.keys[0].sport == self.cport and ip_str(r.keys[0].src) == self.client
                and r.keys[0].dport == self.sport]
        assert len(recs) == 1, recs
        return recs[0]

    @property
    def state(self) -> str:
        return self.rec().tcp_state_name

    def open(self, cw=None, sw=None, cwin=65535, swin=65535):
        """Three-way handshake; returns nothing, asserts every step."""
        assert self.c2s("S", C_ISN, win=cwin, wscale=cw).accepted
        assert self.state == "syn-sent"
        assert self.s2c("SA", S_ISN, C_ISN + 1, win=swin, wscale=sw).accepted
        assert self.state == "syn-received"
        assert self.c2s("A", C_ISN + 1, S_ISN + 1, win=cwin).accepted
        assert self.state == "established"


def new_core(**kw) -> Core:
    kw.setdefault("pool", [POOL_1])
    kw.setdefault("port_range", PORT_RANGE)
    kw.setdefault("hash_seed", 7)
    return Core(**kw)


def assert_consistent(core: Core):
    c = core.counters()
    assert c["pkt_in"] == c["pkt_accept"] + c["pkt_drop"]
    assert c["pkt_drop"] == sum(v for k, v in c.items() if k.startswith("drop_"))


# ---------------------------------------------------------------- the state machine


def test_normal_open_states_and_translation():
    core = new_core()
    f = Flow(core)
    v = f.c2s("S", C_ISN)
    assert v.accepted and v.modified and v.dir == 0
    assert f.out_addr == POOL_1 and PORT_RANGE[0] <= f.out_port <= PORT_RANGE[1]
    r = f.rec()
    assert r.tcp_state_name == "syn-sent"
    assert r.peers[0].seqlo == C_ISN + 1
    v = f.s2c("SA", S_ISN, C_ISN + 1)
    assert v.accepted and v.dir == 1
    assert f.state == "syn-received"
    assert f.c2s("A", C_ISN + 1, S_ISN + 1).accepted
    r = f.rec()
    assert r.tcp_state_name == "established"
    assert r.peers[0].seqlo == C_ISN + 1 and r.peers[1].seqlo == S_ISN + 1
    assert r.packets == (2, 1)
    assert core.state_count == 1 and core.mapping_count == 1
    c = core.counters()
    assert (c["pkt_in"], c["pkt_accept"], c["pkt_drop"], c["state_created"]) == (3, 3, 0, 1)
    assert c["pkt_translated"] == 3


def test_simultaneous_open_synack_from_initiator():
    core = new_core()
    f = Flow(core)
    assert f.c2s("S", C_ISN).accepted
    assert f.state == "syn-sent"
    assert f.s2c("S", S_ISN).accepted            # the SYNs cross
    assert f.state == "syn-sent2"
    assert f.c2s("SA", C_ISN, S_ISN + 1).accepted
    assert f.state == "syn-received"
    assert f.s2c("SA", S_ISN, C_ISN + 1).accepted
    assert f.state == "syn-received"
    assert f.c2s("A", C_ISN + 1, S_ISN + 1).accepted
    assert f.state == "established"
    assert drops(core) == {}


def test_simultaneous_open_synack_from_responder():
    core = new_core()
    f = Flow(core)
    assert f.c2s("S", C_ISN).accepted
    assert f.s2c("S", S_ISN).accepted
    assert f.state == "syn-sent2"
    assert f.c2s("S", C_ISN).accepted           # a retransmitted SYN keeps syn-sent2
    assert f.state == "syn-sent2"
    assert f.s2c("SA", S_ISN, C_ISN + 1).accepted
    assert f.state == "syn-received"
    assert f.s2c("A", S_ISN + 1, C_ISN + 1).accepted
    assert f.state == "established"
    assert drops(core) == {}


def test_rst_from_responder_closes():
    core = new_core()
    f = Flow(core)
    f.open()
    v = f.s2c("RA", S_ISN + 1, C_ISN + 1)
    assert v.accepted
    assert f.state == "closed"
    assert f.rec().expire_in_ms == 11000        # closed: 10 s (+1 s of clock granularity)


def test_rst_from_initiator_closes():
    core = new_core()
    f = Flow(core)
    f.open()
    assert f.c2s("R", C_ISN + 1).accepted
    assert f.state == "closed"


def test_rst_in_syn_sent_closes():
    core = new_core()
    f = Flow(core)
    assert f.c2s("S", C_ISN).accepted
    assert f.s2c("RA", 0, C_ISN + 1).accepted   # connection refused
    assert f.state == "closed"


def test_rst_out_of_window_dropped_strict():
    core = new_core()
    f = Flow(core)
    f.open()
    before = f.rec()
    for seq in (S_ISN + 1 + 100000, S_ISN + 1 + 1000, S_ISN - 70000):
        v = f.s2c("RA", seq, C_ISN + 1)
        assert not v.accepted and v.reason == "drop_tcp_window"
    assert f.rec().tcp_state_name == "established"
    assert f.rec().peers == before.peers
    assert drops(core) == {"drop_tcp_window": 3}
    # the exact sequence number is still honoured
    assert f.s2c("RA", S_ISN + 1, C_ISN + 1).accepted
    assert f.state == "closed"


def test_rst_out_of_window_accepted_loose():
    core = new_core(tcp_loose=True)
    f = Flow(core)
    f.open()
    v = f.s2c("RA", S_ISN + 1 + 100000, C_ISN + 1)
    assert v.accepted
    assert f.state == "closed"
    assert core.counters()["tcp_loose_accept"] == 1


def test_fin_from_initiator_first():
    core = new_core()
    f = Flow(core)
    f.open()
    assert f.c2s("PA", C_ISN + 1, S_ISN + 1, data=b"x" * 100).accepted
    cseq = C_ISN + 101
    assert f.c2s("FA", cseq, S_ISN + 1).accepted
    assert f.state == "fin-wait"
    assert f.rec().peers[0].flags & 1
    assert f.s2c("A", S_ISN + 1, cseq + 1).accepted
    assert f.state == "close-wait"
    assert f.rec().peers[0].flags & 2
    assert f.s2c("PA", S_ISN + 1, cseq + 1, data=b"y" * 10).accepted   # half-closed: data flows
    assert f.state == "close-wait"
    assert f.s2c("FA", S_ISN + 11, cseq + 1).accepted
    assert f.state == "last-ack"
    assert f.c2s("A", cseq + 1, S_ISN + 12).accepted
    assert f.state == "time-wait"
    r = f.rec()
    assert r.peers[0].flags == 7 and r.peers[1].flags == 7
    assert r.expire_in_ms == 61000              # time-wait: 60 s (+1 s)
    assert drops(core) == {}


def test_fin_from_responder_first():
    core = new_core()
    f = Flow(core)
    f.open()
    assert f.s2c("FA", S_ISN + 1, C_ISN + 1).accepted
    assert f.state == "fin-wait"
    assert f.c2s("A", C_ISN + 1, S_ISN + 2).accepted
    assert f.state == "close-wait"
    assert f.c2s("FA", C_ISN + 1, S_ISN + 2).accepted
    assert f.state == "last-ack"
    assert f.s2c("A", S_ISN + 2, C_ISN + 2).accepted
    assert f.state == "time-wait"
    assert drops(core) == {}


def test_fins_crossing():
    core = new_core()
    f = Flow(core)
    f.open()
    assert f.c2s("FA", C_ISN + 1, S_ISN + 1).accepted
    assert f.state == "fin-wait"
    assert f.s2c("FA", S_ISN + 1, C_ISN + 1).accepted  # its FIN does not ack the client's
    assert f.state == "last-ack"
    assert f.c2s("A", C_ISN + 2, S_ISN + 2).accepted
    assert f.state == "last-ack"                   # the client's FIN is still unacknowledged
    assert f.s2c("A", S_ISN + 2, C_ISN + 2).accepted
    assert f.state == "time-wait"


def test_fin_ack_acknowledging_the_other_fin():
    core = new_core()
    f = Flow(core)
    f.open()
    assert f.c2s("FA", C_ISN + 1, S_ISN + 1).accepted
    assert f.s2c("FA", S_ISN + 1, C_ISN + 2).accepted   # FIN + ack of the client's FIN
    assert f.state == "last-ack"
    assert f.c2s("A", C_ISN + 2, S_ISN + 2).accepted
    assert f.state == "time-wait"


def test_retransmitted_fin_does_not_advance():
    core = new_core()
    f = Flow(core)
    f.open()
    assert f.c2s("FA", C_ISN + 1, S_ISN + 1).accepted
    assert f.state == "fin-wait"
    for _ in range(3):
        assert f.c2s("FA", C_ISN + 1, S_ISN + 1).accepted
        assert f.state == "fin-wait"
    assert f.s2c("A", S_ISN + 1, C_ISN + 2).accepted
    assert f.state == "close-wait"
    assert f.c2s("FA", C_ISN + 1, S_ISN + 1).accepted   # again, after it was acked
    assert f.state == "close-wait"
    assert f.s2c("FA", S_ISN + 1, C_ISN + 2).accepted
    assert f.state == "last-ack"
    assert f.s2c("FA", S_ISN + 1, C_ISN + 2).accepted   # the second FIN retransmitted
    assert f.state == "last-ack"
    assert f.c2s("A", C_ISN + 2, S_ISN + 2).accepted
    assert f.state == "time-wait"
    assert drops(core) == {}


def _to_time_wait(f: Flow):
    f.open()
    assert f.c2s("FA", C_ISN + 1, S_ISN + 1).accepted
    assert f.s2c("FA", S_ISN + 1, C_ISN + 2).accepted
    assert f.c2s("A", C_ISN + 2, S_ISN + 2).accepted
    assert f.state == "time-wait"


def test_syn_on_time_wait_reuses_state_same_mapping():
    core = new_core()
    f = Flow(core)
    _to_time_wait(f)
    old = f.rec()
    old_out = (f.out_addr, f.out_port)
    core.drain()
    v = f.c2s("S", 900000)
    assert v.accepted
    assert (addrs(v.data)[0], ports(v.data)[0]) == old_out     # same NAT mapping
    new = f.rec()
    assert new.id != old.id and new.id > old.id
    assert new.tcp_state_name == "syn-sent"
    assert new.outside == old_out
    assert new.peers[0].seqlo == 900001
    c = core.counters()
    assert c["state_reused"] == 1
    assert core.state_count == 1 and core.mapping_count == 1
    # the replica hears of the old state's end and the new one's birth
    ch = core.drain()
    assert [(x.kind, x.id) for x in ch] == [("delete", old.id), ("create", new.id)]
    # the new connection runs on the same mapping
    assert f.s2c("SA", 70000, 900001).accepted
    assert f.c2s("A", 900001, 70001).accepted
    assert f.state == "established"


def test_syn_on_closed_state_reuses_it():
    core = new_core()
    f = Flow(core)
    f.open()
    assert f.s2c("RA", S_ISN + 1, C_ISN + 1).accepted
    old = f.rec()
    assert old.tcp_state_name == "closed"
    assert f.c2s("S", 123456).accepted
    new = f.rec()
    assert new.id != old.id and new.tcp_state_name == "syn-sent"
    assert new.outside == old.outside
    assert core.counters()["state_reused"] == 1


def test_syn_from_responder_on_time_wait_refused():
    core = new_core()
    f = Flow(core)
    _to_time_wait(f)
    v = f.s2c("S", 777)
    assert not v.accepted and v.reason == "drop_tcp_transition"
    assert f.state == "time-wait"
    assert core.counters()["state_reused"] == 0


def test_synack_from_initiator_in_syn_sent_refused():
    core = new_core()
    f = Flow(core)
    assert f.c2s("S", C_ISN).accepted
    before = f.rec()
    v = f.c2s("SA", C_ISN, 4242)
    assert not v.accepted and v.reason == "drop_tcp_transition"
    after = f.rec()
    assert after.tcp_state_name == "syn-sent" and after.peers == before.peers
    assert drops(core) == {"drop_tcp_transition": 1}


def test_other_invalid_transitions_refused():
    core = new_core()
    f = Flow(core)
    assert f.c2s("S", C_ISN).accepted
    # data / FIN from the initiator before the handshake completed
    assert f.c2s("A", C_ISN + 1, 0).reason == "drop_tcp_transition"
    assert f.c2s("FA", C_ISN + 1, 0).reason == "drop_tcp_transition"
    # a bare ACK from the responder in syn-sent
    assert f.s2c("A", S_ISN, C_ISN + 1).reason == "drop_tcp_transition"
    assert f.state == "syn-sent"
    f2 = Flow(core, cport=40001)
    f2.open()
    # a SYN from the initiator on an established connection
    assert f2.c2s("S", C_ISN).reason == "drop_tcp_transition"
    # a SYN from the responder on an established connection
    assert f2.s2c("S", S_ISN).reason == "drop_tcp_transition"
    assert f2.state == "established"
    assert drops(core) == {"drop_tcp_transition": 5}
    assert_consistent(core)


def test_invalid_flag_combinations_dropped():
    core = new_core(tcp_loose=True)
    f = Flow(core)
    f.open()
    for flags in ("SF", "SFA", "SR", "SRA", "", "F", "FP", "P", "U", "FPU"):
        v = f.c2s(flags, C_ISN + 1, S_ISN + 1)
        assert not v.accepted and v.reason == "drop_tcp_flags", flags
        # no state needed: a new flow is refused the same way
        v = core.process(tcp_bytes(IN_B, SRV_1, 1234, 80, flags, 1), "inside")
        assert not v.accepted and v.reason == "drop_tcp_flags", flags
    assert core.state_count == 1
    assert f.state == "established"
    assert drops(core) == {"drop_tcp_flags": 20}


def test_non_syn_without_state_dropped_strict():
    core = new_core()
    for i, flags in enumerate(("A", "PA", "FA", "R", "RA", "SA")):
        v = core.process(tcp_bytes(IN_A, SRV_1, 41000 + i, 80, flags, 1, 1), "inside")
        assert not v.accepted and v.reason == "drop_no_state", flags
    assert core.state_count == 0 and core.mapping_count == 0
    assert drops(core) == {"drop_no_state": 6}


# ---------------------------------------------------------------- windows


def test_strict_window_in_window_beyond_and_retransmission():
    core = new_core()
    f = Flow(core)
    f.open()
    # the server allows 65535 bytes past its ack (C_ISN + 1)
    assert f.c2s("PA", C_ISN + 1, S_ISN + 1, data=b"a" * 1000).accepted
    assert f.rec().peers[0].seqlo == C_ISN + 1001
    # a retransmission of the same segment
    assert f.c2s("PA", C_ISN + 1, S_ISN + 1, data=b"a" * 1000).accepted
    assert f.rec().peers[0].seqlo == C_ISN + 1001
    # the last byte the window allows
    edge = C_ISN + 1 + 65535
    assert f.c2s("PA", edge - 100, S_ISN + 1, data=b"b" * 100).accepted
    # one byte beyond it
    v = f.c2s("PA", edge - 100, S_ISN + 1, data=b"b" * 101)
    assert not v.accepted and v.reason == "drop_tcp_window"
    v = f.c2s("PA", C_ISN + 1 + 200000, S_ISN + 1, data=b"c" * 10)
    assert not v.accepted and v.reason == "drop_tcp_window"
    # far behind the window (more than a max window back)
    v = f.c2s("PA", C_ISN + 1 - 70000, S_ISN + 1, data=b"d" * 10)
    assert not v.accepted and v.reason == "drop_tcp_window"
    # an ack of data the server never sent
    v = f.c2s("A", C_ISN + 1001, S_ISN + 1 + 200000)
    assert not v.accepted and v.reason == "drop_tcp_window"
    assert drops(core) == {"drop_tcp_window": 4}
    assert f.rec().peers[0].seqlo == edge


def test_strict_window_moves_with_acks():
    core = new_core()
    f = Flow(core)
    f.open(swin=10000)
    # the server's SYN|ACK offered 10000 bytes
    v = f.c2s("PA", C_ISN + 1 + 9000, S_ISN + 1, data=b"x" * 1001)
    assert v.reason == "drop_tcp_window"
    assert f.c2s("PA", C_ISN + 1, S_ISN + 1, data=b"x" * 10000).accepted
    # the server acks it all and opens 10000 more
    assert f.s2c("A", S_ISN + 1, C_ISN + 10001, win=10000).accepted
    assert f.rec().peers[0].seqhi == C_ISN + 20001
    assert f.c2s("PA", C_ISN + 10001, S_ISN + 1, data=b"y" * 10000).accepted
    assert f.c2s("PA", C_ISN + 20001, S_ISN + 1, data=b"z").reason == "drop_tcp_window"


def _scaled_flow(cw, sw):
    core = new_core()
    f = Flow(core)
    f.open(cw=cw, sw=sw)
    # the server then advertises 1024 (x 128 = 131072 bytes if scaling is on)
    assert f.s2c("A", S_ISN + 1, C_ISN + 1, win=1024).accepted
    return core, f


def test_window_scaling_both_sides_honoured():
    core, f = _scaled_flow(7, 7)
    r = f.rec()
    assert r.peers[0].wscale == 0x87 and r.peers[1].wscale == 0x87
    assert r.peers[0].seqhi == C_ISN + 1 + 1024 * 128
    assert f.c2s("PA", C_ISN + 1 + 100000, S_ISN + 1, data=b"s" * 100).accepted
    v = f.c2s("PA", C_ISN + 1 + 1024 * 128, S_ISN + 1, data=b"s")
    assert v.reason == "drop_tcp_window"
    # and the other direction: the client advertises 1024 x 128 as well
    assert f.c2s("A", C_ISN + 1, S_ISN + 1, win=1024).accepted
    assert f.s2c("PA", S_ISN + 1 + 120000, C_ISN + 1, data=b"t" * 100).accepted
    assert drops(core) == {"drop_tcp_window": 1}


def test_window_scaling_ignored_when_only_initiator_offers():
    core, f = _scaled_flow(7, None)
    r = f.rec()
    assert r.peers[0].wscale == 0 and r.peers[1].wscale == 0
    v = f.c2s("PA", C_ISN + 1 + 100000, S_ISN + 1, data=b"s" * 100)
    assert not v.accepted and v.reason == "drop_tcp_window"
    assert f.c2s("PA", C_ISN + 1, S_ISN + 1, data=b"s" * 100).accepted


def test_window_scaling_ignored_when_only_responder_offers():
    core, f = _scaled_flow(None, 7)
    r = f.rec()
    assert r.peers[0].wscale & 0x80 == 0 and r.peers[1].wscale & 0x80 == 0
    v = f.c2s("PA", C_ISN + 1 + 100000, S_ISN + 1, data=b"s" * 100)
    assert not v.accepted and v.reason == "drop_tcp_window"
    assert f.c2s("PA", C_ISN + 1, S_ISN + 1, data=b"s" * 100).accepted


def test_window_scaling_syn_window_is_not_scaled():
    """A SYN's window is never scaled: pf removes the scale factor from the initiator's
    (pf_create_state) and the responder's SYN window, so max_win stays in scaled units."""
    core = new_core()
    f = Flow(core)
    assert f.c2s("S", C_ISN, win=64240, wscale=7).accepted
    assert f.rec().peers[0].max_win == 502            # ceil(64240 / 128)
    assert f.s2c("SA", S_ISN, C_ISN + 1, win=65535, wscale=7).accepted
    assert f.rec().peers[1].max_win == 512            # ceil(65535 / 128)
    # before the client's ACK the server may send what the client's SYN offered (64240 bytes),
    # not 64240 << 7
    v = f.s2c("PA", S_ISN + 1 + 100000, C_ISN + 1, data=b"x" * 10)
    assert not v.accepted and v.reason == "drop_tcp_window"
    assert f.s2c("PA", S_ISN + 1, C_ISN + 1, data=b"x" * 10).accepted
    assert f.c2s("A", C_ISN + 1, S_ISN + 11, win=502).accepted
    assert f.state == "established"
    assert f.s2c("PA", S_ISN + 11, C_ISN + 1, data=b"y" * 1000).accepted
    # a segment a megabyte behind: out of any window the client ever offered (502 << 7)
    v = f.s2c("PA", S_ISN + 11 - 1_000_000, C_ISN + 1, data=b"z" * 10)
    assert not v.accepted and v.reason == "drop_tcp_window"
    assert drops(core) == {"drop_tcp_window": 2}


def test_window_scaling_refused_restores_initiator_syn_window():
    core = new_core()
    f = Flow(core)
    assert f.c2s("S", C_ISN, win=64240, wscale=7).accepted
    assert f.s2c("SA", S_ISN, C_ISN + 1, win=65535).accepted      # no WScale: no scaling
    r = f.rec()
    assert r.peers[0].max_win == 64256 and r.peers[0].wscale == 0  # 502 << 7, unscaled again
    assert r.peers[1].seqhi == S_ISN + 1 + 64256
    # the server may fill the client's real SYN window before the client's ACK
    assert f.s2c("PA", S_ISN + 1 + 60000, C_ISN + 1, data=b"x" * 1000).accepted
    v = f.s2c("PA", S_ISN + 1 + 64256, C_ISN + 1, data=b"x")
    assert v.reason == "drop_tcp_window"


def test_loose_mode_accepts_out_of_window():
    core = new_core(tcp_loose=True)
    f = Flow(core)
    f.open()
    assert f.c2s("PA", C_ISN + 1, S_ISN + 1, data=b"c" * 10).accepted
    assert core.counters()["tcp_loose_accept"] == 0          # in-window: not counted
    v = f.c2s("PA", C_ISN + 1 + 200000, S_ISN + 1, data=b"c" * 10)
    assert v.accepted and v.reason is None
    c = core.counters()
    assert c["tcp_loose_accept"] == 1 and c["drop_tcp_window"] == 0
    # the state machine is still enforced in loose mode
    assert f.c2s("S", C_ISN).reason == "drop_tcp_transition"


def test_loose_mode_picks_up_midstream_flow():
    core = new_core(tcp_loose=True)
    f = Flow(core)
    v = f.c2s("A", 3_000_000, 9_000_000)
    assert v.accepted and v.modified
    c = core.counters()
    assert c["tcp_pickup"] == 1 and c["state_created"] == 1
    r = f.rec()
    assert r.tcp_state_name == "established"
    assert r.flags & 2                          # NP_SF_PICKUP
    assert f.s2c("PA", 9_000_000, 3_000_000, data=b"r" * 500).accepted
    assert f.c2s("PA", 3_000_000, 9_000_500, data=b"q" * 500).accepted
    assert f.state == "established"
    # FIN close still tracked
    assert f.c2s("FA", 3_000_500, 9_000_500).accepted
    assert f.state == "fin-wait"
    # strict mode does not pick up
    strict = new_core()
    v = Flow(strict).c2s("A", 3_000_000, 9_000_000)
    assert v.reason == "drop_no_state" and strict.counters()["tcp_pickup"] == 0


def test_loose_mode_does_not_pick_up_rst_or_synack():
    core = new_core(tcp_loose=True)
    for i, flags in enumerate(("R", "RA", "SA")):
        v = core.process(tcp_bytes(IN_A, SRV_1, 42000 + i, 80, flags, 1, 1), "inside")
        assert v.reason == "drop_no_state", flags
    assert core.state_count == 0 and core.counters()["tcp_pickup"] == 0


# ---------------------------------------------------------------- timeouts


T0 = 1_000_500      # not on a whole second, on purpose


def _at(core, ms):
    core.set_clock(ms)
    core.sweep()


def test_embryonic_timeout_30s():
    core = new_core()
    core.set_clock(T0)
    f = Flow(core)
    assert f.c2s("S", C_ISN).accepted
    assert f.rec().expire_in_ms >= 30000
    _at(core, T0 + 30000 - 1)
    assert core.state_count == 1
    _at(core, T0 + 30000)
    assert core.state_count == 1            # no state lives less than its timeout
    _at(core, T0 + 31000)
    assert core.state_count == 0 and core.mapping_count == 0
    c = core.counters()
    assert c["state_expired"] == 1 and c["sweep_expired"] == 1 and c["mapping_freed"] == 1


def test_syn_received_is_embryonic_too():
    core = new_core()
    core.set_clock(T0)
    f = Flow(core)
    assert f.c2s("S", C_ISN).accepted
    assert f.s2c("SA", S_ISN, C_ISN + 1).accepted
    _at(core, T0 + 29000)
    assert core.state_count == 1
    _at(core, T0 + 31000)
    assert core.state_count == 0


def test_established_timeout_one_hour():
    core = new_core()
    core.set_clock(T0)
    f = Flow(core)
    f.open()
    assert 3600000 <= f.rec().expire_in_ms <= 3601000
    _at(core, T0 + 59 * 60000)
    assert core.state_count == 1
    assert f.state == "established"
    assert core.counters()["state_expired"] == 0
    _at(core, T0 + 61 * 60000)
    assert core.state_count == 0 and core.mapping_count == 0
    assert core.counters()["state_expired"] == 1
    assert list(core.export()) == []


def test_established_timeout_refreshed_by_traffic():
    core = new_core()
    core.set_clock(T0)
    f = Flow(core)
    f.open()
    core.set_clock(T0 + 50 * 60000)
    assert f.c2s("PA", C_ISN + 1, S_ISN + 1, data=b"k").accepted
    _at(core, T0 + 100 * 60000)             # 50 min after the last packet
    assert core.state_count == 1
    _at(core, T0 + 111 * 60000)
    assert core.state_count == 0


def test_expired_state_refused_lazily_without_sweep():
    core = new_core()
    core.set_clock(T0)
    f = Flow(core)
    f.open()
    core.set_clock(T0 + 61 * 60000)
    v = f.c2s("PA", C_ISN + 1, S_ISN + 1, data=b"late")
    assert not v.accepted and v.reason == "drop_no_state"
    assert core.counters()["state_expired"] == 1
    assert core.state_count == 0


def test_time_wait_timeout_short():
    core = new_core()
    core.set_clock(T0)
    f = Flow(core)
    _to_time_wait(f)
    exp = f.rec().expire_in_ms
    assert 60000 <= exp <= 61000
    _at(core, T0 + 60000 - 1)
    assert core.state_count == 1
    _at(core, T0 + 61000)
    assert core.state_count == 0
    assert core.counters()["state_expired"] == 1


def test_closing_and_closed_timeouts():
    core = new_core()
    core.set_clock(T0)
    f = Flow(core)
    f.open()
    assert f.c2s("FA", C_ISN + 1, S_ISN + 1).accepted
    assert 120000 <= f.rec().expire_in_ms <= 121000          # fin-wait: closing, 2 min
    g = Flow(core, cport=40002)
    g.open()
    assert g.s2c("RA", S_ISN + 1, C_ISN + 1).accepted
    assert 10000 <= g.rec().expire_in_ms <= 11000            # closed: 10 s
    _at(core, T0 + 11000)
    assert core.state_count == 1
    _at(core, T0 + 121000)
    assert core.state_count == 0


def test_custom_timeouts():
    core = new_core(timeouts_ms={"tcp_embryonic": 5000, "tcp_established": 20000})
    core.set_clock(T0)
    f = Flow(core)
    assert f.c2s("S", C_ISN).accepted
    _at(core, T0 + 6000)
    assert core.state_count == 0
    f = Flow(core)
    f.open()
    _at(core, T0 + 6000 + 19000)
    assert core.state_count == 1
    _at(core, T0 + 6000 + 21000)
    assert core.state_count == 0


def test_timeout_longer_than_the_wheel_with_regular_sweeps():
    """A 2 h established timeout is longer than one turn of the 4096 s wheel: it cascades."""
    core = new_core(timeouts_ms={"tcp_established": 2 * 3600 * 1000})
    core.set_clock(T0)
    f = Flow(core)
    f.open()
    t = T0
    while t < T0 + 7200000 - 30000:
        t += 30000
        _at(core, t)
        assert core.state_count == 1, (t - T0) / 1000
    _at(core, T0 + 7200000 - 1)
    assert core.state_count == 1
    _at(core, T0 + 7201000)
    assert core.state_count == 0
    assert core.counters()["state_expired"] == 1


def test_clock_jumps_past_the_wheel():
    core = new_core(timeouts_ms={"tcp_established": 3 * 3600 * 1000})
    core.set_clock(T0)
    f = Flow(core)
    f.open()
    g = Flow(core, cport=40009)
    assert g.c2s("S", C_ISN).accepted
    _at(core, T0 + 5000 * 1000)          # one jump of more than a turn of the wheel
    assert core.state_count == 1 and f.state == "established"
    _at(core, T0 + 10799 * 1000)
    assert core.state_count == 1
    _at(core, T0 + 10801 * 1000)
    assert core.state_count == 0
    assert core.counters()["state_expired"] == 2


def test_sweep_budget_expires_everything_in_steps():
    core = new_core()
    core.set_clock(T0)
    for i in range(10):
        assert Flow(core, cport=41000 + i).c2s("S", C_ISN).accepted
    core.set_clock(T0 + 40000)
    got = [core.sweep(3) for _ in range(5)]
    assert sum(got) == 10 and got[0] == 3
    assert core.state_count == 0 and core.mapping_count == 0
    assert core.counters()["sweep_expired"] == 10


def test_counters_named_and_consistent():
    core = new_core()
    f = Flow(core)
    f.open()
    f.c2s("SA", 1, 1)
    f.c2s("SF", 1, 1)
    assert_consistent(core)
    assert "drop_tcp_window" in COUNTER_NAMES and "state_reused" in COUNTER_NAMES


def test_takeover_grace_accepts_and_relearns_out_of_window_segments():
    """After a takeover the replicated windows may be a few packets old: for the grace
    period a segment beyond them passes (tcp_loose_accept, and they learn from it); then strict."""
    core = Core(pool=[POOL_1])
    core.set_clock(1000)
    from tests.packets import tcp, tcp_handshake
    tcp_handshake(core, IN_A, SRV_1, 40000, 80)
    far = tcp(IN_A, SRV_1, 40000, 80, "A", seq=1001 + 10_000_000, ack=5001, payload=b"x" * 100)
    assert core.process(far, "inside").reason == "drop_tcp_window"
    core.set_tcp_grace(500)
    v = core.process(far, "inside")
    assert v.accepted and core.counters()["tcp_loose_accept"] == 1
    core.set_clock(1600)                         # grace over: strict again
    far2 = tcp(IN_A, SRV_1, 40000, 80, "A", seq=1001 + 30_000_000, ack=5001, payload=b"z")
    assert core.process(far2, "inside").reason == "drop_tcp_window"
