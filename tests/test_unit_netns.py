"""A natpair unit between real hosts: fw-a of the lab (scripts/lab/) running the natpair daemon,
once per feed ("c" and "netfilterqueue"), with traffic from in-host and from outside (root;
marker `netns`). Issue 3, section 5.

Each feed gets its own lab, built with the lab builder under a unique prefix `npu<hex>-` from
tests/netns_lab.unit_topology (the lab plus in-srv, out-srv2, a router out-rtr and far-srv behind
it), and always taken down by a finalizer, also when a test fails. fw-a's config adds a port
forward: tcp 198.19.1.1:8080 (the NAT address) -> in-srv 198.18.1.20:80.

Servers started with the lab: on out-srv http.server :8080 (a random file) and iperf3 :5201
(scripts/lab/run.py), a DNS-like UDP responder :5353 on out-srv and out-srv2, http.server :80 on
in-srv. Nothing listens on far-srv or on out-srv's UDP port 9.

The bad config refused and the rules left after a stop are tests/test_daemon_netns.py's.
"""
import errno
import re
import secrets

import pytest

from netns_lab import (FAR_SRV, FAR_SRV_ADDR, FEEDS, FW_A_OUT, IN_SRV, IN_SRV_ADDR, OUT_RTR,
                       OUT_SRV2, OUT_SRV2_ADDR, RTR_OUT_ADDR, TRACE, UDP_ASK, UDP_ECHO,
                       UDP_LISTEN, UDP_REFUSED, UDP_SEND, Lab, Unit, quiet, tcp_in_csum_errors,
                       unique_prefix, unit_topology)
from scripts.lab import run as labrun
from scripts.lab.topology import HOST, HOST_ADDR, INSIDE_NET, NAT_ADDR, SERVER, SERVER_ADDR

pytestmark = pytest.mark.netns

BLOB_MB = 4
IPERF_TCP_S = 3
IPERF_UDP_S, IPERF_UDP_RATE = 2, "20M"
DNS_PORT = 5353
FORWARD_PORT = 8080              # on NAT_ADDR, tcp
IN_SRV_PORT = 80
PORT_FORWARD = f"""\
[[nat.static]]
inside = "{IN_SRV_ADDR}"
outside = "{NAT_ADDR}"
proto = "tcp"
inside_port = {IN_SRV_PORT}
outside_port = {FORWARD_PORT}
"""


@pytest.fixture(scope="module", params=FEEDS)
def net(request):
    """(lab, unit, blob sha256, in-srv's token file name and content) for one feed."""
    lab = Lab.up(unit_topology(unique_prefix("u")), request)
    rdir = lab.rdir
    sha = labrun.make_blob(rdir / "www" / labrun.BLOB, BLOB_MB)
    labrun.start_servers(lab.topo, rdir, log=quiet)
    token = secrets.token_hex(8)
    (rdir / "in-srv-www").mkdir()
    (rdir / "in-srv-www" / "token.txt").write_text(token)
    labrun.start_server(lab.ns(IN_SRV),
                        labrun.http_server_argv(IN_SRV_ADDR, IN_SRV_PORT, rdir / "in-srv-www"),
                        rdir / "in-srv-http.log", labrun.HTTP_READY)
    for node, addr in ((SERVER, SERVER_ADDR), (OUT_SRV2, OUT_SRV2_ADDR)):
        lab.spawn_python(node, UDP_ECHO, addr, DNS_PORT)
    unit = Unit(lab, request.param, extra=PORT_FORWARD)
    yield lab, unit, sha, token
    assert unit.stop() == 0, unit.log_text()


def _ok(result: labrun.Result, unit: Unit) -> None:
    assert result.ok, f"{result.flow}: {result.figure}\n{unit.log_text()[-2000:]}"


def test_ping(net):
    lab, unit, _, _ = net
    _ok(labrun.flow_ping(lab.topo, count=3), unit)
    c = unit.ask("counters")
    assert c["feed"]["accepted"] >= 6 and c["feed"]["modified"] >= 6


def test_curl_a_file_sha256_checked(net):
    lab, unit, sha, _ = net
    _ok(labrun.flow_curl(lab.topo, lab.rdir, sha, BLOB_MB, timeout=30), unit)
    assert labrun.last_http_client(lab.rdir / "out-srv-http.log") == NAT_ADDR


def test_iperf3_tcp(net):
    lab, unit, _, _ = net
    before = tcp_in_csum_errors(lab, SERVER)
    result = labrun.flow_tcp(lab.topo, IPERF_TCP_S)
    print(f"\n{unit.ask('status')['feed']} feed: {result.figure}")
    _ok(result, unit)
    assert tcp_in_csum_errors(lab, SERVER) == before


def test_iperf3_udp(net):
    lab, unit, _, _ = net
    result = labrun.flow_udp(lab.topo, IPERF_UDP_S, IPERF_UDP_RATE)
    print(f"\n{unit.ask('status')['feed']} feed: {result.figure}")
    _ok(result, unit)


def test_dns_like_request_response(net):
    lab, unit, _, _ = net
    query = f"query-{secrets.token_hex(4)}"
    r = lab.python(HOST, UDP_ASK, 40001, 1.0, query, f"{SERVER_ADDR}:{DNS_PORT}")
    assert r.returncode == 0, r.stdout + r.stderr + unit.log_text()
    # the answer came back to the asking socket; the server saw the NAT address
    m = re.fullmatch(rf"{query} from (\S+):(\d+)\n", r.stdout)
    assert m and m[1] == NAT_ADDR, r.stdout
    s = unit.ask("status")
    assert s["states"] >= 1 and s["mappings"] >= 1


def test_icmp_port_unreachable_inner_header_translated(net):
    """out-srv answers a probe to its closed UDP port 9 with a port unreachable about
    198.19.1.1:<mapped>; in-host's connected socket sees ECONNREFUSED only if fw-a translated
    the embedded header back to 198.18.1.10:40002."""
    lab, unit, _, _ = net
    r = lab.python(HOST, UDP_REFUSED, SERVER_ADDR, 9, 40002)
    assert r.stdout.strip() == "REFUSED", r.stdout + r.stderr + unit.log_text()


def test_traceroute_through_the_unit(net):
    """UDP probes with TTL 2 and 3 from in-host to far-srv: TTL 2 dies at out-rtr (the first
    router beyond fw-a: time exceeded), TTL 3 reaches far-srv (port unreachable). Both errors
    are about the translated flow; they reach the probing socket only if fw-a translated their
    inner header back. (TTL 1 dies in fw-a itself, after the translation: its time exceeded
    goes to the NAT address, that is to fw-a, and in-host sees no first hop.)"""
    lab, unit, _, _ = net
    base = 33433
    r = lab.python(HOST, TRACE, FAR_SRV_ADDR, base, "2,3", timeout=20)
    assert r.returncode == 0, r.stderr
    hops = r.stdout.splitlines()
    assert hops == [
        f"2 11 0 {RTR_OUT_ADDR} {FAR_SRV_ADDR}:{base + 2} {errno.EHOSTUNREACH}",
        f"3 3 3 {FAR_SRV_ADDR} {FAR_SRV_ADDR}:{base + 3} {errno.ECONNREFUSED}",
    ], r.stdout + unit.log_text()[-2000:]


def test_unsolicited_inbound_is_blocked(net):
    """From out-srv, routed to fw-a for the test: straight at in-host, and at the NAT address."""
    lab, unit, _, _ = net
    before = unit.ask("counters")["feed"]["dropped"]
    listener = lab.spawn_python(HOST, UDP_LISTEN, 9999, 1.5)
    with lab.route(SERVER, INSIDE_NET, FW_A_OUT):
        r = lab.python(SERVER, UDP_SEND, 3, f"{HOST_ADDR}:9999", f"{NAT_ADDR}:9999")
        assert r.returncode == 0, r.stderr
        out, _ = listener.communicate(timeout=10)
    assert out.strip() == "NOTHING"
    assert unit.ask("counters")["feed"]["dropped"] >= before + 6


def _curl(lab: Lab, node: str, url: str):
    return lab.run(node, ["curl", "-sS", "--max-time", "5", url], timeout=10)


def test_static_port_forward_from_outside(net):
    lab, unit, _, token = net
    r = _curl(lab, SERVER, f"http://{NAT_ADDR}:{FORWARD_PORT}/token.txt")
    assert r.returncode == 0 and r.stdout == token, r.stdout + r.stderr + unit.log_text()
    # a port forward translates the destination only: in-srv sees the real client
    assert labrun.last_http_client(lab.rdir / "in-srv-http.log", "token.txt") == SERVER_ADDR


def test_hairpinning_to_the_port_forward(net):
    """in-host reaches in-srv through the forward's outside address; in-srv sees in-host as
    its outside mapping (the NAT address), so its answers go back through fw-a as well."""
    lab, unit, _, token = net
    r = _curl(lab, HOST, f"http://{NAT_ADDR}:{FORWARD_PORT}/token.txt")
    assert r.returncode == 0 and r.stdout == token, r.stdout + r.stderr + unit.log_text()
    assert labrun.last_http_client(lab.rdir / "in-srv-http.log", "token.txt") == NAT_ADDR


def test_endpoint_independent_mapping(net):
    """One inside socket (in-host:40100) to two servers: both see the same NAT address and
    port (RFC 4787 REQ-1), and the port is kept as it is free (port preservation)."""
    lab, unit, _, _ = net
    r = lab.python(HOST, UDP_ASK, 40100, 1.0, "eim",
                   f"{SERVER_ADDR}:{DNS_PORT}", f"{OUT_SRV2_ADDR}:{DNS_PORT}")
    assert r.returncode == 0, r.stdout + r.stderr + unit.log_text()
    seen = r.stdout.splitlines()
    assert len(seen) == 2 and seen[0] == seen[1] == f"eim from {NAT_ADDR}:40100", seen
