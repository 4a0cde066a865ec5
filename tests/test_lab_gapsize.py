"""scripts/lab/gapsize.py's report: medians per size side by side, the ratio of the last to the first."""
from __future__ import annotations

from scripts.lab.gapsize import KEYS, report


def test_report_puts_sizes_side_by_side_with_the_ratio():
    def size(gap, bulks):
        median = dict.fromkeys(KEYS + ("load1",))
        median.update(gap=gap, detection=21.0, load1=4.0)
        return {"rows": [], "bulk_s": bulks, "median": median}

    text = report({1_000_000: size(30.0, [3.5, None]), 100_000: size(20.0, [1.5, 2.0])})
    lines = text.splitlines()
    assert lines[0].split() == ["median", "ms", "100k", "1M", "ratio"]
    gap = next(line for line in lines if line.split()[0] == "gap")
    assert gap.split() == ["gap", "20.0", "30.0", "1.50"]
    assert next(line for line in lines if line.split()[0] == "detection").split()[-1] == "1.00"
    assert next(line for line in lines if line.startswith("      bulk s")).split()[2:] == \
        ["1.50,2.00", "3.50"]
    assert next(line for line in lines if line.split()[0] == "to_verdict").split() == \
        ["to_verdict", "-", "-"]
