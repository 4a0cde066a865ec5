"""The filters of show conn / clear conn (dataplane/connfilter.py) on real core states, no root."""
import pytest

from dataplane.connfilter import FilterError, parse
from dataplane.core import Core
from tests.packets import POOL_1, SRV_1, tcp, udp

INSIDE = "198.18.0.10"


@pytest.fixture
def recs():
    c = Core(pool=[POOL_1], port_range=(20000, 29999))
    assert c.process(udp(INSIDE, SRV_1, 5353, 53), "inside").accepted
    assert c.process(tcp(INSIDE, SRV_1, 40000, 443, "S"), "inside").accepted
    return list(c.export())


def names(recs, flt):
    f = parse(flt)
    return sorted(r.proto for r in recs if f.match(r))


def test_filters_match_what_they_say(recs):
    assert names(recs, []) == [6, 17]
    assert names(recs, ["protocol", "udp"]) == [17]
    assert names(recs, ["port", "443"]) == [6]
    assert names(recs, ["address", SRV_1]) == [6, 17]
    assert names(recs, ["address", POOL_1]) == [6, 17]          # the NAT address too
    assert names(recs, ["address", "198.18.7.0/24"]) == []
    assert names(recs, {"state": "syn-sent"}) == [6]
    assert names(recs, {"state": "udp", "port": 53}) == [17]


@pytest.mark.parametrize("words,problem", [
    (["colour", "red"], "unknown filter 'colour'"),
    (["port"], "needs a value"),
    (["port", "70000"], "not 0..65535"),
    (["protocol", "sctp"], "not one of"),
    (["address", "fw-a"], "not an IPv4"),
    (["state", "open"], "not one of"),
    (["port", "1", "port", "2"], "given twice"),
])
def test_bad_filters_are_refused_by_name(words, problem):
    with pytest.raises(FilterError, match=problem):
        parse(words)
