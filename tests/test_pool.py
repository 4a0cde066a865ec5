"""The core's state and mapping pools: untouched until used, released slots reused first."""
from __future__ import annotations

import os

from test_nat import IN_A, POOL_1, SRV_1, make, refused, send, state_of, udp


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_big_table_costs_no_memory_until_states_use_it():
    # 4M states are 512 MB of pool and 256 MB of mappings: a free list written at creation
    # faulted all of it in (0.9 s at 1.5M, paid by every start of a joining standby)
    before = resident_bytes()
    c = make(max_states=4_000_000)
    grown = resident_bytes() - before
    assert grown < 64 << 20, f"creating the core made {grown >> 20} MB resident"
    for p in range(40000, 40100):
        send(c, udp(IN_A, SRV_1, p, 53))
    assert c.state_count == 100 and c.mapping_count == 100
    assert len(list(c.export())) == 100


def test_released_slots_are_reused_before_fresh_ones_and_the_table_fills_exactly():
    c = make(max_states=6)
    for p in range(40000, 40006):
        send(c, udp(IN_A, SRV_1, p, 53))
    refused(c, udp(IN_A, SRV_1, 40010, 53), "inside", "drop_table_full")
    for p in (40001, 40004):
        r = state_of(c, IN_A, p)
        c.delete(r.creator, r.id)
    assert c.state_count == 4 and c.mapping_count == 4
    send(c, udp(IN_A, SRV_1, 40011, 53))
    send(c, udp(IN_A, SRV_1, 40012, 53))
    refused(c, udp(IN_A, SRV_1, 40013, 53), "inside", "drop_table_full")
    assert c.state_count == 6 and c.mapping_count == 6
    # export walks the slots in order: the new flows sit in the two released slots
    assert [r.keys[0].sport for r in c.export()] == [40000, 40012, 40002, 40003, 40011, 40005]
    for p in (40000, 40002, 40003, 40005, 40011, 40012):
        assert send(c, udp(SRV_1, POOL_1, 53, p), "outside")
