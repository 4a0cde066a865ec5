"""Config loading (dataplane/config.py): a good file gives the frozen tree; every
class of bad file is refused with FILE:LINE: KEY and what is wrong (line numbers
asserted exactly); `natpair run` with a bad file exits 2 before changing
anything. No root needed.
"""
import dataclasses
import textwrap

import pytest

from dataplane import cli, config
from dataplane.config import ConfigError, Locator

GOOD = textwrap.dedent("""\
    # a unit
    [unit]
    name = "fw-t"
    netns = "npd-x-fw"

    [interfaces]
    inside = "in0"
    outside = "out0"

    [nat]
    pool = ["198.19.1.100", "198.19.1.101"]
    ports = [20000, 29999]

    [[nat.static]]
    inside = "198.18.1.30"
    outside = "198.19.1.130"
    proto = "tcp"
    inside_port = 80
    outside_port = 8080

    [[nat.static]]
    inside = "198.18.1.40"
    outside = "198.19.1.140"

    [[rules]]
    action = "deny"
    side = "inside"
    proto = "udp"
    dst = "198.19.9.0/24"
    dport = [53, 53]

    [[rules]]
    action = "allow"
    side = "outside"

    [timeouts]
    udp = 300
    icmp = 30

    [core]
    max_states = 1000
    tcp = "loose"

    [feed]
    kind = "netfilterqueue"
    queue = 7
    batch = 32

    [control]
    socket = "/tmp/npd-x.sock"
    """)
# line numbers in GOOD, used by the edits below
L_UNIT, L_NAME, L_INSIDE, L_OUTSIDE, L_NAT, L_POOL, L_PORTS = 2, 3, 7, 8, 10, 11, 12
L_STATIC0, L_ST0_PROTO, L_STATIC1, L_ST1_OUTSIDE = 14, 17, 21, 23
L_RULE0, L_R0_ACTION, L_R0_DST, L_R0_DPORT, L_RULE1 = 25, 26, 29, 30, 32
L_TMO_UDP, L_MAX_STATES, L_TCP, L_KIND, L_QUEUE, L_BATCH, L_SOCKET = 37, 41, 42, 45, 46, 47, 50


def write(tmp_path, text, name="unit.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def replace_line(text, line, new):
    lines = text.splitlines()
    assert lines[line - 1].strip(), f"line {line} is blank"
    lines[line - 1] = new
    return "\n".join(lines) + "\n"


def insert_after(text, line, new):
    lines = text.splitlines()
    lines.insert(line, new)
    return "\n".join(lines) + "\n"


def refused(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        config.load(path)
    e = ei.value
    assert e.path == path
    where = f"{path}:{e.line}" if e.line else path
    assert str(e).startswith(f"{where}: {e.key}: " if e.key else f"{where}: ")
    return e


def test_line_numbers_of_the_fixture():
    lines = GOOD.splitlines()
    for no, start in [(L_UNIT, "[unit]"), (L_NAME, "name"), (L_POOL, "pool"), (L_PORTS, "ports"),
                      (L_STATIC0, "[[nat.static]]"), (L_ST0_PROTO, "proto"), (L_STATIC1, "[[nat.static]]"),
                      (L_ST1_OUTSIDE, "outside"), (L_RULE0, "[[rules]]"), (L_R0_DPORT, "dport"),
                      (L_RULE1, "[[rules]]"), (L_TMO_UDP, "udp"), (L_MAX_STATES, "max_states"),
                      (L_TCP, "tcp"), (L_KIND, "kind"), (L_QUEUE, "queue"), (L_BATCH, "batch"),
                      (L_SOCKET, "socket"), (L_R0_ACTION, "action"), (L_R0_DST, "dst")]:
        assert lines[no - 1].startswith(start), (no, lines[no - 1])


def test_good_config_loads(tmp_path):
    c = config.load(write(tmp_path, GOOD))
    assert c.unit == config.UnitSection("fw-t", config.creator_id_from_name("fw-t"), "npd-x-fw")
    assert c.interfaces == config.Interfaces("in0", "out0")
    assert c.nat.pool == ("198.19.1.100", "198.19.1.101")
    assert c.nat.ports == (20000, 29999)
    assert c.nat.static == (config.Static("198.18.1.30", "198.19.1.130", "tcp", 80, 8080),
                            config.Static("198.18.1.40", "198.19.1.140"))
    assert c.rules == (config.Rule("deny", "inside", "udp", "0.0.0.0/0", "198.19.9.0/24", (53, 53)),
                       config.Rule("allow", "outside"))
    assert c.timeouts.udp == 300 and c.timeouts.icmp == 30 and c.timeouts.tcp_established == 3600
    assert c.timeouts.as_ms()["udp"] == 300_000
    assert c.core == config.CoreSection(1000, "loose")
    assert c.feed == config.Feed("netfilterqueue", 7, 32, False)
    assert c.control.socket == "/tmp/npd-x.sock"
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.unit.name = "other"


def test_defaults(tmp_path):
    c = config.load(write(tmp_path, '[unit]\nname = "u1"\n[interfaces]\ninside = "a"\noutside = "b"\n'
                                    '[nat]\npool = ["198.19.0.1"]\n'))
    assert c.unit.creator_id == config.creator_id_from_name("u1")
    assert 1 <= c.unit.creator_id <= 65534
    assert config.creator_id_from_name("u1") == config.creator_id_from_name("u1")
    assert config.creator_id_from_name("u1") != config.creator_id_from_name("u2")
    assert c.unit.netns is None
    assert c.nat.ports == (1024, 65535) and c.nat.static == () and c.rules == ()
    assert c.timeouts == config.Timeouts()
    assert c.feed == config.Feed("c", 0, 64, False)
    assert c.core == config.CoreSection(65536, "strict")
    assert c.control.socket == "/run/natpair/u1.sock"


def test_example_file_loads():
    c = config.load("examples/unit-fw-a.toml")
    assert c.unit.name == "fw-a" and c.feed.kind == "c"


def test_example_failover_section_loads_when_uncommented(tmp_path):
    lines = open("examples/unit-fw-a.toml").read().splitlines()
    start = lines.index("# [failover]")
    text = "\n".join(lines[:start] + [ln[2:] for ln in lines[start:] if ln.startswith("# ")])
    fo = config.load(write(tmp_path, text.replace("<64 hex digits>", KEY_HEX) + "\n")).failover
    assert fo.peer_legs == (("inside", "198.18.1.3"), ("outside", "198.19.1.3"))
    assert fo.virtual_macs == (("inside", "02:4e:50:01:00:01"), ("outside", "02:4e:50:01:00:02"))
    assert len(fo.vips) == 2


BAD = [
    # (edit, expected line, expected key, words in the problem)
    ("unknown key", lambda t: insert_after(t, L_NAME, "colour = 1"), L_NAME + 1, "unit.colour", "unknown key"),
    ("unknown section", lambda t: t + "\n[bogus]\nx = 1\n", GOOD.count("\n") + 2, "bogus", "unknown section"),
    ("wrong type", lambda t: replace_line(t, L_QUEUE, 'queue = "7"'), L_QUEUE, "feed.queue",
     "must be an integer, not string"),
    ("bool is not int", lambda t: replace_line(t, L_BATCH, "batch = true"), L_BATCH, "feed.batch",
     "must be an integer"),
    ("bad address in pool", lambda t: replace_line(t, L_POOL, 'pool = ["198.19.1.100", "198.19.1.300"]'),
     L_POOL, "nat.pool[1]", "bad IPv4 address '198.19.1.300'"),
    ("duplicate pool address", lambda t: replace_line(t, L_POOL, 'pool = ["198.19.1.100", "198.19.1.100"]'),
     L_POOL, "nat.pool", "listed twice"),
    ("port range reversed", lambda t: replace_line(t, L_PORTS, "ports = [29999, 20000]"), L_PORTS, "nat.ports",
     "port range reversed: 29999 > 20000"),
    ("port out of range", lambda t: replace_line(t, L_PORTS, "ports = [20000, 70000]"), L_PORTS, "nat.ports",
     "out of range"),
    ("udp timeout below 120", lambda t: replace_line(t, L_TMO_UDP, "udp = 60"), L_TMO_UDP, "timeouts.udp",
     "below 120 s (RFC 4787 REQ-5"),
    ("unknown timeout", lambda t: insert_after(t, L_TMO_UDP, "sctp = 5"), L_TMO_UDP + 1, "timeouts.sctp",
     "unknown key"),
    ("bad choice", lambda t: replace_line(t, L_KIND, 'kind = "dpdk"'), L_KIND, "feed.kind", "must be one of"),
    ("tcp mode", lambda t: replace_line(t, L_TCP, 'tcp = "lenient"'), L_TCP, "core.tcp", "must be one of"),
    ("max_states zero", lambda t: replace_line(t, L_MAX_STATES, "max_states = 0"), L_MAX_STATES,
     "core.max_states", "must be in 1.."),
    ("second static: bad key", lambda t: insert_after(t, L_ST1_OUTSIDE, "port = 5"), L_ST1_OUTSIDE + 1,
     "nat.static[1].port", "unknown key"),
    ("static proto", lambda t: replace_line(t, L_ST0_PROTO, 'proto = "icmp"'), L_ST0_PROTO,
     "nat.static[0].proto", "must be one of 'tcp', 'udp'"),
    ("static missing port", lambda t: replace_line(t, L_ST0_PROTO + 1, "# no inside port"), L_STATIC0,
     "nat.static[0].inside_port", "missing (required)"),
    ("static clash", lambda t: replace_line(t, L_ST1_OUTSIDE, 'outside = "198.19.1.130"'), L_ST1_OUTSIDE,
     "nat.static[1].outside", "clashes with nat.static[0]"),
    ("rule action", lambda t: replace_line(t, L_R0_ACTION, 'action = "permit"'), L_R0_ACTION,
     "rules[0].action", "must be one of 'allow', 'deny'"),
    ("rule prefix", lambda t: replace_line(t, L_R0_DST, 'dst = "198.19.9.1/24"'), L_R0_DST, "rules[0].dst",
     "host bits set"),
    ("rule dport reversed", lambda t: replace_line(t, L_R0_DPORT, "dport = [80, 79]"), L_R0_DPORT,
     "rules[0].dport", "port range reversed: 80 > 79"),
    ("second rule missing action", lambda t: replace_line(t, L_RULE1 + 1, "# none"), L_RULE1,
     "rules[1].action", "missing (required)"),
    ("same interface twice", lambda t: replace_line(t, L_OUTSIDE, 'outside = "in0"'), L_OUTSIDE,
     "interfaces.outside", "same interface as inside"),
    ("bad interface name", lambda t: replace_line(t, L_INSIDE, 'inside = "a/b"'), L_INSIDE,
     "interfaces.inside", "not an interface name"),
    ("missing name", lambda t: replace_line(t, L_NAME, "# no name"), L_UNIT, "unit.name", "missing (required)"),
    ("relative socket", lambda t: replace_line(t, L_SOCKET, 'socket = "x.sock"'), L_SOCKET, "control.socket",
     "absolute path"),
]


@pytest.mark.parametrize("edit,line,key,problem", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_names_file_line_and_key(tmp_path, edit, line, key, problem):
    e = refused(tmp_path, edit(GOOD))
    assert (e.line, e.key) == (line, key), str(e)
    assert problem in e.problem, str(e)
    assert f":{line}: {key}: " in str(e)


def test_missing_section_names_it(tmp_path):
    text = GOOD.replace("[nat]", "[natx]")
    e = refused(tmp_path, text)
    assert (e.line, e.key) == (L_NAT, "natx") and "unknown section" in e.problem
    e = refused(tmp_path, '[unit]\nname = "u"\n[nat]\npool = ["198.19.0.1"]\n')
    assert e.key == "interfaces" and "missing section [interfaces]" in e.problem


def test_toml_syntax_error_keeps_line_and_column(tmp_path):
    e = refused(tmp_path, insert_after(GOOD, L_QUEUE, "batch = = 3"))
    assert e.line == L_QUEUE + 1
    assert "TOML syntax error" in e.problem and f"line {L_QUEUE + 1}, column" in e.problem


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as ei:
        config.load(tmp_path / "absent.toml")
    assert "absent.toml" in str(ei.value) and "cannot read" in str(ei.value)


def test_locator_paths():
    loc = Locator(GOOD + '\n[extra]\nlist = [\n  "a",\n  "b = c",\n]\nafter = 1\n')
    n = GOOD.count("\n")
    assert loc.line("nat.static[1].outside") == L_ST1_OUTSIDE
    assert loc.line("nat.static[1].proto") == L_STATIC1        # absent: its table's header
    assert loc.line("rules[1]") == L_RULE1
    assert loc.line("nat.pool[1]") == L_POOL
    assert loc.line("extra.list") == n + 3
    assert loc.line("extra.b") == n + 2                        # inside the array: not a key
    assert loc.line("extra.after") == n + 7


def test_run_with_bad_config_exits_2_and_changes_nothing(tmp_path, capsys, monkeypatch):
    from dataplane import daemon

    touched = []
    monkeypatch.setattr(daemon.Daemon, "start", lambda self: touched.append("start"))
    monkeypatch.setattr(daemon.kernel, "install_rules", lambda *a, **k: touched.append("rules"))
    path = write(tmp_path, replace_line(GOOD, L_PORTS, "ports = [29999, 20000]"))
    assert cli.main(["run", "--config", path]) == 2
    err = capsys.readouterr().err
    assert f"{path}:{L_PORTS}: nat.ports: port range reversed" in err
    assert touched == []
    assert cli.main(["check", "--config", path]) == 2


def test_core_refusal_is_a_config_error_at_its_line(tmp_path):
    """What only the core can check (here: a static whose outside is in the pool) still
    names the entry; it is found while building the core, before any kernel change."""
    from dataplane import daemon
    from dataplane.core import Core  # noqa: F401  (needs the built extension)

    text = replace_line(GOOD, L_ST1_OUTSIDE, 'outside = "198.19.1.100"')
    cfg = config.load(write(tmp_path, text))
    with pytest.raises(ConfigError) as ei:
        daemon.build_core(cfg)
    e = ei.value
    assert (e.line, e.key) == (L_STATIC1, "nat.static[1]")
    assert "refused by the core" in e.problem and "Conflict" in e.problem


def test_feed_drain_us(tmp_path):
    c = config.load(write(tmp_path, insert_after(GOOD, L_BATCH, "drain_us = 2000")))
    assert c.feed.drain_us == 2000
    for bad in ("drain_us = -1", f"drain_us = {config.DRAIN_US_MAX + 1}"):
        e = refused(tmp_path, insert_after(GOOD, L_BATCH, bad))
        assert e.key == "feed.drain_us" and e.line == L_BATCH + 1


# ---- [failover] -------------------------------------------------------------------------

KEY_HEX = "ab" * 32
FAILOVER = textwrap.dedent(f"""\

    [failover]
    interface = "fo0"
    local = "198.18.255.1:7788"
    peer = "198.18.255.2:7788"
    key = "{KEY_HEX}"
    priority = 120
    poll_ms = 10
    hold_ms = 60
    preempt = true
    peer_inside = "198.18.1.3"
    peer_outside = "198.19.1.3"
    group = 7

    [[failover.vip]]
    leg = "inside"
    address = "198.18.1.1/24"

    [[failover.vip]]
    leg = "outside"
    address = "198.19.1.1/24"
    """)
F = GOOD.count("\n") + 1                  # the blank line before [failover]
L_FO, L_FO_IF, L_FO_LOCAL, L_FO_PEER, L_FO_KEY, L_FO_PRIO, L_FO_POLL, L_FO_HOLD = (
    F + 1, F + 2, F + 3, F + 4, F + 5, F + 6, F + 7, F + 8)
L_FO_PEER_IN, L_FO_PEER_OUT, L_FO_GROUP = F + 10, F + 11, F + 12
L_VIP0, L_VIP0_LEG, L_VIP1_ADDR = F + 14, F + 15, F + 20


def test_failover_is_optional():
    assert config.loads(GOOD).failover is None


def test_failover_loads(tmp_path):
    text = GOOD + FAILOVER
    assert text.splitlines()[L_FO - 1] == "[failover]"
    assert text.splitlines()[L_FO_HOLD - 1].startswith("hold_ms")
    assert text.splitlines()[L_VIP1_ADDR - 1].startswith("address")
    fo = config.load(write(tmp_path, text)).failover
    assert fo == config.Failover("fo0", ("198.18.255.1", 7788), ("198.18.255.2", 7788),
                                 bytes.fromhex(KEY_HEX), 120, 10, 60, True, False,
                                 (config.Vip("inside", "198.18.1.1/24"),
                                  config.Vip("outside", "198.19.1.1/24")),
                                 (("inside", "198.18.1.3"), ("outside", "198.19.1.3")), 7,
                                 (("inside", "02:4e:50:07:00:01"), ("outside", "02:4e:50:07:00:02")))
    assert KEY_HEX not in repr(fo)                 # the key never shows in a log line
    assert (fo.beat_local, fo.beat_peer) == (("198.18.255.1", 7789), ("198.18.255.2", 7789))


def test_failover_defaults_and_key_file(tmp_path):
    (tmp_path / "raw.key").write_bytes(bytes(range(40)))
    (tmp_path / "hex.key").write_text(KEY_HEX + "\n")
    for name, key in (("raw.key", bytes(range(40))), ("hex.key", bytes.fromhex(KEY_HEX))):
        text = GOOD + (f'\n[failover]\ninterface = "fo0"\nlocal = "198.18.255.1"\n'
                       f'peer = "198.18.255.2"\nkey_file = "{name}"\n')
        fo = config.load(write(tmp_path, text)).failover
        assert fo.key == key
        assert (fo.local, fo.peer) == (("198.18.255.1", config.FAILOVER_PORT),
                                       ("198.18.255.2", config.FAILOVER_PORT))
        assert (fo.priority, fo.poll_ms, fo.hold_ms, fo.preempt, fo.http_replication, fo.vips) == (
            100, config.FAILOVER_POLL_MS, config.FAILOVER_HOLD_MS, False, False, ())
        assert fo.peer_legs == ()                  # no data-path hellos unless the peer is named
        assert fo.virtual_macs == (("inside", "02:4e:50:01:00:01"), ("outside", "02:4e:50:01:00:02"))


def test_virtual_macs_given_or_off(tmp_path):
    text = insert_after(GOOD + FAILOVER, L_FO_GROUP, 'mac_inside = "02:AA:00:00:00:01"')
    assert config.load(write(tmp_path, text)).failover.virtual_macs == (
        ("inside", "02:aa:00:00:00:01"), ("outside", "02:4e:50:07:00:02"))
    text = insert_after(GOOD + FAILOVER, L_FO_GROUP, "virtual_mac = false")
    assert config.load(write(tmp_path, text)).failover.virtual_macs == ()


BAD_FAILOVER = [
    ("hold below 3x poll", lambda t: replace_line(t, L_FO_HOLD, "hold_ms = 29"), L_FO_HOLD,
     "failover.hold_ms", "less than 3 x poll_ms"),
    ("poll zero", lambda t: replace_line(t, L_FO_POLL, "poll_ms = 0"), L_FO_POLL,
     "failover.poll_ms", "at least 1"),
    ("short key", lambda t: replace_line(t, L_FO_KEY, 'key = "abcd"'), L_FO_KEY, "failover.key",
     "2 bytes, at least 32"),
    ("key not hex", lambda t: replace_line(t, L_FO_KEY, 'key = "secret"'), L_FO_KEY, "failover.key",
     "hex digits"),
    ("no key", lambda t: replace_line(t, L_FO_KEY, "# no key"), L_FO, "failover",
     "exactly one of key"),
    ("missing key file", lambda t: replace_line(t, L_FO_KEY, 'key_file = "/nonexistent/k"'),
     L_FO_KEY, "failover.key_file", "cannot read"),
    ("bad peer port", lambda t: replace_line(t, L_FO_PEER, 'peer = "198.18.255.2:99999"'),
     L_FO_PEER, "failover.peer", "port must be"),
    ("bad local address", lambda t: replace_line(t, L_FO_LOCAL, 'local = "198.18.255.300:1"'),
     L_FO_LOCAL, "failover.local", "bad IPv4 address"),
    ("no port left for the hellos", lambda t: replace_line(t, L_FO_LOCAL, 'local = "198.18.255.1:65535"'),
     L_FO_LOCAL, "failover.local", "port 65535 leaves no port for the hellos"),
    ("failover on a data leg", lambda t: replace_line(t, L_FO_IF, 'interface = "in0"'), L_FO_IF,
     "failover.interface", "is a data leg"),
    ("priority", lambda t: replace_line(t, L_FO_PRIO, "priority = 300"), L_FO_PRIO,
     "failover.priority", "must be in 0..255"),
    ("vip leg", lambda t: replace_line(t, L_VIP0_LEG, 'leg = "dmz"'), L_VIP0_LEG,
     "failover.vip[0].leg", "must be one of 'inside', 'outside'"),
    ("vip without prefix", lambda t: replace_line(t, L_VIP1_ADDR, 'address = "198.19.1.1"'),
     L_VIP1_ADDR, "failover.vip[1].address", "needs its prefix length"),
    ("vip twice", lambda t: replace_line(t, L_VIP1_ADDR, 'address = "198.18.1.1/24"'),
     L_VIP1_ADDR, "failover.vip[1].address", "listed twice"),
    ("unknown key", lambda t: insert_after(t, L_FO_IF, "mode = 1"), L_FO_IF + 1, "failover.mode",
     "unknown key"),
    ("peer leg address", lambda t: replace_line(t, L_FO_PEER_IN, 'peer_inside = "198.18.1"'),
     L_FO_PEER_IN, "failover.peer_inside", "bad IPv4 address"),
    ("peer leg is a vip", lambda t: replace_line(t, L_FO_PEER_OUT, 'peer_outside = "198.19.1.1"'),
     L_FO_PEER_OUT, "failover.peer_outside", "is a virtual address"),
    ("group", lambda t: replace_line(t, L_FO_GROUP, "group = 256"), L_FO_GROUP,
     "failover.group", "must be in 0..255"),
    ("bad mac", lambda t: insert_after(t, L_FO_GROUP, 'mac_inside = "02:4e:50:07:00"'),
     L_FO_GROUP + 1, "failover.mac_inside", "not a MAC address"),
    ("multicast mac", lambda t: insert_after(t, L_FO_GROUP, 'mac_outside = "01:00:5e:00:00:01"'),
     L_FO_GROUP + 1, "failover.mac_outside", "must be unicast"),
    ("same macs", lambda t: insert_after(t, L_FO_GROUP, 'mac_outside = "02:4e:50:07:00:01"'),
     L_FO_GROUP + 1, "failover.mac_outside", "inside leg's virtual MAC too"),
    ("mac without vmac", lambda t: insert_after(
        insert_after(t, L_FO_GROUP, "virtual_mac = false"), L_FO_GROUP + 1,
        'mac_inside = "02:00:00:00:00:09"'), L_FO_GROUP + 2, "failover.mac_inside",
     "virtual_mac = false"),
]


@pytest.mark.parametrize("edit,line,key,problem", [b[1:] for b in BAD_FAILOVER],
                         ids=[b[0] for b in BAD_FAILOVER])
def test_bad_failover_names_file_line_and_key(tmp_path, edit, line, key, problem):
    e = refused(tmp_path, edit(GOOD + FAILOVER))
    assert (e.line, e.key) == (line, key), str(e)
    assert problem in e.problem, str(e)


def test_metrics_is_optional_and_loads(tmp_path):
    assert config.load(write(tmp_path, GOOD)).metrics is None
    c = config.load(write(tmp_path, GOOD + '\n[metrics]\nlisten = "127.0.0.1:9477"\n'))
    assert c.metrics == config.Metrics("127.0.0.1", 9477)


L_LISTEN = GOOD.count("\n") + 3
BAD_METRICS = [
    ("no port", 'listen = "127.0.0.1"', L_LISTEN, "metrics.listen", "must be \"address:port\""),
    ("port 0", 'listen = "0.0.0.0:0"', L_LISTEN, "metrics.listen", "port 1..65535"),
    ("bad address", 'listen = "localhost:9477"', L_LISTEN, "metrics.listen", "bad IPv4 address"),
    ("unknown key", 'path = "/m"', L_LISTEN, "metrics.path", "unknown key"),
]


@pytest.mark.parametrize("line_text,line,key,problem", [b[1:] for b in BAD_METRICS],
                         ids=[b[0] for b in BAD_METRICS])
def test_bad_metrics_names_file_line_and_key(tmp_path, line_text, line, key, problem):
    e = refused(tmp_path, GOOD + f"\n[metrics]\n{line_text}\n")
    assert (e.line, e.key) == (line, key), str(e)
    assert problem in e.problem, str(e)


@pytest.mark.parametrize("name,peer,priority", [("fw1", "192.168.255.2", 110), ("fw2", "192.168.255.1", 100)])
def test_real_host_examples_load(tmp_path, name, peer, priority):
    """examples/pair/: the two real machines' configs, with a key made beside them."""
    import secrets
    from pathlib import Path
    (tmp_path / "failover.key").write_text(secrets.token_hex(32) + "\n")
    src = Path("examples/pair") / f"{name}.toml"
    c = config.load(write(tmp_path, src.read_text(), f"{name}.toml"))
    assert c.unit.name == name and c.unit.netns is None
    assert (c.interfaces.inside, c.interfaces.outside, c.failover.interface) == ("ens1f0", "ens1f1", "ens2")
    assert c.failover.peer == (peer, 7788) and c.failover.priority == priority
    assert [v.address for v in c.failover.vips] == ["10.1.0.1/24", "203.0.113.10/24"]
    assert c.metrics == config.Metrics("127.0.0.1", 9477)
    assert c.control.socket == f"/run/natpair/{name}.sock"
