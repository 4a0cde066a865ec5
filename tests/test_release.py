"""dataplane.release.plan: what a dead daemon's beat gives back (no root)."""
from types import SimpleNamespace

from dataplane.release import plan


def test_the_plan_names_the_virtual_addresses_and_each_legs_own_and_virtual_mac():
    macs = SimpleNamespace(macs={"in0": "02:4e:50:01:00:01", "out0": "02:4e:50:01:00:02"},
                           own={"in0": "aa:00:00:00:00:01", "out0": "aa:00:00:00:00:02"})
    vips = SimpleNamespace(vips=[("in0", "198.18.1.1/24"), ("out0", "198.19.1.1/24")], macs=macs)
    assert plan(vips) == {"vips": [["in0", "198.18.1.1/24"], ["out0", "198.19.1.1/24"]],
                          "macs": {"in0": ["aa:00:00:00:00:01", "02:4e:50:01:00:01"],
                                   "out0": ["aa:00:00:00:00:02", "02:4e:50:01:00:02"]}}


def test_no_virtual_addresses_and_no_virtual_macs_no_plan():
    assert plan(SimpleNamespace(vips=[], macs=None)) is None
    assert plan(SimpleNamespace(vips=[("in0", "198.18.1.1/24")], macs=None)) == {
        "vips": [["in0", "198.18.1.1/24"]], "macs": {}}
