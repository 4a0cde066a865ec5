"""bench-unit's report: the raw table and the per-CPU-second table (pure functions, no lab)."""
from scripts.bench_unit import efficiency_table, flow_cpu_s, table


def _runs():
    # two rounds per mode; kernel-nat is the base
    return {
        "kernel-nat": [{"tcp1": 20.0, "tcp1_cpu": 1.0}, {"tcp1": 10.0, "tcp1_cpu": 0.5}],
        "natpair-c": [{"tcp1": 9.0, "tcp1_cpu": 0.9}, {"tcp1": 6.0, "tcp1_cpu": 0.5}],
    }


def test_efficiency_is_figure_per_cpu_second_with_ratio_to_kernel_nat():
    lines = efficiency_table(_runs(), ["tcp1"]).splitlines()
    knat = next(ln for ln in lines if ln.startswith("kernel-nat"))
    c = next(ln for ln in lines if ln.startswith("natpair-c"))
    # kernel-nat: 20/1.0 and 10/0.5 -> 20 per CPU-s; CPUs median 0.75
    assert "20.00 1.00x 0.75" in knat
    # natpair-c: 9/0.9 = 10 and 6/0.5 = 12 -> median 11 -> 0.55x; CPUs median 0.70
    assert "11.00 0.55x 0.70" in c


def test_a_failed_test_leaves_a_dash_not_a_crash():
    runs = _runs()
    runs["natpair-c"] = [{"tcp1": None, "tcp1_cpu": 0.4}]
    c = next(ln for ln in efficiency_table(runs, ["tcp1"]).splitlines()
             if ln.startswith("natpair-c"))
    assert c.split()[-1] == "-"
    assert "failed" in table(runs, ["tcp1"])


def test_flow_cpu_counts_this_process():
    import os
    import time
    spent = flow_cpu_s([os.getpid()])
    deadline = time.monotonic() + 5             # /proc counts in clock ticks: burn a few
    while flow_cpu_s([os.getpid()]) <= spent and time.monotonic() < deadline:
        sum(i * i for i in range(100_000))
    assert flow_cpu_s([os.getpid()]) > spent
    assert flow_cpu_s([2 ** 22 + 12345]) >= 0   # a pid that is gone counts 0, no error
