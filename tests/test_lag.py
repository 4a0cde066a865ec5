from replication.lag import LagHistogram


def test_empty_has_no_percentiles():
    h = LagHistogram()
    assert h.percentile(50) is None and h.snapshot()["count"] == 0


def test_percentiles_are_bucket_upper_bounds():
    h = LagHistogram()
    for _ in range(98):
        h.observe(0.4)
    h.observe(4.0)
    h.observe(7.0)
    assert h.percentile(50) == 0.5
    assert h.percentile(99) == 5
    assert h.percentile(100) == 10
    snap = h.snapshot()
    assert snap["count"] == 100 and snap["buckets"][-1] == (float("inf"), 100)
    assert snap["max_ms"] == 7.0


def test_beyond_the_last_bound_reports_the_largest_seen():
    h = LagHistogram()
    h.observe(5000.0)
    assert h.percentile(99) == 5000.0
