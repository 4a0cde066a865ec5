"""One unit's TOML configuration: load, validate everything, return a frozen tree.

This module owns the config file format and nothing else: it never touches the
kernel, the core or the network, so a config is checked completely before the
daemon applies any of it (check, then commit). Names used:

- ``Config``: the whole unit (``UnitSection``, ``Interfaces``, ``Nat`` with its
  ``Static`` entries, ``Rule`` list, ``Timeouts``, ``CoreSection``, ``Feed``,
  ``Control``), all frozen dataclasses.
- ``ConfigError``: a refused file; its message is ``FILE:LINE: KEY: what is wrong``.
- ``Locator``: maps a key path (``nat.ports``, ``rules[1].dport``,
  ``nat.static[0].inside``) to its line, by scanning the text, because tomllib
  reports positions only for syntax errors.

The file (see examples/unit-fw-a.toml)::

    [unit]        name, creator_id (default: from the name), netns (optional)
    [interfaces]  inside, outside
    [nat]         pool = [addresses], ports = [lo, hi]
    [[nat.static]] inside, outside, proto, inside_port, outside_port
    [[rules]]     action, side, proto, src, dst, dport = [lo, hi]
    [timeouts]    seconds: tcp_embryonic ... udp (>= 120, RFC 4787 REQ-5), icmp
    [core]        max_states, tcp = "strict" | "loose"
    [feed]        kind = "c" | "netfilterqueue", queue, batch, queue_bypass,
                  drain_us (the C feed: microseconds one call may go on draining the queue)
    [control]     socket
    [failover]    optional (without it the unit runs standalone): interface (the failover
                  leg), local = "a.b.c.d:port", peer = "a.b.c.d:port" (the stream's UDP
                  port; the failover link's hellos use port + 1, so <= 65534), key (hex) or
                  key_file (raw bytes or hex text; at least 32 bytes either way), priority,
                  poll_ms, hold_ms (hold >= 3 x poll: replication.detect.check_timers),
                  preempt (default false), http_replication (default false),
                  peer_inside / peer_outside = "a.b.c.d": the peer's own address on that
                  leg (hellos go there too, from ours, on the failover port; omitted: no
                  hellos on that leg), group (0..255, default 1: the pair's id, which the
                  default virtual MACs 02:4e:50:<group>:00:01 (inside) and :02 (outside)
                  are made of), virtual_mac (default true), mac_inside / mac_outside (a
                  unicast MAC, overriding the default)
    [[failover.vip]] leg = "inside" | "outside", address = "a.b.c.d/len": a virtual
                  address held by whichever unit is active
    [metrics]     optional: listen = "a.b.c.d:port", the Prometheus endpoint (dataplane/metrics.py)
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
import zlib
from pathlib import Path
from typing import Any

# Limits that mirror cext/natpair.h (NP_POOL_MAX, NP_BATCH_MAX); this module
# does not import the core so that checking a config needs no built extension.
POOL_MAX = 64
BATCH_MAX = 256
DRAIN_US_MAX = 100_000                 # the feed thread holds the core's lock that long at most
MAX_STATES_MAX = 1 << 24
UDP_TIMEOUT_MIN = 120            # RFC 4787 REQ-5: at least 2 minutes
TIMEOUT_MAX_S = (1 << 32) // 1000 - 1
FAILOVER_KEY_MIN = 32            # bytes of the HMAC-SHA256 key, at least its output size
FAILOVER_PORT = 7788             # the failover link's UDP port when an address names none
FAILOVER_POLL_MS = 3              # hold = 5 x poll: the hellos of a unit whose CPUs stall for
FAILOVER_HOLD_MS = 15             # 5-10 ms come late, not missing (README, "Timers")
VIP_MAX = 16
VMAC_OUI = (0x02, 0x4E, 0x50)     # locally administered ("NP"): 02:4e:50:<group>:00:<leg>
LEG_NUMBER = {"inside": 1, "outside": 2}
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
LEGS = ("inside", "outside")

DEFAULT_TIMEOUTS = {             # seconds, as the core's defaults (README)
    "tcp_embryonic": 30,
    "tcp_established": 3600,
    "tcp_closing": 120,
    "tcp_time_wait": 60,
    "tcp_closed": 10,
    "udp": 120,
    "icmp": 60,
}
FEEDS = ("c", "netfilterqueue")
PROTOS = ("tcp", "udp", "icmp")
SIDES = ("inside", "outside", "any")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_IFNAME_RE = re.compile(r"^[^/\s:]{1,15}$")


class ConfigError(Exception):
    """A config file refused: ``path:line: key: problem``."""

    def __init__(self, path: str, line: int, key: str, problem: str):
        self.path, self.line, self.key, self.problem = str(path), line, key, problem
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")


# ---- the tree ----

@dataclasses.dataclass(frozen=True)
class UnitSection:
    name: str
    creator_id: int
    netns: str | None = None


@dataclasses.dataclass(frozen=True)
class Interfaces:
    inside: str
    outside: str


@dataclasses.dataclass(frozen=True)
class Static:
    inside: str
    outside: str
    proto: str | None = None         # None: whole address 1:1
    inside_port: int = 0
    outside_port: int = 0


@dataclasses.dataclass(frozen=True)
class Nat:
    pool: tuple[str, ...]
    ports: tuple[int, int] = (1024, 65535)
    static: tuple[Static, ...] = ()


@dataclasses.dataclass(frozen=True)
class Rule:
    action: str
    side: str = "any"
    proto: str | None = None
    src: str = "0.0.0.0/0"
    dst: str = "0.0.0.0/0"
    dport: tuple[int, int] = (0, 65535)


@dataclasses.dataclass(frozen=True)
class Timeouts:
    tcp_embryonic: int = DEFAULT_TIMEOUTS["tcp_embryonic"]
    tcp_established: int = DEFAULT_TIMEOUTS["tcp_established"]
    tcp_closing: int = DEFAULT_TIMEOUTS["tcp_closing"]
    tcp_time_wait: int = DEFAULT_TIMEOUTS["tcp_time_wait"]
    tcp_closed: int = DEFAULT_TIMEOUTS["tcp_closed"]
    udp: int = DEFAULT_TIMEOUTS["udp"]
    icmp: int = DEFAULT_TIMEOUTS["icmp"]

    def as_ms(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) * 1000 for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class CoreSection:
    max_states: int = 65536
    tcp: str = "strict"


@dataclasses.dataclass(frozen=True)
class Feed:
    kind: str = "c"
    queue: int = 0
    batch: int = 64
    queue_bypass: bool = False       # fail open: a leak, only on explicit request
    drain_us: int = 2000             # C feed: batches go on without Python for up to this long


@dataclasses.dataclass(frozen=True)
class Control:
    socket: str


@dataclasses.dataclass(frozen=True)
class Vip:
    leg: str                         # "inside" or "outside"
    address: str                     # "a.b.c.d/len"


@dataclasses.dataclass(frozen=True)
class Failover:
    interface: str
    local: tuple[str, int]
    peer: tuple[str, int]
    key: bytes = dataclasses.field(repr=False)
    priority: int = 100
    poll_ms: int = FAILOVER_POLL_MS
    hold_ms: int = FAILOVER_HOLD_MS
    preempt: bool = False
    http_replication: bool = False
    vips: tuple[Vip, ...] = ()
    peer_legs: tuple[tuple[str, str], ...] = ()     # (leg, the peer's own address on it)
    group: int = 1
    virtual_macs: tuple[tuple[str, str], ...] = ()  # (leg, MAC) taken while active; () = off

    @property
    def beat_local(self) -> tuple[str, int]:
        """Where the hello process (replication.beat) sends the failover link's hellos from:
        the failover port + 1 (the stream's socket and replay window stay its own)."""
        return self.local[0], self.local[1] + 1

    @property
    def beat_peer(self) -> tuple[str, int]:
        return self.peer[0], self.peer[1] + 1


@dataclasses.dataclass(frozen=True)
class Metrics:
    address: str                     # the Prometheus endpoint listens here (HTTP, /metrics)
    port: int


@dataclasses.dataclass(frozen=True)
class Config:
    path: str
    unit: UnitSection
    interfaces: Interfaces
    nat: Nat
    rules: tuple[Rule, ...]
    timeouts: Timeouts
    core: CoreSection
    feed: Feed
    control: Control
    failover: Failover | None = None     # None: a standalone unit
    metrics: Metrics | None = None       # None: no Prometheus endpoint


def creator_id_from_name(name: str) -> int:
    """A stable small identity (1..65534) for a unit that sets none."""
    return zlib.crc32(name.encode()) % 65534 + 1


# ---- where keys are ----

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'')
_ARRAY_TABLE = re.compile(r"^\s*\[\[\s*([^\[\]]+?)\s*\]\]")
_TABLE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]")
_KEY = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")


def _dotted(raw: str) -> str:
    return ".".join(p.strip().strip("\"'") for p in re.split(r"\.(?=(?:[^\"']*[\"'][^\"']*[\"'])*[^\"']*$)", raw))


class Locator:
    """Line numbers of tables and keys, found by scanning the TOML text.

    Paths: ``unit`` (a table header), ``unit.name`` (a key), ``rules[0]`` (the
    first ``[[rules]]`` header), ``rules[0].dport``. Keys inside multi-line
    arrays or inline tables are not indexed; ``line()`` falls back to the
    nearest enclosing path that is.
    """

    def __init__(self, text: str):
        self._lines: dict[str, int] = {}
        counts: dict[str, int] = {}
        table = ""
        depth = 0
        for no, raw in enumerate(text.splitlines(), 1):
            code = _STRINGS.sub('""', raw).split("#", 1)[0]
            rest = code
            if depth == 0:
                if m := _ARRAY_TABLE.match(code):
                    name = _dotted(m.group(1))
                    idx = counts.get(name, 0)
                    counts[name] = idx + 1
                    self._lines.setdefault(name, no)
                    table = f"{name}[{idx}]"
                    self._lines[table] = no
                    continue
                if m := _TABLE.match(code):
                    table = _dotted(m.group(1))
                    self._lines.setdefault(table, no)
                    continue
                if m := _KEY.match(code):
                    key = _dotted(m.group(1))
                    self._lines.setdefault(f"{table}.{key}" if table else key, no)
                    rest = code[m.end():]
            depth = max(0, depth + rest.count("[") + rest.count("{") - rest.count("]") - rest.count("}"))

    def line(self, path: str) -> int:
        """The line of path, else of its nearest indexed parent; 0 if none."""
        while path:
            if path in self._lines:
                return self._lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            if cut <= 0:
                break
            path = path[:cut]
        return self._lines.get(path, 0)


# ---- checking ----

class _Checker:
    def __init__(self, path: str, text: str):
        self.path = path
        self.loc = Locator(text)

    def fail(self, key: str, problem: str) -> None:
        raise ConfigError(self.path, self.loc.line(key), key, problem)

    def section(self, data: dict, name: str) -> Any:
        if name not in data:
            self.fail(name, f"missing section [{name}] (required)")
        return data[name]

    def table(self, data: Any, key: str, known: tuple[str, ...]) -> dict:
        if not isinstance(data, dict):
            self.fail(key, f"must be a table, not {_tname(data)}")
        unknown = [k for k in data if k not in known]
        if unknown:
            first = min(unknown, key=lambda k: self.loc.line(f"{key}.{k}") or 1 << 30)
            self.fail(f"{key}.{first}", f"unknown key (known: {', '.join(known)})")
        return data

    def value(self, data: dict, section: str, key: str, kind: type | tuple, default: Any = ...) -> Any:
        path = f"{section}.{key}"
        if key not in data:
            if default is ...:
                self.fail(path, "missing (required)")
            return default
        v = data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
            self.fail(path, f"must be {' or '.join(_KIND_NAMES[k] for k in kinds)}, not {_tname(v)} {v!r}")
        return v

    def choice(self, data: dict, section: str, key: str, choices: tuple[str, ...], default: Any = ...) -> Any:
        v = self.value(data, section, key, str, default)
        if v is not None and v not in choices:
            self.fail(f"{section}.{key}", f"must be one of {', '.join(repr(c) for c in choices)}, not {v!r}")
        return v

    def int_in(self, data: dict, section: str, key: str, lo: int, hi: int, default: Any = ...) -> int:
        v = self.value(data, section, key, int, default)
        if not lo <= v <= hi:
            self.fail(f"{section}.{key}", f"must be in {lo}..{hi}, not {v}")
        return v

    def address(self, v: Any, key: str) -> str:
        if not isinstance(v, str):
            self.fail(key, f"must be an IPv4 address string, not {_tname(v)} {v!r}")
        try:
            a = ipaddress.IPv4Address(v)
        except ValueError:
            self.fail(key, f"bad IPv4 address {v!r}")
        if a.is_unspecified or a.is_multicast or a.is_loopback or a == ipaddress.IPv4Address("255.255.255.255"):
            self.fail(key, f"{v} is not a unicast address")
        return str(a)

    def network(self, v: Any, key: str) -> str:
        if not isinstance(v, str):
            self.fail(key, f"must be an IPv4 prefix string, not {_tname(v)} {v!r}")
        try:
            return str(ipaddress.IPv4Network(v))
        except ValueError as e:
            self.fail(key, f"bad IPv4 prefix {v!r} ({e})")

    def port_range(self, v: Any, key: str, lo: int = 0) -> tuple[int, int]:
        if (not isinstance(v, list) or len(v) != 2
                or not all(isinstance(p, int) and not isinstance(p, bool) for p in v)):
            self.fail(key, f"must be a list of two port numbers [lo, hi], not {v!r}")
        a, b = v
        for p in (a, b):
            if not lo <= p <= 65535:
                self.fail(key, f"port {p} out of range {lo}..65535")
        if a > b:
            self.fail(key, f"port range reversed: {a} > {b}")
        return a, b


_KIND_NAMES = {str: "a string", int: "an integer", bool: "a boolean", list: "a list", dict: "a table"}


def _tname(v: Any) -> str:
    return {str: "string", int: "integer", bool: "boolean", float: "float", list: "list",
            dict: "table"}.get(type(v), type(v).__name__)


SECTIONS = ("unit", "interfaces", "nat", "rules", "timeouts", "core", "feed", "control", "failover",
            "metrics")


def load(path: str | Path) -> Config:
    """Read and check a config file; raise ConfigError on the first problem."""
    path = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(path, 0, "", f"cannot read: {e.strerror}") from None
    return loads(text, path)


def loads(text: str, path: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        line = int(m.group(1)) if m else 0
        raise ConfigError(path, line, "", f"TOML syntax error: {e}") from None
    ck = _Checker(path, text)

    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        first = min(unknown, key=lambda k: ck.loc.line(k) or 1 << 30)
        ck.fail(first, f"unknown section (known: {', '.join(SECTIONS)})")

    # [unit]
    d = ck.table(ck.section(data, "unit"), "unit", ("name", "creator_id", "netns"))
    name = ck.value(d, "unit", "name", str)
    if not _NAME_RE.match(name):
        ck.fail("unit.name", f"{name!r}: 1-32 characters of letters, digits, '_', '.', '-', starting alnum")
    creator_id = ck.int_in(d, "unit", "creator_id", 1, 0xFFFFFFFF, creator_id_from_name(name))
    netns = ck.value(d, "unit", "netns", str, None)
    if netns is not None and not _NAME_RE.match(netns) and not netns.startswith("/"):
        ck.fail("unit.netns", f"{netns!r} is not a namespace name (or an absolute path)")
    unit = UnitSection(name, creator_id, netns)

    # [interfaces]
    d = ck.table(ck.section(data, "interfaces"), "interfaces", ("inside", "outside"))
    legs = {}
    for leg in ("inside", "outside"):
        v = ck.value(d, "interfaces", leg, str)
        if not _IFNAME_RE.match(v):
            ck.fail(f"interfaces.{leg}", f"{v!r} is not an interface name (1-15 characters, no '/', ':' or space)")
        legs[leg] = v
    if legs["inside"] == legs["outside"]:
        ck.fail("interfaces.outside", f"same interface as inside ({legs['inside']!r})")
    interfaces = Interfaces(**legs)

    # [nat]
    d = ck.table(ck.section(data, "nat"), "nat", ("pool", "ports", "static"))
    pool_v = ck.value(d, "nat", "pool", list)
    if not 1 <= len(pool_v) <= POOL_MAX:
        ck.fail("nat.pool", f"must hold 1..{POOL_MAX} addresses, not {len(pool_v)}")
    pool = tuple(ck.address(a, f"nat.pool[{i}]") for i, a in enumerate(pool_v))
    if len(set(pool)) != len(pool):
        dup = next(a for a in pool if pool.count(a) > 1)
        ck.fail("nat.pool", f"address {dup} listed twice")
    ports = ck.port_range(d["ports"], "nat.ports", lo=1) if "ports" in d else (1024, 65535)
    statics: list[Static] = []
    static_v = ck.value(d, "nat", "static", list, [])
    for i, s in enumerate(static_v):
        key = f"nat.static[{i}]"
        s = ck.table(s, key, ("inside", "outside", "proto", "inside_port", "outside_port"))
        inside = ck.address(ck.value(s, key, "inside", str), f"{key}.inside")
        outside = ck.address(ck.value(s, key, "outside", str), f"{key}.outside")
        proto = ck.choice(s, key, "proto", ("tcp", "udp"), None)
        in_port = out_port = 0
        if proto is None:
            for p in ("inside_port", "outside_port"):
                if p in s:
                    ck.fail(f"{key}.{p}", 'a port needs proto = "tcp" or "udp" '
                            "(without proto the whole address is mapped 1:1)")
        else:
            in_port = ck.int_in(s, key, "inside_port", 1, 65535)
            out_port = ck.int_in(s, key, "outside_port", 1, 65535)
        for j, prev in enumerate(statics):
            if prev.outside == outside and (prev.proto is None or proto is None
                                            or (prev.proto, prev.outside_port) == (proto, out_port)):
                ck.fail(f"{key}.outside", f"{outside} clashes with nat.static[{j}]")
        statics.append(Static(inside, outside, proto, in_port, out_port))
    nat = Nat(pool, ports, tuple(statics))

    # [[rules]]
    rules = []
    rules_v = data.get("rules", [])
    if not isinstance(rules_v, list):
        ck.fail("rules", "must be an array of tables ([[rules]])")
    for i, r in enumerate(rules_v):
        key = f"rules[{i}]"
        r = ck.table(r, key, ("action", "side", "proto", "src", "dst", "dport"))
        action = ck.choice(r, key, "action", ("allow", "deny"))
        side = ck.choice(r, key, "side", SIDES, "any")
        proto = ck.choice(r, key, "proto", PROTOS, None)
        src = ck.network(r["src"], f"{key}.src") if "src" in r else "0.0.0.0/0"
        dst = ck.network(r["dst"], f"{key}.dst") if "dst" in r else "0.0.0.0/0"
        dport = (0, 65535)
        if "dport" in r:
            if proto not in ("tcp", "udp"):
                ck.fail(f"{key}.dport", "a port range needs proto = \"tcp\" or \"udp\"")
            dport = ck.port_range(r["dport"], f"{key}.dport")
        rules.append(Rule(action, side, proto, src, dst, dport))

    # [timeouts]
    d = ck.table(data.get("timeouts", {}), "timeouts", tuple(DEFAULT_TIMEOUTS))
    tmo = {}
    for k, default in DEFAULT_TIMEOUTS.items():
        lo = UDP_TIMEOUT_MIN if k == "udp" else 1
        if k == "udp" and isinstance(d.get(k), int) and not isinstance(d.get(k), bool) and d[k] < lo:
            ck.fail("timeouts.udp", f"{d[k]} s is below {UDP_TIMEOUT_MIN} s (RFC 4787 REQ-5: at least 2 minutes)")
        tmo[k] = ck.int_in(d, "timeouts", k, lo, TIMEOUT_MAX_S, default)
    timeouts = Timeouts(**tmo)

    # [core]
    d = ck.table(data.get("core", {}), "core", ("max_states", "tcp"))
    core = CoreSection(ck.int_in(d, "core", "max_states", 1, MAX_STATES_MAX, 65536),
                       ck.choice(d, "core", "tcp", ("strict", "loose"), "strict"))

    # [feed]
    d = ck.table(data.get("feed", {}), "feed",
                 ("kind", "queue", "batch", "queue_bypass", "drain_us"))
    feed = Feed(ck.choice(d, "feed", "kind", FEEDS, "c"),
                ck.int_in(d, "feed", "queue", 0, 65535, 0),
                ck.int_in(d, "feed", "batch", 1, BATCH_MAX, 64),
                ck.value(d, "feed", "queue_bypass", bool, False),
                ck.int_in(d, "feed", "drain_us", 0, DRAIN_US_MAX, 2000))

    # [control]
    d = ck.table(data.get("control", {}), "control", ("socket",))
    sock = ck.value(d, "control", "socket", str, f"/run/natpair/{name}.sock")
    if not sock.startswith("/"):
        ck.fail("control.socket", f"must be an absolute path, not {sock!r}")
    if len(sock.encode()) > 107:
        ck.fail("control.socket", f"path too long for a unix socket ({len(sock.encode())} > 107 bytes)")
    control = Control(sock)

    failover = _failover(ck, data["failover"], interfaces, path) if "failover" in data else None
    metrics = _metrics(ck, data["metrics"]) if "metrics" in data else None

    return Config(path, unit, interfaces, nat, tuple(rules), timeouts, core, feed, control, failover,
                  metrics)


def _metrics(ck: _Checker, d: Any) -> Metrics:
    d = ck.table(d, "metrics", ("listen",))
    v = ck.value(d, "metrics", "listen", str)
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        ck.fail("metrics.listen", f"{v!r}: must be \"address:port\" (port 1..65535), "
                                  f"e.g. \"127.0.0.1:9477\"")
    try:
        addr = ipaddress.IPv4Address(host)
    except ValueError:
        ck.fail("metrics.listen", f"bad IPv4 address {host!r} (0.0.0.0 listens on every address)")
    if addr.is_multicast or addr == ipaddress.IPv4Address("255.255.255.255"):
        ck.fail("metrics.listen", f"{host} is not an address to listen on")
    return Metrics(str(addr), int(port))


FAILOVER_KEYS = ("interface", "local", "peer", "key", "key_file", "priority", "poll_ms", "hold_ms",
                 "preempt", "http_replication", "vip", "peer_inside", "peer_outside", "group",
                 "virtual_mac", "mac_inside", "mac_outside")


def default_vmac(group: int, leg: str) -> str:
    """The virtual MAC of ``leg`` for failover group ``group`` (locally administered)."""
    return ":".join(f"{b:02x}" for b in (*VMAC_OUI, group, 0, LEG_NUMBER[leg]))


def _mac(ck: "_Checker", d: dict, key: str) -> str:
    v = ck.value(d, "failover", key, str).lower()
    if not _MAC_RE.match(v):
        ck.fail(f"failover.{key}", f"{v!r} is not a MAC address (02:4e:50:01:00:01)")
    first = int(v[:2], 16)
    if first & 1:
        ck.fail(f"failover.{key}", f"{v} is a multicast address: a virtual MAC must be unicast")
    if v == "00:00:00:00:00:00":
        ck.fail(f"failover.{key}", "the all-zero address is not a MAC")
    return v


def _endpoint(ck: _Checker, d: dict, key: str) -> tuple[str, int]:
    v = ck.value(d, "failover", key, str)
    host, sep, port = v.rpartition(":")
    if not sep:
        host, port = v, str(FAILOVER_PORT)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        ck.fail(f"failover.{key}", f"{v!r}: the port must be 1..65535")
    return ck.address(host, f"failover.{key}"), int(port)


def _key(ck: _Checker, d: dict, path: str) -> bytes:
    if ("key" in d) == ("key_file" in d):
        ck.fail("failover.key" if "key" in d else "failover",
                "give exactly one of key (hex) and key_file (a path)")
    if "key" in d:
        v = ck.value(d, "failover", "key", str)
        try:
            key = bytes.fromhex(v)
        except ValueError:
            ck.fail("failover.key", "must be hex digits (e.g. `openssl rand -hex 32`)")
        where = "failover.key"
    else:
        f = ck.value(d, "failover", "key_file", str)
        where = "failover.key_file"
        if not f.startswith("/"):
            f = str(Path(path).parent / f)
        try:
            raw = Path(f).read_bytes()
        except OSError as e:
            ck.fail(where, f"cannot read {f}: {e.strerror}")
        try:
            key = bytes.fromhex(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            key = raw                   # raw bytes (e.g. head -c 32 /dev/urandom)
    if len(key) < FAILOVER_KEY_MIN:
        ck.fail(where, f"the key has {len(key)} bytes, at least {FAILOVER_KEY_MIN} are needed")
    return key


def _failover(ck: _Checker, d: Any, interfaces: Interfaces, path: str) -> Failover:
    from replication.detect import TimerError, check_timers

    d = ck.table(d, "failover", FAILOVER_KEYS)
    ifname = ck.value(d, "failover", "interface", str)
    if not _IFNAME_RE.match(ifname):
        ck.fail("failover.interface", f"{ifname!r} is not an interface name")
    if ifname in (interfaces.inside, interfaces.outside):
        ck.fail("failover.interface", f"{ifname!r} is a data leg: the failover link needs its own")
    local, peer = _endpoint(ck, d, "local"), _endpoint(ck, d, "peer")
    if local == peer:
        ck.fail("failover.peer", f"same address as local ({local[0]}:{local[1]})")
    for which, (_, port) in (("local", local), ("peer", peer)):
        if port == 65535:
            ck.fail(f"failover.{which}", "port 65535 leaves no port for the hellos (the "
                    "failover link's hellos use the failover port + 1)")
    key = _key(ck, d, path)
    priority = ck.int_in(d, "failover", "priority", 0, 255, 100)
    poll_ms = ck.value(d, "failover", "poll_ms", int, FAILOVER_POLL_MS)
    hold_ms = ck.value(d, "failover", "hold_ms", int, FAILOVER_HOLD_MS)
    try:
        check_timers(poll_ms, hold_ms)
    except TimerError as e:
        ck.fail(f"failover.{e.key}" if e.key in d else "failover.poll_ms", e.problem)
    vips: list[Vip] = []
    vip_v = ck.value(d, "failover", "vip", list, [])
    if len(vip_v) > VIP_MAX:
        ck.fail("failover.vip", f"at most {VIP_MAX} virtual addresses, not {len(vip_v)}")
    for i, v in enumerate(vip_v):
        key_ = f"failover.vip[{i}]"
        v = ck.table(v, key_, ("leg", "address"))
        leg = ck.choice(v, key_, "leg", LEGS)
        addr = ck.value(v, key_, "address", str)
        try:
            iface = ipaddress.IPv4Interface(addr)
        except ValueError as e:
            ck.fail(f"{key_}.address", f"bad address/prefix {addr!r} ({e})")
        if "/" not in addr:
            ck.fail(f"{key_}.address", f"{addr!r} needs its prefix length (198.18.1.1/24)")
        ck.address(str(iface.ip), f"{key_}.address")
        if any(p.address.split("/")[0] == str(iface.ip) for p in vips):
            ck.fail(f"{key_}.address", f"{iface.ip} listed twice")
        vips.append(Vip(leg, str(iface)))
    peer_legs = []
    for leg in LEGS:
        if f"peer_{leg}" in d:
            a = ck.address(ck.value(d, "failover", f"peer_{leg}", str), f"failover.peer_{leg}")
            if any(v.address.split("/")[0] == a for v in vips):
                ck.fail(f"failover.peer_{leg}", f"{a} is a virtual address: give the peer's own")
            peer_legs.append((leg, a))
    group = ck.int_in(d, "failover", "group", 0, 255, 1)
    macs: list[tuple[str, str]] = []
    if ck.value(d, "failover", "virtual_mac", bool, True):
        for leg in LEGS:
            macs.append((leg, _mac(ck, d, f"mac_{leg}") if f"mac_{leg}" in d
                         else default_vmac(group, leg)))
        if macs[0][1] == macs[1][1]:
            ck.fail("failover.mac_outside", f"{macs[1][1]} is the inside leg's virtual MAC too")
    else:
        for leg in LEGS:
            if f"mac_{leg}" in d:
                ck.fail(f"failover.mac_{leg}", "set, but virtual_mac = false")
    return Failover(ifname, local, peer, key, priority, poll_ms, hold_ms,
                    ck.value(d, "failover", "preempt", bool, False),
                    ck.value(d, "failover", "http_replication", bool, False), tuple(vips),
                    tuple(peer_legs), group, tuple(macs))
