"""The lab's continuity picture (scripts/lab/plot.py) from synthetic flow outputs, no root:
the parsers read what iperf3 -J, the stream sink and ping -D print; the gaps are found where
they are; the PNG is written and is a PNG."""
import json

from scripts.lab import plot

KILL = 1_800_000_000.0


def synthetic():
    start = KILL - 2.0
    intervals = [{"sum": {"start": i / 10, "end": (i + 1) / 10,
                          "bits_per_second": 0.0 if i in (20, 21) else 12e9}} for i in range(40)]
    iperf = json.dumps({"intervals": intervals})
    counts = [10] * 400
    for i in range(200, 202):            # 20 ms without a packet from the kill on
        counts[i] = 0
    sink = "ready\n" + json.dumps({"received": sum(counts), "timeline": {
        "first_unix": KILL - 2.0, "bin_ms": 10, "counts": counts,
        "gaps_unix": [[KILL + 1.5, KILL + 1.55], [KILL - 0.001, KILL + 0.0209]]}})
    lines, seq = [], 1
    for i in range(400):
        t = KILL - 2.0 + i * 0.01
        if 200 <= i < 203:
            continue                     # 3 echoes lost
        lines.append(f"[{t:.6f}] 64 bytes from 198.19.1.10: icmp_seq={i + 1} ttl=63 time=0.0{i % 9} ms")
    flows = [("flow", "survived", "gap ms", "lost"), ("udp", "yes", "21.9", "21"),
             ("ping", "yes", "40", "3")]
    return plot.timeline(kill=KILL, active=KILL + 0.03, tcp_started=start, iperf_json=iperf,
                         udp_sink=sink, ping_text="\n".join(lines), flows=flows)


def test_parsers_and_gaps():
    tl = synthetic()
    assert len(tl.tcp) == 40 and tl.tcp[0][0] == KILL - 2.0
    assert len(tl.udp) == 400 and tl.udp_bin_s == 0.01
    # the sink's gaps: the longest (a stall 1.5 s later) is not the one the kill made
    assert plot.longest(tl.udp_gaps) == (KILL + 1.5, KILL + 1.55)
    assert plot.gap_at_kill(tl.udp_gaps, KILL) == (KILL - 0.001, KILL + 0.0209)
    assert len(tl.ping) == 397 and len(tl.ping_lost) == 3
    assert abs(tl.ping_lost[0] - KILL) < 1e-6
    gap = plot.longest(plot.empty_runs(tl.udp, tl.udp_bin_s))
    assert abs(gap[0] - KILL) < 1e-6 and abs(gap[1] - gap[0] - 0.02) < 1e-6
    assert plot.empty_runs([(a, g) for a, _, g in tl.tcp], 0.1) == [(KILL, KILL + 0.2)]
    ping_gap = plot.gap_at_kill(plot.silences([t for t, _ in tl.ping]), KILL)
    assert abs(ping_gap[1] - ping_gap[0] - 0.04) < 1e-6


def test_the_picture_is_written(tmp_path):
    path = plot.draw(synthetic(), tmp_path / "continuity.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_empty_outputs_still_draw(tmp_path):
    tl = plot.timeline(kill=KILL, active=None, tcp_started=KILL, iperf_json="not json",
                       udp_sink="", ping_text=None)
    assert plot.draw(tl, tmp_path / "empty.png").stat().st_size > 0


def test_a_second_kill_is_marked_not_called_a_stall(tmp_path):
    tl = synthetic()
    tl.second_kill = KILL + 1.5                 # the "stall" above is the kill back
    assert plot.gap_at_kill(tl.udp_gaps, tl.second_kill) == (KILL + 1.5, KILL + 1.55)
    data = plot.draw(tl, tmp_path / "two-kills.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
