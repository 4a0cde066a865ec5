"""The bench-failover's figures (scripts/bench_failover.py) and what it reads from conntrackd
(scripts/lab/incumbent.py): pure functions, no root, no lab. The bench itself is not run here.
"""
import argparse

import pytest

from replication.lag import LagHistogram
from scripts import bench_failover as bf
from scripts.lab import incumbent
from scripts.lab.stream import _Gaps


def kill(size, udp, tcp, ok, bulk=None):
    return bf.Kill(size, "fw-a", 40.0, udp, 0, list(tcp), list(ok), bulk_gap_ms=bulk)


def test_parse_sizes_takes_k_and_m_and_sorts():
    assert bf.parse_sizes("1M,1k,100k") == [1000, 100_000, 1_000_000]
    assert bf.parse_sizes("500") == [500]
    for bad in ("", "x", "0", "1g", "-5"):
        with pytest.raises(argparse.ArgumentTypeError):
            bf.parse_sizes(bad)


def test_size_labels():
    assert [bf.size_label(n) for n in (1000, 100_000, 1_000_000, 1500, 7)] == \
        ["1k", "100k", "1M", "1500", "7"]


def test_spread_ignores_missing_values():
    assert bf.spread([None, None]) is None
    assert bf.spread([3.0, None, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}


def test_merge_lag_adds_the_histograms_of_several_actives():
    a, b = LagHistogram(), LagHistogram()
    a.observe(0.4, n=98)
    b.observe(0.4, n=1)
    b.observe(40.0, n=1)
    merged = bf.merge_lag([a.snapshot(), b.snapshot(), LagHistogram().snapshot()])
    assert merged == {"p50_ms": 0.5, "p99_ms": 0.5, "count": 100}
    b.observe(40.0, n=5)
    assert bf.merge_lag([a.snapshot(), b.snapshot()])["p99_ms"] == 50


def test_merge_lag_is_none_when_nothing_was_observed():
    assert bf.merge_lag([]) is None
    assert bf.merge_lag([LagHistogram().snapshot(), {}]) is None


def test_summary_counts_survivors_and_tells_whether_the_gap_is_flat():
    run = bf.SystemRun("natpair", kills=[
        kill(1000, 10.0, [12.0, 14.0], [True, True], bulk=30.0),
        kill(1000, 12.0, [13.0, None], [True, False], bulk=31.0),
        kill(100_000, 40.0, [15.0, 16.0], [True, True], bulk=32.0),
    ], bulk_s={100_000: [0.5, 0.7]})
    s = bf.summary(run, [1000, 100_000])
    assert s["sizes"][1000]["tcp_survived"] == (3, 4)
    assert s["sizes"][1000]["udp_gap"]["median"] == 11.0
    assert s["sizes"][100_000]["bulk_s"]["max"] == 0.7
    assert s["flat"]["udp_gap"] == pytest.approx(29.0)
    assert s["flat"]["bulk_gap"] == pytest.approx(1.5)
    assert s["lag"] is None


def test_table_puts_both_systems_side_by_side_with_the_targets():
    runs = {"natpair": bf.SystemRun("natpair", kills=[kill(1000, 8.0, [9.0], [True])],
                                    cps={"off": 9000.0, "on": 8000.0}),
            "incumbent": bf.SystemRun("incumbent", kills=[kill(1000, 28.0, [211.0], [False])])}
    text = bf.table(runs, [1000])
    head = text.splitlines()[0].split()
    assert head == ["figure", "natpair", "incumbent", "target"]
    udp = next(ln for ln in text.splitlines() if ln.startswith("UDP gap ms, 1k"))
    assert "8 [8..8]  MET" in udp and "28 [28..28]  NOT MET" in udp and "<= 20 median" in udp
    surv = next(ln for ln in text.splitlines() if ln.startswith("TCP conns survived"))
    assert "1/1  MET" in surv and "0/1  NOT MET" in surv
    lag = next(ln for ln in text.splitlines() if ln.startswith("replication lag"))
    assert "n/a" in lag and "not measured" in lag
    assert "9000" in text and "8000" in text


def test_chart_writes_a_png(tmp_path):
    runs = {"natpair": bf.SystemRun("natpair", kills=[kill(1000, 8.0, [9.0], [True], 20.0),
                                                      kill(100_000, 9.0, [9.5], [True], 21.0)])}
    path = bf.chart(runs, [1000, 100_000], tmp_path / "gap.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_conntrackd_stats_are_read_per_cache():
    text = ("cache internal:\ncurrent active connections:\t     1004\nconnections created:"
            "\t\t     2000\tfailed:\t\t0\n\ncache external:\ncurrent active connections:"
            "\t      997\nconnections created:\t\t  997\tfailed:\t\t0\n\ntraffic processed:\n")
    assert incumbent.parse_conntrackd_stats(text) == {"internal": 1004, "external": 997}
    assert incumbent.parse_conntrackd_stats("garbage") == {"internal": -1, "external": -1}


def test_stream_gaps_are_counted_as_they_come():
    g = _Gaps()
    g.arrive(1.0)
    assert g.max_gap is None and g.count == 1
    g.arrive(1.5, 3)
    g.arrive(1.6, 0)                      # nothing arrived: no arrival
    g.arrive(1.7)
    assert g.count == 5 and g.max_gap == pytest.approx(0.5)
    one = _Gaps()
    one.arrive(2.0, 4)
    assert one.max_gap == 0.0


def test_kills_at_the_sizes_filled_alone_default_to_3_or_to_kills():
    a = bf.parse_args([])
    assert (a.kills, a.kills_large, a.sizes, a.fill_alone_from) == \
        (10, 3, [1000, 100_000, 1_000_000], 1_000_000)
    a = bf.parse_args(["--kills", "5", "--sizes", "1k,1M"])
    assert (a.kills, a.kills_large, a.sizes) == (5, 5, [1000, 1_000_000])
    a = bf.parse_args(["--kills-large", "1", "--fill-alone-from", "100k", "--quick"])
    assert (a.kills, a.kills_large, a.sizes, a.fill_alone_from) == (3, 1, [1000, 100_000], 100_000)
    with pytest.raises(SystemExit):
        bf.parse_args(["--kills-large", "0"])


def test_memory_is_printed_per_unit_and_program():
    mem = {"fw-a": {"natpair": 410.4, "x": 1.0}, "fw-b": {}, "kernel nf_conntrack slab": 312.6}
    assert bf.fmt_memory(mem) == "fw-a natpair 410 MB + x 1 MB; kernel conntrack 313 MB"
    assert bf.fmt_memory({}) == "n/a"


def test_memory_of_a_lab_that_is_not_there_names_no_unit():
    from scripts.lab.topology import lab
    assert set(bf.memory(lab("hm-none-"))) <= {"kernel nf_conntrack slab"}
