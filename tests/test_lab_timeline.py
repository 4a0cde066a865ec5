"""scripts/lab/timeline.py without a lab: the takeover's log lines read back into steps, the
kill's gap picked among the receiver's silences (not simply the largest: a stall of the loaded
machine may be longer), and the times put relative to the last packet before the gap.
"""
import logging

from dataplane.logline import KvFormatter
from scripts.lab.timeline import kill_gap, spans, takeover_fields, timeline

LINES = """\
2026-11-26T13:02:30.851Z INFO natpair[fw-b] transition machine=fw-b-role from=STANDBY_READY event=PEER_SILENT to=ACTIVE reason="no hello on any path for 21 ms (hold 20 ms)"
2026-11-26T13:02:30.851Z WARNING natpair[fw-b] takeover step=core_active states=1001 at_us=1020000 took_us=30 last_heard_ms=998
2026-11-26T13:02:30.855Z WARNING natpair[fw-b] takeover step=add_addresses vips=198.18.1.1/24,198.19.1.1/24 at_us=1020100 took_us=1500 vmac_us=900 garp_us=100 neigh_us=400 addr_us=100
2026-11-26T13:02:30.857Z WARNING natpair[fw-b] takeover step=announce garp=28 at_us=1021700 took_us=300
2026-11-26T13:02:30.857Z WARNING natpair[fw-b] takeover step=first_packet packets=8 at_us=1023000 woke_us=1022500 locked_us=1022510 since_core_active_us=3000
"""


def _side(seq, sent_us, rx_us):
    return {"seq": seq, "sent_us": sent_us, "rx_us": rx_us}


GAPS = [
    {"before": _side(10, 900_000, 900_100), "after": _side(11, 900_000, 960_000), "next": []},
    {"before": _side(200, 1_000_000, 1_000_100),
     "after": _side(242, 1_021_500, 1_023_100),
     "next": [_side(243, 1_021_600, 1_023_150)]},
]


def test_the_daemons_own_lines_parse():
    fmt = KvFormatter("fw-b")
    rec = logging.LogRecord("natpair", logging.WARNING, __file__, 1,
                            "takeover step=core_active states=3 at_us=5 took_us=1 last_heard_ms=0",
                            None, None)
    steps = takeover_fields(fmt.format(rec))
    assert steps["core_active"]["at_us"] == "5" and steps["core_active"]["last_heard_ms"] == "0"


def test_the_kill_gap_is_the_one_around_the_takeover_not_the_largest():
    steps = takeover_fields(LINES)
    assert set(steps) == {"core_active", "add_addresses", "announce", "first_packet"}
    gap = kill_gap(GAPS, steps)
    assert gap is GAPS[1]                    # GAPS[0] is longer (59.9 ms), but not the kill's
    assert kill_gap(GAPS, {}) is GAPS[0]     # no takeover line: the largest


def test_timeline_is_relative_to_the_last_packet_before_the_gap():
    steps = takeover_fields(LINES)
    t = timeline(GAPS[1], cut0_us=995_000, cut1_us=1_030_000, steps=steps)
    assert t["rx_last"] == 0.0
    assert (t["cut0"], t["cut1"]) == (-5.1, 29.9)
    assert t["heard"] == -2.1 and t["decide"] == 19.9 and t["core"] == 19.93
    assert (t["vmac"], t["garp"], t["neigh"], t["addr"]) == (20.9, 21.0, 21.4, 21.5)
    assert t["announce"] == 21.9 and t["woke"] == 22.4 and t["verdict"] == 22.9
    assert (t["first_sent"], t["rx_first"], t["lost"]) == (21.4, 23.0, 41)
    assert t["next"] == [(21.5, 23.05)]
    s = spans(t)
    assert s["detection"] == 22.0 and s["to_vmac"] == 1.0 and s["gap"] == 23.0
    assert s["sent_to_woke"] == 1.0
